"""Run the programs the workspace builds: print each command, run it with the workspace's environment, tee its
output (redacted) to the run's log, watch it, and report how it ended.

Each program runs in its own process group, so the workspace decides what reaches it:
- Ctrl-C or SIGTERM (make passes SIGTERM on; a terminal sends Ctrl-C to make and the tool alike): the signal is
  passed to the whole group and the run ends as "interrupted"; a second one, or 60 s without an exit, kills
  the group.
- SIGHUP (the SSH connection dropped) is ignored: the run goes on, its log is still written, the pod still
  stops afterwards.
- The hang watchdog: with `hang_timeout`, no new training step for that long ends the run as "hung".
After the program exits, the workspace waits for every process of its group (musubi-tuner's background
uploads, wandb's sync) before it goes on, so nothing that follows (the pod stop) cuts them off.
"""

from __future__ import annotations

import codecs
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from musubi_workspace.commands import Command
from musubi_workspace.environment import child_env, pasteable, redact, secret_values
from musubi_workspace.errors import EXIT_CHILD, WorkspaceError
from musubi_workspace.paths import Workspace
from musubi_workspace.runs.console import Display
from musubi_workspace.runs.progress import Progress, duration

# Seconds an interrupted or hung program gets to exit before its group is killed.
INTERRUPT_GRACE = 60
HANG_GRACE = 10
# How often the run record is rewritten with the progress while a program runs.
RECORD_EVERY = 30


def show(commands: list[Command], env: dict[str, str]) -> None:
    """DRY_RUN: every command as it would run in `env` (the run's whole environment), one pasteable line each:
    the variables the run gets that this shell lacks in front of it (environment.pasteable); nothing runs.
    Secrets stay out of the line; a note on stderr says which the run takes from .env."""
    missing: set[str] = set()
    for c in commands:
        # as execute() runs it ({**env, **c.env}), the command's own variables (the compile fixes) shown first
        line, secret = pasteable(c.argv, {**c.env, **{k: v for k, v in env.items() if k not in c.env}})
        missing.update(secret)
        print(line, flush=True)
    if missing:
        print(
            f"{', '.join(sorted(missing))}: from .env, in the run's environment and not printed (secrets never go "
            f"on a command line); to paste the line, export them first (`set -a; . ./.env; set +a`)",
            file=sys.stderr,
        )


@dataclass
class Outcome:
    """How a run ended. status: succeeded, failed, killed (by a signal, e.g. an out-of-memory kill),
    interrupted (Ctrl-C, SIGTERM), hung (the watchdog)."""

    status: str
    exit_code: int | None = None
    command: Command | None = None
    note: str = ""
    progress: Progress = field(default_factory=Progress)

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"

    def message(self) -> str:
        label = self.command.label if self.command else "run"
        if self.status == "failed":
            return f"{label} failed with exit code {self.exit_code}"
        if self.status == "killed":
            return f"{label} was killed by {self.note} (an out-of-memory kill looks like this; see the log)"
        if self.status == "interrupted":
            return f"{label} interrupted ({self.note})"
        if self.status == "hung":
            return f"{label} ended as failed: {self.note}"
        return f"{label} succeeded"

    def error(self) -> WorkspaceError:
        code = self.exit_code if self.exit_code and 0 < self.exit_code < 256 else EXIT_CHILD
        return WorkspaceError(self.message(), code)


def run(ws: Workspace, commands: list[Command], env: dict[str, str] | None = None) -> None:
    """Run without a record; raise on the first failure."""
    outcome = execute(ws, commands, env or child_env(ws))
    if not outcome.ok:
        raise outcome.error()


class _Signals:
    """While a run is watched: Ctrl-C and SIGTERM are noted (not raised), SIGHUP is ignored."""

    def __enter__(self):
        self.got: list[int] = []
        self.old = {}
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self.old[s] = signal.signal(s, lambda n, f: self.got.append(n))
            self.old[signal.SIGHUP] = signal.signal(signal.SIGHUP, signal.SIG_IGN)
        return self

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)


class _Log:
    def __init__(self, path: Path | None):
        self.f = open(path, "a", encoding="utf-8", newline="") if path else None
        self.lock = threading.Lock()

    def write(self, text: str) -> None:
        if self.f:
            with self.lock:
                self.f.write(text)
                self.f.flush()

    def close(self) -> None:
        if self.f:
            self.f.close()


def execute(
    ws: Workspace,
    commands: list[Command],
    env: dict[str, str],
    record=None,
    progress: Progress | None = None,
    hang_timeout: int = 0,
    on_success=None,
) -> Outcome:
    """Run `commands` one after the other until one does not succeed; never raises for the program's sake.
    `on_success(command)` runs after each command that succeeded (the cache manifest is written there)."""
    secrets = secret_values(env)
    progress = progress or Progress()
    display = Display(progress)
    log = _Log(record.log_path if record else None)

    def note(text: str) -> None:
        text = redact(text, secrets)
        display.line(text)
        log.write(text + "\n")

    try:
        with _Signals() as sig:
            for c in commands:
                note(f"==> {c.label}: {c.shell()}")
                try:
                    proc = subprocess.Popen(
                        c.argv,
                        cwd=ws.root,
                        env={**env, **c.env},
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                except FileNotFoundError:
                    note(f"==> {c.argv[0]}: not found")
                    raise WorkspaceError(
                        f"{c.argv[0]}: not found; the GPU stack is installed by `make cache`/`make train` (`uv sync --extra train`)",
                        EXIT_CHILD,
                    ) from None
                outcome = _watch(proc, c, sig, display, log, note, secrets, progress, record, hang_timeout)
                if not outcome.ok:
                    return outcome
                if on_success is not None:
                    on_success(c)
            return Outcome("succeeded", 0, progress=progress)
    finally:
        display.flush()
        log.close()
        try:
            sys.stdout.flush()
        except OSError:
            pass


def _watch(proc, c, sig, display, log, note, secrets, progress, record, hang_timeout) -> Outcome:
    pgid = proc.pid
    last_step_at = [time.monotonic()]
    lock = threading.Lock()

    def reader() -> None:
        from musubi_workspace.runs.console import Splitter

        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        splitter = Splitter()
        fd = proc.stdout.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            pieces = (
                splitter.feed(decoder.decode(chunk))
                if chunk
                else splitter.feed(decoder.decode(b"", final=True)) + splitter.close()
            )
            for piece, term in pieces:
                piece = redact(piece, secrets)
                log.write(piece + term)
                with lock:
                    before = progress.step
                    display.piece(piece, term)
                    if progress.step != before:
                        last_step_at[0] = time.monotonic()
            if not chunk:
                return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    reason, why, kill_at = None, "", None
    handled = 0
    next_record = time.monotonic() + RECORD_EVERY

    def killpg(s: int) -> None:
        try:
            os.killpg(pgid, s)
        except (ProcessLookupError, PermissionError):
            pass

    while proc.poll() is None:
        now = time.monotonic()
        if len(sig.got) > handled:
            s = sig.got[handled]
            handled = len(sig.got)
            if reason is None or reason == "hung":
                reason = "interrupted"
                why = "Ctrl-C" if s == signal.SIGINT else "SIGTERM"
                note(f"==> {why}: stopping {c.label} (its whole process group); Ctrl-C again kills it now")
                killpg(s)
                kill_at = now + INTERRUPT_GRACE
            else:
                note(f"==> {c.label}: killed now")
                killpg(signal.SIGKILL)
        with lock:
            idle = now - last_step_at[0]
        if hang_timeout and reason is None and idle > hang_timeout:
            reason = "hung"
            why = f"no new training step for {duration(idle)} ([workspace] hang_timeout = {duration(hang_timeout)})"
            note(f"==> {why}: ending the run as failed")
            killpg(signal.SIGTERM)
            kill_at = now + HANG_GRACE
        if kill_at is not None and now > kill_at:
            note(f"==> {c.label} did not exit: killed")
            killpg(signal.SIGKILL)
            kill_at = None
        if record is not None and now > next_record:
            with lock:
                record.update_progress(progress)
            record.save()
            next_record = now + RECORD_EVERY
        time.sleep(0.1)

    code = proc.returncode
    _wait_group(pgid, t, sig, handled, note, hang_timeout)
    t.join(timeout=5)
    if not t.is_alive():
        proc.stdout.close()
    if reason is not None:
        status = reason
    elif code == 0:
        status = "succeeded"
    elif code < 0:
        status, why = "killed", signal.Signals(-code).name
    else:
        status = "failed"
    if reason == "interrupted":
        code = 130 if why == "Ctrl-C" else 143
    return Outcome(status, code, command=c, note=why, progress=progress)


def _wait_group(pgid: int, reader: threading.Thread, sig, handled: int, note, limit: int) -> None:
    """Wait until no process of the group is left (uploads finish); Ctrl-C stops waiting and kills them."""
    started = time.monotonic()
    told = False
    while True:
        members = group_members(pgid)
        if not members:
            return
        waited = time.monotonic() - started
        if not told and waited > 1:
            note(
                f"==> waiting for {len(members)} process(es) the program left running (uploads, wandb sync) to finish; Ctrl-C stops waiting"
            )
            told = True
        if len(sig.got) > handled or (limit and waited > limit):
            note("==> not waiting any longer: killing them")
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            return
        time.sleep(0.2)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group; from /proc where there is one."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
            return [pgid]
        except (ProcessLookupError, PermissionError):
            return []
    found = []
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            found.append(int(d.name))
    return found
