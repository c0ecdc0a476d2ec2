"""`make resume`: the newest state (local, or the Hugging Face copy), the steps left, files that never
overwrite the earlier run's."""

from __future__ import annotations

import json
import os
import shlex
import time

from conftest import error_line

from runs.test_ledger import PYLIB

OUT = "outputs/v1"
NAME = "example-1f_v1"


def state(w, name: str, age: float) -> None:
    d = w.root / OUT / name
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"state")
    t = time.time() - age
    os.utime(d, (t, t))


def argv_tail(stdout: str) -> list[str]:
    cmd = shlex.split(stdout.strip().splitlines()[-1])
    return cmd[cmd.index("--config_file") + 2 :]


def test_resume_picks_the_newest_local_state_and_trains_the_steps_left(ready):
    state(ready, f"{NAME}-step00000400-state", age=100)
    state(ready, f"{NAME}-step00000200-state", age=200)
    r = ready.make("resume", "DRY_RUN=1")
    assert r.returncode == 0, r.stderr
    assert f"resume: from {OUT}/{NAME}-step00000400-state (local, the newest state: step 400 of 1000)\n" in r.stdout
    assert (
        "resume: musubi-tuner counts steps from 0 again, so this run trains the 600 steps left (--max_train_steps 600); "
        f"its files are named {NAME}-resume400-… so the earlier ones stay\n"
    ) in r.stdout
    assert argv_tail(r.stdout) == [
        "--resume",
        f"{OUT}/{NAME}-step00000400-state",
        "--max_train_steps",
        "600",
        "--output_name",
        f"{NAME}-resume400",
    ]


def test_a_resumed_run_continues_where_it_stood_and_the_next_resume_knows(cached):
    ready = cached
    state(ready, f"{NAME}-step00000400-state", age=100)
    r = ready.make(
        "resume", "AUTO_STOP=0", env={"STANDIN_STEPS": "all", "STANDIN_STEP_SECONDS": "0.001", "STANDIN_FAIL_AT": "250"}
    )
    assert r.returncode == 2
    [call] = ready.calls("accelerate")
    assert call["argv"][-6:] == [
        "--resume",
        f"{OUT}/{NAME}-step00000400-state",
        "--max_train_steps",
        "600",
        "--output_name",
        f"{NAME}-resume400",
    ]
    assert "step 650/1000 · loss" in r.stdout  # absolute steps on screen
    [path] = (ready.root / "runs").glob("v1/*-resume/run.json")
    data = json.loads(path.read_text())
    assert data["resume"] == {
        "from": f"{OUT}/{NAME}-step00000400-state",
        "source": "local",
        "step_offset": 400,
        "steps_left": 600,
        "output_name": f"{NAME}-resume400",
    }
    assert data["progress"]["last_step"] == 650 and data["progress"]["total_steps"] == 1000
    assert {"name": f"{NAME}-resume400-step00000200-state", "step": 600} in data["states"]
    assert (ready.root / OUT / f"{NAME}-step00000400-state").is_dir()  # the earlier state is kept
    # the next resume starts from the resumed run's newest state: 400 + 200
    r = ready.make("resume", "DRY_RUN=1")
    assert (
        f"resume: from {OUT}/{NAME}-resume400-step00000200-state (local, the newest state: step 600 of 1000)"
        in r.stdout
    )
    assert argv_tail(r.stdout)[-4:] == ["--max_train_steps", "400", "--output_name", f"{NAME}-resume600"]


def test_a_finished_run_has_nothing_left_to_resume(cached):
    ready = cached
    r = ready.make("train", "AUTO_STOP=0", env={"STANDIN_STEPS": "all", "STANDIN_STEP_SECONDS": "0"})
    assert r.returncode == 0, r.stderr
    r = ready.make("resume", "DRY_RUN=1")
    assert r.returncode == 2
    assert error_line(r) == (
        f"error: {OUT}/{NAME}-state already holds 1000 steps of max_train_steps = 1000: nothing left to train; "
        f"raise max_train_steps (configs/v1/config.toml:{ready.read('configs/v1/config.toml').splitlines().index('max_train_steps = 1000') + 1}) to train on"
    )


def test_resume_from_the_hugging_face_copy_when_there_is_no_local_state(ready):
    cfg = ready.read("configs/v1/config.toml").replace(
        '# huggingface_repo_id = "your-hf-name/example-1f"', 'huggingface_repo_id = "me/example-1f"'
    )
    ready.write("configs/v1/config.toml", cfg)
    files = [
        f"v1/{NAME}-step00000100-state/model.safetensors",
        f"v1/{NAME}-step00000300-state/model.safetensors",
        f"v1/{NAME}-step00000300.safetensors",
        "v2/other-step00000900-state/model.safetensors",
    ]
    r = ready.make("resume", "DRY_RUN=1", env={"STANDIN_HF_FILES": json.dumps(files), **PYLIB})
    assert r.returncode == 0, r.stderr
    assert (
        f"resume: from me/example-1f/v1/{NAME}-step00000300-state (Hugging Face, the newest state: step 300 of 1000)"
        in r.stdout
    )
    assert argv_tail(r.stdout) == [
        "--resume_from_huggingface",
        "--resume",
        f"me/example-1f/v1/{NAME}-step00000300-state",
        "--max_train_steps",
        "700",
        "--output_name",
        f"{NAME}-resume300",
    ]


def test_hugging_face_unreachable_falls_back_to_the_local_state(ready):
    cfg = ready.read("configs/v1/config.toml").replace(
        '# huggingface_repo_id = "your-hf-name/example-1f"', 'huggingface_repo_id = "me/example-1f"'
    )
    ready.write("configs/v1/config.toml", cfg)
    state(ready, f"{NAME}-step00000100-state", age=10)
    r = ready.make("resume", "DRY_RUN=1", env={"STANDIN_HF_FAIL": "1", **PYLIB})
    assert r.returncode == 0, r.stderr
    assert (
        "resume: cannot list me/example-1f on Hugging Face (RuntimeError: 503 Server Error: Service Unavailable); looking at local states only"
        in r.stderr
    )
    assert "(local, the newest state: step 100 of 1000)" in r.stdout


def test_resume_without_any_state_says_what_to_do(ready):
    r = ready.make("resume", "DRY_RUN=1")
    assert r.returncode == 2
    assert error_line(r) == (
        f"error: configs/v1/config.toml: no saved state of `{NAME}` in {OUT}; states are saved with save_state = true; "
        "`make train` starts from the beginning"
    )
    assert ready.calls("accelerate") == []
