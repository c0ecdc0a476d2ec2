"""The three GPU targets: cache, train, generate. Each loads the version once, checks it, builds its commands
and either shows them (DRY_RUN) or runs them."""

from __future__ import annotations

import sys

from . import cache_state
from .checks import preflight
from .combos import compile_env
from .commands import generate_command, newest_lora, train_command
from .config import Config, resolve_config_file
from .environment import child_env
from .errors import WorkspaceError
from .gpus import visible_gpu_count
from .paths import Workspace
from . import runner


def load_config(ws: Workspace, value: str) -> Config:
    return Config.load(ws, resolve_config_file(ws, value))


def cache(ws: Workspace, config: str, dry_run: bool, strict: bool = False, force: bool = False) -> None:
    """Only the scripts with stale or missing files run; each one's manifest entries are written after it."""
    cfg = load_config(ws, config)
    preflight(cfg, target="cache", dry_run=dry_run, strict=strict)
    plan = cache_state.plan(cfg, force=force)
    plan.report()
    steps = plan.steps()
    if dry_run:
        return runner.show([cmd for _, cmd in steps])
    plan.prepare()
    for side, cmd in steps:
        runner.run(ws, [cmd])
        plan.commit(side)
    plan.finish()


def train(ws: Workspace, config: str, dry_run: bool, strict: bool = False) -> None:
    cfg = load_config(ws, config)
    preflight(cfg, target="train", dry_run=dry_run, strict=strict)
    cache_state.require_fresh(cfg, dry_run)
    env = child_env(ws)
    env.update(compile_env(cfg, env))
    cmd = train_command(cfg, visible_gpu_count(env), env=env)
    if dry_run:
        return runner.show([cmd])
    runner.run(ws, [cmd], env)


def generate(ws: Workspace, config: str, dry_run: bool, lora: str = "", multiplier: str = "", strict: bool = False) -> None:
    cfg = load_config(ws, config)
    preflight(cfg, target="generate", dry_run=dry_run, strict=strict)
    if not lora:
        newest = newest_lora(cfg)
        if newest is None:
            out = cfg.get("output_dir") or "output_dir"
            raise WorkspaceError(
                f"{cfg.shown}: no LoRA of `{cfg.get('output_name')}` in {out} yet; train first (`make train`) or pass LORA=path/to/lora.safetensors"
            )
        lora = ws.rel(newest)
        print(f"LORA not set: using {lora} (the newest of this version)", file=sys.stderr)
    elif not ws.resolve(lora).exists() and not dry_run:
        raise WorkspaceError(f"LORA={lora}: file not found")
    try:
        mult = float(multiplier) if multiplier else 1.0
    except ValueError:
        raise WorkspaceError(f"MULTIPLIER={multiplier}: expected a number such as 0.8 or 1.0") from None
    cmd = generate_command(cfg, lora, mult)
    if dry_run:
        return runner.show([cmd])
    runner.run(ws, [cmd])
