"""The run ledger: `runs/<version>/<UTC time>-<target>/` with `run.json` and `log.txt` for every cache, train
and generate run, and `make runs`.

run.json is written when the run starts (inputs, fingerprints, status "running"), rewritten with the progress
while it runs and completed when it ends, always atomically (a temporary file, then a rename): a run whose
process died keeps its record, and `make runs` shows it as "crashed". Every string is redacted before it is
written: no secret value reaches run.json or the log.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from musubi_workspace import dataset as dataset_model
from musubi_workspace.commands import Command
from musubi_workspace.config import Config
from musubi_workspace.environment import redact
from musubi_workspace.errors import WorkspaceError
from musubi_workspace.paths import Workspace
from musubi_workspace.runs.progress import Progress, duration

RUN_FILE = "run.json"
LOG_FILE = "log.txt"
HASH_CACHE = ".hash-cache.json"
# Keys of a JSONL dataset line that name files (musubi-tuner: image_path, video_path, control_path[_N]).
JSONL_PATH_KEYS = ("image_path", "video_path", "control_path")


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_utc(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()


def _redact_all(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, dict):
        return {k: _redact_all(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_all(v, secrets) for v in value]
    return value


def write_json(path: Path, data: dict, secrets: list[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_redact_all(data, secrets), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Fingerprints of a run's inputs
# ---------------------------------------------------------------------------------------------------------
def version_files(cfg: Config) -> dict:
    """config.toml, the dataset config and the prompts file it names: path, sha256 and text of each."""
    out = {}
    for role, path in (
        ("config", cfg.path),
        ("dataset", cfg.path_of("dataset_config")),
        ("prompts", cfg.path_of("sample_prompts")),
    ):
        if path is None:
            continue
        entry: dict[str, Any] = {"path": cfg.ws.rel(path)}
        try:
            data = path.read_bytes()
            entry["sha256"] = hashlib.sha256(data).hexdigest()
            entry["text"] = data.decode("utf-8", errors="replace")
        except OSError as e:
            entry["error"] = f"{e.__class__.__name__}: {e}"
        out[role] = entry
    return out


def dataset_files(cfg: Config) -> list[Path]:
    """Every media and caption file the dataset names: the files of its directories, its JSONL files and the
    paths in their lines (folders taken whole)."""
    f = dataset_model.load(cfg)
    ws = cfg.ws
    found: set[Path] = set()

    def take(p: Path) -> None:
        if p.is_dir():
            found.update(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
        elif p.is_file():
            found.add(p)

    for d in f.datasets:
        entry = d.entry
        for key in ("image_directory", "video_directory", "control_directory"):
            if isinstance(entry.get(key), str):
                take(ws.resolve(entry[key]))
        for key in ("image_jsonl_file", "video_jsonl_file"):
            if not isinstance(entry.get(key), str):
                continue
            jsonl = ws.resolve(entry[key])
            take(jsonl)
            if not jsonl.is_file():
                continue
            for line in jsonl.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    item = json.loads(line)
                except ValueError:
                    continue
                if isinstance(item, dict):
                    for k, v in item.items():
                        if isinstance(v, str) and k.startswith(JSONL_PATH_KEYS):
                            take(ws.resolve(v))
    return sorted(found)


def dataset_hash(cfg: Config) -> dict:
    """One sha256 over (path, size, content sha256) of every dataset file. Content hashes are kept in
    runs/.hash-cache.json by (size, mtime), so an unchanged dataset is not read again."""
    try:
        files = dataset_files(cfg)
    except WorkspaceError as e:
        return {"error": e.message}
    cache_path = cfg.ws.runs / HASH_CACHE
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    total = hashlib.sha256()
    size_sum = 0
    for f in files:
        st = f.stat()
        key = str(f.resolve())
        hit = cache.get(key)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            digest = hit[2]
        else:
            digest = sha256_file(f)
            cache[key] = [st.st_size, st.st_mtime_ns, digest]
        size_sum += st.st_size
        total.update(f"{cfg.ws.rel(f)}\t{st.st_size}\t{digest}\n".encode())
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_name(cache_path.name + f".{os.getpid()}")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_path)
    except OSError:
        pass
    return {"sha256": total.hexdigest(), "files": len(files), "bytes": size_sum}


def git_state(root: Path) -> dict | None:
    """The workspace's commit and whether its tracked or new files differ from it; None outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=20)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def musubi_commit(ws: Workspace) -> dict:
    """The musubi-tuner commit pinned in pyproject.toml and the one installed in the environment (if any)."""
    from musubi_workspace.config import tomllib

    out: dict[str, str | None] = {"pinned": None, "installed": None}
    try:
        py = tomllib.loads((ws.root / "pyproject.toml").read_text())
        out["pinned"] = py["tool"]["uv"]["sources"]["musubi-tuner"]["rev"]
    except (OSError, KeyError, TypeError, ValueError):
        pass
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        direct = distribution("musubi-tuner").read_text("direct_url.json")
        if direct:
            out["installed"] = json.loads(direct).get("vcs_info", {}).get("commit_id")
    except (PackageNotFoundError, ValueError, ImportError):
        pass
    return out


def gpu_info(env: dict[str, str]) -> dict:
    """Model and count of the GPUs nvidia-smi lists; count 0 without nvidia-smi."""
    from musubi_workspace.gpus import gpu_memory

    names = [name for name, _ in gpu_memory(env)]
    models = sorted(set(names))
    return {"model": ", ".join(models) if models else None, "count": len(names)}


def state_name(output_name: str, kind: str, number: int) -> str:
    """musubi-tuner's state folder names (`utils/train_utils.py`)."""
    if kind == "step":
        return f"{output_name}-step{number:08d}-state"
    if kind == "epoch":
        return f"{output_name}-{number:06d}-state"
    return f"{output_name}-state"


# ---------------------------------------------------------------------------------------------------------
# One run's record
# ---------------------------------------------------------------------------------------------------------
@dataclass
class RunRecord:
    folder: Path
    data: dict
    secrets: list[str] = field(default_factory=list)
    price_per_hour: float = 0.0

    @property
    def id(self) -> str:
        return self.folder.name

    @property
    def log_path(self) -> Path:
        return self.folder / LOG_FILE

    @classmethod
    def start(
        cls, cfg: Config, target: str, commands: list[Command], env: dict[str, str], secrets: list[str], **extra
    ) -> RunRecord:
        ws = cfg.ws
        base = ws.runs / cfg.name
        base.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        for n in range(1, 1000):
            folder = base / (f"{stamp}-{target}" if n == 1 else f"{stamp}-{target}-{n}")
            try:
                folder.mkdir()
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover
            raise WorkspaceError(f"{ws.rel(base)}: cannot make a new run folder")
        data = {
            "id": folder.name,
            "version": cfg.name,
            "target": target,
            "config_file": cfg.shown,
            "status": "running",
            "exit_code": None,
            "start": utc_now(),
            "started_at": time.time(),  # for ordering runs that start within one second
            "end": None,
            "duration_s": None,
            "commands": [{"label": c.label, "argv": c.argv, "shell": c.shell()} for c in commands],
            "files": version_files(cfg),
            "dataset": dataset_hash(cfg),
            "workspace_git": git_state(ws.root),
            "musubi_tuner": musubi_commit(ws),
            "gpus": gpu_info(env),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "progress": {"last_step": None, "total_steps": None, "last_loss": None, "seconds_per_step": None},
            "price_per_hour": cfg.settings.price_per_hour,
            "cost_usd": 0.0,
            "log": LOG_FILE,
            **extra,
        }
        rec = cls(folder=folder, data=data, secrets=secrets, price_per_hour=cfg.settings.price_per_hour)
        rec.log_path.touch()
        rec.save()
        return rec

    def save(self) -> None:
        write_json(self.folder / RUN_FILE, self.data, self.secrets)

    def update_progress(self, progress: Progress) -> None:
        self.data["progress"] = {
            "last_step": progress.step,
            "total_steps": progress.total,
            "last_loss": progress.loss,
            "seconds_per_step": progress.seconds_per_step,
        }
        if progress.states:
            self.data["states"] = [
                {"name": state_name(self.data.get("output_name") or "", k, n), "step": s} for k, n, s in progress.states
            ]
        started = parse_utc(self.data["start"]) or time.time()
        self.data["cost_usd"] = round(self.price_per_hour * (time.time() - started) / 3600, 2)

    def finish(self, status: str, exit_code: int | None, progress: Progress | None = None, **extra) -> None:
        if progress is not None:
            self.update_progress(progress)
        self.data.update(status=status, exit_code=exit_code, end=utc_now(), **extra)
        started, ended = parse_utc(self.data["start"]), parse_utc(self.data["end"])
        if started is not None and ended is not None:
            self.data["duration_s"] = int(ended - started)
            self.data["cost_usd"] = round(self.price_per_hour * (ended - started) / 3600, 2)
        self.save()


# ---------------------------------------------------------------------------------------------------------
# Reading the ledger: `make runs`, `make logs`
# ---------------------------------------------------------------------------------------------------------
def load_runs(ws: Workspace) -> list[dict]:
    """Every run.json under runs/, oldest first; a run left "running" by a process that is gone is "crashed"."""
    found = []
    if not ws.runs.is_dir():
        return found
    for path in ws.runs.glob(f"*/*/{RUN_FILE}"):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        data["_folder"] = path.parent
        if data.get("status") == "running" and not _still_running(data):
            data["status"] = "crashed"
        found.append(data)
    return sorted(found, key=lambda d: (d.get("started_at") or 0, d.get("id") or ""))


def _still_running(data: dict) -> bool:
    if data.get("host") != socket.gethostname():
        return True  # another machine's run: cannot tell
    try:
        os.kill(int(data.get("pid")), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def runs_table(ws: Workspace) -> list[str]:
    runs = load_runs(ws)
    if not runs:
        return ["no runs yet (runs/ is empty): `make cache`, `make train` and `make generate` record theirs"]
    head = (
        "run",
        "version",
        "target",
        "status",
        "duration",
        "steps",
        "last loss",
        "best val loss",
        "cost",
        "estimated",
    )
    rows = [head]
    for r in runs:
        p = r.get("progress") or {}
        secs = r.get("duration_s")
        if secs is None and r.get("status") == "running":
            started = parse_utc(r.get("start"))
            secs = time.time() - started if started else None
        steps = "-" if p.get("last_step") is None else f"{p['last_step']}/{p.get('total_steps') or '?'}"
        loss = "-" if p.get("last_loss") is None else f"{p['last_loss']:.4g}"
        cost = r.get("cost_usd")
        est = r.get("estimate") or {}
        estimated = f"{duration(est['total_s'])} ${est['usd']:.2f}" if est.get("total_s") is not None else "-"
        rows.append(
            (
                r.get("id", "?"),
                r.get("version", "?"),
                r.get("target", "?"),
                r.get("status", "?"),
                duration(secs) if secs is not None else "-",
                steps,
                loss,
                best_validation(ws, r),
                f"${cost:.2f}" if cost is not None else "-",
                estimated,
            )
        )
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    return ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]


def best_validation(ws: Workspace, r: dict) -> str:
    """`0.06123 @ 600`: the lowest validation loss of a LoRA the run saved (train, resume: the series lines written
    while it ran) or scored (validate: its record's `validation`), at the version's true step (a resumed run's
    steps go on from its state's); `-` where there is none."""
    found = validation_points(ws, r)
    if not found:
        return "-"
    loss, step = min(found)
    return f"{loss:.4g} @ {step}"


def validation_points(ws: Workspace, r: dict) -> list[tuple[float, int]]:
    """(loss, true step) of each LoRA the run saved or scored with a validation loss."""
    if r.get("target") == "validate":
        return [(v["loss"], v["step"]) for v in r.get("validation") or [] if isinstance(v, dict) and "loss" in v]
    if r.get("target") not in ("train", "resume") or not r.get("output_name"):
        return []
    from musubi_workspace.config import tomllib
    from musubi_workspace.validation import records

    try:
        output_dir = tomllib.loads(((r.get("files") or {}).get("config") or {}).get("text") or "").get("output_dir")
    except ValueError:
        return []
    if not isinstance(output_dir, str):
        return []
    start = r.get("started_at") or parse_utc(r.get("start")) or 0.0
    end = parse_utc(r.get("end")) or time.time()
    offset = (r.get("resume") or {}).get("step_offset") or 0
    out = []
    for rec in records.read_series(ws.resolve(output_dir), r["output_name"]):
        try:
            at = datetime.fromisoformat(rec.time).timestamp()
        except (TypeError, ValueError):
            continue
        # Record times are whole seconds: one second of slack each side.
        if rec.lora and start - 1 <= at <= end + 1:
            out.append((rec.loss, rec.step + offset))
    return out


def follow(ws: Workspace, run: str = "", poll: float = 0.5) -> None:
    """`make logs`: print the newest run's log (or RUN's) as it grows, with progress lines shown as status
    lines, until the run ends; Ctrl-C stops following, not the run."""
    runs = load_runs(ws)
    if run:
        runs = [r for r in runs if r.get("id") == run or str(r["_folder"]).endswith(run)]
        if not runs:
            raise WorkspaceError(f"RUN={run}: no such run under runs/; `make runs` lists them")
    if not runs:
        raise WorkspaceError("runs/: no run yet; `make train` (or `make train-bg`) starts one")
    chosen = runs[-1]
    folder: Path = chosen["_folder"]
    print(
        f"following {ws.rel(folder / LOG_FILE)} ({chosen.get('status')}); Ctrl-C stops following, not the run",
        flush=True,
    )
    from musubi_workspace.runs.console import Display

    offset = (chosen.get("resume") or {}).get("step_offset", 0)
    display = Display(Progress(offset=offset))
    pos = 0
    try:
        while True:
            with open(folder / LOG_FILE, "rb") as f:
                f.seek(pos)
                chunk = f.read()
                pos += len(chunk)
            if chunk:
                display.feed(chunk.decode("utf-8", errors="replace"))
            elif _status(folder) != "running":
                display.flush()
                print(f"run {chosen.get('id')} ended: {_status(folder)}", flush=True)
                return
            else:
                time.sleep(poll)
    except KeyboardInterrupt:
        display.flush()
        print("stopped following; the run goes on", file=sys.stderr)


def _status(folder: Path) -> str:
    try:
        data = json.loads((folder / RUN_FILE).read_text())
    except (OSError, ValueError):
        return "unknown"
    if data.get("status") == "running" and not _still_running(data):
        return "crashed"
    return data.get("status", "unknown")
