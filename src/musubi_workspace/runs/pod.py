"""Stopping the RunPod pod: after `make train` (a grace period, cancellable), or now (`make stop`).

The pod's id comes from `RUNPOD_POD_ID` (the environment or `.env`), else from `/etc/rp_environment`, which RunPod
writes on every pod and which SSH shells may not have loaded (`WS_RP_ENVIRONMENT` names another file, and
`WS_STOP_RETRY_SECONDS` shortens the pause between stop attempts: both internal, for tests). Off RunPod nothing is stopped, and the tool says so.

runpodctl has two syntaxes in the wild: `runpodctl pod stop ID` (newer releases) and `runpodctl stop pod ID`
(older ones; each rejects the other with "unknown command"). The newer is tried first and the older when it
fails, so either release works without asking which is installed; a real failure (network, key) fails both and
is reported with both answers, then retried.

While the grace period runs, a file `runs/.stop-pending-<pid>` says so; `make cancel-stop` removes it (also
during training, to keep the pod after this run), and the waiting process keeps the pod when it is gone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from musubi_workspace.config import parse_duration
from musubi_workspace.environment import redact, secret_values
from musubi_workspace.errors import EXIT_CHILD, WorkspaceError
from musubi_workspace.paths import Workspace

RP_ENVIRONMENT = "/etc/rp_environment"
RP_LINE_RE = re.compile(r"^\s*(?:export\s+)?(RUNPOD_[A-Z0-9_]+)=(.*)$")
# Attempts of both syntaxes before giving up, and the pause between them.
STOP_ATTEMPTS = 3


def rp_environment() -> Path:
    return Path(os.environ.get("WS_RP_ENVIRONMENT") or RP_ENVIRONMENT)


def read_rp_environment(path: Path) -> dict[str, str]:
    """RUNPOD_* variables of RunPod's environment file (`export KEY="value"` lines); {} when absent."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    found = {}
    for line in text.splitlines():
        if m := RP_LINE_RE.match(line):
            value = m.group(2).strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            found[m.group(1)] = value
    return found


def pod_env(env: dict[str, str]) -> dict[str, str]:
    """`env` plus the RUNPOD_* variables (the pod id, runpodctl's key) it lacks, from /etc/rp_environment."""
    merged = dict(env)
    for key, value in read_rp_environment(rp_environment()).items():
        if value and not merged.get(key):
            merged[key] = value
    return merged


def pod_id(env: dict[str, str]) -> str | None:
    return pod_env(env).get("RUNPOD_POD_ID") or None


def not_on_runpod() -> str:
    return f"not on RunPod (RUNPOD_POD_ID not set, {rp_environment()} not found)"


def stop_pod(pod: str, env: dict[str, str], pause: float = 10.0, say=print) -> None:
    """`runpodctl pod stop ID`, else `runpodctl stop pod ID`; a few rounds; WorkspaceError when all fail."""
    env = pod_env(env)
    exe = shutil.which("runpodctl", path=env.get("PATH"))
    if not exe:
        raise WorkspaceError(
            f"runpodctl not found: pod {pod} was NOT stopped; stop it in the RunPod console (it costs money while it runs)",
            EXIT_CHILD,
        )
    secrets = secret_values(env)
    answers = []
    for attempt in range(1, STOP_ATTEMPTS + 1):
        answers = []
        for argv in (["runpodctl", "pod", "stop", pod], ["runpodctl", "stop", "pod", pod]):
            try:
                r = subprocess.run([exe, *argv[1:]], env=env, capture_output=True, text=True, timeout=120)
                code, out = r.returncode, (r.stdout + r.stderr).strip()
            except subprocess.TimeoutExpired:
                code, out = -1, "no answer in 120 s"
            if code == 0:
                say(f"auto-stop: `{' '.join(argv)}`: {redact(out, secrets) or 'ok'}")
                return
            answers.append(
                f"`{' '.join(argv)}` ({code}): {redact(out, secrets).splitlines()[0] if out else 'no output'}"
            )
        if attempt < STOP_ATTEMPTS:
            say(f"auto-stop: stopping pod {pod} failed ({'; '.join(answers)}); trying again in {pause:g}s")
            time.sleep(pause)
    raise WorkspaceError(
        f"pod {pod} was NOT stopped: {'; '.join(answers)}; stop it in the RunPod console (it costs money while it runs)",
        EXIT_CHILD,
    )


def stop_now(ws: Workspace, env: dict[str, str]) -> None:
    """`make stop`."""
    pod = pod_id(env)
    if not pod:
        raise WorkspaceError(f"{not_on_runpod()}: nothing to stop")
    print(f"stopping pod {pod} now", flush=True)
    stop_pod(pod, env, pause=_retry_pause())


def _retry_pause() -> float:
    return float(os.environ.get("WS_STOP_RETRY_SECONDS", "10"))


def grace_seconds(override: str, setting: str) -> tuple[int, str]:
    """The grace period in seconds and where it came from: AUTO_STOP when given, else [workspace] auto_stop."""
    if str(override).strip():
        return parse_duration(override, f"AUTO_STOP={override}"), "AUTO_STOP"
    return parse_duration(setting, "[workspace] auto_stop"), "[workspace] auto_stop"


@dataclass
class AutoStop:
    """The stop that follows one run: armed at its start, carried out (or not) at its end."""

    ws: Workspace
    env: dict[str, str]
    grace: int
    source: str
    pod: str | None = None
    pending: Path | None = None

    @classmethod
    def arm(cls, ws: Workspace, env: dict[str, str], override: str, setting: str) -> AutoStop:
        grace, source = grace_seconds(override, setting)
        stop = cls(ws=ws, env=env, grace=grace, source=source, pod=pod_id(env))
        if stop.pod and stop.grace:
            ws.runs.mkdir(parents=True, exist_ok=True)
            stop.pending = ws.runs / f".stop-pending-{os.getpid()}"
            stop.pending.write_text(json.dumps({"pod": stop.pod, "pid": os.getpid(), "grace_s": grace}) + "\n")
        return stop

    def describe(self) -> str:
        """One line for the start of the run."""
        if not self.pod:
            return f"auto-stop: {not_on_runpod()}: nothing will be stopped"
        if not self.grace:
            return f"auto-stop: off ({self.source}): pod {self.pod} keeps running after this run"
        return (
            f"auto-stop: pod {self.pod} stops {_dur(self.grace)} after this run ends, however it ends "
            f"(`make cancel-stop` keeps it; AUTO_STOP=0 turns it off)"
        )

    @property
    def cancelled(self) -> bool:
        return self.pending is not None and not self.pending.exists()

    def record(self) -> dict:
        return {"pod": self.pod, "grace_s": self.grace, "source": self.source}

    def finish(self, say=print) -> str:
        """After the run: count down, then stop; returns what happened (for the run record)."""
        if not self.pod:
            say(f"auto-stop: {not_on_runpod()}: nothing is stopped")
            return "not on RunPod"
        if not self.grace:
            say(f"auto-stop: off ({self.source}): pod {self.pod} keeps running")
            return "off"
        # A terminal that closes (SSH dropped) must not end the wait: the stop still has to happen.
        hup = signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            try:
                outcome = self._countdown(say)
            finally:
                self._disarm()
            if outcome != "stop":
                return outcome
            say(f"auto-stop: stopping pod {self.pod}")
            stop_pod(self.pod, self.env, pause=_retry_pause(), say=say)
            return "stopped"
        finally:
            signal.signal(signal.SIGHUP, hup)

    def _countdown(self, say) -> str:
        if self.cancelled:
            say(f"auto-stop: cancelled during the run (`make cancel-stop`): pod {self.pod} keeps running")
            return "cancelled"
        got: list[int] = []
        old = {s: signal.signal(s, lambda n, f: got.append(n)) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            deadline = time.monotonic() + self.grace
            at = (datetime.now(timezone.utc) + timedelta(seconds=self.grace)).strftime("%H:%M:%S UTC")
            say(
                f"auto-stop: pod {self.pod} stops at {at} (in {_dur(self.grace)}); "
                f"to keep it: `make cancel-stop`, or Ctrl-C here"
            )
            next_note = _next_note(self.grace)
            while (left := deadline - time.monotonic()) > 0:
                if got and got[0] == signal.SIGINT:
                    say(f"auto-stop: cancelled (Ctrl-C): pod {self.pod} keeps running")
                    return "cancelled"
                if got:
                    say("auto-stop: terminated while waiting: stopping the pod now")
                    return "stop"
                if self.cancelled:
                    say(f"auto-stop: cancelled (`make cancel-stop`): pod {self.pod} keeps running")
                    return "cancelled"
                if left <= next_note:
                    say(f"auto-stop: pod {self.pod} stops in {_dur(left)} (`make cancel-stop` or Ctrl-C keeps it)")
                    next_note = _next_note(left - 1)
                time.sleep(min(0.2, left))
            return "stop"
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _disarm(self) -> None:
        if self.pending is not None:
            self.pending.unlink(missing_ok=True)


def _next_note(left: float) -> float:
    """When to print the next reminder: each minute, then at 30 s and 10 s."""
    if left > 60:
        return (int(left - 1) // 60) * 60
    for mark in (30, 10):
        if left > mark:
            return mark
    return -1


def cancel_stop(ws: Workspace) -> None:
    """`make cancel-stop`: remove every pending stop of this workspace."""
    pending = sorted(ws.runs.glob(".stop-pending-*")) if ws.runs.is_dir() else []
    if not pending:
        print("no auto-stop is pending")
        return
    cancelled = 0
    for p in pending:
        try:
            info = json.loads(p.read_text())
        except (OSError, ValueError):
            info = {}
        p.unlink(missing_ok=True)
        if not _alive(info.get("pid")):
            continue  # left by a run that died without its stop: nothing waits on it
        cancelled += 1
        print(f"auto-stop cancelled: pod {info.get('pod', '?')} keeps running after the run (stop it with `make stop`)")
    if not cancelled:
        print("no auto-stop is pending")


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _dur(seconds: float) -> str:
    from musubi_workspace.runs.progress import duration

    return duration(seconds)
