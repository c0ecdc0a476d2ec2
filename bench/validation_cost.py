"""What the validation loss costs at the bench workload: the same training run without and with `WS_VALIDATION`.

Makes `make bench`'s synthetic inputs (tune.synthetic_inputs: the random-weight DiT and random one-frame caches of
the version's resolution in cache/bench/) and a held-out validation set of `--items` new synthetic caches of another
seed (not training items), in their own cache_directory, with a dataset.toml shaped as the shipped
validation/dataset.toml (its [general] and one-frame keys). Then runs the trainer as `make train` of the version runs
it (`accelerate launch ... -m musubi_workspace.launch`, commands.train_command: the version's setting, compile
included where it ships it) minus sampling, saving, upload and wandb, for `--steps` steps at the version's seed,
twice from the same config.toml: without validation, then with the launcher's WS_VALIDATION variables
(WS_VALIDATION_EVERY=`--every`). Each run is killed after `--timeout` seconds; what it logged until then is used.

Prints (and writes to `--out`, with a JSON beside it) s/step without and with, the seconds of each validation
pass (the records' `seconds`), the passes at the version's own cadence and their share of a whole run, the
training loss of every step of both runs ("equal": the with-run trains exactly as the run without), and the
step-0 numbers. Times are the tensorboard wall times of each step's log (after the step and its validation pass).

    python bench/validation_cost.py [--config configs/v1/config.toml] [--steps 8] [--items 8] [--every 2]
                                    [--timeout 240] [--out validation_cost.md]

On a GPU machine without uv: bench/image_python_env.sh first (see it). The suite runs it with the stand-ins
(tests/test_bench.py, tests/test_validation_cost.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.util import find_spec
from pathlib import Path
from types import SimpleNamespace

from musubi_workspace import dataset as dataset_model
from musubi_workspace.commands import process_count, train_command, validation_env, validation_every, validation_passes
from musubi_workspace.config import WORKSPACE_TABLE, Config
from musubi_workspace.environment import child_env
from musubi_workspace.errors import WorkspaceError
from musubi_workspace.gpus import visible_gpu_count
from musubi_workspace.paths import Workspace
from musubi_workspace.tune import (
    DROPPED_KEYS,
    DROPPED_PREFIXES,
    WARMUP_STEPS,
    Setting,
    dataset_values,
    kill_tree,
    require_one_frame,
    synthetic_inputs,
)
from musubi_workspace.tune.synthetic import Plan
from musubi_workspace.validation import items as vitems
from musubi_workspace.validation import records

NAME = "validation_cost"
# The validation caches' seed (the training caches are made with seed 0).
VALIDATION_SEED = 1


def derived_options(cfg: Config, dataset_path: Path, out_dir: Path, dit: str, steps: int, workspace: dict) -> dict:
    """The version's options as `make bench` derives them (no sampling, saving, upload, wandb), with tensorboard
    logging kept (the losses and times are read from it) and the version's [workspace] setting."""
    opts = {k: v for k, v in cfg.options.items() if k not in DROPPED_KEYS and not k.startswith(DROPPED_PREFIXES)}
    opts.update(
        dataset_config=str(dataset_path),
        output_dir=str(out_dir),
        output_name=NAME,
        max_train_steps=steps,
        dit=dit,
        log_with="tensorboard",
        logging_dir=str(out_dir / "logs"),
    )
    opts.setdefault("seed", 42)
    if str(opts.get("optimizer_type", "")).lower().endswith("8bit") and find_spec("bitsandbytes") is None:
        print(
            f"note: optimizer_type {opts['optimizer_type']} needs bitsandbytes, not installed here: both runs use "
            "AdamW (its state is 4x larger; the step times differ a little from the config's)",
            flush=True,
        )
        opts["optimizer_type"] = "AdamW"
    if workspace:
        opts[WORKSPACE_TABLE] = workspace
    return opts


def validation_dataset(ws: Workspace, cfg: Config, cache_dir: Path, image_dir: Path) -> dict:
    """The shipped set's dataset.toml (its [general] and one-frame keys) over the synthetic validation caches."""
    shipped = cfg.settings.validation
    general = {"resolution": list(dataset_values(cfg)[2]), "batch_size": 1, "enable_bucket": False}
    entry: dict = {}
    if shipped and ws.resolve(shipped).is_file():
        import tomllib

        data = tomllib.loads(ws.resolve(shipped).read_text(encoding="utf-8"))
        general.update(data.get("general") or {})
        entry.update({k: v for k, v in ((data.get("datasets") or [{}])[0]).items() if k.startswith("fp_")})
    else:
        entry.update(
            {k: v for k, v in (dataset_values(cfg)[0].get("datasets") or [{}])[0].items() if k.startswith("fp_")}
        )
    general["caption_extension"] = ".txt"
    entry.update(image_directory=str(image_dir), cache_directory=str(cache_dir))
    return {"general": general, "datasets": [entry]}


def shipped_items(ws: Workspace, cfg: Config) -> int | None:
    """The items of the version's own validation set ([workspace] validation), as `make check` lists them."""
    if not cfg.settings.validation:
        return None
    try:
        f = dataset_model.read(ws, ws.resolve(cfg.settings.validation))
        return sum(len(dataset_model.items(ws, d).items) for d in f.datasets)
    except WorkspaceError:
        return None


def default_passes(cfg: Config) -> tuple[int, int, int]:
    """(passes, max_train_steps, cadence) of a whole run of the version: step 0, then each step the trainer scores
    (every validation_every_n_steps, each save, the last step; a step that is several of these once)."""
    steps = int(cfg.get("max_train_steps") or 0)
    return validation_passes(cfg, steps), steps, validation_every(cfg)


def read_steps(logging_dir: Path) -> dict[int, tuple[float, float]]:
    """{step: (wall time, loss/current)} of the run's tensorboard files (the later value of a step logged twice)."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    out: dict[int, tuple[float, float]] = {}
    for folder in sorted({p.parent for p in logging_dir.rglob("events.out.tfevents.*") if p.is_file()}):
        acc = EventAccumulator(str(folder), size_guidance={SCALARS: 0})
        acc.Reload()
        if "loss/current" not in acc.Tags().get("scalars", []):
            continue
        for ev in sorted(acc.Scalars("loss/current"), key=lambda e: e.wall_time):
            out[int(ev.step)] = (float(ev.wall_time), float(ev.value))
    return dict(sorted(out.items()))


def intervals(steps: dict[int, tuple[float, float]]) -> dict[int, float]:
    """Seconds of step k (from step k-1's log to its own), for the steps after the warm-up step."""
    return {k: steps[k][0] - steps[k - 1][0] for k in steps if k > WARMUP_STEPS and k - 1 in steps}


def median(values) -> float | None:
    values = list(values)
    return statistics.median(values) if values else None


def run(argv: list[str], env: dict, cwd: Path, log: Path, timeout: int) -> tuple[str, float]:
    """One trainer run, its output to `log`; (status, seconds): ok, exit code N, or timeout (killed)."""
    t0 = time.time()
    with open(log, "w", encoding="utf-8") as f:
        f.write("$ " + " ".join(argv) + "\n")
        f.flush()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
        try:
            code = proc.wait(timeout=timeout)
            status = "ok" if code == 0 else f"exit code {code}"
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)  # accelerate and the trainer process it started
            proc.wait()
            status = f"timeout (killed after {timeout} s)"
    return status, time.time() - t0


def fmt(v, spec: str = ".2f", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def report(r: dict) -> str:
    """The markdown of the measurement `r` (the JSON written beside it)."""
    w, v = r["runs"]["without"], r["runs"]["with"]
    d = r["default_cadence"]
    lines = [
        f"# Validation cost: {r['config']} at the bench workload ({r['gpu'] or 'GPU unknown'})",
        "",
        f"- workload: batch {r['batch']} at {r['resolution'][0]}x{r['resolution'][1]}, one-frame, random-weight DiT and "
        f"synthetic caches (make bench's); setting: {r['setting']}; {r['steps']} steps at seed {r['seed']}, the first "
        f"{WARMUP_STEPS} step(s) a warm-up (not timed); optimizer {r['optimizer']}",
        f"- validation set: {r['items']} synthetic items of seed {VALIDATION_SEED} (not training items) x "
        f"{len(r['timesteps'])} timesteps {r['timesteps']}, every {r['every']} steps (WS_VALIDATION_EVERY); the "
        f"shipped set has {fmt(r['shipped_items'], 'd', '?')} items",
        f"- command (both runs): `{r['command']}`; the with-run adds {', '.join(sorted(r['validation_env']))}",
        f"- runs: without {w['status']} ({w['wall_s']:.0f} s), with {v['status']} ({v['wall_s']:.0f} s); their "
        f"output: {', '.join(r['logs'])}",
        "",
        "| | without validation | with validation |",
        "|---|---|---|",
        f"| s/step (median of the steps after warm-up without a pass) | {fmt(w['s_per_step'])} | "
        f"{fmt(v['s_per_step'])} |",
        f"| s/step (mean of the steps after warm-up, passes included) | {fmt(w['mean_s_per_step'])} | "
        f"{fmt(v['mean_s_per_step'])} |",
        f"| seconds per validation pass (median after step 0; step 0: {fmt(r['step0_seconds'], '.1f')}) | | "
        f"{fmt(r['pass_seconds'], '.1f')} |",
        f"| a pass's forward (one item at one timestep; estimate.py takes s/step / (3 x batch) = "
        f"{fmt(r['estimated_forward_s'], '.3f')} s) | | {fmt(r['forward_s'], '.3f')} s |",
        "",
        f"At the version's own cadence ({d['max_train_steps']} steps, validation every {d['every']} steps, each save "
        f"and the end): **{d['passes']} passes**; at {fmt(d['s_per_step'])} s/step and {fmt(d['pass_seconds'], '.1f')} "
        f"s per pass of {r['items']} items: {fmt(d['validation_s'], '.0f')} s of {fmt(d['total_s'], '.0f')} s, "
        f"**{fmt(d['share_pct'], '.2f')}%** of the run (goal: <= 3%); scaled to the shipped set's "
        f"{fmt(r['shipped_items'], 'd', '?')} items: {fmt(d['shipped_share_pct'], '.2f')}%.",
        "",
        f"Step 0 (the base model): loss {fmt(r['step0_loss'], '.6f')}, by timestep "
        + ", ".join(f"{t}: {x:.6f}" for t, x in (r["step0_by_timestep"] or {}).items())
        + f", {fmt(r['step0_seconds'], '.1f')} s.",
        "",
        f"Training loss, equal: **{r['losses_equal']}** (max |difference| {fmt(r['max_loss_difference'], '.3g')})",
        "",
        "| step | loss without | loss with | s without | s with | validation at this step (loss, s) |",
        "|---|---|---|---|---|---|",
    ]
    for k in r["step_table"]:
        val = f"{k['val_loss']:.6f}, {k['val_seconds']:.1f} s" if k["val_loss"] is not None else ""
        lines.append(
            f"| {k['step']} | {fmt(k['loss_without'], '.6f')} | {fmt(k['loss_with'], '.6f')} | "
            f"{fmt(k['s_without'])} | {fmt(k['s_with'])} | {val} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/v1/config.toml", help="the version (its config.toml)")
    p.add_argument("--steps", type=int, default=8, help="training steps of each run")
    p.add_argument("--items", type=int, default=8, help="items of the synthetic validation set")
    p.add_argument("--every", type=int, default=2, help="WS_VALIDATION_EVERY of the with-run")
    p.add_argument("--timeout", type=int, default=240, help="seconds after which each trainer run is killed")
    p.add_argument("--out", default=f"{NAME}.md", help="the markdown report (a .json beside it)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (configs, outputs, logs)")
    a = p.parse_args()
    if a.steps <= WARMUP_STEPS + 1 or a.items < 1 or a.every < 1 or a.timeout < 1:
        p.error(f"--steps must be more than {WARMUP_STEPS + 1}; --items, --every and --timeout at least 1")
    try:
        return measure(a)
    except WorkspaceError as e:
        print(f"validation_cost: {e.message}", file=sys.stderr)
        return 2


def measure(a) -> int:
    import tomlkit

    ws = Workspace.find()
    cfg = Config.load(ws, ws.resolve(a.config))
    require_one_frame(cfg)
    out = Path(a.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    env = child_env(ws)
    env.update(WANDB_MODE="disabled", HF_HUB_OFFLINE="1")
    gpus = visible_gpu_count(env)
    processes = process_count(cfg, gpus)
    _, batch, resolution = dataset_values(cfg)
    base = Setting.of(cfg, batch)

    # make bench's inputs: batch x processes x steps training items (a new batch every step), the random DiT.
    sess = SimpleNamespace(ws=ws, cfg=cfg, processes=processes, steps=a.steps - WARMUP_STEPS, base=base, continued={})
    plan = synthetic_inputs(sess, ["current"])
    val_plan = Plan(folder=plan.folder, layout=plan.layout, items=a.items, seed=VALIDATION_SEED)
    for argv in (plan.argv(), val_plan.argv() + ["--caches-only"]):
        print(f"==> synthetic inputs: {' '.join(argv)}", flush=True)
        code = subprocess.call(argv, cwd=ws.root, env=env)
        if code != 0:
            raise WorkspaceError(f"making the synthetic inputs failed with exit code {code}: {' '.join(argv)}")

    work = Path(tempfile.mkdtemp(prefix="ws-validation-cost-"))
    try:
        dataset_path = work / "dataset.toml"
        dataset_path.write_text(tomlkit.dumps(sess.dataset), encoding="utf-8")
        val_path = work / "validation.toml"
        val_path.write_text(
            tomlkit.dumps(validation_dataset(ws, cfg, val_plan.cache_dir, val_plan.image_dir)), encoding="utf-8"
        )
        output = work / "output"
        opts = derived_options(cfg, dataset_path, output, sess.dit, a.steps, base.workspace())
        config_path = work / "config.toml"
        config_path.write_text(tomlkit.dumps(opts), encoding="utf-8")
        run_cfg = Config.load(ws, config_path)
        cmd = train_command(run_cfg, gpus, env=env)
        # The launcher's variables as `make train` sets them, from the same options with [workspace] validation.
        with_opts = dict(opts)
        with_opts[WORKSPACE_TABLE] = {
            **opts.get(WORKSPACE_TABLE, {}),
            "validation": str(val_path),
            "validation_every_n_steps": a.every,
        }
        if cfg.settings.validation_timesteps:
            with_opts[WORKSPACE_TABLE]["validation_timesteps"] = list(cfg.settings.validation_timesteps)
        with_path = work / "config_validation.toml"
        with_path.write_text(tomlkit.dumps(with_opts), encoding="utf-8")
        val_env = validation_env(Config.load(ws, with_path), vitems.set_hash(ws, val_path))
        print(f"==> both runs: {' '.join(cmd.argv)}", flush=True)
        print(f"    with validation, also: {' '.join(f'{k}={v}' for k, v in val_env.items())}", flush=True)

        runs: dict[str, dict] = {}
        for label, extra in (("without", {}), ("with", val_env)):
            run_env = {**env, **cmd.env, **extra, "TORCHINDUCTOR_CACHE_DIR": str(work / "inductor")}
            log = out.with_name(f"{out.stem}.{label}.log")
            print(f"==> {label} validation: {a.steps} steps (log: {log}) ...", end="", flush=True)
            status, wall = run(cmd.argv, run_env, ws.root, log, a.timeout)
            print(f" {status}, {wall:.0f} s", flush=True)
            kept = work / f"output-{label}"
            if output.exists():
                output.rename(kept)
            kept.mkdir(exist_ok=True)
            steps = read_steps(kept / "logs")
            runs[label] = {
                "status": status,
                "wall_s": round(wall, 1),
                "steps": steps,
                "records": records.read_series(kept, NAME) if label == "with" else [],
                "optimizer": str(opts.get("optimizer_type") or "?"),
                "log": log.name,
            }
        result = summarise(a, ws, cfg, runs, cmd, val_env, batch, resolution, base)
    finally:
        if a.keep:
            print(f"kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    text = report(result)
    out.write_text(text, encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print()
    print(text)
    print(f"Report: {out} and {out.with_suffix('.json')}")
    return 0 if all(r["status"] == "ok" for r in runs.values()) else 1


def summarise(a, ws, cfg, runs, cmd, val_env, batch, resolution, base) -> dict:
    w, v = runs["without"], runs["with"]
    recs = {r.step: r for r in v["records"] if r.by == records.BY_TRAINING}
    iw, iv = intervals(w["steps"]), intervals(v["steps"])
    later = [r.seconds for s, r in recs.items() if s > 0 and r.seconds is not None]
    pass_s = median(later)
    step0 = recs.get(0)
    timesteps = (
        list(step0.timesteps)
        if step0
        else [float(t) for t in val_env.get("WS_VALIDATION_TIMESTEPS", "").split(",") if t]
    )
    sps = median(iw.values())
    passes, total_steps, every = default_passes(cfg)
    shipped = shipped_items(ws, cfg)
    d = {"passes": passes, "max_train_steps": total_steps, "every": every, "s_per_step": sps, "pass_seconds": pass_s}
    for key, scale in (("", 1.0), ("shipped_", (shipped or 0) / a.items)):
        if sps is not None and pass_s is not None and (scale or not key):
            val_s = passes * pass_s * scale
            total = total_steps * sps + val_s
            d[f"{key}validation_s"], d[f"{key}total_s"] = val_s, total
            d[f"{key}share_pct"] = 100 * val_s / total if total else None
        else:
            d[f"{key}validation_s"] = d[f"{key}total_s"] = d[f"{key}share_pct"] = None
    both = sorted(set(w["steps"]) & set(v["steps"]))
    diffs = [abs(w["steps"][k][1] - v["steps"][k][1]) for k in both]
    if not both:
        equal = "no steps to compare"
    elif diffs and max(diffs) == 0 and set(w["steps"]) == set(v["steps"]):
        equal = "yes"
    elif max(diffs) == 0:
        equal = f"yes for the {len(both)} steps both logged"
    else:
        equal = "no"
    table = []
    for k in sorted(set(w["steps"]) | set(v["steps"]) | {s for s in recs if s > 0}):
        r = recs.get(k)
        table.append(
            {
                "step": k,
                "loss_without": w["steps"].get(k, (None, None))[1],
                "loss_with": v["steps"].get(k, (None, None))[1],
                "s_without": iw.get(k),
                "s_with": iv.get(k),
                "val_loss": r.loss if r else None,
                "val_seconds": r.seconds if r else None,
            }
        )
    forward = pass_s / (a.items * len(timesteps)) if pass_s is not None and timesteps else None
    return {
        "config": ws.rel(cfg.path),
        "gpu": os.environ.get("WS_GPU_NAME") or _gpu_name(),
        "batch": batch,
        "resolution": list(resolution),
        "setting": base.describe(),
        "optimizer": _optimizer(runs),
        "steps": a.steps,
        "seed": cfg.get("seed") if cfg.get("seed") is not None else 42,
        "items": a.items,
        "every": a.every,
        "timeout": a.timeout,
        "timesteps": timesteps,
        "shipped_items": shipped,
        "command": " ".join(cmd.argv),
        "env": cmd.env,
        "validation_env": val_env,
        "logs": [r["log"] for r in runs.values()],
        "runs": {
            label: {
                "status": r["status"],
                "wall_s": r["wall_s"],
                "s_per_step": median(iw.values())
                if label == "without"
                else median(s for k, s in iv.items() if k not in recs),
                "mean_s_per_step": (
                    statistics.fmean((iw if label == "without" else iv).values())
                    if (iw if label == "without" else iv)
                    else None
                ),
                "losses": {str(k): x for k, (_, x) in r["steps"].items()},
            }
            for label, r in runs.items()
        },
        "pass_seconds": pass_s,
        "forward_s": forward,
        "estimated_forward_s": sps / (3 * batch) if sps is not None else None,
        "passes_measured": {str(s): r.seconds for s, r in sorted(recs.items())},
        "step0_loss": step0.loss if step0 else None,
        "step0_by_timestep": step0.by_timestep if step0 else None,
        "step0_seconds": step0.seconds if step0 else None,
        "default_cadence": d,
        "losses_equal": equal,
        "max_loss_difference": max(diffs) if diffs else None,
        "step_table": table,
        "time": records.utc_now(),
    }


def _optimizer(runs) -> str:
    return next((r["optimizer"] for r in runs.values() if r.get("optimizer")), "?")


def _gpu_name() -> str:
    from musubi_workspace.gpus import visible_gpu

    gpu = visible_gpu(dict(os.environ))
    return gpu[0] if gpu else ""


if __name__ == "__main__":
    sys.exit(main())
