"""`make smoke` against the recording stand-ins: its orchestration (the real make targets, in order, in a
throw-away workspace), the checks it makes after each step (passing and failing) and its exit codes.

The stand-ins write files in their real formats here (STANDIN_REAL_FILES=1: safetensors caches and LoRAs,
PNG samples, tensorboard scalars), so the smoke's checks run on what they would see on a GPU.

A full chain takes seconds: the tests that look at one passed smoke, or at a second smoke after it, share those
runs (`passed`, `second`: made once per test run, whichever test process asks first)."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import pytest
import tomllib
from conftest import TmpWorkspace, built_once, clone, copy_workspace, error_line, isolated_env

STEPS = (
    "models",
    "workspace",
    "cache",
    "cache again",
    "caption",
    "train",
    "resume",
    "validate",
    "generate",
    "report",
    "runs",
)
# The stand-ins' settings of every smoke here.
SMOKE_ENV = dict(STANDIN_REAL_FILES="1", STANDIN_STEPS="all", STANDIN_STEP_SECONDS="0")


@pytest.fixture
def smoke_ws(ws):
    ws.env.update(SMOKE_ENV)
    return ws


@dataclass
class Smoked:
    """A `make smoke` that ran: its workspace, its result, and what the stand-ins saw (taken right after it)."""

    ws: TmpWorkspace
    r: subprocess.CompletedProcess
    calls: list[dict]
    pod_calls: list[dict]


def smoke_once(tmp_path_factory, name: str, workspace, env: dict | None = None) -> Smoked:
    """`make smoke` (from step 1) in the workspace `workspace(folder)` makes, once per test run (`built_once`):
    the tests that look at the same smoke share it."""

    def build(folder: Path) -> None:
        ws = workspace(folder)
        r = ws.make("smoke", env=env, timeout=300)
        result = dict(returncode=r.returncode, stdout=r.stdout, stderr=r.stderr, calls=ws.calls(), pods=pod_calls(ws))
        (folder / "smoke.json").write_text(json.dumps(result))

    folder = built_once(tmp_path_factory, name, build)
    result = json.loads((folder / "smoke.json").read_text())
    ws = TmpWorkspace(root=folder / "workspace", env={**isolated_env(folder), **SMOKE_ENV})
    r = subprocess.CompletedProcess(["make", "smoke"], result["returncode"], result["stdout"], result["stderr"])
    return Smoked(ws, r, result["calls"], result["pods"])


@pytest.fixture(scope="module")
def passed(tmp_path_factory, example_template) -> Smoked:
    """One `make smoke` from step 1 (one GPU), in a fresh workspace copy: the full chain."""

    def workspace(folder: Path) -> TmpWorkspace:
        ws = copy_workspace(example_template, folder)
        ws.env.update(SMOKE_ENV)
        return ws

    return smoke_once(tmp_path_factory, "smoke-passed", workspace)


@pytest.fixture(scope="module")
def second(tmp_path_factory, passed) -> Smoked:
    """A second `make smoke` from step 1, with two GPUs, in a copy of the passed one's workspace: its models in
    place and a file left in its throw-away workspace (`.cache/smoke/ws/leftover`)."""
    assert passed.r.returncode == 0, passed.r.stdout + passed.r.stderr

    def workspace(folder: Path) -> TmpWorkspace:
        ws = clone(passed.ws, folder)
        (ws.root / ".cache" / "smoke" / "ws" / "leftover").write_text("x")
        return ws

    return smoke_once(tmp_path_factory, "smoke-second", workspace, env={"STANDIN_GPUS": "2"})


def step_lines(out: str) -> list[str]:
    return [l for l in out.splitlines() if re.match(r"^\[\d+/\d+\] ", l)]


def is_validate(argv: list[str]) -> bool:
    """`make validate`'s accelerate call (the offline scoring module), not a training."""
    return "musubi_workspace.validation.offline" in argv


def pod_calls(ws) -> list[dict]:
    p = ws.root / ".cache" / "smoke" / "runpodctl.jsonl"
    return [json.loads(l) for l in p.read_text().splitlines()] if p.exists() else []


def test_smoke_runs_every_step_through_the_real_targets_and_passes(passed):
    ws, r = passed.ws, passed.r
    assert r.returncode == 0, r.stdout + r.stderr
    lines = step_lines(r.stdout)
    assert [re.match(r"^\[\d+/11\] (.+?) ✓ \d+m\d\ds: ", l).group(1) for l in lines] == list(STEPS), r.stdout
    assert re.search(r"^smoke: 11/11 steps passed in \d+\.\d min$", r.stdout, re.M), r.stdout
    # The scripts ran in the throw-away workspace, offline, never in the user's.
    scratch = ws.root / ".cache" / "smoke" / "ws"
    calls = passed.calls
    progs = [c["prog"] for c in calls]
    assert progs.count("random_models") == 1
    # cache: both scripts, then both on the validation set; cache again: none; caption: the text-encoder script
    # only; train, resume; validate (where the Makefile has it); generate. (loop: the caches read through
    # musubi-tuner's dataset, where it imports.)
    validate = [c["argv"] for c in calls if c["prog"] == "accelerate" and is_validate(c["argv"])]
    assert [p for p in progs if p not in ("random_models", "loop")] == [
        "fpack_cache_latents",
        "fpack_cache_text_encoder_outputs",
        "fpack_cache_latents",
        "fpack_cache_text_encoder_outputs",
        "fpack_cache_text_encoder_outputs",
        "accelerate",
        "accelerate",
        *["accelerate"] * len(validate),
        "fpack_generate_video",
    ]
    for c in calls[1:]:
        assert Path(c["cwd"]) == scratch
        assert c["env"]["HF_HUB_OFFLINE"] == "1" and c["env"]["WANDB_MODE"] == "offline"
        assert "HF_TOKEN" not in c["env"]
    resume = [c for c in calls if c["prog"] == "accelerate"][1]["argv"]
    if validate:  # `make validate` (where the Makefile has it): the resumed LoRA
        assert len(validate) == 1 and "outputs/v1/example-1f_v1-resume2.safetensors" in validate[0]
    assert resume[resume.index("--max_train_steps") + 1] == "2"
    # The user's workspace is untouched: no runs, outputs or caches of the smoke there.
    assert not (ws.root / "runs").exists() and not (ws.root / "outputs").exists()
    assert not (ws.root / "cache" / "v1").exists()
    # The pod stop: once, after training, with the smoke's pod id; not after the cancelled resume.
    assert [c["argv"] for c in passed.pod_calls] == [["pod", "stop", "smoke-pod"]]


def test_the_smoke_trains_with_the_validation_and_checks_and_prints_its_numbers(passed):
    """The held-out set `make example` writes is cached by the cache step; training runs with the validation on;
    `make validate` scores the resumed LoRA; the report draws validation.png. Each step's line prints what it
    checked."""
    from musubi_workspace.validation import records

    r = passed.r
    assert r.returncode == 0, r.stdout + r.stderr
    lines = {re.match(r"^\[\d+/11\] (.+?) ✓", l).group(1): l for l in step_lines(r.stdout)}
    scratch = passed.ws.root / ".cache" / "smoke" / "ws"
    out = scratch / "outputs" / "v1"
    # The set in the smoke's version, as configs/v1 names it; cached beside the training data.
    config = tomllib.loads((scratch / "configs" / "v1" / "config.toml").read_text())["workspace"]
    assert config["validation"] == "validation/dataset.toml" and "validation_timesteps" not in config
    items = len((scratch / "validation" / "example-1f" / "validation.jsonl").read_text().splitlines())
    assert items >= 1
    assert len(list((scratch / "cache" / "validation" / "example-1f").glob("*_fp_te.safetensors"))) == items
    assert f"the validation set's {items} + {items} in cache/validation/example-1f" in lines["cache"]
    # `make validate` on the resumed LoRA: the JSON beside it now by "make validate".
    validated = records.read_beside(out / "example-1f_v1-resume2.safetensors")
    if re.search(r"^validate:", (scratch / "Makefile").read_text(), re.M):
        assert validated.by == "make validate" and validated.lora == "example-1f_v1-resume2.safetensors"
        assert f"example-1f_v1-resume2.safetensors: validation loss {validated.loss:.4g} at step" in lines["validate"]
    else:  # the target not in this workspace's Makefile yet: the step says so in its line
        assert lines["validate"].endswith("skipped: this workspace's Makefile has no `validate` target (not checked)")
    # The report's validation plot, decoded, where this `make report` draws one.
    from PIL import Image

    if find_spec("musubi_workspace.report.validation") is not None:
        with Image.open(scratch / "runs" / "report" / "validation.png") as img:
            img.load()
        assert "(the validation plot validation.png among them, decoded)" in lines["report"]
    else:
        assert lines["report"].endswith("validation plot skipped: this `make report` draws none (not checked)")


def test_models_are_reused_and_the_scratch_workspace_is_made_anew(passed, second):
    assert passed.r.returncode == 0
    r = second.r
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (second.ws.root / ".cache" / "smoke" / "ws" / "leftover").exists()
    assert [c["argv"] for c in second.pod_calls] == [["pod", "stop", "smoke-pod"]]


def test_a_failing_script_stops_the_smoke_at_its_step_naming_the_log(smoke_ws):
    ws = smoke_ws
    r = ws.make("smoke", env={"STANDIN_EXIT_FPACK_CACHE_LATENTS": "1"}, timeout=300)
    assert r.returncode == 2 and "smoke] Error 4" in r.stderr  # exit code 4: a program failed
    lines = step_lines(r.stdout)
    assert lines[-1].startswith("[3/11] cache ✗ ")
    assert error_line(r) == (
        "error: smoke: step 3/11 (cache) failed: `make cache` failed with exit code 2; "
        "log: .cache/smoke/logs/03-cache.log"
    )
    assert "fpack_cache_latents" in (ws.root / ".cache/smoke/logs/03-cache.log").read_text()
    assert not any(c["prog"] == "accelerate" for c in ws.calls())


def test_a_lora_with_the_wrong_keys_fails_the_train_step(smoke_ws):
    ws = smoke_ws
    r = ws.make("smoke", env={"STANDIN_LORA_KEYS": "lora_te_"}, timeout=300)
    assert r.returncode == 2 and "smoke] Error 3" in r.stderr  # exit code 3: a check failed
    assert error_line(r).startswith(
        "error: smoke: step 6/11 (train) failed: .cache/smoke/ws/outputs/v1/example-1f_v1-step00000002.safetensors: "
        "expected only `lora_unet_` keys"
    )
    assert error_line(r).endswith("log: .cache/smoke/logs/06-train.log")


def test_a_trainer_that_saves_no_lora_fails_the_train_step(smoke_ws):
    ws = smoke_ws
    r = ws.make("smoke", env={"STANDIN_NO_LORA": "1"}, timeout=300)
    assert r.returncode == 2 and "smoke] Error 3" in r.stderr
    assert error_line(r) == (
        "error: smoke: step 6/11 (train) failed: no LoRA .cache/smoke/ws/outputs/v1/example-1f_v1-step00000002.safetensors; "
        "log: .cache/smoke/logs/06-train.log"
    )


def test_caches_in_the_wrong_format_fail_the_cache_step(smoke_ws):
    ws = smoke_ws
    ws.env.pop("STANDIN_REAL_FILES")  # the cache stand-ins then write JSON, not safetensors
    r = ws.make("smoke", timeout=300)
    assert r.returncode != 0
    assert re.fullmatch(
        r"error: smoke: step 3/11 \(cache\) failed: .*item0\d_0512x0768_fp.safetensors: not a "
        r"safetensors file .*; log: \.cache/smoke/logs/03-cache\.log",
        error_line(r),
    ), error_line(r)


def test_a_pod_stop_that_fails_fails_the_train_step(smoke_ws):
    """The stand-in runpodctl of the smoke answers; with a failing `make train` (its stop then fails) the smoke
    stops at train. Here the trainer fails: the step names it and nothing after train runs."""
    ws = smoke_ws
    r = ws.make("smoke", env={"STANDIN_FAIL_AT": "1"}, timeout=300)
    assert r.returncode == 2 and "smoke] Error 4" in r.stderr
    assert error_line(r).startswith("error: smoke: step 6/11 (train) failed: `make train AUTO_STOP=1s` failed")
    assert [c["prog"] for c in ws.calls()].count("accelerate") == 1


def test_with_two_gpus_train_and_resume_run_two_processes_and_save_and_stop_once(second):
    """num_processes = "auto" in configs/v1: one process per GPU, as `make train` does. The once-only actions
    still happen once: each LoRA saved once (one "saving checkpoint" line each), one pod stop."""
    r = second.r
    assert r.returncode == 0, r.stdout + r.stderr
    train_line = next(l for l in step_lines(r.stdout) if "] train ✓" in l)
    assert train_line.endswith("(2 processes)")
    accelerate = [c for c in second.calls if c["prog"] == "accelerate" and not is_validate(c["argv"])]
    assert len(accelerate) == 2  # train and resume
    for call in accelerate:
        argv = call["argv"]
        assert argv[argv.index("--num_processes") + 1] == "2" and "--multi_gpu" in argv
    assert [c["argv"] for c in second.pod_calls] == [["pod", "stop", "smoke-pod"]]


def test_smoke_from_a_step_goes_on_where_the_last_smoke_stopped(smoke_ws):
    """A GPU machine's command limit can cut a smoke: SMOKE_FROM runs the rest, once the steps before it passed."""
    ws = smoke_ws
    r = ws.make("smoke", "SMOKE_FROM=resume", timeout=300)
    assert r.returncode == 2 and "smoke] Error 2" in r.stderr  # bad input: nothing passed here yet
    assert error_line(r) == (
        "error: SMOKE_FROM=resume: the last smoke here did not pass models, workspace, cache, "
        "cache again, caption, train; run `make smoke` from the start (or from the first of those)"
    )
    r = ws.make("smoke", env={"STANDIN_EXIT_FPACK_GENERATE_VIDEO": "1"}, timeout=300)
    assert r.returncode == 2 and "step 9/11 (generate) failed" in r.stderr
    ws.record.unlink()
    r = ws.make("smoke", "SMOKE_FROM=generate", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = step_lines(r.stdout)
    assert [l.split(" – ")[0] for l in lines[:8]] == [f"[{i}/11] {n}" for i, n in enumerate(STEPS[:8], 1)]
    assert all("passed in the last smoke (SMOKE_FROM=generate)" in l for l in lines[:8])
    assert [re.match(r"^\[\d+/11\] (.+?) ✓", l).group(1) for l in lines[8:]] == ["generate", "report", "runs"]
    assert re.search(r"^smoke: 11/11 steps passed in \d+\.\d min \(steps 9-11 in this run\)$", r.stdout, re.M)
    assert [c["prog"] for c in ws.calls()] == ["fpack_generate_video"]
    r = ws.make("smoke", "SMOKE_FROM=banana", timeout=300)
    assert error_line(r) == (
        "error: SMOKE_FROM=banana: not a step of the smoke; give one of models, workspace, cache, "
        "cache again, caption, train, resume, validate, generate, report, runs (or 1-11)"
    )


# `make smoke SMOKE_FROM=train` after a whole smoke: training again in the same throw-away workspace, e.g. on two
# GPUs after one (a two-GPU machine proves both without making the models and caches twice).
def test_training_again_from_train_on_two_gpus_checks_only_the_new_runs_files(passed, tmp_path):
    assert passed.r.returncode == 0, passed.r.stdout + passed.r.stderr  # one GPU, from step 1
    ws = clone(passed.ws, tmp_path)
    scratch = ws.root / ".cache" / "smoke" / "ws"
    config = scratch / "configs" / "v1" / "config.toml"
    assert "max_train_steps = 4" in config.read_text()  # raised by `resume`
    old_state = scratch / "outputs" / "v1" / "example-1f_v1-resume2-state"
    assert old_state.is_dir()
    before = len(ws.calls()) if ws.record.exists() else 0

    r = ws.make("smoke", "SMOKE_FROM=train", env={"STANDIN_GPUS": "2"}, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    # outputs/v1, runs/report, the pod-stop record and the records of train, resume and generate
    assert "smoke: from train: removed what training wrote before: 7 path(s)" in r.stdout
    lines = step_lines(r.stdout)
    assert [re.match(r"^\[\d+/11\] (.+?) ✓", l).group(1) for l in lines[5:]] == [
        "train",
        "resume",
        "validate",
        "generate",
        "report",
        "runs",
    ]
    assert lines[5].endswith("(2 processes)")
    accelerate = [c["argv"] for c in ws.calls()[before:] if c["prog"] == "accelerate" and not is_validate(c["argv"])]
    assert len(accelerate) == 2 and all(a[a.index("--num_processes") + 1] == "2" for a in accelerate)
    resume = accelerate[1]
    assert resume[resume.index("--max_train_steps") + 1] == "2"  # 2 left of 4: from this run's state at step 2
    # One pod stop, from this run's training: the first smoke's record went with its outputs.
    assert [c["argv"] for c in pod_calls(ws)] == [["pod", "stop", "smoke-pod"]]
    records = sorted((scratch / "runs" / "v1").glob("*/run.json"))
    targets = sorted(json.loads(p.read_text())["target"] for p in records)
    assert targets == ["cache", "cache", "generate", "resume", "train", "validate"]
