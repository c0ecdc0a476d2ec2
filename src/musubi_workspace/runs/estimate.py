"""Time and cost of a run before it starts, and a faster measured setting where there is one.

`make check` (after its verdict) and the start of `make train` say what the run will take on this GPU:
steps x s/step, from this version's own earlier runs with the same config.toml and dataset.toml on the same GPU
(runs/<version>/*/run.json) when there are any, else from the committed bench tables (bench/*.runs.json) for the
same GPU, workload shape and setting; plus the validation passes (`[workspace] validation`, from the same
s/step: `validation_cost`); plus sampling, saving and start-up as the earlier run spent them (its wall
time less its steps), scaled to this run's steps, or "not included" without an earlier run. Dollars are the total
at `[workspace] price_per_hour`. Each figure names its source; without a measurement it says so.

The recommendation compares the version's setting with the bench rows of the same GPU and workload shape: when
a row that fits and keeps the numbers (same weight precision and batch size) is more than 10% faster per sample
than the version's own row, one line says what to set, how much faster, and which table.
"""

from __future__ import annotations

import hashlib
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from musubi_workspace.config import Config
from musubi_workspace.errors import WorkspaceError
from musubi_workspace.runs.progress import duration
from musubi_workspace.tune.bench_tables import same_shape, tables_for, workload_of

# A measured setting must be this much faster (per sample) than the version's to be recommended.
RECOMMEND_ABOVE = 1.10
TRAIN_TARGETS = ("train", "resume")


@dataclass
class Estimate:
    gpu: str | None
    steps: int | None
    lines: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)


def _sha(path: Path | None) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() if path else None
    except OSError:
        return None


def earlier_runs(cfg: Config, gpu: str, gpus: int = 1) -> list[dict]:
    """This version's finished or running training runs on `gpus` GPUs named `gpu` with today's config.toml and
    dataset.toml (same sha256), newest first, that recorded a speed."""
    from musubi_workspace.runs.ledger import load_runs

    want = (_sha(cfg.path), _sha(cfg.path_of("dataset_config")))
    out = []
    for r in reversed(load_runs(cfg.ws)):
        if r.get("version") != cfg.name or r.get("target") not in TRAIN_TARGETS:
            continue
        files = r.get("files") or {}
        have = ((files.get("config") or {}).get("sha256"), (files.get("dataset") or {}).get("sha256"))
        seen = r.get("gpus") or {}
        if have != want or (seen.get("model") or "") != gpu or max(1, seen.get("count") or 1) != max(1, gpus):
            continue
        if (r.get("progress") or {}).get("seconds_per_step"):
            out.append(r)
    return out


def bench_rows(cfg: Config, gpu: str, gpus: int = 1):
    """(file, session, Result) of every bench row for `gpu` measured on this version's workload shape with the
    processes a run on `gpus` GPUs starts."""
    from musubi_workspace.commands import process_count
    from musubi_workspace.tune import Result

    shape = workload_of(cfg)
    rows = []
    for path, session in tables_for(cfg.ws.root, gpu, process_count(cfg, gpus)):
        if not same_shape(session.get("workload"), shape):
            continue
        for d in session.get("results", []):
            rows.append((path, session, Result.from_json(d)))
    return rows


def current_setting(cfg: Config):
    from musubi_workspace.tune import Setting, dataset_values

    _, batch, _ = dataset_values(cfg)
    return Setting.of(cfg, batch)


def estimate(cfg: Config, gpu: str | None, gpus: int = 1) -> Estimate:
    """The run's time and cost on `gpus` GPUs named `gpu` (None: no GPU visible)."""
    steps = cfg.get("max_train_steps")
    steps = steps if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0 else None
    est = Estimate(gpu=gpu, steps=steps)
    price = cfg.settings.price_per_hour
    est.data = {"gpu": gpu, "steps": steps, "price_per_hour": price}
    if gpu is None:
        est.lines.append("no GPU visible (nvidia-smi): no time or cost estimate")
        est.data["note"] = "no GPU"
        return est
    if steps is None:
        est.lines.append(f"{gpu}: no time estimate: max_train_steps is not set (epochs are not counted)")
        est.data["note"] = "no max_train_steps"
        return est
    earlier = earlier_runs(cfg, gpu, gpus)
    overhead, overhead_src = None, None
    if earlier:
        run = earlier[0]
        sps = float(run["progress"]["seconds_per_step"])
        source = f"this version's run {run.get('id')} ({gpu}, same config.toml and dataset.toml)"
        done = next(
            (
                r
                for r in earlier
                if r.get("status") == "succeeded"
                and r.get("duration_s") is not None
                and (r.get("progress") or {}).get("last_step")
            ),
            None,
        )
        if done is not None:
            p = done["progress"]
            extra = max(0.0, done["duration_s"] - p["last_step"] * float(p["seconds_per_step"]))
            overhead = extra * steps / p["last_step"]
            overhead_src = f"run {done.get('id')}: its wall time less its steps, scaled to {steps} steps"
    else:
        setting = current_setting(cfg)
        rows = [(path, s, r) for path, s, r in bench_rows(cfg, gpu, gpus) if r.setting == setting and r.s_per_step]
        if not rows:
            est.lines.append(
                f"no measurement for this GPU ({gpu}{f' x{gpus}' if gpus > 1 else ''}) and these settings (no "
                f"earlier run of this version, "
                f"no bench/ row): no time or cost estimate; `make bench` measures them"
            )
            est.data["note"] = "no measurement for this GPU"
            return est
        sps = statistics.median(r.s_per_step for _, _, r in rows)
        files = sorted({cfg.ws.rel(path) for path, _, _ in rows})
        source = f"{', '.join(files)} (`{rows[0][2].name}`, {len(rows)} measurement(s), random weights, no sampling or saving)"
    train_s = steps * sps
    validation = validation_cost(cfg, steps, sps, gpus)
    val_s = validation[0] if validation else 0.0
    total = train_s + val_s + (overhead or 0.0)
    usd = total / 3600 * price
    est.lines.append(f"training: {steps} steps x {sps:.2f} s/step = {duration(train_s)} (s/step from {source})")
    if validation:
        est.lines.append(validation[1])
    if overhead is not None:
        est.lines.append(f"sampling, saving and start-up: {duration(overhead)} ({overhead_src})")
    else:
        est.lines.append(
            "sampling, saving and start-up: not included (no finished earlier run of this version on this GPU to take them from)"
        )
    est.lines.append(
        f"estimate: {duration(total)}, ${usd:.2f} at ${price:g}/h ([workspace] price_per_hour)"
        + ("" if overhead is not None else f", training steps{' and validation' if validation else ''} only")
    )
    est.data.update(
        seconds_per_step=round(sps, 3),
        source=source,
        train_s=round(train_s),
        overhead_s=None if overhead is None else round(overhead),
        overhead_source=overhead_src,
        total_s=round(total),
        usd=round(usd, 2),
    )
    if validation:
        est.data["validation_s"] = round(val_s)
    return est


# A validation pass scores each item at each timestep with one forward of the DiT and no backward. A training step
# of `batch` items is taken as three forwards of each (the backward costs about two), so one item's forward is a
# third of its share of a step: s_per_step / (3 x batch). (Gradient checkpointing's recompute would make it a
# quarter; the third errs on the side of cost.)
FORWARD_SHARE = 1 / 3


def validation_cost(cfg: Config, steps: int, sps: float, gpus: int = 1) -> tuple[float, str] | None:
    """(seconds, line) of the run's validation passes (`[workspace] validation`), None without a set.

    Passes: step 0, then each step the trainer scores (validation/trainer.py): every validation_every_n_steps,
    each save (save_every_n_steps) and the last step, a step that is several of these scored once."""
    if not cfg.settings.validation:
        return None
    from musubi_workspace import dataset as dataset_model
    from musubi_workspace.commands import process_count, validation_every, validation_passes
    from musubi_workspace.tune import dataset_values

    try:
        f = dataset_model.read(cfg.ws, cfg.ws.resolve(cfg.settings.validation))
        items = sum(len(dataset_model.items(cfg.ws, d).items) for d in f.datasets)
        _, batch, _ = dataset_values(cfg)
    except WorkspaceError as e:
        return 0.0, f"validation: not included ({e.message})"
    every = validation_every(cfg)
    passes = validation_passes(cfg, steps)
    share = -(-items // process_count(cfg, gpus))  # each process scores its share of the items
    timesteps = len(cfg.settings.validation_timesteps)
    forwards = passes * share * timesteps
    per = sps * FORWARD_SHARE / max(1, batch)
    seconds = forwards * per
    cadence = f"every {every} steps, " if every else ""
    return seconds, (
        f"validation: {passes} passes (step 0, {cadence}each save, the end) x {share} item(s) x {timesteps} "
        f"timestep(s) = {forwards} forwards x {per:.3g} s = {duration(seconds)} (an item's forward taken as a third "
        f"of its share of a training step of batch {batch})"
    )


def recommendation(cfg: Config, gpu: str, gpus: int = 1) -> str | None:
    """One line when a bench row for `gpu` and this workload shape that fits and keeps the numbers is more than
    RECOMMEND_ABOVE faster per sample than the version's own row; None otherwise."""
    from musubi_workspace.tune import TUNED_KEYS, select, workspace_changes

    setting = current_setting(cfg)
    rows = bench_rows(cfg, gpu, gpus)
    own = [r for _, _, r in rows if r.setting == setting and r.s_per_sample]
    if not own:
        return None
    mine = statistics.median(r.s_per_sample for r in own)
    same = [(p, r) for p, _, r in rows if not r.setting.changes_numbers(setting) and r.setting != setting]
    best = select([r for _, r in same])
    if best is None or mine / best.s_per_sample <= RECOMMEND_ABOVE:
        return None
    path = next(p for p, r in same if r is best)
    old, new = setting.options(), best.setting.options()
    changes = [f"{k} = {_toml(new[k])}" for k in TUNED_KEYS if old[k] != new[k]]
    changes += [f"[workspace] {k} = {_toml(v)}" for k, v in workspace_changes(setting, best.setting).items()]
    return (
        f"{gpu}: `{best.name}` measured {mine / best.s_per_sample:.2f}x faster than this version's setting "
        f"({best.s_per_step:.2f} against {statistics.median(r.s_per_step for r in own):.2f} s/step, same numbers) "
        f"in {cfg.ws.rel(path)}: set {', '.join(changes)} in {cfg.shown}"
    )


def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return f'"{v}"' if isinstance(v, str) else str(v)


def visible_gpu_name(env: dict) -> str | None:
    """The name of the GPU a run uses first (CUDA_VISIBLE_DEVICES' first index, else the first), from `nvidia-smi -L`."""
    from musubi_workspace.gpus import gpu_names

    names = gpu_names(env)
    if not names:
        return None
    first = (env.get("CUDA_VISIBLE_DEVICES") or "").split(",")[0].strip()
    return names[int(first)] if first.isdigit() and int(first) < len(names) else names[0]


def speed_lines(cfg: Config, env: dict | None = None) -> list[str]:
    """What `make check` and `make train` print after the checks: the estimate, then a faster measured setting."""
    from musubi_workspace.environment import child_env
    from musubi_workspace.gpus import visible_gpu_count

    env = env if env is not None else child_env(cfg.ws)
    gpu, gpus = visible_gpu_name(env), visible_gpu_count(env)
    try:
        est = estimate(cfg, gpu, gpus)
        rec = recommendation(cfg, gpu, gpus) if gpu else None
    except WorkspaceError as e:
        return [f"time and cost: no estimate ({e.message})"]
    head = f"time and cost on {gpu}" if gpu else "time and cost"
    lines = [f"{head}: {est.lines[0]}", *(f"  {line}" for line in est.lines[1:])]
    if rec:
        lines.append(f"faster: {rec}")
    return lines
