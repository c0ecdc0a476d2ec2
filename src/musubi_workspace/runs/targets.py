"""The three GPU targets: cache, train, generate (and resume). Each loads the version once, checks it, builds
its commands and either shows them (DRY_RUN) or runs them with a run record (`runs.py`). Training is followed
by the pod's auto-stop (`pod.py`), however it ends."""

from __future__ import annotations

import sys

from musubi_workspace.checks import preflight
from musubi_workspace.checks.combinations import compile_env
from musubi_workspace.commands import generate_command, generate_folder, newest_lora, train_command
from musubi_workspace.config import Config, load_config
from musubi_workspace.environment import child_env, secret_values
from musubi_workspace.errors import WorkspaceError
from musubi_workspace.gpus import visible_gpu_count
from musubi_workspace.paths import Workspace
from musubi_workspace.runs import cache_plan, lock, outputs, process
from musubi_workspace.runs.console import say
from musubi_workspace.runs.estimate import speed_lines
from musubi_workspace.runs.ledger import RunRecord
from musubi_workspace.runs.pod import AutoStop, grace_seconds
from musubi_workspace.runs.progress import Progress, duration


def cache(ws: Workspace, config: str, dry_run: bool, strict: bool = False, force: bool = False) -> None:
    """Only the scripts with stale or missing files run; each one's manifest entries are written after it."""
    cfg = load_config(ws, config)
    lock.take(cfg, "cache", lock.cache_locks(cfg, lock.EXCLUSIVE), dry_run)
    preflight(cfg, target="cache", dry_run=dry_run, strict=strict)
    plans = cache_plan.plans(cfg, force=force)  # the training data, then the validation set
    for plan in plans:
        plan.report()
    steps = [(plan, side, cmd) for plan in plans for side, cmd in plan.steps()]
    if dry_run:
        return process.show([cmd for _, _, cmd in steps], child_env(ws))
    for plan in plans:
        plan.prepare()
    if steps:
        of = {id(cmd): (plan, side) for plan, side, cmd in steps}
        result = recorded_run(
            cfg,
            "cache",
            [cmd for _, _, cmd in steps],
            child_env(ws),
            on_success=lambda cmd: of[id(cmd)][0].commit(of[id(cmd)][1]),
        )
        _raise_unless_ok(result)
    for plan in plans:
        plan.finish()


def train(
    ws: Workspace, config: str, dry_run: bool, strict: bool = False, auto_stop: str = "", restart: bool = False
) -> None:
    """RESTART=1 moves the earlier run's outputs aside (outputs.py) just before the trainer starts; without it,
    outputs of this output_name stop the run (a dry run too: it says what the run would do)."""
    cfg = load_config(ws, config)
    lock.take(cfg, "train", lock.cache_locks(cfg, lock.SHARED), dry_run)
    grace_seconds(auto_stop, cfg.settings.auto_stop)  # AUTO_STOP=banana is refused in a dry run too
    outputs.refuse_if_running(cfg) if restart else outputs.refuse_if_taken(cfg)
    preflight(cfg, target="train", dry_run=dry_run, strict=strict, speed=speed_lines)
    cache_plan.require_fresh(cfg, dry_run)
    env = child_env(ws)
    env.update(compile_env(cfg, env))
    cmd = train_command(cfg, visible_gpu_count(env), env=env, validation_set=validation_set(cfg))
    if dry_run:
        if restart:
            outputs.show_restart(cfg)
        return process.show([cmd], env)
    moved = outputs.move_aside(cfg, say=say) if restart else None
    train_run(
        cfg, "train", cmd, env, auto_stop, estimate=run_estimate(cfg, env), **({"restart": moved} if moved else {})
    )


def generate(
    ws: Workspace, config: str, dry_run: bool, lora: str = "", multiplier: str = "", strict: bool = False
) -> None:
    cfg = load_config(ws, config)
    lock.take(cfg, "generate", dry_run=dry_run)  # it reads no cache folder
    preflight(cfg, target="generate", dry_run=dry_run, strict=strict)
    try:
        mult = float(multiplier) if multiplier else 1.0
    except ValueError:
        raise WorkspaceError(f"MULTIPLIER={multiplier}: expected a number such as 0.8 or 1.0") from None
    folder = None
    if not lora:
        newest = newest_lora(cfg)
        out = cfg.get("output_dir") or "output_dir"
        if newest is None and not dry_run:
            raise WorkspaceError(
                f"{cfg.shown}: no LoRA of `{cfg.get('output_name')}` in {out} yet; train first (`make train`) or pass LORA=path/to/lora.safetensors"
            )
        if newest is None:  # the dry run of the laptop loop, before `make train`: the LoRA named as at run time
            lora = f"<the newest LoRA of {cfg.get('output_name')} in {out} at run time>"
            folder = generate_folder(cfg, "<its name>", mult)
            print(
                f"LORA not set and no LoRA of `{cfg.get('output_name')}` in {out} yet: the run takes the newest one "
                f"there at run time (after `make train`); LORA=path/to/lora.safetensors picks one",
                file=sys.stderr,
            )
        else:
            lora = ws.rel(newest)
            print(f"LORA not set: using {lora} (the newest of this version)", file=sys.stderr)
    elif lora == "best":
        lora = best_lora(cfg)
    else:
        lora_problem(ws, lora)  # in a dry run too: a missing LoRA is no matter of the machine
    cmd = generate_command(cfg, lora, mult, folder=folder)
    if dry_run:
        return process.show([cmd], child_env(ws))
    _raise_unless_ok(recorded_run(cfg, "generate", [cmd], child_env(ws)))


def resume(ws: Workspace, config: str, dry_run: bool, strict: bool = False, auto_stop: str = "") -> None:
    """`make resume`: train the steps left from the newest saved state (see resume.py)."""
    from musubi_workspace.runs import resume as resuming

    cfg = load_config(ws, config)
    lock.take(cfg, "resume", lock.cache_locks(cfg, lock.SHARED), dry_run)
    grace_seconds(auto_stop, cfg.settings.auto_stop)
    outputs.warn_if_changed(cfg, warn=lambda m: print(m, file=sys.stderr))
    preflight(cfg, target="resume", dry_run=dry_run, strict=strict, speed=speed_lines)
    cache_plan.require_fresh(cfg, dry_run, target="resume")
    env = child_env(ws)
    env.update(compile_env(cfg, env))
    point = resuming.find(cfg, env, warn=lambda m: print(m, file=sys.stderr))
    for line in point.describe():
        print(line, flush=True)
    cmd = train_command(cfg, visible_gpu_count(env), extra=point.args(), env=env, validation_set=validation_set(cfg))
    if dry_run:
        return process.show([cmd], env)
    train_run(cfg, "resume", cmd, env, auto_stop, offset=point.state.step, resume=point.record())


def validation_set(cfg: Config) -> str | None:
    """The content hash of the version's validation set (`[workspace] validation`), None without one."""
    if not cfg.settings.validation:
        return None
    from musubi_workspace.validation.items import set_hash

    return set_hash(cfg.ws, cfg.ws.resolve(cfg.settings.validation))


def best_lora(cfg: Config) -> str:
    """LORA=best: the version's LoRA with the lowest validation loss (the JSON beside each, validation/scored.py)."""
    from musubi_workspace.validation import scored

    found = scored.best(cfg)
    if found is None:
        out = cfg.get("output_dir") or "output_dir"
        raise WorkspaceError(
            f"LORA=best: no LoRA of {cfg.name} in {out} has a validation loss yet (a <name>.validation.json beside "
            f"it); run `make validate CONFIG_FILE={cfg.name} LORA=all` first"
        )
    c = found.chosen
    lora = cfg.ws.rel(c.path)
    others = f"; {found.others} scored on another validation set left out" if found.others else ""
    print(
        f"LORA=best: using {lora} (validation loss {c.record.loss:.4g} at step {c.step}, the lowest of "
        f"{found.scored} scored LoRA(s) of {cfg.name}{others})",
        file=sys.stderr,
    )
    return lora


def run_estimate(cfg: Config, env: dict[str, str]) -> dict:
    """The time and cost estimate the preflight printed (estimate.py beside this file), for run.json, beside the actual."""
    from musubi_workspace.gpus import visible_gpu_count
    from musubi_workspace.runs.estimate import estimate, visible_gpu_name

    try:
        return estimate(cfg, visible_gpu_name(env), visible_gpu_count(env)).data
    except WorkspaceError as e:
        return {"note": e.message}


def lora_problem(ws: Workspace, lora: str) -> None:
    """LORA=: a file that exists and, as a .safetensors, reads as one (a saved error page does not)."""
    from musubi_workspace.model_files import safetensors_problem

    path = ws.resolve(lora)
    if path.is_dir():
        raise WorkspaceError(
            f"LORA={lora}: is a folder; give the LoRA file, e.g. LORA={ws.rel(path)}/<name>.safetensors"
        )
    if not path.is_file():
        raise WorkspaceError(
            f"LORA={lora}: file not found; give the path of a LoRA file (relative to the workspace root)"
        )
    if path.suffix == ".safetensors" and (problem := safetensors_problem(path)):
        raise WorkspaceError(f"LORA={lora}: {problem}")


def recorded_run(
    cfg: Config,
    target: str,
    cmds,
    env: dict[str, str],
    offset: int = 0,
    hang_timeout: int = 0,
    on_success=None,
    **extra,
) -> tuple[RunRecord, process.Outcome]:
    """Run with a record in runs/<version>/: written at the start, completed at the end, log tee'd."""
    rec = RunRecord.start(cfg, target, cmds, env, secret_values(env), **extra)
    lock.note_log(cfg.ws, rec.log_path)
    say(f"==> run record: {cfg.ws.rel(rec.folder)} (`make runs` lists runs, `make logs` follows this one)")
    outcome = process.Outcome("failed", note="the workspace tool failed")
    try:
        outcome = process.execute(
            cfg.ws,
            cmds,
            env,
            record=rec,
            progress=Progress(offset=offset),
            hang_timeout=hang_timeout,
            on_success=on_success,
        )
    finally:
        rec.finish(outcome.status, outcome.exit_code, outcome.progress)
    p = outcome.progress
    at = (
        f" at step {p.step}/{p.total}" + (f", loss {p.loss:.4g}" if p.loss is not None else "")
        if p.step is not None
        else ""
    )
    say(
        f"==> {target} {outcome.status} after {duration(rec.data['duration_s'])}{at}; est. cost ${rec.data['cost_usd']:.2f}; record: {cfg.ws.rel(rec.folder)}"
    )
    return rec, outcome


def _raise_unless_ok(result: tuple[RunRecord, process.Outcome]) -> None:
    if not result[1].ok:
        raise result[1].error()


def train_run(
    cfg: Config, target: str, cmd, env: dict[str, str], auto_stop: str = "", offset: int = 0, **extra
) -> None:
    """A training run: the record, the hang watchdog, the run record on Hugging Face, then the pod's stop,
    whatever happened before (a failure, a kill, Ctrl-C, even a bug here)."""
    stop = AutoStop.arm(cfg.ws, env, auto_stop, cfg.settings.auto_stop)
    say(stop.describe())
    rec, outcome = None, None
    try:
        output_name = (extra.get("resume") or {}).get("output_name") or cfg.get("output_name")
        rec, outcome = recorded_run(
            cfg,
            target,
            [cmd],
            env,
            offset=offset,
            hang_timeout=cfg.settings.hang_timeout_seconds,
            output_name=output_name,
            auto_stop=stop.record(),
            **extra,
        )
        upload_record(cfg, rec, env)
    finally:
        lock.release()  # the training is over: while the pod's stop counts down, `make generate` may start
        result = stop.finish(say=say)
        if rec is not None:
            rec.data["auto_stop"] = {**stop.record(), "outcome": result}
            rec.save()
    if outcome is not None and not outcome.ok:
        raise outcome.error()


def upload_record(cfg: Config, rec: RunRecord, env: dict[str, str]) -> None:
    """With huggingface_repo_id set, the run record goes up beside the LoRA: <path_in_repo>/runs/<run id>/.
    A failure is a warning: the run itself is what matters."""
    repo = cfg.get("huggingface_repo_id")
    if not repo:
        return
    from musubi_workspace.runs import hub

    prefix = str(cfg.get("huggingface_path_in_repo") or "").strip("/")
    path = f"{prefix}/runs/{rec.id}" if prefix else f"runs/{rec.id}"
    try:
        hub.upload_folder(
            rec.folder, repo, cfg.get("huggingface_repo_type") or "model", path, env.get("HF_TOKEN") or None
        )
    except Exception as e:  # network, auth, quota: warn, never fail the run
        from musubi_workspace.environment import redact

        say(
            f"warning: run record not uploaded to {repo}/{path} ({redact(f'{e.__class__.__name__}: {e}', secret_values(env))}); it is in {cfg.ws.rel(rec.folder)}"
        )
        rec.data["hf_upload"] = {"repo": repo, "path": path, "ok": False}
    else:
        say(f"==> run record uploaded to {repo}/{path}")
        rec.data["hf_upload"] = {"repo": repo, "path": path, "ok": True}
    rec.save()
