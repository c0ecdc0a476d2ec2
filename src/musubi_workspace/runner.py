"""Run the programs the workspace builds: print each command, run it with the workspace's environment, fail
with its exit code."""

from __future__ import annotations

import subprocess
import sys

from .commands import Command
from .environment import child_env
from .errors import EXIT_CHILD, WorkspaceError
from .paths import Workspace


def show(commands: list[Command]) -> None:
    """DRY_RUN: every command exactly as it would run, one per line; nothing runs."""
    for c in commands:
        print(c.shell())


def run(ws: Workspace, commands: list[Command], env: dict[str, str] | None = None) -> None:
    env = env or child_env(ws)
    for c in commands:
        print(f"==> {c.label}: {c.shell()}", flush=True)
        try:
            code = subprocess.call(c.argv, cwd=ws.root, env=env)
        except FileNotFoundError:
            raise WorkspaceError(f"{c.argv[0]}: not found; run `make setup-train` (the GPU stack) first", EXIT_CHILD) from None
        if code != 0:
            raise WorkspaceError(f"{c.label} failed with exit code {code}", code if 0 < code < 256 else EXIT_CHILD)
    sys.stdout.flush()
