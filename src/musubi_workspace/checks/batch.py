"""Check 8: batch size and learning rate (what the batch size asks of attention is combinations.py's).

A batch size changed against the previous version with the learning rate left alone changes the training (the
usual rule for Adam-type optimisers scales the rate with the square root of the batch); several GPUs or gradient
accumulation multiply the batch a step sees.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from musubi_workspace.checks.data import scan
from musubi_workspace.config import load_toml
from musubi_workspace.dataset import read
from musubi_workspace.errors import WorkspaceError

if TYPE_CHECKING:
    from musubi_workspace.checks.findings import Context
    from musubi_workspace.dataset import DatasetFile

DEFAULT_LEARNING_RATE = 2e-6  # musubi-tuner's default


def dataset_batch(f: DatasetFile | None) -> tuple[int, str]:
    """The first dataset's batch_size as musubi-tuner uses it (entry, then [general], then 1) and where it is set."""
    if f is None or not f.datasets:
        return 1, f.shown if f else ""
    d = f.datasets[0]
    batch = d.batch_size
    return (batch if batch > 0 else 1), d.at("batch_size")


def _grad_accum(options: dict) -> int:
    g = options.get("gradient_accumulation_steps", 1)
    return g if isinstance(g, int) and not isinstance(g, bool) and g > 0 else 1


def _lr(options: dict) -> float | None:
    lr = options.get("learning_rate", DEFAULT_LEARNING_RATE)
    return float(lr) if isinstance(lr, (int, float)) and not isinstance(lr, bool) else None


def previous_version(ctx: Context):
    """(name, options, dataset file or None) of the version before this one; None where there is none or it does not read."""
    from musubi_workspace.config import flatten

    cfg = ctx.cfg
    if cfg.version is None:
        return None
    n = int(cfg.version[1:])
    older = [v for v in cfg.ws.versions() if int(v[1:]) < n]
    if not older:
        return None
    name = older[-1]
    try:
        data, _ = load_toml(cfg.ws.configs / name / "config.toml", cfg.ws)
        options = flatten(data)
        ds = options.get("dataset_config")
        dataset = read(cfg.ws, cfg.ws.resolve(ds)) if isinstance(ds, str) and ds else None
    except WorkspaceError:
        return None
    return name, options, dataset


def check_batch(ctx: Context) -> str | None:
    cfg, report = ctx.cfg, ctx.report
    s = scan(ctx)
    if s.file is None:
        return "no dataset.toml to read (see above)"
    batch, batch_where = dataset_batch(s.file)
    largest = max([d.batch_size for d in s.datasets] or [batch])

    lr = _lr(cfg.options)
    grad = _grad_accum(cfg.options)
    prev = previous_version(ctx)
    if prev is not None and lr is not None:
        name, prev_options, prev_dataset = prev
        prev_batch = dataset_batch(prev_dataset)[0] * _grad_accum(prev_options)
        now = batch * grad
        if prev_batch != now and _lr(prev_options) == lr:
            scaled = lr * math.sqrt(now / prev_batch)
            report.warn(
                batch_where,
                f"batch size {prev_batch} in {name} -> {now} here, but learning_rate stayed {lr:g}: "
                f"square-root scaling gives learning_rate = {scaled:.3g} ({lr:g} x sqrt({now}/{prev_batch})); "
                "set it in config.toml, or keep it on purpose",
            )

    processes = 1
    n = cfg.settings.num_processes
    if isinstance(n, int):
        processes = n
    elif not cfg.settings.accelerate_config and ctx.target == "check" and not ctx.dry_run:
        # "auto" is every visible GPU (`nvidia-smi -L`); only `make check` asks, never a dry run (train asks itself,
        # after its check).
        from musubi_workspace.gpus import visible_gpu_count

        processes = max(1, visible_gpu_count(ctx.env))
    if (processes > 1 or grad > 1) and lr is not None:
        effective = largest * processes * grad
        report.note(
            cfg.where("learning_rate"),
            f"effective batch = {largest} per GPU x {processes} process(es) x {grad} gradient accumulation step(s) = {effective}: "
            f"learning_rate {lr:g} applies to that batch (square-root scaling from {largest} gives {lr * math.sqrt(effective / largest):.3g})",
        )
    return None
