"""One writer per version: the locks `make cache`, `train`, `resume`, `train-bg`, `generate`, `tune` and `bench`
take, so that a second run of the same version (or a `make cache` of a cache folder another version trains on)
stops at once instead of sharing a GPU or mixing files.

Each lock is an `fcntl.flock` on a file under `.cache/ws/locks/`: `version-<name>.lock` for a version, and
`cache-<short hash of the resolved folder>.lock` for a cache folder. A version is taken exclusive (`make bench`,
which writes none of its files, shares it with other benches of it); a cache folder exclusive by what writes it
(`make cache`) and shared by what reads it (train, resume, tune), so two versions on one cache folder train side
by side while its `make cache` is refused. Generate reads no cache folder.
The kernel drops a flock when its process ends, however it ends: a lock is never left held by a process that is
gone. What the file holds is for people: a JSON list of its holders (target, version, pid, host, since, log,
command), written by each holder after it took the flock and cleared when it lets go. A record left by a process
that was killed is taken over with a note.

The locks are held by the `ws` process for the whole target (the trainer is its child and does not inherit
them); `held()` (around every command in `cli.main`) lets go of them when the command ends. A dry run takes none:
it only warns when the version is in use.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import socket
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING

from musubi_workspace.errors import EXIT_BUSY, WorkspaceError
from musubi_workspace.paths import Workspace

if TYPE_CHECKING:  # the config is only passed through: `cli.main` imports this module for every command
    from musubi_workspace.config import Config

SHARED, EXCLUSIVE = fcntl.LOCK_SH, fcntl.LOCK_EX
# Held for the few microseconds of a read or an edit of a lock file's records (shared holders edit one file).
EDIT_LOCK = ".records.lock"


@dataclass
class Lock:
    """One lock a target needs: its file, how it is taken, and what to call it in a message."""

    path: Path
    mode: int
    subject: str  # `configs/v1`, or `cache/v1/example-1f (cache_directory of configs/v2/dataset.toml)`


@dataclass
class _Held:
    lock: Lock
    file: IO[str]
    record: dict


# This process's locks, by lock file: a command that takes one twice (or a version and a cache folder that are
# the same file) holds it once.
_HELD: dict[Path, _Held] = {}
# The command the locks are taken for (`held`), as their records show it.
_COMMAND: list[str] = []


def version_lock(cfg: Config, mode: int = EXCLUSIVE) -> Lock:
    return Lock(cfg.ws.locks / f"version-{cfg.name}.lock", mode, cfg.ws.rel(cfg.folder))


def folder_lock(ws: Workspace, folder: Path, mode: int, subject: str) -> Lock:
    key = hashlib.sha256(os.path.realpath(folder).encode()).hexdigest()[:12]
    return Lock(ws.locks / f"cache-{key}.lock", mode, subject)


def cache_locks(cfg: Config, mode: int) -> list[Lock]:
    """The cache folders of the version's dataset.toml (cache_directory of each [[datasets]], else its image or
    video folder, where musubi-tuner caches then). A dataset.toml that cannot be read names none: the check that
    follows says what is wrong with it."""
    from musubi_workspace import dataset

    try:
        data = dataset.load(cfg)
    except WorkspaceError:
        return []
    found: dict[str, Lock] = {}
    for d in data.datasets:
        written = d.cache_directory
        if isinstance(written, str) and written:
            lock = folder_lock(cfg.ws, cfg.ws.resolve(written), mode, f"{written} (cache_directory of {data.shown})")
            found.setdefault(lock.path.name, lock)
    return list(found.values())


def take(
    cfg: Config, target: str, locks: Iterable[Lock] = (), dry_run: bool = False, version_mode: int = EXCLUSIVE
) -> None:
    """Take the version's lock and `locks`, without waiting, for the rest of this command; a lock another run
    holds stops the command with one line naming that run (nothing taken, nothing changed). A dry run takes
    nothing and warns instead."""
    wanted = [version_lock(cfg, version_mode), *locks]
    if dry_run:
        for lock in wanted:
            holder = _live_holder(lock, exclusive_only=lock.mode == SHARED)
            if holder is not None:
                print(f"warning: {in_use(lock, holder)} (a dry run takes no lock)", file=sys.stderr)
        return
    record = {
        "target": f"make {target}",
        "version": cfg.ws.rel(cfg.folder),
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "log": None,
        "command": shlex.join(["ws", *_COMMAND]),
    }
    taken: list[Path] = []
    try:
        # Those with a file first: a refusal comes before this call made any new lock file.
        for lock in sorted(wanted, key=lambda lock: not lock.path.exists()):
            if _take_one(lock, record):
                taken.append(lock.path)
    except BaseException:
        for path in reversed(taken):
            _release(path)
        raise


def check(cfg: Config, locks: Iterable[Lock] = ()) -> None:
    """`make train-bg` before it starts tmux: refuse at once where the run inside it would be refused; take
    nothing (the run inside tmux takes the locks)."""
    for lock in [version_lock(cfg), *locks]:
        if lock.path in _HELD:
            continue
        with _open(lock.path) as f:
            if not _try_flock(f, lock.mode):
                raise WorkspaceError(in_use(lock, _holder(lock, f)), EXIT_BUSY)
            fcntl.flock(f, fcntl.LOCK_UN)


def note_log(ws: Workspace, log: Path) -> None:
    """The run's log (or folder), once there is one: written into each lock this process holds."""
    for held in _HELD.values():
        held.record["log"] = ws.rel(log)
        _edit(held, keep=lambda r: not _mine(r), add=held.record)


@contextlib.contextmanager
def held(argv: list[str]) -> Iterator[None]:
    """Around one `ws` command (its arguments: `argv`): whatever locks it took are let go of when it ends,
    however it ends."""
    _COMMAND[:] = argv
    try:
        yield
    finally:
        release()


def release() -> None:
    """Let go of every lock this process holds (before the pod's stop counts down: it writes no version's files)."""
    for path in list(_HELD)[::-1]:
        _release(path)


def in_use(lock: Lock, holder: dict | None) -> str:
    """The one line of a refusal: who holds the lock, since when, its pid and where to see it."""
    how = "see it with make runs or make logs, or wait for it to end"
    if holder is None:
        return f"{lock.subject} is in use by another run (its lock file names none yet); {how}"
    target = str(holder.get("target") or "a run")
    version = holder.get("version")
    if version and version != lock.subject:
        target += f" of {version}"
    host = holder.get("host")
    on = f" on {host}" if host and host != socket.gethostname() else ""
    log = f"log {holder['log']}" if holder.get("log") else "no log yet"
    return f"{lock.subject} is in use: {target} (pid {holder.get('pid')}{on}) since {_since(holder)}, {log}; {how}"


# ---------------------------------------------------------------------------------------------------------------
# The lock files
# ---------------------------------------------------------------------------------------------------------------
def _take_one(lock: Lock, record: dict) -> bool:
    """Take one lock; False when this process holds it already."""
    held = _HELD.get(lock.path)
    if held is not None:
        if lock.mode == EXCLUSIVE and held.lock.mode != EXCLUSIVE:
            if not _try_flock(held.file, EXCLUSIVE):
                raise WorkspaceError(in_use(lock, _holder(lock, held.file, skip_mine=True)), EXIT_BUSY)
            held.lock, held.record["shared"] = lock, False
            _edit(held, keep=lambda r: not _mine(r), add=held.record)
        return False
    f = _open(lock.path)
    try:
        if not _try_flock(f, lock.mode):
            raise WorkspaceError(in_use(lock, _holder(lock, f)), EXIT_BUSY)
        held = _Held(lock, f, {**record, "shared": lock.mode == SHARED})
        # Taken exclusive, every record there is of a process that let go without clearing it (killed); shared,
        # those of processes that are gone (the others share it now).
        with _editing(lock.path.parent, SHARED):
            found = _read(f)
        gone = [r for r in found if lock.mode == EXCLUSIVE or not _alive(r)]
        _edit(held, keep=lambda r: r not in gone and not _mine(r), add=held.record)
        for r in gone:
            print(
                f"note: {lock.subject}: took over the lock of {r.get('target') or 'a run'} (pid {r.get('pid')}), "
                "which is gone",
                file=sys.stderr,
            )
    except BaseException:
        f.close()
        raise
    _HELD[lock.path] = held
    return True


def _release(path: Path) -> None:
    held = _HELD.pop(path, None)
    if held is None:
        return
    try:
        _edit(held, keep=lambda r: not _mine(r))
    finally:
        fcntl.flock(held.file, fcntl.LOCK_UN)
        held.file.close()


def _open(path: Path) -> IO[str]:
    """The lock file, made if missing and never truncated by opening it (another process may hold it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+", encoding="utf-8")


def _try_flock(f: IO[str], mode: int) -> bool:
    try:
        fcntl.flock(f, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def _editing(folder: Path, mode: int) -> Iterator[None]:
    with _open(folder / EDIT_LOCK) as e:
        fcntl.flock(e, mode)
        yield


def _read(f: IO[str]) -> list[dict]:
    f.seek(0)
    try:
        data = json.loads(f.read() or "[]")
    except ValueError:
        return []
    records = data if isinstance(data, list) else [data]
    return [r for r in records if isinstance(r, dict)]


def _edit(held: _Held, keep, add: dict | None = None) -> None:
    """Rewrite the records in place (the file's inode is what is locked: it is never replaced)."""
    with _editing(held.lock.path.parent, EXCLUSIVE):
        records = [r for r in _read(held.file) if keep(r)] + ([add] if add else [])
        held.file.seek(0)
        held.file.truncate()
        held.file.write(json.dumps(records, indent=1) + "\n" if records else "")
        held.file.flush()


def _holder(lock: Lock, f: IO[str], skip_mine: bool = False) -> dict | None:
    """Who holds a lock this process could not take: the newest record of a process still running."""
    with _editing(lock.path.parent, SHARED):
        records = _read(f)
    live = [r for r in records if _alive(r) and not (skip_mine and _mine(r))]
    # Refused a shared lock, the holder that matters is the one holding it exclusive.
    if lock.mode == SHARED:
        live = [r for r in live if not r.get("shared")] or live
    return (live or [None])[-1]


def _live_holder(lock: Lock, exclusive_only: bool) -> dict | None:
    """For a dry run's warning, without taking the lock: a record of a process still running (that holds it
    exclusive, where the run would share it)."""
    if not lock.path.exists():
        return None
    with _editing(lock.path.parent, SHARED), open(lock.path, encoding="utf-8") as f:
        live = [r for r in _read(f) if _alive(r) and not _mine(r) and not (exclusive_only and r.get("shared"))]
    return (live or [None])[-1]


def _mine(record: dict) -> bool:
    return record.get("pid") == os.getpid() and record.get("host", socket.gethostname()) == socket.gethostname()


def _alive(record: dict) -> bool:
    """Whether the process a record names still runs (another machine's: assumed so)."""
    if record.get("host", socket.gethostname()) != socket.gethostname():
        return True
    try:
        os.kill(int(record.get("pid")), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _since(record: dict) -> str:
    try:
        at = datetime.strptime(str(record.get("since")), "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return str(record.get("since") or "an unknown time")
    today = datetime.now(timezone.utc).date() == at.date()
    return at.strftime("%H:%M:%S UTC" if today else "%Y-%m-%d %H:%M:%S UTC")
