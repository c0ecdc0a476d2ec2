"""The pod stop: after `make train` however it ends, not when cancelled or off RunPod; `make stop`; both
runpodctl syntaxes. Stand-ins: the trainer (tests/bin/_behave_accelerate.py) and runpodctl."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from conftest import error_line

POD = "pod123"
RP_KEY = "rpa_" + "K" * 40


@pytest.fixture
def pod(cached):
    """`ready`, on a RunPod pod: the id (and runpodctl's key) only in RunPod's environment file."""
    (cached.root.parent / "rp_environment").write_text(
        f'export RUNPOD_POD_ID="{POD}"\nexport RUNPOD_API_KEY="{RP_KEY}"\n'
    )
    return cached


def stops(w) -> list[list[str]]:
    return [c["argv"] for c in w.calls("runpodctl")]


def run_json(w, target="train") -> dict:
    [path] = (w.root / "runs").glob(f"v1/*-{target}/run.json")
    return json.loads(path.read_text())


def popen_make(w, *args, env=None) -> subprocess.Popen:
    """make in its own session, so a test can send Ctrl-C to the whole foreground group as a terminal does."""
    return subprocess.Popen(
        ["make", "--no-print-directory", *args],
        cwd=w.root,
        env={**w.env, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for(check, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def ended(w) -> bool:
    """The run is over and the grace period counts down."""
    paths = list((w.root / "runs").glob("v1/*-train/run.json"))
    return bool(paths and pending(w)) and json.loads(paths[0].read_text())["status"] != "running"


def log_has(w, text: str) -> bool:
    return any(text in p.read_text(errors="replace") for p in (w.root / "runs").glob("v1/*-train/log.txt"))


def pending(w) -> list:
    return list((w.root / "runs").glob(".stop-pending-*")) if (w.root / "runs").is_dir() else []


def test_success_stops_the_pod_after_the_grace_period(pod):
    r = pod.make("train", "AUTO_STOP=1s", env={"STANDIN_STEPS": "3"})
    assert r.returncode == 0, r.stderr
    assert (
        f"auto-stop: pod {POD} stops 1s after this run ends, however it ends (`make cancel-stop` keeps it; AUTO_STOP=0 turns it off)"
        in r.stdout
    )
    assert "to keep it: `make cancel-stop`, or Ctrl-C here" in r.stdout
    assert f'auto-stop: `runpodctl pod stop {POD}`: pod "{POD}" stopped' in r.stdout
    assert stops(pod) == [["pod", "stop", POD]]
    [stop] = pod.calls("runpodctl")
    [train] = pod.calls("accelerate")
    assert stop["time"] - train["time"] >= 1.0  # the grace period passed first
    assert stop["env"]["RUNPOD_API_KEY"] == RP_KEY  # from RunPod's file, for runpodctl
    assert RP_KEY not in r.stdout + r.stderr
    assert run_json(pod)["auto_stop"] == {"pod": POD, "grace_s": 1, "source": "AUTO_STOP", "outcome": "stopped"}
    assert not pending(pod)


@pytest.mark.parametrize(
    "env, status, message, code",
    [
        ({"STANDIN_FAIL_AT": "3"}, "failed", "error: train failed with exit code 1", 1),
        (
            {"STANDIN_KILL_AT": "3"},
            "killed",
            "error: train was killed by SIGKILL (an out-of-memory kill looks like this; see the log)",
            4,
        ),
        (
            {"STANDIN_HANG_AT": "3"},
            "hung",
            "error: train ended as failed: no new training step for 1s ([workspace] hang_timeout = 1s)",
            4,
        ),
    ],
    ids=["trainer-fails", "trainer-killed", "trainer-hangs"],
)
def test_every_failure_of_the_trainer_is_followed_by_the_stop(pod, env, status, message, code):
    cfg = pod.read("configs/v1/config.toml").replace('hang_timeout = "30m"', 'hang_timeout = "1s"')
    pod.write("configs/v1/config.toml", cfg)
    r = pod.make("train", "AUTO_STOP=1s", env={"STANDIN_STEPS": "all", **env})
    assert r.returncode == 2 and f"Error {code}" in r.stderr
    assert error_line(r) == message
    assert stops(pod) == [["pod", "stop", POD]]
    data = run_json(pod)
    assert data["status"] == status and data["progress"]["last_step"] == 3
    assert data["auto_stop"]["outcome"] == "stopped"
    # the stop came after the failure was told, not before
    out = r.stdout
    assert out.index(f"==> train {status} after") < out.index("auto-stop: stopping pod")


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_interrupting_make_ends_the_run_and_the_stop_follows(pod, how):
    p = popen_make(pod, "train", "AUTO_STOP=1s", env={"STANDIN_STEPS": "all", "STANDIN_STEP_SECONDS": "0.05"})
    try:
        wait_for(lambda: log_has(pod, "| 3/1000"))
        if how == "ctrl-c":
            os.killpg(p.pid, signal.SIGINT)  # what a terminal does: make and the tool both get it
        else:
            p.send_signal(signal.SIGTERM)  # to make alone: make passes SIGTERM on
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    why = "Ctrl-C" if how == "ctrl-c" else "SIGTERM"
    assert f"==> {why}: stopping train (its whole process group); Ctrl-C again kills it now" in out
    assert stops(pod) == [["pod", "stop", POD]]
    data = run_json(pod)
    assert data["status"] == "interrupted" and data["exit_code"] == (130 if how == "ctrl-c" else 143)
    assert f"error: train interrupted ({why})" in err
    assert data["progress"]["last_step"] < 1000


def test_make_cancel_stop_during_the_grace_period_keeps_the_pod(pod):
    p = popen_make(pod, "train", "AUTO_STOP=30s", env={"STANDIN_STEPS": "2"})
    try:
        wait_for(lambda: ended(pod))
        time.sleep(0.3)
        c = pod.make("cancel-stop")
        out, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert (
        c.returncode == 0
        and c.stdout == f"auto-stop cancelled: pod {POD} keeps running after the run (stop it with `make stop`)\n"
    )
    assert p.returncode == 0, err
    assert f"auto-stop: cancelled (`make cancel-stop`): pod {POD} keeps running" in out
    assert stops(pod) == []
    assert run_json(pod)["auto_stop"]["outcome"] == "cancelled"


def test_make_cancel_stop_while_training_keeps_the_pod_after_the_run(pod):
    p = popen_make(
        pod,
        "train",
        "AUTO_STOP=1s",
        env={"STANDIN_STEPS": "all", "STANDIN_STEP_SECONDS": "0.05", "STANDIN_FAIL_AT": "30"},
    )
    try:
        wait_for(lambda: log_has(pod, "| 2/1000"))
        assert pod.make("cancel-stop").returncode == 0
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert f"auto-stop: cancelled during the run (`make cancel-stop`): pod {POD} keeps running" in out
    assert stops(pod) == []


def test_ctrl_c_during_the_grace_period_keeps_the_pod(pod):
    p = popen_make(pod, "train", "AUTO_STOP=30s", env={"STANDIN_STEPS": "2"})
    try:
        wait_for(lambda: ended(pod))
        time.sleep(0.3)
        os.killpg(p.pid, signal.SIGINT)
        out, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert f"auto-stop: cancelled (Ctrl-C): pod {POD} keeps running" in out
    assert stops(pod) == []


def test_off_runpod_nothing_is_stopped_and_it_says_so(cached):
    ready = cached
    r = ready.make("train", "AUTO_STOP=1s", env={"STANDIN_STEPS": "2"})
    assert r.returncode == 0, r.stderr
    rp = ready.root.parent / "rp_environment"
    assert f"auto-stop: not on RunPod (RUNPOD_POD_ID not set, {rp} not found): nothing will be stopped" in r.stdout
    assert f"auto-stop: not on RunPod (RUNPOD_POD_ID not set, {rp} not found): nothing is stopped" in r.stdout
    assert stops(ready) == []
    assert run_json(ready)["auto_stop"]["outcome"] == "not on RunPod"


def test_auto_stop_zero_turns_it_off_and_the_setting_is_the_default(pod):
    r = pod.make("train", "AUTO_STOP=0", env={"STANDIN_STEPS": "2"})
    assert f"auto-stop: off (AUTO_STOP): pod {POD} keeps running" in r.stdout
    cfg = pod.read("configs/v1/config.toml").replace('auto_stop = "10m"', 'auto_stop = "off"')
    pod.write("configs/v1/config.toml", cfg)
    r = pod.make("train", env={"STANDIN_STEPS": "2"})
    assert f"auto-stop: off ([workspace] auto_stop): pod {POD} keeps running after this run" in r.stdout
    assert stops(pod) == []


def test_a_bad_auto_stop_value_is_one_line_and_nothing_runs(pod):
    r = pod.make("train", "AUTO_STOP=soon")
    assert r.returncode == 2
    assert (
        error_line(r)
        == """error: AUTO_STOP=soon: expected a duration such as "10m", "30s", "1h" or "off", got 'soon'"""
    )
    assert pod.calls("accelerate") == [] and stops(pod) == []


def test_uploads_still_running_finish_before_the_stop(pod):
    r = pod.make("train", "AUTO_STOP=0s", env={"STANDIN_STEPS": "2", "STANDIN_UPLOAD_SECONDS": "1.5"})
    assert r.returncode == 0, r.stderr
    r = pod.make("train", "AUTO_STOP=1s", env={"STANDIN_STEPS": "2", "STANDIN_UPLOAD_SECONDS": "1.5"})
    assert (
        "==> waiting for 1 process(es) the program left running (uploads, wandb sync) to finish; Ctrl-C stops waiting"
        in r.stdout
    )
    uploads = [c["time"] for c in pod.calls("upload-done")]
    [stop] = pod.calls("runpodctl")
    assert len(uploads) == 2 and uploads[1] < stop["time"]


def test_pod_id_from_the_environment(ready):
    r = ready.make("stop", env={"RUNPOD_POD_ID": "envpod"})
    assert r.returncode == 0, r.stderr
    assert r.stdout == 'stopping pod envpod now\nauto-stop: `runpodctl pod stop envpod`: pod "envpod" stopped\n'


@pytest.mark.parametrize(
    "syntax, calls",
    [("new", [["pod", "stop", POD]]), ("old", [["pod", "stop", POD], ["stop", "pod", POD]])],
)
def test_make_stop_works_with_either_runpodctl_syntax(pod, syntax, calls):
    r = pod.make("stop", env={"STANDIN_RUNPODCTL_SYNTAX": syntax})
    assert r.returncode == 0, r.stderr
    assert stops(pod) == calls
    used = " ".join(["runpodctl", *calls[-1]])
    assert r.stdout == f'stopping pod {POD} now\nauto-stop: `{used}`: pod "{POD}" stopped\n'


def test_the_old_syntax_is_used_after_training_too(pod):
    r = pod.make("train", "AUTO_STOP=1s", env={"STANDIN_STEPS": "2", "STANDIN_RUNPODCTL_SYNTAX": "old"})
    assert r.returncode == 0, r.stderr
    assert stops(pod) == [["pod", "stop", POD], ["stop", "pod", POD]]


def test_a_stop_that_fails_says_the_pod_still_runs(pod):
    r = pod.make("stop", env={"STANDIN_EXIT_RUNPODCTL": "1"})
    assert r.returncode == 2 and "Error 4" in r.stderr
    assert error_line(r) == (
        f"error: pod {POD} was NOT stopped: `runpodctl pod stop {POD}` (1): Error: stop pod: request failed: 401 Unauthorized; "
        f'`runpodctl stop pod {POD}` (1): Error: unknown command "stop" for "runpodctl"; '
        "stop it in the RunPod console (it costs money while it runs)"
    )
    assert len(stops(pod)) == 6  # both syntaxes, three rounds


def test_make_stop_off_runpod(ready):
    r = ready.make("stop")
    rp = ready.root.parent / "rp_environment"
    assert r.returncode == 2
    assert error_line(r) == f"error: not on RunPod (RUNPOD_POD_ID not set, {rp} not found): nothing to stop"
    assert stops(ready) == []


def test_cancel_stop_with_nothing_pending(ready):
    r = ready.make("cancel-stop")
    assert r.returncode == 0 and r.stdout == "no auto-stop is pending\n"


def test_a_closed_terminal_does_not_end_the_run_or_skip_the_stop(pod):
    p = popen_make(pod, "train", "AUTO_STOP=1s", env={"STANDIN_STEPS": "20", "STANDIN_STEP_SECONDS": "0.05"})
    try:
        wait_for(lambda: log_has(pod, "| 3/1000"))
        os.killpg(p.pid, signal.SIGHUP)  # the SSH connection dropped
        p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    data = run_json(pod)
    assert data["status"] == "succeeded" and data["progress"]["last_step"] == 20
    assert stops(pod) == [["pod", "stop", POD]]
