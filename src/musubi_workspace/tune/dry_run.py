"""`make tune DRY_RUN=1` and `make bench DRY_RUN=1`: the search as it would run, on any machine, with nothing
installed, downloaded, made or run.

It prints, in order: the synthetic inputs `make bench` would make (files and sizes), every candidate in the
order the search starts them, each with its whole command and environment (as `Session.prepare` builds them for
the real run, from derived configs written to a temporary folder that is removed again), what decides the rest of
the search at run time (the stop rules, the plan when `current` does not fit, the combined setting), and the
estimated time from the committed bench tables of the visible GPU. What needs musubi-tuner or torch (the random
DiT's parameter count, which attention packages import on the pod) is named as "at run time".
"""

from __future__ import annotations

import math
import statistics
import tempfile
from pathlib import Path

from musubi_workspace import tune as t
from musubi_workspace.config import Config
from musubi_workspace.environment import child_env, pasteable
from musubi_workspace.paths import Workspace
from musubi_workspace.runs.progress import duration

SCRATCH = "<scratch>"
DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "int64": 8, "bool": 1}
STOPS = {
    "misfit": "the rest of this axis is skipped after the first that does not fit",
    "fit": "the rest of this axis is skipped after the first that fits",
}


def show(
    ws: Workspace,
    cfg: Config,
    kind: str,
    apply_: bool = False,
    only: str = "",
    steps: str = "",
    allow_changes: bool = False,
    memory: str = "",
    gpus_per_run: str = "",
    continue_: bool = False,
    run_timeout: str = "",
) -> None:
    """The whole dry run of `kind` ("tune" or "bench"); the same bad-input errors as the real run."""
    from musubi_workspace.checks import preflight
    from musubi_workspace.commands import process_count
    from musubi_workspace.gpus import visible_gpu_count
    from musubi_workspace.runs import lock
    from musubi_workspace.runs.estimate import visible_gpu_name

    # as the real runs take them (tune: the version and its caches; bench: the version, shared): a warning only
    if kind == "tune":
        lock.take(cfg, "tune", lock.cache_locks(cfg, lock.SHARED), dry_run=True)
    else:
        lock.take(cfg, "bench", version_mode=lock.SHARED, dry_run=True)
        t.require_one_frame(cfg)
    cap = t.parse_memory(memory)
    n_steps, timeout, names = t._steps(steps), t._run_timeout(run_timeout), t._only(only)
    if kind == "tune":
        preflight(cfg, target="tune", dry_run=True)
    env = child_env(ws)
    env.update(WANDB_MODE="disabled", HF_HUB_OFFLINE="1")
    slots = t.gpu_slots(env, gpus_per_run)
    data, batch, _ = t.dataset_values(cfg)
    with tempfile.TemporaryDirectory(prefix=f"ws-{kind}-dry-run-") as scratch:
        sess = t.Session(
            ws=ws,
            cfg=cfg,
            base=t.Setting.of(cfg, batch),
            dataset=data,
            steps=n_steps,
            folder=ws.runs / cfg.name / f"{kind}-<time>",
            scratch=Path(scratch),
            env=env,
            memory_cap=cap,
            processes=process_count(cfg, visible_gpu_count(env)) if slots[0] is None else slots[0].count(",") + 1,
            kind=kind,
            slots=slots,
            run_timeout=timeout,
        )
        print(f"make {kind} DRY_RUN=1: {cfg.shown}; nothing is installed, made or run", flush=True)
        if kind == "bench":
            _synthetic(sess, names)
        else:
            _caches(sess)
        queue = _queue(sess, names)
        _candidates(sess, queue, names)
    gpu = visible_gpu_name(env)
    _estimate(sess, [s for _, s in queue], gpu, bool(names))
    if continue_:
        print(
            "CONTINUE=1: the settings the newest unfinished session measured are taken from its record, not run "
            "again (which ones: at run time)"
        )
    if kind == "tune" and apply_:
        print("APPLY=1: at the end the fastest setting that fits is written into a new version (`make new`)")
    pick = "may change the numbers (ALLOW_CHANGES=1)" if allow_changes else "keeps the numbers"
    print(f"the pick: the fastest per sample that fits and {pick}; results in {ws.rel(sess.folder)}/")


def _synthetic(sess: t.Session, names: list[str]) -> None:
    """What `make bench` makes first (synthetic.Plan), with sizes from the layout's shapes."""
    plan = t.synthetic_inputs(sess, names)
    ws, lo = sess.ws, plan.layout
    latent = sum(_bytes(shape, dtype) for shape, dtype in lo.latent_tensors().values())
    te = sum(_bytes(shape, dtype) for shape, dtype in lo.te_tensors().values())
    first_latent, first_te = lo.file_names(0)
    print(f"synthetic inputs in {ws.rel(plan.folder)}/ (torch and musubi-tuner make them at run time):")
    dit_state = "there, reused" if plan.is_ready(caches=False) else "made at run time"
    print(
        f"  {ws.rel(plan.dit)}: a random-weight FramePack DiT in bf16, of musubi-tuner's model class (its parameter "
        f"count and size: at run time); {dit_state}"
    )
    cache_state = "there, reused" if plan.is_ready(caches=True) else "made at run time"
    print(
        f"  {ws.rel(plan.cache_dir)}/: {plan.items} latent caches ({first_latent}, ...; {_mb(latent)} each) and "
        f"{plan.items} text-encoder caches ({first_te}, ...; {_mb(te)} each), {_mb(plan.items * (latent + te))} "
        f"of tensors in all, {lo.width}x{lo.height}; {cache_state}"
    )
    print(f"  {ws.rel(plan.image_dir)}/: an empty image folder (the dataset's source; training reads only the caches)")
    line, _ = pasteable(plan.argv(), sess.env)
    print(f"  made by: {line}")


def _caches(sess: t.Session) -> None:
    """`make tune` trains on the version's caches: say which are missing (the real run stops there)."""
    for d in sess.dataset.get("datasets", []):
        folder = d.get("cache_directory") or d.get("image_directory") or d.get("video_directory")
        if folder and not list(sess.ws.resolve(folder).glob("*_fp.safetensors")):
            print(f"warning: no caches in {folder} yet: `make tune` stops there; run `make cache` first")


def _queue(sess: t.Session, names: list[str]) -> list[tuple[str, t.Setting]]:
    """The candidates in the order `run_all` starts them when `current` fits (none measured before)."""
    if names:
        pairs = [("ONLY", t.parse_name(n, sess.base)) for n in names]
    else:
        plan = t.axes(sess.base, t.available_attention(), current_fits=True)
        pairs = [("current", sess.base)] + [(a.name, s) for a in plan for s in a.settings]
    out, seen = [], set()
    for axis, s in pairs:
        if s not in seen:
            seen.add(s)
            out.append((axis, s))
    return out


def _candidates(sess: t.Session, queue: list[tuple[str, t.Setting]], names: list[str]) -> None:
    total = len(queue) + (0 if names else 1)
    side = sess.side_by_side
    where = f"{len(sess.slots)} side by side (GPUS_PER_RUN), each on the next free GPUs" if side else "one at a time"
    print(f"candidates, in order ({where}; {sess.steps} measured step(s) after {t.WARMUP_STEPS} warm-up each):")
    stops = {} if names else {a.name: a.stop for a in t.axes(sess.base, t.available_attention())}
    for i, (axis, s) in enumerate(queue, 1):
        slot = sess.slots[(i - 1) % len(sess.slots)]
        _, _, cmd, env = sess.prepare(s, slot)
        line, _ = pasteable(cmd.argv, env)
        rule = f"; {STOPS[stops[axis]]}" if stops.get(axis) else ""
        print(f"[{i}/{total}] {s.name(sess.base)} ({axis}{rule}): {s.describe()}")
        print(f"    {line.replace(str(sess.scratch), SCRATCH)}")
    if names:
        print(f"{SCRATCH}: the session's temporary folder (derived config.toml and dataset.toml per candidate)")
        return
    print(
        f"[{total}/{total}] combined: every axis' improvement together, known at run time (not run when a measured "
        f"setting trains the same)"
    )
    print(f"{SCRATCH}: the session's temporary folder (derived config.toml and dataset.toml per candidate)")
    misfit = [a for a in t.axes(sess.base, t.available_attention(), current_fits=False) if a.name == "blocks_to_swap"]
    ups = ", ".join(s.name(sess.base) for s in misfit[0].settings) if misfit else ""
    print(
        "at run time: when `current` does not fit, block swap goes up instead"
        + (f" ({ups}; the first that fits ends it)" if ups else "")
        + "; training attention backends: the ones whose package imports on the pod (here: "
        + ", ".join(t.available_attention())
        + ")"
    )


def _estimate(sess: t.Session, settings: list[t.Setting], gpu: str | None, only: bool) -> None:
    """The search's time: each candidate's wall time as the committed bench tables measured it on this GPU and
    workload shape; the rest bounded by RUN_TIMEOUT."""
    from musubi_workspace.runs.estimate import bench_rows

    n = len(settings) + (0 if only else 1)
    bound = f"at most {n} run(s) x RUN_TIMEOUT {duration(sess.run_timeout)} = {duration(n * sess.run_timeout)}"
    if not gpu:
        print(f"estimated time: no GPU visible here (nvidia-smi), so no measurement to go by; {bound}")
        return
    rows = [r for _, _, r in bench_rows(sess.cfg, gpu, sess.processes) if r.wall_s]
    walls = {s: [r.wall_s for r in rows if r.setting == s] for s in settings}
    known = {s: statistics.median(w) for s, w in walls.items() if w}
    if not known:
        print(f"estimated time on {gpu}: no bench/ row of these settings and this workload shape; {bound}")
        return
    total = sum(known.values())
    left = n - len(known)
    parallel = f", about {duration(total / len(sess.slots))} side by side" if sess.side_by_side else ""
    rest = f"; {left} more without a measurement, each at most {duration(sess.run_timeout)}" if left else ""
    print(
        f"estimated time on {gpu}: {duration(total)} for the {len(known)} candidate(s) the bench tables measured "
        f"(their wall time there){parallel}{rest}"
    )


def _bytes(shape: tuple[int, ...], dtype: str) -> int:
    return math.prod(shape) * DTYPE_BYTES[dtype]


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
