"""`make train-bg`: `make train` in a detached tmux session, so it survives the SSH connection; `make logs`
follows it (runs.follow).

The session runs on its own tmux server (`tmux -L musubi-workspace`), which starts fresh from this shell's
environment when no other background run is going: the programs get the same variables (secrets included,
through the environment, never a command line) as with `make train`.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from musubi_workspace.checks import preflight
from musubi_workspace.errors import EXIT_CHILD, WorkspaceError
from musubi_workspace.paths import Workspace
from musubi_workspace.runs import cache_plan, lock
from musubi_workspace.runs.estimate import speed_lines
from musubi_workspace.runs.pod import grace_seconds

SOCKET = "musubi-workspace"


def train_bg(
    ws: Workspace, config: str, dry_run: bool, strict: bool = False, auto_stop: str = "", restart: bool = False
) -> None:
    from musubi_workspace.config import load_config
    from musubi_workspace.runs import outputs

    cfg = load_config(ws, config)
    if dry_run:
        lock.take(cfg, "train-bg", dry_run=True)  # a warning when the version is in use
    else:  # refused at once where the run inside tmux would be; that run takes the locks
        lock.check(cfg, lock.cache_locks(cfg, lock.SHARED))
    grace_seconds(auto_stop, cfg.settings.auto_stop)
    # before tmux starts; with RESTART=1 the run in it moves the earlier files
    outputs.refuse_if_running(cfg) if restart else outputs.refuse_if_taken(cfg, target="train-bg")
    preflight(cfg, target="train-bg", dry_run=dry_run, strict=strict, speed=speed_lines)
    cache_plan.require_fresh(cfg, dry_run, target="train-bg")
    session = f"train-{cfg.name}"
    ws_exe = str(Path(sys.executable).parent / "ws")
    inner = [ws_exe, "train", "--config", cfg.shown, "--strict", "1" if strict else "0"]
    # An empty AUTO_STOP is `ws train`'s default: left out, so the line shows no quotes inside quotes for it.
    inner += ["--auto-stop", auto_stop] if auto_stop else []
    inner += ["--restart", "1" if restart else "0"]
    argv = ["tmux", "-L", SOCKET, "new-session", "-d", "-s", session, "-c", str(ws.root), shlex.join(inner)]
    if dry_run:
        print(shlex.join(argv))
        return
    if not shutil.which("tmux"):
        raise WorkspaceError(
            "tmux not found: install it (`apt-get install -y tmux`) or run `make train` inside your own tmux/screen"
        )
    if subprocess.run(["tmux", "-L", SOCKET, "has-session", "-t", f"={session}"], capture_output=True).returncode == 0:
        raise WorkspaceError(
            f"{cfg.name} is already training in the background (tmux session {session}): `make logs` follows it"
        )
    r = subprocess.run(argv, cwd=ws.root, capture_output=True, text=True)
    if r.returncode != 0:
        raise WorkspaceError(
            f"tmux could not start the run ({r.returncode}): {(r.stderr or r.stdout).strip()}", EXIT_CHILD
        )
    print(
        f"training {cfg.name} in the background (tmux session {session}); the pod stops itself afterwards as with `make train`"
    )
    print(f"follow it: `make logs`; its terminal: `tmux -L {SOCKET} attach -t {session}` (detach: Ctrl-b d)")
