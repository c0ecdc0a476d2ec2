"""`make check`: find the mistakes that would waste a GPU run, before it starts.

Each check is a function `(ctx) -> None | reason` that adds findings to a `Report` (findings.py); `run_checks`
runs them all in order and keeps going, so one pass reports every problem. `preflight` is what cache, train and
generate run first: it stops on errors. The larger checks live in their own modules: keys.py (config keys) and
values.py (their values), combinations.py (option combinations, GPU memory), data.py (dataset.toml, sources, data
content), prompts.py, machine.py (disk, credentials, tokens), batch.py (batch size and learning rate), validation.py (the validation set); images.py
keeps the decoded-image facts between runs. Model files are checked here (model_files.py reads their headers).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from musubi_workspace.checks.batch import check_batch
from musubi_workspace.checks.combinations import check_combinations, check_gpu_memory
from musubi_workspace.checks.data import check_content, check_dataset
from musubi_workspace.checks.findings import ERROR, MACHINE, NOTE, WARNING, Context, Finding, Report
from musubi_workspace.checks.keys import check_options
from musubi_workspace.checks.machine import check_credentials, check_disk
from musubi_workspace.checks.prompts import check_prompts
from musubi_workspace.checks.validation import check_validation
from musubi_workspace.config import Config, not_a_file
from musubi_workspace.downloads import SHARD_RE
from musubi_workspace.errors import EXIT_CHECK, WorkspaceError
from musubi_workspace.model_files import file_problems, tensor_problem
from musubi_workspace.versions import version_token

__all__ = [
    "CHECKS",
    "Context",
    "Finding",
    "Report",
    "ERROR",
    "WARNING",
    "NOTE",
    "MACHINE",
    "run_checks",
    "check",
    "preflight",
]

MODEL_KEYS = ("dit", "vae", "text_encoder1", "text_encoder2", "image_encoder")
# A model folder musubi-tuner accepts: where it looks inside it.
MODEL_FOLDERS = {
    "vae": "vae",
    "text_encoder1": "text_encoder",
    "text_encoder2": "text_encoder_2",
    "image_encoder": "image_encoder",
}
# Values that name the version they belong to (`make new` renames them): naming another version is a mistake.
VERSIONED_PATHS = ("dataset_config", "sample_prompts")
VERSIONED_NAMES = ("output_name", "output_dir", "logging_dir", "huggingface_path_in_repo", "wandb_run_name")


def _model_problem(key: str, path: Path) -> str | None:
    """What is missing for a model path, as musubi-tuner loads it (all shards; a folder with what it reads)."""
    m = SHARD_RE.match(path.name)
    if m:
        shards = [
            path.with_name(f"{m.group(1)}-{i:05d}-of-{m.group(3)}{m.group(4)}") for i in range(1, int(m.group(3)) + 1)
        ]
        gone = [p for p in shards if not p.is_file()]
        if gone == [path] or path in gone:
            return "not found"
        if gone:
            return f"is one of {len(shards)} shards, and {', '.join(p.name for p in gone)} not found beside it"
        return None
    if path.is_dir():
        if key == "dit":
            return None if any(path.glob("*.safetensors")) else "is a folder without a .safetensors file"
        inner = MODEL_FOLDERS[key]
        return None if (path / inner).is_dir() or any(path.glob("*.safetensors")) else f"is a folder without {inner}/"
    return None if path.is_file() else "not found"


def check_models(ctx: Context) -> None:
    """Model files named by the config exist (every shard of a sharded file; a folder where musubi-tuner takes one),
    are whole safetensors files and hold the tensors their loader needs (model_files.py)."""
    cfg = ctx.cfg
    for key in MODEL_KEYS:
        if not isinstance(cfg.get(key), (str, type(None))):
            continue  # reported by check 1
        path = cfg.path_of(key)
        if path is None:
            ctx.report.error(cfg.where(key), f'`{key}` is not set; add `{key} = "models/..."` (see configs/v1)')
        elif problem := _model_problem(key, path):
            ctx.report.error(
                cfg.where(key), f"{key} {cfg.ws.rel(path)} {problem}; run `make models` to download it", kind=MACHINE
            )
        elif broken := file_problems(key, path):
            for f, what in broken:
                ctx.report.error(
                    cfg.where(key),
                    f"{key} {cfg.ws.rel(f)} {what}: musubi-tuner fails on it while loading; "
                    "delete it and run `make models` to download it again",
                    kind=MACHINE,
                )
        elif wrong := tensor_problem(key, path):
            ctx.report.error(cfg.where(key), f"{key} {cfg.ws.rel(path)} {wrong}")


def _writable(path: Path) -> str | None:
    """Why output_dir cannot be written (created), or None."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    return None


def check_files(ctx: Context) -> None:
    """dataset_config, sample_prompts, network_weights and resume exist; output_dir can be written."""
    cfg, report, ws = ctx.cfg, ctx.report, ctx.cfg.ws
    fixes = {
        "dataset_config": "create it (copy configs/v1/dataset.toml) or fix the path",
        "sample_prompts": "create it (copy configs/v1/prompts.txt), fix the path, or remove the key",
        "network_weights": "fix the path, or remove the key to start from a fresh LoRA",
    }
    for key, fix in fixes.items():
        value = cfg.get(key)
        if isinstance(value, str) and value and not ws.resolve(value).is_file():
            report.error(cfg.where(key), f"{key} {value} {not_a_file(ws, ws.resolve(value), key, fix)}")
    resume = cfg.get("resume")
    if (
        isinstance(resume, str)
        and resume
        and cfg.get("resume_from_huggingface") is not True
        and not ws.resolve(resume).is_dir()
    ):
        report.error(
            cfg.where("resume"),
            f"resume {resume} not found (a state folder, `...-state`); fix the path or remove the key",
        )
    out = cfg.get("output_dir")
    if isinstance(out, str) and out:
        problem = _writable(ws.resolve(out))
        if problem:
            report.error(
                cfg.where("output_dir"),
                f"output_dir {out} cannot be written: {problem}; choose another folder",
                kind=MACHINE,
            )


_ANY_VERSION = re.compile(r"(?<![A-Za-z0-9])v(\d+)(?![0-9])")


def check_versions(ctx: Context) -> str | None:
    """A config in configs/vN whose values belong to another version (the seed's v1 pointed at v8's dataset)."""
    cfg, report, ws = ctx.cfg, ctx.report, ctx.cfg.ws
    version = cfg.version
    if version is None:
        return f"{cfg.shown} is not in configs/vN"
    own = version_token(version)

    def other(value: str) -> str | None:
        found = [f"v{m.group(1)}" for m in _ANY_VERSION.finditer(value)]
        return next((v for v in found if v != version), None) if not own.search(value) or len(set(found)) > 1 else None

    for key in VERSIONED_PATHS:
        value = cfg.get(key)
        if isinstance(value, str) and value:
            try:
                rel = ws.resolve(value).resolve().relative_to(ws.configs.resolve())
            except ValueError:
                continue
            if rel.parts and rel.parts[0] != version and re.fullmatch(r"v\d+", rel.parts[0]):
                report.error(
                    cfg.where(key),
                    f"{key} = {value!r} belongs to {rel.parts[0]}, this is {version}: "
                    f"use configs/{version}/{rel.name} (copy it there if it should differ)",
                )
    for key in VERSIONED_NAMES:
        value = cfg.get(key)
        if isinstance(value, str) and (v := other(value)):
            report.error(
                cfg.where(key),
                f"{key} = {value!r} names {v}, this is {version}: "
                f"it would mix this run with {v}'s; name {version} instead",
            )
    from musubi_workspace.checks.data import scan

    s = scan(ctx)
    for d in s.datasets:
        value = d.values.get("cache_directory")
        if isinstance(value, str) and (v := other(value)):
            report.error(
                s.at(("datasets", d.index), "cache_directory"),
                f"cache_directory = {value!r} names {v}, this is {version}: "
                f"caching would overwrite {v}'s caches; name {version} instead",
            )
    return None


CHECKS: list[tuple[str, Callable[[Context], str | None]]] = [
    ("config keys", check_options),
    ("option combinations", check_combinations),
    ("model files", check_models),
    ("files and output_dir", check_files),
    ("dataset.toml", check_dataset),
    ("training data", check_content),
    ("sample prompts", check_prompts),
    ("version coherence", check_versions),
    ("disk space", check_disk),
    ("GPU memory", check_gpu_memory),
    ("credentials", check_credentials),
    ("batch size and learning rate", check_batch),
    ("validation set", check_validation),
]


# Lines of the run's estimated time and cost, printed before the verdict (runs/estimate.py's speed_lines, passed
# in by `make check` and the training targets: the checks themselves know nothing of bench tables or run records).
Speed = Callable[[Config, dict], list[str]]


def run_checks(
    cfg: Config,
    dry_run: bool = False,
    strict: bool = False,
    out=None,
    target: str = "check",
    speed: Speed | None = None,
) -> Report:
    """Run every check; print `[i/N] name ✓/!/✗/⊘` per check and one line per finding; return the report.

    A check returns None, or a reason it had nothing to look at (printed after ⊘).
    """
    out = out or sys.stdout
    report = Report()
    ctx = Context(cfg=cfg, report=report, dry_run=dry_run, target=target)
    for i, (name, check) in enumerate(CHECKS, 1):
        before = len(report.findings)
        skipped = check(ctx)
        new = report.findings[before:]
        if dry_run:
            for f in new:
                if f.kind == MACHINE and f.severity == ERROR:
                    f.severity = WARNING
                    f.message += " (dry run: not needed now)"
        if strict:
            for f in new:
                if f.severity == WARNING:
                    f.severity = ERROR
        if any(f.severity == ERROR for f in new):
            mark = "✗"
        elif any(f.severity == WARNING for f in new):
            mark = "!"
        else:
            mark = f"⊘ {skipped}" if skipped and not new else "✓"
        print(f"[{i}/{len(CHECKS)}] {name} {mark}", file=out)
        for f in new:
            print(f"  {f.line()}", file=out)
    if speed is not None and ctx.for_training() and not dry_run:
        for line in speed(cfg, ctx.env):  # the run's time and cost on this GPU (runs/estimate.py)
            print(line, file=out)
    n_err, n_warn, n_note = len(report.errors), len(report.warnings), len(report.notes)
    verdict = "FAILED" if n_err else "OK"
    notes = f", {n_note} note(s)" if n_note else ""
    print(f"check {cfg.shown}: {verdict}: {n_err} error(s), {n_warn} warning(s){notes}", file=out)
    return report


def check(cfg: Config, dry_run: bool = False, strict: bool = False, speed: Speed | None = None) -> None:
    """`make check`: exit non-zero on errors. `speed` gives the lines of time and cost printed before the verdict."""
    report = run_checks(cfg, dry_run=dry_run, strict=strict, speed=speed)
    if report.errors:
        raise WorkspaceError(
            f"{cfg.shown}: {len(report.errors)} error(s) found by `make check`; fix them and run again", EXIT_CHECK
        )


def preflight(
    cfg: Config, target: str, dry_run: bool = False, strict: bool = False, speed: Speed | None = None
) -> None:
    """What cache, train and generate run first: the same checks; stop on errors."""
    report = run_checks(cfg, dry_run=dry_run, strict=strict, out=sys.stderr, target=target, speed=speed)
    if report.errors:
        raise WorkspaceError(
            f"{cfg.shown}: `make {target}` stopped before starting: {len(report.errors)} error(s) above; fix them (`make check`) and run again",
            EXIT_CHECK,
        )
