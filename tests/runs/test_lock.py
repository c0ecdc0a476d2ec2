"""One writer per version (runs/lock.py): a second run of a version that another run holds stops at once with
one line and changes nothing; a lock left by a process that is gone is taken over with a note; two versions train
side by side, even on one cache folder, whose `make cache` is then refused.

Two real processes: the first `make train` runs the trainer stand-in, which waits (STANDIN_WAIT_FOR) while the
test runs the second command; then the test lets it go and it ends."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path

from conftest import error_line

from runs.test_ledger import records
from runs.test_pod import ended, popen_make, wait_for

LOCK = ".cache/ws/locks/version-v1.lock"
SEE = "see it with make runs or make logs, or wait for it to end"


def since(w, version: str = "v1") -> str:
    """The holder's `since` as the refusal shows it (the run started today)."""
    [held] = json.loads((w.root / f".cache/ws/locks/version-{version}.lock").read_text())
    return datetime.strptime(held["since"], "%Y-%m-%dT%H:%M:%SZ").strftime("%H:%M:%S UTC")


def busy(r) -> bool:
    """The tool said "in use" (exit code 5, EXIT_BUSY), as make reports it (make itself exits 2)."""
    return r.stderr.rstrip().endswith("] Error 5")


def tree(root: Path, skip: Path | None = None) -> dict[str, str]:
    """Every file under root (links not followed) by its content's hash; `skip`: a folder left out."""
    found = {}
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = [d for d in dirs if here / d != skip]
        for name in files:
            p = here / name
            found[str(p.relative_to(root))] = "link" if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
        found.update({str((here / d).relative_to(root)) + "/": "dir" for d in dirs})
    return found


class Holding:
    """`make train` of a version in the background, its trainer waiting until `release()`."""

    def __init__(self, w, tmp_path: Path, version: str = "v1"):
        self.w, self.version = w, version
        self.go = tmp_path / f"go-{version}"
        self.proc = subprocess.Popen(
            ["make", "--no-print-directory", "train", f"CONFIG_FILE={version}", "AUTO_STOP=0"],
            cwd=w.root,
            env={**w.env, "STANDIN_WAIT_FOR": str(self.go), "STANDIN_STEPS": "2"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(lambda: w.calls("accelerate") or self.proc.poll() is not None, timeout=60)
        assert self.proc.poll() is None, self.proc.communicate()
        [self.run] = records(w, "train", version)
        self.folder = w.root / "runs" / version / self.run["id"]

    def release(self) -> subprocess.CompletedProcess:
        self.go.touch()
        out, err = self.proc.communicate(timeout=120)
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, out, err)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.go.touch()
            self.proc.wait(timeout=60)


def test_a_second_run_of_a_version_in_use_stops_at_once_naming_the_first_and_changes_nothing(cached, tmp_path):
    first = Holding(cached, tmp_path)
    try:
        [held] = json.loads(cached.read(LOCK))
        assert held["target"] == "make train" and held["version"] == "configs/v1" and held["shared"] is False
        assert held["pid"] == first.run["pid"]  # the `ws` process, the trainer's parent
        assert held["log"] == f"runs/v1/{first.run['id']}/log.txt"
        assert held["command"].startswith("ws train --config v1 --dry-run 0 --strict 0 --auto-stop 0")
        line = (
            f"error: configs/v1 is in use: make train (pid {first.run['pid']}) since {since(cached)}, "
            f"log runs/v1/{first.run['id']}/log.txt; {SEE}"
        )
        before = tree(cached.root, skip=first.folder)
        for target in ("train", "cache", "generate", "resume", "train-bg", "tune", "bench"):
            started = time.monotonic()
            r = cached.make(target, "AUTO_STOP=0" if "train" in target or target == "resume" else "FORCE=0")
            assert (r.returncode, error_line(r)) == (2, line), (target, r.stderr)
            assert busy(r), r.stderr
            assert time.monotonic() - started < 20, f"{target} did not stop at once"
        assert tree(cached.root, skip=first.folder) == before
        assert [c["prog"] for c in cached.calls()] == ["accelerate"]  # no cache script, no tmux, no second trainer
        dry = cached.make("train", "DRY_RUN=1")
        assert dry.returncode == 0, dry.stderr
        assert f"warning: {line.removeprefix('error: ')} (a dry run takes no lock)" in dry.stderr.splitlines()
        done = first.release()
    finally:
        first.kill()
    assert done.returncode == 0, done.stderr
    assert records(cached, "train")[0]["status"] == "succeeded"
    assert cached.read(LOCK) == ""  # cleared when it ended
    again = cached.make("train", "AUTO_STOP=0")
    assert again.returncode == 0, again.stderr


def test_a_lock_whose_process_is_gone_is_taken_over_with_a_note(cached):
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = {
        "target": "make train",
        "version": "configs/v1",
        "pid": gone.pid,
        "since": "2026-01-01T10:21:07Z",
        "log": "runs/v1/20260101T102107Z-train/log.txt",
        "command": "ws train --config configs/v1/config.toml",
    }
    cached.write(LOCK, json.dumps(stale))
    r = cached.make("train", "AUTO_STOP=0")
    assert r.returncode == 0, r.stderr
    assert (
        f"note: configs/v1: took over the lock of make train (pid {gone.pid}), which is gone" in r.stderr.splitlines()
    )
    assert records(cached, "train")[0]["status"] == "succeeded"
    assert cached.read(LOCK) == ""


def test_two_versions_train_side_by_side_on_one_cache_folder_whose_cache_is_refused_meanwhile(ready, tmp_path):
    cached = ready
    dataset = cached.read("configs/v1/dataset.toml")
    assert 'cache_directory = "cache/v1/example-1f"' in dataset
    cached.write("configs/v1/dataset.toml", dataset.replace("cache/v1/example-1f", "cache/shared/example-1f"))
    for step in (("cache",), ("new",)):  # v2 a copy of v1, on the same cache folder
        r = cached.make(*step)
        assert r.returncode == 0, r.stderr
    assert 'cache_directory = "cache/shared/example-1f"' in cached.read("configs/v2/dataset.toml")
    calls = len(cached.calls())
    first = Holding(cached, tmp_path)
    try:
        before = tree(cached.root, skip=first.folder)
        cache = cached.make("cache", "CONFIG_FILE=v2")
        assert cache.returncode == 2 and busy(cache), cache.stderr
        assert error_line(cache) == (
            "error: cache/shared/example-1f (cache_directory of configs/v2/dataset.toml) is in use: make train of "
            f"configs/v1 (pid {first.run['pid']}) since {since(cached)}, log runs/v1/{first.run['id']}/log.txt; {SEE}"
        )
        assert tree(cached.root, skip=first.folder) == before
        second = cached.make("train", "CONFIG_FILE=v2", "AUTO_STOP=0", env={"STANDIN_STEPS": "all"})
        assert second.returncode == 0, second.stderr
        assert first.proc.poll() is None  # v1 still trains (its trainer waits)
        done = first.release()
    finally:
        first.kill()
    assert done.returncode == 0, done.stderr
    assert [d["status"] for d in records(cached, "train", "v1") + records(cached, "train", "v2")] == ["succeeded"] * 2
    assert (cached.root / "outputs/v2/example-1f_v2.safetensors").is_file()
    assert [c["prog"] for c in cached.calls()[calls:]] == ["accelerate", "accelerate"]


def test_a_finished_train_lets_go_of_the_version_while_the_pod_stop_counts_down(cached):
    (cached.root.parent / "rp_environment").write_text('export RUNPOD_POD_ID="pod123"\n')
    p = popen_make(cached, "train", "AUTO_STOP=30s", env={"STANDIN_STEPS": "2"})
    try:
        wait_for(lambda: ended(cached))
        assert p.poll() is None  # counting down
        cache = cached.make("cache")
        assert cache.returncode == 0, cache.stderr
        assert cached.read(LOCK) == ""
        assert cached.make("cancel-stop").returncode == 0
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 0, err
    assert "auto-stop: cancelled (`make cancel-stop`): pod pod123 keeps running" in out
