"""`make validate`: score saved LoRAs offline on the version's validation set (`[workspace] validation`).

LORA=<file> scores one LoRA, LORA=all every LoRA of the version (commands.lora_files), empty the version's newest.
It runs `accelerate launch <train's accelerate options, one process> -m musubi_workspace.validation.offline
--config_file <cfg> --validation <set> --validation_timesteps <..> --validation_set <hash> --lora <f> [<f> ...]`
with a run record under the version's lock; the module writes `<stem>.validation.json` beside each LoRA."""

from __future__ import annotations

import sys

from musubi_workspace.commands import Command, lora_files, newest_lora, train_command
from musubi_workspace.config import load_config
from musubi_workspace.environment import child_env
from musubi_workspace.errors import WorkspaceError
from musubi_workspace.paths import Workspace
from musubi_workspace.runs import lock, process

MODULE = "musubi_workspace.validation.offline"


def validate(ws: Workspace, config: str, dry_run: bool, lora: str = "") -> None:
    from musubi_workspace.runs.targets import _raise_unless_ok, recorded_run, validation_set

    cfg = load_config(ws, config)
    s = cfg.settings
    if not s.validation:
        raise WorkspaceError(
            f"{cfg.shown}: no validation set ([workspace] validation); name a held-out dataset.toml there, "
            'e.g. validation = "configs/v1/validation.toml", to score LoRAs'
        )
    lock.take(cfg, "validate", dry_run=dry_run)
    if lora == "all":
        found = [ws.rel(p) for p in lora_files(cfg)]
    elif lora:
        if not ws.resolve(lora).is_file():
            raise WorkspaceError(
                f"LORA={lora}: file not found; give the path of a LoRA file (relative to the workspace root), or all"
            )
        found = [lora]  # the module reads it and says what is wrong with it
    else:
        newest = newest_lora(cfg)
        found = [ws.rel(newest)] if newest else []
        if found:
            print(f"LORA not set: using {found[0]} (the newest of this version)", file=sys.stderr)
    if not found:
        out = cfg.get("output_dir") or "output_dir"
        raise WorkspaceError(
            f"{cfg.shown}: no LoRA of `{cfg.get('output_name')}` in {out} yet; train first (`make train`) or pass "
            "LORA=path/to/lora.safetensors"
        )
    extra = ["--validation", s.validation]
    extra += ["--validation_timesteps", ",".join(repr(float(t)) for t in s.validation_timesteps)]
    extra += ["--validation_set", validation_set(cfg) or "", "--lora", *found]
    train = train_command(cfg, 1, extra=extra, module=MODULE, compiled=False)
    cmd = Command("validate", train.argv, env=train.env)
    env = child_env(ws)
    if dry_run:
        return process.show([cmd], env)
    _raise_unless_ok(recorded_run(cfg, "validate", [cmd], env))
