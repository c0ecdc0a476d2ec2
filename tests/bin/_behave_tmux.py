"""The tmux stand-in: `new-session -d -s NAME -c DIR CMD` runs CMD with bash in the background, detached
(output to $WS_RECORD.tmux-NAME.out); `has-session -t =NAME` says whether it still runs. Options before the
command (`-L socket`) are taken and ignored, as a real tmux's server choice does not matter here."""

from __future__ import annotations

import os
import subprocess
import tempfile


def _pidfile(name: str) -> str:
    return f"{os.environ.get('WS_RECORD') or os.path.join(tempfile.gettempdir(), 'ws-record')}.tmux-{name.lstrip('=')}"


def behave(argv: list[str]) -> int | None:
    args = list(argv)
    while args and args[0] == "-L":
        args = args[2:]
    if not args:
        return 1
    cmd, rest = args[0], args[1:]
    if cmd == "has-session":
        name = rest[rest.index("-t") + 1]
        try:
            os.kill(int(open(_pidfile(name) + ".pid").read()), 0)
            return 0
        except (OSError, ValueError):
            return 1
    if cmd == "new-session":
        name = rest[rest.index("-s") + 1]
        cwd = rest[rest.index("-c") + 1] if "-c" in rest else os.getcwd()
        shell_command = rest[-1]
        out = open(_pidfile(name) + ".out", "w")
        p = subprocess.Popen(
            ["bash", "-c", shell_command],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        open(_pidfile(name) + ".pid", "w").write(str(p.pid))
        return 0
    return 1
