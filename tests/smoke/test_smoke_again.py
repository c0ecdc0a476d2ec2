"""`make smoke SMOKE_FROM=train` after a whole smoke: training again in the same throw-away workspace, e.g. on two
GPUs after one (a two-GPU machine proves both without making the models and caches twice)."""

from __future__ import annotations

import json
import re

from smoke.test_smoke import pod_calls, step_lines


def test_training_again_from_train_on_two_gpus_checks_only_the_new_runs_files(ws):
    ws.env.update(STANDIN_REAL_FILES="1", STANDIN_STEPS="all", STANDIN_STEP_SECONDS="0")
    one = ws.make("smoke", env={"CUDA_VISIBLE_DEVICES": "0", "STANDIN_GPUS": "2"}, timeout=300)
    assert one.returncode == 0, one.stdout + one.stderr
    scratch = ws.root / ".cache" / "smoke" / "ws"
    config = scratch / "configs" / "v1" / "config.toml"
    assert "max_train_steps = 4" in config.read_text()  # raised by `resume`
    old_state = scratch / "outputs" / "v1" / "example-1f_v1-resume2-state"
    assert old_state.is_dir()
    before = len(ws.calls())

    r = ws.make("smoke", "SMOKE_FROM=train", env={"STANDIN_GPUS": "2"}, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    # outputs/v1, runs/report, the pod-stop record and the records of train, resume and generate
    assert "smoke: from train: removed what training wrote before: 6 path(s)" in r.stdout
    lines = step_lines(r.stdout)
    assert [re.match(r"^\[\d+/10\] (.+?) ✓", l).group(1) for l in lines[5:]] == [
        "train",
        "resume",
        "generate",
        "report",
        "runs",
    ]
    assert lines[5].endswith("(2 processes)")
    accelerate = [c["argv"] for c in ws.calls()[before:] if c["prog"] == "accelerate"]
    assert len(accelerate) == 2 and all(a[a.index("--num_processes") + 1] == "2" for a in accelerate)
    resume = accelerate[1]
    assert resume[resume.index("--max_train_steps") + 1] == "2"  # 2 left of 4: from this run's state at step 2
    # One pod stop, from this run's training: the first smoke's record went with its outputs.
    assert [c["argv"] for c in pod_calls(ws)] == [["pod", "stop", "smoke-pod"]]
    records = sorted((scratch / "runs" / "v1").glob("*/run.json"))
    targets = sorted(json.loads(p.read_text())["target"] for p in records)
    assert targets == ["cache", "cache", "generate", "resume", "train"]
