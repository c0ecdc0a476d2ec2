"""The committed measurements under bench/: each `make bench` session's record, kept in
`bench/<gpu>_<version>[_mem<cap>].runs.json` (a list of sessions, appended under a file lock, so two `make bench`
processes on two GPUs of one machine add to the same file), and the workload shape they were measured on.

A session record (tune.session_record) holds the GPU, the memory cap, the command, the workload shape (below),
the version's setting (`base`) and every candidate's result. `make check` (runs/estimate.py) reads these to estimate
a run's time and to recommend a faster setting for the same GPU and workload shape.
"""

from __future__ import annotations

import fcntl
import json
import re
from contextlib import contextmanager
from pathlib import Path

from musubi_workspace.config import Config
from musubi_workspace.errors import WorkspaceError

# Tokens of the caption the synthetic caches mark valid (synthetic.CAPTION_TOKENS; real captions vary).
CAPTION_TOKENS = 77
# Keys of the workload shape two measurements must share to be compared.
SHAPE_KEYS = ("resolution", "batch_size", "one_frame", "clean_indices", "target_index", "no_post", "no_2x", "no_4x")


def workload_of(cfg: Config) -> dict | None:
    """The workload shape of a version: its first dataset's resolution and batch size per GPU, one-frame or
    not, the one-frame indices and 2x/4x, the LoRA rank; None when dataset.toml does not load."""
    from musubi_workspace.checks.combinations import datasets

    found = datasets(cfg)
    if not found:
        return None
    d = found[0]
    raw = d.raw
    one_frame = cfg.get("one_frame") is True
    shape = {"resolution": list(d.resolution), "batch_size": d.batch_size, "one_frame": one_frame}
    if one_frame:
        shape.update(
            clean_indices=list(raw.get("fp_1f_clean_indices") or [0]),
            target_index=int(raw.get("fp_1f_target_index", 1)),
            no_post=bool(raw.get("fp_1f_no_post", False)),
            no_2x=cfg.settings.one_frame_no_2x,
            no_4x=cfg.settings.one_frame_no_4x,
        )
    dim = cfg.get("network_dim")
    shape["network_dim"] = dim if isinstance(dim, int) and not isinstance(dim, bool) else 4
    shape["caption_tokens"] = CAPTION_TOKENS
    return shape


def same_shape(a: dict | None, b: dict | None) -> bool:
    return bool(a) and bool(b) and all(a.get(k) == b.get(k) for k in SHAPE_KEYS)


def describe_shape(w: dict) -> str:
    res = "x".join(str(v) for v in w.get("resolution", []))
    out = f"batch {w.get('batch_size')} at {res}"
    if w.get("one_frame"):
        out += f", one-frame, clean indices {w.get('clean_indices')}" + (", no post" if w.get("no_post") else "")
    return out


def slug(gpu: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", (gpu or "").lower()).strip("-") or "gpu"


def table_path(root: Path, gpu: str, version: str, memory: str = "", processes: int = 1) -> Path:
    """bench/<gpu>_<version>.runs.json; with a memory cap bench/<gpu>_<version>_mem<cap>.runs.json; with several
    processes (GPUs) bench/<gpu>_<version>_<n>gpus.runs.json."""
    cap = f"_mem{slug(memory)}" if memory else ""
    gpus = f"_{processes}gpus" if processes > 1 else ""
    return root / "bench" / f"{slug(gpu)}_{version}{cap}{gpus}.runs.json"


@contextmanager
def locked(path: Path):
    """An exclusive lock beside `path` while the block runs (two bench processes append to one file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_sessions(path: Path) -> list[dict]:
    """The sessions of a .runs.json (a list) or of one session's .json (a dict)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise WorkspaceError(f"{path}: cannot read ({e.__class__.__name__}: {e})") from None
    except ValueError as e:
        raise WorkspaceError(f"{path}: not valid JSON ({e}); it should hold `make bench` sessions") from None
    sessions = data if isinstance(data, list) else [data]
    if not all(isinstance(s, dict) and isinstance(s.get("results"), list) for s in sessions):
        raise WorkspaceError(f"{path}: not a `make bench` record (sessions with `results`)")
    return sessions


def append_session(path: Path, session: dict) -> list[dict]:
    """Add one session to `path` (created when missing); returns every session in it. Call under `locked`.
    A session continued from an unfinished one there (CONTINUE=1: the same `session` id) takes its place."""
    sessions = read_sessions(path) if path.exists() else []
    merge_session(sessions, session)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(sessions, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    return sessions


def merge_session(sessions: list[dict], session: dict) -> None:
    """Add `session` to `sessions` in place: it replaces one with its `session` id (an unfinished session that
    CONTINUE=1 finished), is left out when already there, else goes last."""
    same = [i for i, s in enumerate(sessions) if session.get("session") and s.get("session") == session["session"]]
    if same:
        sessions[same[0]] = session
    elif session not in sessions:
        sessions.append(session)


def session_gpu(session: dict) -> str:
    return session.get("gpu") or next(
        (r.get("device_name") for r in session.get("results", []) if r.get("device_name")), ""
    )


def tables_for(root: Path, gpu: str, processes: int = 1) -> list[tuple[Path, dict]]:
    """Every committed session measured on `gpu` (same name) without a memory cap with `processes` processes,
    with its file. A session that two files hold (a table merged by `ws bench-report`) counts once."""
    out, seen = [], set()
    for path in sorted((root / "bench").glob("*.runs.json")):
        try:
            sessions = read_sessions(path)
        except WorkspaceError:
            continue
        for s in sessions:
            same_gpu = session_gpu(s).strip().lower() == gpu.strip().lower()
            key = json.dumps(s, sort_keys=True)
            if same_gpu and not s.get("memory_cap") and (s.get("processes") or 1) == processes and key not in seen:
                seen.add(key)
                out.append((path, s))
    return out
