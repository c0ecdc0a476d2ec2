"""The `ws` command behind the Makefile: argparse and a dispatch table only."""

from __future__ import annotations

import argparse
import os
import sys

from musubi_workspace.errors import WorkspaceError
from musubi_workspace.paths import Workspace
from musubi_workspace.runs.lock import held

# The values of a switch such as DRY_RUN. The Makefile knows the same sets (its GPU_STACK installs the GPU stack
# only for a "no"), so the two always agree; anything else is refused here before a thing runs.
YES = ("1", "true", "yes", "on")
NO = ("0", "false", "no", "off", "")


def _flag(value: str, var: str) -> bool:
    """A make switch (DRY_RUN, STRICT, FORCE, APPLY, ALLOW_CHANGES): 1/true/yes/on or 0/false/no/off/empty."""
    v = str(value).strip()
    if v in YES:
        return True
    if v in NO:
        return False
    raise WorkspaceError(
        f"{var}={value}: expected 1, true, yes or on to turn it on, or 0, false, no, off or empty to leave it off"
    )


def cmd_check(ws, a):
    from musubi_workspace.checks import check
    from musubi_workspace.config import load_config
    from musubi_workspace.runs.estimate import speed_lines

    check(
        load_config(ws, a.config),
        dry_run=_flag(a.dry_run, "DRY_RUN"),
        strict=_flag(a.strict, "STRICT"),
        speed=speed_lines,
    )


def cmd_cache(ws, a):
    from musubi_workspace.runs.targets import cache

    cache(ws, a.config, _flag(a.dry_run, "DRY_RUN"), strict=_flag(a.strict, "STRICT"), force=_flag(a.force, "FORCE"))


def cmd_train(ws, a):
    from musubi_workspace.runs.targets import train

    train(
        ws,
        a.config,
        _flag(a.dry_run, "DRY_RUN"),
        strict=_flag(a.strict, "STRICT"),
        auto_stop=a.auto_stop,
        restart=_flag(a.restart, "RESTART"),
    )


def cmd_resume(ws, a):
    from musubi_workspace.runs.targets import resume

    resume(ws, a.config, _flag(a.dry_run, "DRY_RUN"), strict=_flag(a.strict, "STRICT"), auto_stop=a.auto_stop)


def cmd_train_bg(ws, a):
    from musubi_workspace.runs.background import train_bg

    train_bg(
        ws,
        a.config,
        _flag(a.dry_run, "DRY_RUN"),
        strict=_flag(a.strict, "STRICT"),
        auto_stop=a.auto_stop,
        restart=_flag(a.restart, "RESTART"),
    )


def cmd_logs(ws, a):
    from musubi_workspace.runs.ledger import follow

    follow(ws)


def cmd_runs(ws, a):
    from musubi_workspace.runs.ledger import runs_table

    print("\n".join(runs_table(ws)))


def cmd_stop(ws, a):
    from musubi_workspace.environment import child_env
    from musubi_workspace.runs.pod import stop_now

    stop_now(ws, child_env(ws))


def cmd_cancel_stop(ws, a):
    from musubi_workspace.runs.pod import cancel_stop

    cancel_stop(ws)


def cmd_generate(ws, a):
    from musubi_workspace.runs.targets import generate

    generate(
        ws,
        a.config,
        _flag(a.dry_run, "DRY_RUN"),
        lora=a.lora,
        multiplier=a.multiplier,
        strict=_flag(a.strict, "STRICT"),
    )


def cmd_validate(ws, a):
    from musubi_workspace.runs.validate import validate

    validate(ws, a.config, _flag(a.dry_run, "DRY_RUN"), lora=a.lora)


def cmd_tune(ws, a):
    from musubi_workspace.config import load_config

    if _flag(a.dry_run, "DRY_RUN"):
        from musubi_workspace.tune.dry_run import show

        return show(ws, load_config(ws, a.config), "tune", apply_=_flag(a.apply, "APPLY"), **_tune_args(a))
    from musubi_workspace.tune import tune

    tune(
        ws,
        load_config(ws, a.config),
        _flag(a.apply, "APPLY"),
        only=a.only,
        steps=a.steps,
        allow_changes=_flag(a.allow_changes, "ALLOW_CHANGES"),
        memory=a.memory,
        gpus_per_run=a.gpus_per_run,
        continue_=_flag(a.continue_, "CONTINUE"),
        run_timeout=a.run_timeout,
    )


def cmd_bench(ws, a):
    from musubi_workspace.config import load_config

    if _flag(a.dry_run, "DRY_RUN"):
        from musubi_workspace.tune.dry_run import show

        return show(ws, load_config(ws, a.config), "bench", **_tune_args(a))
    from musubi_workspace.tune import bench

    bench(
        ws,
        load_config(ws, a.config),
        only=a.only,
        steps=a.steps,
        allow_changes=_flag(a.allow_changes, "ALLOW_CHANGES"),
        memory=a.memory,
        gpus_per_run=a.gpus_per_run,
        continue_=_flag(a.continue_, "CONTINUE"),
        run_timeout=a.run_timeout,
    )


def _tune_args(a) -> dict:
    """The make variables a dry run of tune/bench shows the search for (APPLY only decides what comes after it)."""
    return dict(
        only=a.only,
        steps=a.steps,
        allow_changes=_flag(a.allow_changes, "ALLOW_CHANGES"),
        memory=a.memory,
        gpus_per_run=a.gpus_per_run,
        continue_=_flag(a.continue_, "CONTINUE"),
        run_timeout=a.run_timeout,
    )


def cmd_bench_report(ws, a):
    from musubi_workspace.tune import bench_report

    bench_report(ws, a.files, out=a.out, allow_changes=_flag(a.allow_changes, "ALLOW_CHANGES"))


def cmd_smoke(ws, a):
    from musubi_workspace.smoke.loop import smoke

    smoke(ws, from_=a.from_step)


def cmd_new(ws, a):
    from musubi_workspace.versions import new_version

    new_version(ws, a.source)


def cmd_diff(ws, a):
    from musubi_workspace.versions import diff_versions

    print("\n".join(diff_versions(ws, a.a, a.b)))


def cmd_models(ws, a):
    from musubi_workspace.config import load_config
    from musubi_workspace.downloads import download

    download(load_config(ws, a.config), dry_run=_flag(a.dry_run, "DRY_RUN"))


def cmd_example(ws, a):
    from musubi_workspace.example import (
        FOLDER,
        VIDEO_FOLDER,
        make_example_dataset,
        make_validation_set,
        make_video_example,
    )

    for folder, make in (
        (FOLDER, make_example_dataset),
        ("validation", make_validation_set),  # validation/dataset.toml and its items
        (VIDEO_FOLDER, make_video_example),
    ):
        written = make(ws)
        print(
            f"{folder}: {len(written)} file(s) written" + ("" if written else " (already present; nothing overwritten)")
        )


def cmd_report(ws, a):
    from musubi_workspace.report import report

    report(ws, a.versions)


def cmd_schema(ws, a):
    from musubi_workspace.schema import DATA, SchemaError, write_schema

    try:
        out = write_schema(a.out or DATA)
    except SchemaError as e:
        raise WorkspaceError(f"the musubi-tuner schema cannot be built here: {e}") from None
    print(f"wrote {out}")


def cmd_monitor(ws, a):
    import shutil

    from musubi_workspace.environment import child_env

    env = child_env(ws)
    exe = shutil.which("nvitop", path=env["PATH"])
    if exe is None:
        raise WorkspaceError(
            "nvitop not found: it comes with the GPU stack; run `make monitor` on the pod (it installs the train extra)"
        )
    os.execve(exe, [exe, *a.args], env)


def cmd_lock(ws, a):
    from musubi_workspace.relock import relock

    relock(ws.root, snapshot=a.snapshot or None, rev=a.rev or None)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ws", description="musubi-workspace: the tool behind `make` (see `make help`).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, func, help_, config=False, dry_run=False, strict=False):
        sp = sub.add_parser(name, help=help_)
        if config:
            sp.add_argument("--config", default="", help="config.toml of the version (empty: the newest)")
        if dry_run:
            sp.add_argument("--dry-run", default="0", help="1: print the commands, run nothing")
        if strict:
            sp.add_argument("--strict", default="0", help="1: warnings count as errors")
        sp.set_defaults(func=func)
        return sp

    add("check", cmd_check, "check a version before a GPU run", config=True, dry_run=True, strict=True)
    c = add("cache", cmd_cache, "cache latents and text-encoder outputs", config=True, dry_run=True, strict=True)
    c.add_argument("--force", default="0", help="1: re-encode everything, whatever the manifest says")
    for name, func, help_ in (
        ("train", cmd_train, "train a LoRA; the pod stops afterwards"),
        ("resume", cmd_resume, "train the steps left from the newest saved state"),
        ("train-bg", cmd_train_bg, "train in a detached tmux session"),
    ):
        t = add(name, func, help_, config=True, dry_run=True, strict=True)
        t.add_argument(
            "--auto-stop", default="", help="grace period before the pod stops (0: off); empty: [workspace] auto_stop"
        )
        if name != "resume":
            t.add_argument(
                "--restart", default="0", help="1: move the earlier run's outputs into output_dir/earlier-<time>/ first"
            )
    add("logs", cmd_logs, "follow the newest run's log")
    add("runs", cmd_runs, "list every run as a table")
    add("stop", cmd_stop, "stop the RunPod pod now")
    add("cancel-stop", cmd_cancel_stop, "keep the pod: cancel a pending auto-stop")
    g = add("generate", cmd_generate, "render prompts.txt with a LoRA", config=True, dry_run=True, strict=True)
    g.add_argument("--lora", default="", help="LoRA file (default: the version's newest)")
    g.add_argument("--multiplier", default="", help="LoRA multiplier (default 1.0)")
    v = add("validate", cmd_validate, "score LoRAs on the validation set", config=True, dry_run=True, strict=True)
    v.add_argument("--lora", default="", help="a LoRA file, or all (default: the version's newest)")
    for name, func, help_ in (
        ("tune", cmd_tune, "measure memory/speed settings on the version's models and caches"),
        ("bench", cmd_bench, "measure them on a random DiT and synthetic caches"),
    ):
        t = add(name, func, help_, config=True, dry_run=True)
        t.add_argument(
            "--only", default="", help="settings to run, e.g. current,swap12,fp8+swap0 (default: the candidates)"
        )
        t.add_argument("--steps", default="", help="measured steps per setting after the warm-up (default 3)")
        t.add_argument("--allow-changes", default="0", help="1: may pick settings that change the numbers")
        t.add_argument(
            "--memory", default="", help="GPU memory a run may use, e.g. 80GB (decides 'fits' as on that card)"
        )
        t.add_argument("--gpus-per-run", default="", help="GPUs each run trains on; runs go side by side on the others")
        t.add_argument("--continue", dest="continue_", default="0", help="1: go on with the last unfinished session")
        t.add_argument("--run-timeout", default="", help='the most one run may take, e.g. "6m" (default 30m)')
        if name == "tune":
            t.add_argument("--apply", default="0", help="1: write the pick into a new version")
    sm = add("smoke", cmd_smoke, "the whole loop on random-weight models, offline, in a throw-away workspace")
    sm.add_argument(
        "--from",
        dest="from_step",
        default="",
        help="start at this step (name or number); the ones before passed last time",
    )
    br = add(
        "bench-report",
        cmd_bench_report,
        "merge bench records (bench/*.runs.json, runs/vN/bench-*/bench.json) into one table",
    )
    br.add_argument("files", nargs="*")
    br.add_argument(
        "--out", default="", help="a .runs.json to add the sessions to; its .md is rewritten (default: print)"
    )
    br.add_argument("--allow-changes", default="0", help="1: the pick may change the numbers")
    add("new", cmd_new, "copy a version to the next number").add_argument("--from", dest="source", default="")
    d = add("diff", cmd_diff, "compare two versions")
    d.add_argument("--a", default="")
    d.add_argument("--b", default="")
    add("models", cmd_models, "download the model files a config names", config=True, dry_run=True)
    add("example", cmd_example, "write the example dataset (missing files only)")
    add("monitor", cmd_monitor, "watch GPU use (nvitop)").add_argument("args", nargs="*")
    lk = add("lock", cmd_lock, "re-lock uv.lock (optionally moving the musubi-tuner pin)")
    lk.add_argument("--rev", default="")
    lk.add_argument("--snapshot", default="")
    add("report", cmd_report, "versions side by side: loss curves and sample grids").add_argument(
        "--versions", default=""
    )
    add("schema", cmd_schema, "regenerate the committed musubi-tuner option schema").add_argument("--out", default="")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    ws = Workspace.find()
    try:
        with held(argv):  # the run locks a command takes (runs/lock.py) end with it
            args.func(ws, args)
    except WorkspaceError as e:
        print(f"error: {e.message}", file=sys.stderr)
        if os.environ.get("WS_DEBUG") == "1":
            raise
        return e.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
