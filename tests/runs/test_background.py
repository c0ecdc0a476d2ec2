"""`make train-bg` (a detached tmux session; tmux stand-in in tests/bin) and `make logs` following it."""

from __future__ import annotations

import subprocess

from conftest import error_line

from runs.test_ledger import records
from runs.test_lock import since
from runs.test_pod import wait_for


def test_train_bg_starts_a_detached_run_and_make_logs_follows_it_to_the_end(cached, tmp_path):
    ready = cached
    # The trainer waits for `go` until `make logs` follows it: under load a run of 1.5 s could end before.
    go = tmp_path / "go"
    env = {"STANDIN_STEPS": "30", "STANDIN_STEP_SECONDS": "0.05", "STANDIN_WAIT_FOR": str(go)}
    r = ready.make("train-bg", "AUTO_STOP=0", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith(
        "training v1 in the background (tmux session train-v1); the pod stops itself afterwards as with `make train`\n"
        "follow it: `make logs`; its terminal: `tmux -L musubi-workspace attach -t train-v1` (detach: Ctrl-b d)\n"
    )
    [tmux] = ready.calls("tmux")[-1:]
    assert tmux["argv"][:7] == ["-L", "musubi-workspace", "new-session", "-d", "-s", "train-v1", "-c"]
    assert tmux["argv"][-1].endswith("/ws train --config configs/v1/config.toml --strict 0 --auto-stop 0 --restart 0")
    wait_for(lambda: ready.calls("accelerate"))  # the run in tmux holds the version: its trainer waits
    [data] = records(ready, "train")
    tmux_calls = len(ready.calls("tmux"))
    again = ready.make("train-bg", env=env)
    assert again.returncode == 2 and again.stderr.rstrip().endswith("] Error 5")
    assert error_line(again) == (
        f"error: configs/v1 is in use: make train (pid {data['pid']}) since {since(ready)}, "
        f"log runs/v1/{data['id']}/log.txt; see it with make runs or make logs, or wait for it to end"
    )
    assert len(ready.calls("tmux")) == tmux_calls  # refused before tmux
    logs = subprocess.Popen(
        ["make", "--no-print-directory", "logs"],
        cwd=ready.root,
        env=ready.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = logs.stdout.readline()
        go.touch()
        rest, err = logs.communicate(timeout=60)
    finally:
        logs.kill()
    assert logs.returncode == 0, err
    [data] = records(ready, "train")
    lines = [first.rstrip("\n"), *rest.splitlines()]
    assert lines[0] == f"following runs/v1/{data['id']}/log.txt (running); Ctrl-C stops following, not the run"
    assert "step 30/1000 · loss 0.1102 · 0.05 s/step · 48s left" in lines
    assert lines[-1] == f"run {data['id']} ended: succeeded"
    assert data["status"] == "succeeded"


def test_train_bg_dry_run_shows_the_tmux_command(ready):
    r = ready.make("train-bg", "DRY_RUN=1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("tmux -L musubi-workspace new-session -d -s train-v1 -c ")
    assert ready.calls("tmux") == []


def test_make_logs_before_any_run(ready):
    r = ready.make("logs")
    assert r.returncode == 2
    assert error_line(r) == "error: runs/: no run yet; `make train` (or `make train-bg`) starts one"
