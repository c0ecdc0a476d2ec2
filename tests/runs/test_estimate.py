"""Time and cost before a run, and the faster measured setting: from a bench table fixture (bench/*.runs.json as
`make bench` writes it) and from this version's earlier run records."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from checks.test_combinations import DATASET, edit

from musubi_workspace.tune import Result, Setting
from runs.test_ledger import records

H200 = {"STANDIN_GPU_NAME": "NVIDIA H200", "STANDIN_GPU_MEM_MIB": "143771"}
GIB = 2**30
# configs/v1 as shipped: batch 16, block swap 20, bf16, sdpa + split_attn, checkpointing.
V1 = Setting(batch_size=16, blocks_to_swap=20, attention="sdpa", split_attn=True, checkpointing=True)
WORKLOAD = {
    "resolution": [512, 768],
    "batch_size": 16,
    "one_frame": True,
    "clean_indices": [0, 10],
    "target_index": 1,
    "no_post": True,
    "no_2x": True,
    "no_4x": True,
    "network_dim": 32,
    "caption_tokens": 77,
}


@pytest.fixture(autouse=True)
def _seed_setting(request):
    """These tests start from the first shipped memory/speed setting (block swap 20, no compile): conftest."""
    for name in ("ws", "ready", "cached"):
        if name in request.fixturenames:
            request.getfixturevalue(name).seed_setting()


def row(s: Setting, secs: float | None, gib: float, status: str = "ok", changes=()) -> dict:
    r = Result(
        setting=s,
        name=s.name(V1),
        status=status,
        step_times=[secs] * 3 if secs else [],
        losses=[3.32, 3.36, 3.32],
        peak_allocated=int(gib * GIB),
        peak_reserved=int(gib * 1.1 * GIB),
        total_memory=int(139.8 * GIB),
        device_name="NVIDIA H200",
        changes=list(changes),
    )
    return r.to_json()


def h200_table(workload=WORKLOAD) -> list[dict]:
    """The issue's H200 measurements as one `make bench` session."""
    swap0c = replace(V1, blocks_to_swap=0, compile=True)
    return [
        {
            "config": "configs/v1/config.toml",
            "command": "make bench CONFIG_FILE=configs/v1/config.toml",
            "steps": 3,
            "gpu": "NVIDIA H200",
            "gpu_memory": int(139.8 * GIB),
            "memory_cap": 0,
            "memory": "",
            "workload": workload,
            "base": {
                "batch_size": 16,
                "blocks_to_swap": 20,
                "pinned": False,
                "weights": "bf16",
                "attention": "sdpa",
                "split_attn": True,
                "checkpointing": True,
                "offload": False,
                "compile": False,
            },
            "measured": "2026-11-26 10:00 UTC",
            "results": [
                row(V1, 19.87, 64.3),
                row(replace(V1, compile=True), 15.80, 61.6),
                row(swap0c, 13.29, 71.8),
                row(replace(swap0c, weights="fp8_scaled"), 13.24, 63.9, changes=["fp8 scaled weights"]),
                row(replace(swap0c, checkpointing=False), None, 0, status="oom"),
            ],
        }
    ]


def with_table(w, sessions=None) -> None:
    w.write("bench/nvidia-h200_v1.runs.json", json.dumps(sessions or h200_table()))


def speed_lines(r) -> list[str]:
    lines = r.stdout.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("time and cost"))
    return lines[start:-1]  # up to the verdict


def test_check_estimates_from_the_bench_table_and_names_a_faster_setting(ready):
    with_table(ready)
    r = ready.tool("check", env=H200)
    assert r.returncode == 0, r.stdout + r.stderr
    assert speed_lines(r) == [
        "time and cost on NVIDIA H200: training: 1000 steps x 19.87 s/step = 5h31m (s/step from "
        "bench/nvidia-h200_v1.runs.json (`current`, 1 measurement(s), random weights, no sampling or saving))",
        # configs/v1's validation set: step 0, the 10 saves (every 100 steps, the cadence too), the end scored once
        # each; 2 items x 5 timesteps; 19.87 / (3 x 16) s a forward
        "  validation: 11 passes (step 0, every 100 steps, each save, the end) x 2 item(s) x 5 timestep(s) = 110 "
        "forwards x 0.414 s = 46s (an item's forward taken as a third of its share of a training step of batch 16)",
        "  sampling, saving and start-up: not included (no finished earlier run of this version on this GPU to take them from)",
        "  estimate: 5h31m, $13.83 at $2.5/h ([workspace] price_per_hour), training steps and validation only",
        "faster: NVIDIA H200: `swap0+compile` measured 1.50x faster than this version's setting (13.29 against 19.87 "
        "s/step, same numbers) in bench/nvidia-h200_v1.runs.json: set blocks_to_swap = 0, compile = true in configs/v1/config.toml",
    ]
    assert r.stdout.splitlines()[-1] == "check configs/v1/config.toml: OK: 0 error(s), 0 warning(s)"


def test_a_session_in_two_tables_counts_once(ready):
    with_table(ready)
    ready.write("bench/merged_v1.runs.json", json.dumps(h200_table()))  # as `ws bench-report --out` writes it
    r = ready.tool("check", env=H200)
    assert "(`current`, 1 measurement(s), random weights, no sampling or saving)" in speed_lines(r)[0]


def test_no_measurement_for_this_gpu_is_said_plainly(ready):
    with_table(ready)
    r = ready.tool("check")  # the stand-in's default GPU: an H100, which the fixture has no table for
    assert speed_lines(r) == [
        "time and cost on NVIDIA H100 80GB HBM3: no measurement for this GPU (NVIDIA H100 80GB HBM3) and these settings "
        "(no earlier run of this version, no bench/ row): no time or cost estimate; `make bench` measures them"
    ]
    none = ready.tool("check", env={"STANDIN_GPUS": "0"})
    assert speed_lines(none) == ["time and cost: no GPU visible (nvidia-smi): no time or cost estimate"]


def test_a_table_of_one_gpu_does_not_estimate_a_run_on_two_and_one_of_two_does(ready):
    with_table(ready)
    two = {**H200, "STANDIN_GPUS": "2"}
    r = ready.tool("check", env=two)
    assert speed_lines(r)[0].startswith(
        "time and cost on NVIDIA H200: no measurement for this GPU (NVIDIA H200 x2) and these settings"
    )
    assert not any(l.startswith("faster:") for l in r.stdout.splitlines())
    sessions = h200_table()
    sessions[0].update(processes=2, results=[{**row(V1, 20.9, 64.3), "processes": 2}])
    ready.write("bench/nvidia-h200_v1_2gpus.runs.json", json.dumps(sessions))
    r = ready.tool("check", env=two)
    assert speed_lines(r)[0] == (
        "time and cost on NVIDIA H200: training: 1000 steps x 20.90 s/step = 5h48m (s/step from "
        "bench/nvidia-h200_v1_2gpus.runs.json (`current`, 1 measurement(s), random weights, no sampling or saving))"
    )
    one = ready.tool("check", env=H200)  # one GPU: still the one-GPU row
    assert "19.87 s/step" in speed_lines(one)[0]


def test_another_workload_shape_is_not_compared(ready):
    with_table(ready)
    edit(ready, DATASET, "general", batch_size=8)
    r = ready.tool("check", env=H200)
    assert speed_lines(r)[0].startswith("time and cost on NVIDIA H200: no measurement for this GPU")
    assert not any(l.startswith("faster:") for l in r.stdout.splitlines())


def test_no_line_when_the_version_already_runs_the_fastest_setting(ready):
    with_table(ready)
    text = ready.read("configs/v1/config.toml").replace("blocks_to_swap = 20", "blocks_to_swap = 0\ncompile = true")
    ready.write("configs/v1/config.toml", text)
    r = ready.tool("check", env=H200)
    assert "13.29 s/step" in speed_lines(r)[0]
    assert not any(l.startswith("faster:") for l in r.stdout.splitlines())


def test_train_prints_the_estimate_keeps_it_in_run_json_and_make_runs_shows_both(cached):
    with_table(cached)
    r = cached.make("train", "AUTO_STOP=0", env={**H200, "STANDIN_STEPS": "4"})
    assert r.returncode == 0, r.stderr
    assert "  estimate: 5h31m, $13.83 at $2.5/h ([workspace] price_per_hour), training steps and validation only" in (
        r.stderr
    )
    (rec,) = records(cached, "train")
    est = rec["estimate"]
    assert est["total_s"] == 19916 and est["validation_s"] == 46 and est["usd"] == 13.83  # 19870 s of steps + 46 s
    assert rec["estimate"]["source"].startswith("bench/nvidia-h200_v1.runs.json")
    assert rec["estimate"]["gpu"] == "NVIDIA H200" and rec["cost_usd"] is not None
    train_row = cached.make("runs").stdout.splitlines()[-1]
    assert train_row.split()[-2:] == ["5h31m", "$13.83"]


def test_this_versions_earlier_run_comes_before_the_bench_table(cached):
    with_table(cached)
    assert (
        cached.make(
            "train", "AUTO_STOP=0", env={**H200, "STANDIN_STEPS": "4", "STANDIN_STEP_SECONDS": "0.05"}
        ).returncode
        == 0
    )
    (rec,) = records(cached, "train")
    sps = rec["progress"]["seconds_per_step"]
    r = cached.tool("check", env=H200)
    lines = speed_lines(r)
    assert lines[0] == (
        f"time and cost on NVIDIA H200: training: 1000 steps x {sps:.2f} s/step = "
        f"{lines[0].split(' = ')[1].split(' ')[0]} (s/step from this version's run {rec['id']} "
        f"(NVIDIA H200, same config.toml and dataset.toml))"
    )
    assert lines[1].startswith("  validation: 11 passes ")  # from the earlier run's s/step too
    assert lines[2].startswith("  sampling, saving and start-up: ")
    assert lines[2].endswith(f"(run {rec['id']}: its wall time less its steps, scaled to 1000 steps)")
    assert "only" not in lines[3]
    # Another GPU, or a changed config, does not count the run.
    assert speed_lines(cached.tool("check"))[0].startswith("time and cost on NVIDIA H100 80GB HBM3: no measurement")
    edit(cached, "configs/v1/config.toml", learning_rate=1e-4)
    assert "bench/nvidia-h200_v1.runs.json" in speed_lines(cached.tool("check", env=H200))[0]


def test_the_validation_passes_follow_the_cadence_and_leave_without_a_set(ready):
    with_table(ready)
    config = ready.read("configs/v1/config.toml")
    ready.write(
        "configs/v1/config.toml",
        config.replace(
            '\nvalidation = "validation/dataset.toml"\n',
            '\nvalidation = "validation/dataset.toml"\nvalidation_every_n_steps = 25\nvalidation_timesteps = [0.5]\n',
        ),
    )
    lines = speed_lines(ready.tool("check", env=H200))
    # step 0, then steps 25, 50, ... 1000 (the saves at every 100 among them): 41 passes x 2 items x 1 timestep
    assert lines[1].startswith(
        "  validation: 41 passes (step 0, every 25 steps, each save, the end) x 2 item(s) x 1 timestep(s) = 82 "
        "forwards x 0.414 s = 34s"
    )
    ready.write("configs/v1/config.toml", config.replace('\nvalidation = "validation/dataset.toml"\n', "\n"))
    lines = speed_lines(ready.tool("check", env=H200))
    assert not [l for l in lines if "validation" in l]
    assert lines[2] == "  estimate: 5h31m, $13.80 at $2.5/h ([workspace] price_per_hour), training steps only"
