"""`make tune` and `make bench`: candidates, the selection rule, the report, APPLY=1, with the probe's stand-in
(tests/bin/_behave_tune.py: step times and memory from a simple model of the settings)."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import error_line

from musubi_workspace.errors import WorkspaceError
from musubi_workspace.tune import MARGIN, Result, Setting, axes, combined, parse_name, select

SEED = Setting(batch_size=16, blocks_to_swap=20, attention="sdpa", split_attn=True, checkpointing=True)
GIB = 2**30


@pytest.fixture(autouse=True)
def _seed_setting(request):
    """These tests start from the first shipped memory/speed setting (block swap 20, no compile): conftest."""
    for name in ("ws", "ready", "cached"):
        if name in request.fixturenames:
            request.getfixturevalue(name).seed_setting()


def result(s: Setting, secs: float, gib: float, status: str = "ok", changes=()) -> Result:
    return Result(
        setting=s,
        name=s.name(SEED),
        status=status,
        step_times=[secs] * 3,
        peak_allocated=int(gib * GIB),
        peak_reserved=int(gib * 1.1 * GIB),
        total_memory=80 * GIB,
        changes=list(changes),
    )


def with_caches(ws) -> None:
    folder = ws.root / "cache" / "v1" / "example-1f"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a_0512x0768_fp.safetensors").write_bytes(b"")
    (folder / "a_fp_te.safetensors").write_bytes(b"")


def probe_calls(ws) -> list[dict]:
    return [c for c in ws.calls("accelerate") if "musubi_workspace.tune.probe" in c["argv"]]


# ---------------------------------------------------------------------------------------------------------
# Candidates and names
# ---------------------------------------------------------------------------------------------------------


def test_candidates_vary_one_axis_at_a_time_from_the_current_setting():
    plan = {a.name: [s.name(SEED) for s in a.settings] for a in axes(SEED, ["sdpa"])}
    assert plan == {
        "blocks_to_swap": ["swap16", "swap12", "swap8", "swap4", "swap0"],
        "pinned memory": ["pinned"],
        "weights": ["fp8", "swap0+fp8"],
        "compile": ["compile", "compile+autotune"],
        "gradient checkpointing": ["nockpt", "offload"],
        "batch size": ["batch32", "batch8"],
        "known good": [
            "swap0+compile",
            "swap0+compile+onegraph",
            "swap0+compile+autotune",
            "swap0+fp8+compile",
            "batch8+swap0+compile",
        ],
    }
    assert next(a for a in axes(SEED, ["sdpa"]) if a.name == "blocks_to_swap").stop == "misfit"


def test_swap_is_searched_upwards_when_the_current_setting_does_not_fit():
    swap = next(a for a in axes(SEED, ["sdpa"], current_fits=False) if a.name == "blocks_to_swap")
    assert [s.blocks_to_swap for s in swap.settings] == [24, 28, 32, 36] and swap.stop == "fit"


def test_flash_attention_is_a_candidate_without_split_attn_where_installed_sage_never():
    att = next(a for a in axes(SEED, ["sdpa", "flash_attn", "xformers"]) if a.name == "attention")
    assert [(s.attention, s.split_attn) for s in att.settings] == [("flash_attn", False), ("xformers", True)]
    assert all(s.attention != "sage_attn" for a in axes(SEED, ["sdpa", "flash_attn"]) for s in a.settings)


def test_names_parse_back_to_the_same_setting():
    for a in axes(SEED, ["sdpa", "flash_attn"]):
        for s in a.settings:
            assert parse_name(s.name(SEED), SEED) == s
    assert parse_name("current", SEED) == SEED


def test_unknown_name_token_is_one_clear_error():
    with pytest.raises(WorkspaceError) as e:
        parse_name("swap8+turbo", SEED)
    assert e.value.message.startswith("ONLY=swap8+turbo: unknown setting `turbo`; join these with +: current, batchN")


# ---------------------------------------------------------------------------------------------------------
# Selection rule
# ---------------------------------------------------------------------------------------------------------


def test_pick_is_the_fastest_that_fits_with_the_margin():
    cur = result(SEED, 22.0, 63.5)
    tight = result(replace(SEED, blocks_to_swap=0), 18.0, 80 * (1 - MARGIN) + 0.5)  # over the margin
    oom = result(replace(SEED, checkpointing=False), 0, 0, status="oom")
    ok = result(replace(SEED, compile=True), 19.0, 60.8)
    assert select([cur, tight, oom, ok]) is ok


def test_runs_that_change_the_numbers_are_picked_only_when_allowed():
    cur = result(SEED, 22.0, 63.5)
    fp8 = result(replace(SEED, weights="fp8_scaled", blocks_to_swap=0), 15.0, 63.0, changes=["fp8 scaled weights"])
    assert select([cur, fp8]) is cur
    assert select([cur, fp8], allow_changes=True) is fp8


def test_speed_is_compared_per_sample_across_batch_sizes():
    cur = result(SEED, 22.0, 63.5)
    half = result(replace(SEED, batch_size=8), 12.0, 48.0, changes=["batch 8"])  # 1.5 s/sample vs 1.375
    assert select([cur, half], allow_changes=True) is cur


def test_within_the_tie_the_least_memory_wins():
    a = result(replace(SEED, blocks_to_swap=12), 21.0, 68.0)
    b = result(replace(SEED, blocks_to_swap=16), 21.2, 66.0)
    assert select([a, b]) is b


def test_combined_merges_the_improvements_of_each_axis():
    cur = result(SEED, 22.0, 63.5)
    runs = [
        cur,
        result(replace(SEED, blocks_to_swap=8), 20.0, 70.0),
        result(replace(SEED, compile=True), 17.7, 60.8),
        result(replace(SEED, pinned=True), 21.9, 63.5),
    ]  # within the tie: not an improvement
    assert combined(SEED, runs, allow_changes=False) == replace(SEED, blocks_to_swap=8, compile=True)


def test_combined_takes_no_pinned_memory_without_block_swap_and_skips_a_setting_measured_under_another_name():
    # As on the H200 (bench/nvidia-h200_v1.md): pinned memory helps at swap 20; the fastest run has no swap at all.
    fast = replace(SEED, blocks_to_swap=0, compile=True, one_graph=True)
    runs = [
        result(SEED, 19.36, 63.5),
        result(replace(SEED, pinned=True), 18.44, 63.5),
        result(replace(SEED, blocks_to_swap=0, compile=True), 13.16, 71.1),
        result(fast, 12.83, 71.1),
    ]
    # The merge is `fast` itself (pinned changes nothing without swap): measured, so not run again.
    assert combined(SEED, runs, allow_changes=False) is None
    assert replace(fast, pinned=True).effective() == fast.effective()
    # Without that run: swap0+compile's changes, onegraph's swap0 taken already, pinned merged and dropped again
    # (no swap): swap0+compile, measured.
    runs[-1] = result(replace(SEED, blocks_to_swap=0, one_graph=True), 18.0, 75.0)
    assert combined(SEED, runs, allow_changes=False) is None
    runs.append(result(replace(SEED, weights="fp8_scaled"), 18.9, 60.0, changes=["fp8 scaled weights"]))
    assert combined(SEED, runs, allow_changes=True) == replace(
        SEED, blocks_to_swap=0, compile=True, weights="fp8_scaled"
    )


# ---------------------------------------------------------------------------------------------------------
# make tune through the Makefile, with the probe's stand-in
# ---------------------------------------------------------------------------------------------------------


def test_make_tune_runs_the_candidates_and_prints_the_table_and_pick(ready):
    with_caches(ready)
    r = ready.make("tune", "CONFIG_FILE=v1", timeout=300)
    assert r.returncode == 0, r.stderr + r.stdout
    names = re.findall(r"^\[\d+/\d+\] (\S+):", r.stdout, re.M)
    # swap goes down until one does not fit (none here: the stand-in's GPU holds swap0), then the other axes.
    assert names[:7] == ["current", "swap16", "swap12", "swap8", "swap4", "swap0", "pinned"]
    # swap0+compile(+onegraph) are known-good candidates; the combination of the axes' improvements is the fastest of
    # them, so not run twice.
    # Then the known-good combinations, before the axes that rarely win on a big GPU.
    assert names[names.index("swap0+compile") :] == [
        "swap0+compile",
        "swap0+compile+onegraph",
        "swap0+compile+autotune",
        "swap0+fp8+compile",
        "batch8+swap0+compile",
        "nockpt",
        "offload",
        "batch32",
        "batch8",
    ]
    assert "| `nockpt` (" in r.stdout and "**no: out of memory**" in r.stdout
    assert "**Pick: `swap0+compile+onegraph`**" in r.stdout
    report = next((ready.root / "runs" / "v1").glob("tune-*/tune.md")).read_text()
    assert report in r.stdout and "Rule: a run fits when" in report
    data = json.loads(next((ready.root / "runs" / "v1").glob("tune-*/tune.json")).read_text())
    assert {x["name"] for x in data["results"]} == set(names)
    assert data["commands"] and all("--config_file <scratch>/" in c for c in data["commands"])  # no local path
    assert not (ready.root / "configs" / "v2").exists()


def test_each_run_is_the_real_trainer_launch_with_no_sampling_saving_or_upload(ready):
    with_caches(ready)
    r = ready.make("tune", "CONFIG_FILE=v1", "ONLY=current", "STEPS=2", env={"HF_TOKEN": "hf_" + "y" * 34})
    assert r.returncode == 0, r.stderr + r.stdout
    (call,) = probe_calls(ready)
    argv = call["argv"]
    assert argv[:2] == ["launch", "--num_cpu_threads_per_process"] and "--num_processes" in argv
    assert argv[argv.index("-m") + 1] == "musubi_workspace.tune.probe"
    assert call["env"]["TORCHINDUCTOR_CACHE_DIR"].endswith("/current/inductor")
    log = next((ready.root / "runs" / "v1").glob("tune-*/current.log")).read_text()
    config = log.split("\n", 2)[2]
    for gone in (
        "sample_prompts",
        "save_every_n_steps",
        "save_state",
        "huggingface_",
        "log_with",
        "wandb_",
        "logging_dir",
    ):
        assert gone not in config, gone
    assert "max_train_steps = 3" in config and 'output_name = "probe"' in config
    assert "hf_yyy" not in r.stdout + log


def test_only_runs_the_named_settings_and_reports_out_of_memory(ready):
    with_caches(ready)
    r = ready.make("tune", "ONLY=current,batch32", timeout=120)
    assert r.returncode == 0, r.stderr
    assert re.findall(r"^\[\d/2\] (\S+):", r.stdout, re.M) == ["current", "batch32"]
    assert (
        "batch32: batch 32, blocks_to_swap 20, bf16, sdpa, split_attn, checkpointing ... does not fit (out of memory)"
        in r.stdout
    )
    assert "**Pick: `current`**" in r.stdout


def test_a_trainer_crash_is_reported_with_its_last_line(ready):
    with_caches(ready)
    r = ready.make("tune", "ONLY=swap8+compile", env={"STANDIN_PROBE_CRASH": "swap8+compile"})
    assert r.returncode == 0, r.stderr
    assert "error: trainer exited with code 1: Command '[...]' died with <Signals.SIGSEGV: 11>." in r.stdout
    assert "No run fitted" in r.stdout


def test_apply_writes_the_pick_into_a_new_version_keeping_comments(ready):
    with_caches(ready)
    r = ready.make("tune", "CONFIG_FILE=v1", "ONLY=current,swap8,compile,swap8+compile", "APPLY=1")
    assert r.returncode == 0, r.stderr + r.stdout
    assert "Created configs/v2 from configs/v1." in r.stdout
    assert "Wrote the picked setting into configs/v2/config.toml: blocks_to_swap = 8; compile = true" in r.stdout
    old, new = ready.read("configs/v1/config.toml"), ready.read("configs/v2/config.toml")
    assert "blocks_to_swap = 8\n" in new and "\ncompile = true" in new
    assert 'output_dir = "outputs/v2"' in new  # make new's renaming
    renamed = {"configs/v1/": "configs/v2/", "example-1f_v1": "example-1f_v2", "outputs/v1": "outputs/v2"}  # make new's
    comments = [line for line in old.splitlines() if line.startswith("#")]
    for a, b in renamed.items():
        comments = [c.replace(a, b) for c in comments]
    assert all(c in new for c in comments)
    assert re.search(r"^batch_size = 16", ready.read("configs/v2/dataset.toml"), re.M)  # batch kept


def test_apply_with_allowed_changes_writes_the_batch_size_into_the_dataset(ready):
    with_caches(ready)
    r = ready.make(
        "tune", "ONLY=current,batch8+swap0+compile", "APPLY=1", "ALLOW_CHANGES=1", env={"STANDIN_GPU_MEM_GIB": "70"}
    )
    assert r.returncode == 0, r.stderr + r.stdout
    assert "**changes numbers**: batch 8" in r.stdout
    assert re.search(r"^batch_size = 8", ready.read("configs/v2/dataset.toml"), re.M)


def test_apply_when_the_current_setting_wins_makes_no_version(ready):
    with_caches(ready)
    r = ready.make("tune", "ONLY=current", "APPLY=1")
    assert r.returncode == 0, r.stderr
    assert "the current setting is already the pick; no new version made" in r.stdout
    assert not (ready.root / "configs" / "v2").exists()


def test_tune_without_caches_says_to_cache_first(ready):
    r = ready.make("tune")
    assert r.returncode != 0
    assert error_line(r) == (
        "error: configs/v1/dataset.toml: no caches in cache/v1/example-1f; "
        "`make tune` trains on them: run `make cache` first"
    )
    assert probe_calls(ready) == []


def test_bad_steps_is_one_clear_error(ready):
    with_caches(ready)
    r = ready.make("tune", "STEPS=many")
    assert error_line(r) == "error: STEPS=many: expected a whole number of measured steps such as 3"


# ---------------------------------------------------------------------------------------------------------
# make bench
# ---------------------------------------------------------------------------------------------------------


def test_make_bench_makes_synthetic_inputs_then_measures_without_models(ws):
    r = ws.make("bench", "ONLY=current,swap0+fp8", timeout=120)  # no model files, no caches: ws, not ready
    assert r.returncode == 0, r.stderr + r.stdout
    (synth,) = ws.calls("synthetic")
    argv = synth["argv"]
    assert argv[:2] == ["-m", "musubi_workspace.tune.synthetic"]
    assert argv[argv.index("--width") + 1 : argv.index("--width") + 4] == ["512", "--height", "768"]
    assert argv[argv.index("--items") + 1] == "64"  # batch 16 x (1 warm-up + 3 measured steps)
    assert "--no-post" in argv and argv[argv.index("--clean-indices") + 1] == "0,10"
    calls = probe_calls(ws)
    assert len(calls) == 2
    log = next((ws.root / "runs" / "v1").glob("bench-*/current.log")).read_text()
    assert 'dit = "' + str(ws.root / "cache" / "bench" / "framepack_dit_random_bf16.safetensors") in log
    table = ws.read("bench/nvidia-h100-80gb-hbm3_v1.md")
    assert table.startswith(
        "# make bench: configs/v1/config.toml on NVIDIA H100 80GB HBM3 (random weights, synthetic caches)"
    )
    assert "command: `make bench CONFIG_FILE=configs/v1/config.toml ONLY=current,swap0+fp8`" in table
    fp8_row = next(line for line in table.splitlines() if line.startswith("| `swap0+fp8`"))
    assert "**changes numbers**: fp8 scaled weights" in fp8_row
    assert "0.1110 / 0.1210 / 0.1310 (current: 0.1100 / 0.1200 / 0.1300)" in fp8_row
    assert (
        "$ per 1,000 steps" in table and json.loads(ws.read("bench/nvidia-h100-80gb-hbm3_v1.runs.json"))[0]["results"]
    )


def test_bench_needs_a_one_frame_config(ws):
    text = ws.read("configs/v1/config.toml").replace("one_frame = true", "one_frame = false")
    ws.write("configs/v1/config.toml", text)
    r = ws.make("bench")
    assert error_line(r).startswith("error: configs/v1/config.toml: `make bench` makes one-frame caches only")


def test_a_bench_in_which_every_setting_fails_still_names_the_gpu(ws):
    env = {"STANDIN_PROBE_CRASH": "swap8+compile", "STANDIN_GPU_NAME": "NVIDIA H200", "STANDIN_GPU_MEM_MIB": "143771"}
    r = ws.make("bench", "ONLY=swap8+compile", env=env)
    assert r.returncode == 0, r.stderr + r.stdout
    assert not (ws.root / "bench" / "gpu_v1.md").exists()
    table = ws.read("bench/nvidia-h200_v1.md")
    assert table.startswith("# make bench: configs/v1/config.toml on NVIDIA H200 (random weights, synthetic caches)")
    assert "- GPU: NVIDIA H200 (140.4 GiB)" in table and "No run fitted" in table
    assert json.loads(ws.read("bench/nvidia-h200_v1.runs.json"))[0]["gpu"] == "NVIDIA H200"


def test_the_gpu_is_the_one_cuda_visible_devices_names(ws):
    env = {"STANDIN_PROBE_CRASH": "swap8+compile", "STANDIN_GPUS": "2", "CUDA_VISIBLE_DEVICES": "1"}
    # The stand-in lists two GPUs of one name; the index is taken, not the first line blindly.
    from musubi_workspace.gpus import visible_gpu

    assert visible_gpu({**ws.env, **env}) == ("NVIDIA H100 80GB HBM3", 81559)
    assert visible_gpu({**ws.env, "STANDIN_GPUS": "0"}) is None


def test_two_bench_sessions_add_to_one_table_with_the_share_of_peak(ws):
    assert ws.make("bench", "ONLY=current").returncode == 0
    r = ws.make("bench", "ONLY=compile")
    assert r.returncode == 0, r.stderr + r.stdout
    sessions = json.loads(ws.read("bench/nvidia-h100-80gb-hbm3_v1.runs.json"))
    assert [s["command"] for s in sessions] == [
        "make bench CONFIG_FILE=configs/v1/config.toml ONLY=current",
        "make bench CONFIG_FILE=configs/v1/config.toml ONLY=compile",
    ]
    assert sessions[0]["workload"] == {
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
    table = ws.read("bench/nvidia-h100-80gb-hbm3_v1.md")
    assert "| % of dense bf16 peak |" in table
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == ["current", "compile"]
    # 5.27 PFLOP per step (flops.py) over the stand-in's 16 x 1.4 x 1.1 x 1.3 = 32.03 s/step on 989.5 TFLOP/s: 17%.
    assert rows[0].split(" | ")[10] == "17%"
    assert "**Pick: `compile`**" in table and "1.25x the speed of the current setting" in table
    assert "(every session of bench/nvidia-h100-80gb-hbm3_v1.runs.json: 2)" in r.stdout


def test_bench_report_merges_records_of_several_calls_into_one_table(ws):
    assert ws.make("bench", "ONLY=current").returncode == 0
    first = ws.read("bench/nvidia-h100-80gb-hbm3_v1.runs.json")
    (ws.root / "bench" / "nvidia-h100-80gb-hbm3_v1.runs.json").rename(ws.root / "gpu0.runs.json")
    assert ws.make("bench", "ONLY=swap12").returncode == 0
    (ws.root / "bench" / "nvidia-h100-80gb-hbm3_v1.runs.json").rename(ws.root / "gpu1.runs.json")
    r = ws.ws("bench-report", "gpu0.runs.json", "gpu1.runs.json", "--out", "bench/merged_v1.runs.json")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "bench/merged_v1.runs.json: 2 session(s); table: bench/merged_v1.md\n"
    merged = json.loads(ws.read("bench/merged_v1.runs.json"))
    assert merged[0] == json.loads(first)[0] and len(merged) == 2
    rows = [line.split("`")[1] for line in ws.read("bench/merged_v1.md").splitlines() if line.startswith("| `")]
    assert rows == ["current", "swap12"]
    again = ws.ws("bench-report", "gpu1.runs.json", "--out", "bench/merged_v1.runs.json")  # already in: not twice
    assert again.stdout == "bench/merged_v1.runs.json: 2 session(s); table: bench/merged_v1.md\n"
    bad = ws.ws("bench-report", "gpu0.runs.json", "--out", "bench/merged.md")
    assert (
        bad.returncode == 2
        and bad.stderr
        == "error: bench-report: --out bench/merged.md: name a .runs.json file (its .md is written beside it)\n"
    )


def test_bench_on_two_gpus_runs_two_processes_and_reports_their_scaling_against_one(ws):
    assert ws.make("bench", "ONLY=current", env={"CUDA_VISIBLE_DEVICES": "0", "STANDIN_GPUS": "2"}).returncode == 0
    r = ws.make("bench", "ONLY=current", env={"STANDIN_GPUS": "2"})
    assert r.returncode == 0, r.stderr + r.stdout
    assert "2 processes (one per GPU, as `make train` starts them here)" in r.stdout
    one, two = probe_calls(ws)
    assert "--multi_gpu" not in one["argv"] and one["argv"][one["argv"].index("--num_processes") + 1] == "1"
    assert two["argv"][two["argv"].index("--num_processes") + 1] == "2" and "--multi_gpu" in two["argv"]
    synth = ws.calls("synthetic")[-1]["argv"]
    assert synth[synth.index("--items") + 1] == "128"  # 16 x 2 processes x 4 steps: a new batch for each
    table = ws.read("bench/nvidia-h100-80gb-hbm3_v1_2gpus.md")
    (row,) = [line.split(" | ") for line in table.splitlines() if line.startswith("| `")]
    # The stand-in's model: s/step 16 x 1.4 x 1.1 x 1.3 x 1.05 (+0.01 in the median); samples/s 2 x 16 over it;
    # peak per GPU 26 x (1 - 20/60) + 16 x 2.5 GiB; host RAM 2 processes x (4 + 0.6 x 20) GiB.
    assert row[2:7] == ["2", "33.64", "0.951", "57.3 (63.1)", "32.0"]
    assert json.loads(ws.read("bench/nvidia-h100-80gb-hbm3_v1_2gpus.runs.json"))[0]["processes"] == 2
    r = ws.ws(
        "bench-report",
        "bench/nvidia-h100-80gb-hbm3_v1.runs.json",
        "bench/nvidia-h100-80gb-hbm3_v1_2gpus.runs.json",
        "--out",
        "bench/gpus_v1.runs.json",
    )
    assert r.returncode == 0, r.stderr
    merged = ws.read("bench/gpus_v1.md")
    assert "- `current` on 2 GPUs: 0.951 samples/s, 1.90x one GPU's 0.499 (95% scaling efficiency)" in merged
    # The pick is among the runs on one GPU, as the current row (the two-GPU row is faster per sample).
    assert "**Pick: `current`**" in merged and "x the speed of the current setting" not in merged


def test_the_probe_of_each_process_writes_its_own_record(tmp_path):
    from musubi_workspace.tune.probe import Probe, host_peak_bytes, rank_paths

    out = str(tmp_path / "probe.json")
    assert rank_paths(out, 3) == [out, out + ".rank1", out + ".rank2"]
    Probe(out, rank=1, device=1).write()
    Probe(out).write()
    assert json.loads(Path(out + ".rank1").read_text())["rank"] == 1
    assert json.loads(Path(out).read_text())["rank"] == 0
    assert host_peak_bytes() > 10 * 2**20  # this Python process's resident set, in bytes (Linux: KiB x 1024)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("80GB", 80 * 10**9),
        ("79.2GiB", int(79.2 * 2**30)),
        ("81559MiB", 81559 * 2**20),
        (" 80 gb ", 80 * 10**9),
        ("", 0),
    ],
)
def test_memory_values_with_their_units(value, expected):
    from musubi_workspace.tune import parse_memory

    assert parse_memory(value) == expected


@pytest.mark.parametrize("value", ["80", "80G", "eighty GB", "0GB"])
def test_a_memory_value_without_a_known_unit_is_one_clear_error(value):
    from musubi_workspace.tune import parse_memory

    with pytest.raises(WorkspaceError) as e:
        parse_memory(value)
    assert e.value.message == (
        f"MEMORY={value}: expected an amount of GPU memory with its unit, such as 80GB or 79.2GiB "
        "(units: GB, GiB, MB, MiB, TB, TiB)"
    )


def test_memory_caps_what_fits_and_the_report_says_the_speeds_are_the_bigger_gpus(ws):
    h200 = {"STANDIN_GPU_NAME": "NVIDIA H200", "STANDIN_GPU_MEM_MIB": "143771", "STANDIN_GPU_MEM_GIB": "140"}
    # The stand-in's swap0 needs 26 + 16 x 2.5 = 66 GiB: it fits 140 GiB, not 0.9 x 60 GiB.
    r = ws.make("bench", "ONLY=current,swap0", "MEMORY=60GiB", env=h200)
    assert r.returncode == 0, r.stderr + r.stdout
    assert (
        "MEMORY=60GiB: each run may use at most 60.0 GiB of NVIDIA H200's memory: whether a setting fits is "
        "decided as on a card of that size; the speeds are NVIDIA H200's"
    ) in r.stdout
    assert {c["env"].get("WS_PROBE_MEMORY") for c in probe_calls(ws)} == {str(60 * 2**30)}
    table = ws.read("bench/nvidia-h200_v1_mem60gib.md")
    assert "- memory capped at MEMORY=60GiB (60.0 GiB, torch's per-process memory fraction)" in table
    assert "the speeds are those of the NVIDIA H200" in table
    assert "| `swap0` (" in table and "**no: out of memory**" in table
    assert not (ws.root / "bench" / "nvidia-h200_v1.md").exists()  # the uncapped table is another file
    bad = ws.make("bench", "MEMORY=80")
    assert error_line(bad).startswith("error: MEMORY=80: expected an amount of GPU memory with its unit")


# ---------------------------------------------------------------------------------------------------------
# Several candidates at once on a machine of several GPUs (GPUS_PER_RUN), and a session cut short (CONTINUE=1)
# ---------------------------------------------------------------------------------------------------------

H200 = {"STANDIN_GPU_NAME": "NVIDIA H200", "STANDIN_GPU_MEM_MIB": "143771", "STANDIN_GPU_MEM_GIB": "140"}


def test_the_full_search_runs_side_by_side_one_gpu_each(ws):
    env = {**H200, "STANDIN_GPUS": "4", "STANDIN_PROBE_SECONDS": "1.5"}
    r = ws.make("bench", "GPUS_PER_RUN=1", env=env, timeout=300)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "GPUS_PER_RUN=1: 4 runs side by side, on GPUs 0 | 1 | 2 | 3" in r.stdout
    calls = probe_calls(ws)
    # Each run trains on one GPU of its own: one process, CUDA_VISIBLE_DEVICES one index, no port of its own.
    assert {c["env"]["CUDA_VISIBLE_DEVICES"] for c in calls} == {"0", "1", "2", "3"}
    assert all(c["argv"][c["argv"].index("--num_processes") + 1] == "1" for c in calls)
    assert not any("--main_process_port" in c["argv"] for c in calls)
    # The first four started together, before any of them (1.5 s each) could have ended.
    starts = sorted(c["time"] for c in calls)
    assert starts[3] - starts[0] < 1.2
    # The same candidates as one at a time (the stand-in's H200 fits every swap value), each run once.
    done = re.findall(r"^\[\d+/\d+\] (\S+): (?:\d|does not fit|error)", r.stdout, re.M)
    expected = ["current", "swap16", "swap12", "swap8", "swap4", "swap0", "pinned", "fp8", "swap0+fp8", "compile"]
    assert set(expected) <= set(done) and len(done) == len(set(done)) == len(calls)
    assert "swap0+compile" in done and "batch8+swap0+compile" in done
    table = ws.read("bench/nvidia-h200_v1.md")  # one GPU per run: the one-GPU table
    assert "- runs side by side: 4 at a time, each on its own GPU(s) of one machine" in table
    assert "command: `make bench CONFIG_FILE=configs/v1/config.toml GPUS_PER_RUN=1`" in table
    # Rows in the order the runs started; the pick is the combination of the axes' improvements, run last.
    assert [row.split("`")[1] for row in table.splitlines() if row.startswith("| `")][:3] == [
        "current",
        "swap16",
        "swap12",
    ]
    assert "**Pick: `swap0+nockpt+compile+onegraph`**" in table and done[-1] == "swap0+nockpt+compile+onegraph"
    record = json.loads(next((ws.root / "runs" / "v1").glob("bench-*/bench.json")).read_text())
    assert record["finished"] is True and record["side_by_side"] == 4 and record["processes"] == 1


def test_two_gpus_per_run_side_by_side_use_a_port_each(ws):
    r = ws.make("bench", "ONLY=current,compile", "GPUS_PER_RUN=2", env={**H200, "STANDIN_GPUS": "4"})
    assert r.returncode == 0, r.stderr + r.stdout
    calls = probe_calls(ws)
    assert sorted(c["env"]["CUDA_VISIBLE_DEVICES"] for c in calls) == ["0,1", "2,3"]
    ports = {c["argv"][c["argv"].index("--main_process_port") + 1] for c in calls}
    assert ports == {"29501", "29502"}
    assert all(c["argv"][c["argv"].index("--num_processes") + 1] == "2" and "--multi_gpu" in c["argv"] for c in calls)
    assert "[1/2] current started on GPUs 0,1:" in r.stdout or "[1/2] current started on GPUs 2,3:" in r.stdout
    assert ws.read("bench/nvidia-h200_v1_2gpus.md").count("| `") == 2


@pytest.mark.parametrize(
    "value, env, message",
    [
        ("3", {"STANDIN_GPUS": "2"}, "GPUS_PER_RUN=3: 2 GPU(s) visible here; give at most 2"),
        (
            "2",
            {"STANDIN_GPUS": "4", "CUDA_VISIBLE_DEVICES": "3"},
            "GPUS_PER_RUN=2: 1 GPU(s) visible here (CUDA_VISIBLE_DEVICES=3); give at most 1",
        ),
        ("0", {}, "GPUS_PER_RUN=0: expected the number of GPUs each run trains on, such as 1"),
        ("1", {"STANDIN_GPUS": "0"}, "GPUS_PER_RUN=1: no GPU visible here (nvidia-smi lists none)"),
    ],
)
def test_a_bad_gpus_per_run_is_one_clear_error(ws, value, env, message):
    r = ws.make("bench", f"GPUS_PER_RUN={value}", env=env)
    assert r.returncode != 0 and error_line(r).startswith(f"error: {message}"), r.stdout + r.stderr
    assert "Traceback" not in r.stderr and not probe_calls(ws)


def cut_bench(ws) -> Path:
    """`make bench` killed (SIGKILL: a pod stopped under it) while its 4th run, swap8, hangs: its record's path."""
    import os
    import signal
    import subprocess
    import time

    env = {**ws.env, **H200, "STANDIN_PROBE_HANG": "swap8"}
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "bench"],
        cwd=ws.root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # until swap8 hangs: current, swap16 and swap12 measured
            if any(c["env"]["TORCHINDUCTOR_CACHE_DIR"].endswith("/swap8/inductor") for c in probe_calls(ws)):
                break
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    (record_path,) = (ws.root / "runs" / "v1").glob("bench-*/bench.json")
    return record_path


def test_a_bench_cut_short_keeps_its_runs_and_continue_goes_on_from_them(ws):
    record_path = cut_bench(ws)
    cut = json.loads(record_path.read_text())
    assert cut["finished"] is False and [x["name"] for x in cut["results"]] == ["current", "swap16", "swap12"]
    before = len(probe_calls(ws))

    r = ws.make("bench", "CONTINUE=1", env=H200, timeout=300)
    assert r.returncode == 0, r.stderr + r.stdout
    assert f"CONTINUE=1: going on with {record_path.parent.relative_to(ws.root)}: 3 run(s) measured there" in r.stdout
    assert re.search(r"^\[1/\d+\] current: measured before \(CONTINUE=1\): ", r.stdout, re.M)
    again = [c["env"]["TORCHINDUCTOR_CACHE_DIR"].split("/")[-2] for c in probe_calls(ws)[before:]]
    assert again[0] == "swap8" and not {"current", "swap16", "swap12"} & set(again)
    final = json.loads(record_path.read_text())
    names = [x["name"] for x in final["results"]]
    assert final["finished"] is True and names[:4] == ["current", "swap16", "swap12", "swap8"]
    assert len(names) == len(set(names)) and list((ws.root / "runs" / "v1").glob("bench-*")) == [record_path.parent]
    assert "**Pick: `swap0+nockpt+compile+onegraph`**" in ws.read("bench/nvidia-h200_v1.md")


def test_continue_on_another_machine_goes_on_from_the_unfinished_session_in_the_table(ws):
    record_path = cut_bench(ws)
    table = "bench/nvidia-h200_v1.runs.json"
    assert ws.ws("bench-report", str(record_path), "--out", table).returncode == 0
    assert "- unfinished: `make bench CONFIG_FILE=configs/v1/config.toml` has not run all its candidates" in ws.read(
        "bench/nvidia-h200_v1.md"
    )
    session = json.loads(ws.read(table))[0]["session"]
    import shutil

    shutil.rmtree(ws.root / "runs")  # a new machine: only the committed table came along
    before = len(probe_calls(ws))
    r = ws.make("bench", "CONTINUE=1", env=H200, timeout=300)
    assert r.returncode == 0, r.stderr + r.stdout
    assert f"CONTINUE=1: going on with the unfinished session {session} of {table}: 3 run(s)" in r.stdout
    again = [c["env"]["TORCHINDUCTOR_CACHE_DIR"].split("/")[-2] for c in probe_calls(ws)[before:]]
    assert again[0] == "swap8" and not {"current", "swap16", "swap12"} & set(again)
    # The finished session took the unfinished one's place: one session, every run once.
    (only,) = json.loads(ws.read(table))
    names = [x["name"] for x in only["results"]]
    assert only["finished"] is True and only["session"] == session and len(names) == len(set(names))
    assert "unfinished" not in ws.read("bench/nvidia-h200_v1.md")
    assert (ws.root / "runs" / "v1" / session / "bench.json").is_file()


def test_only_going_on_with_a_cut_search_keeps_every_run_and_the_session_unfinished(ws):
    record_path = cut_bench(ws)
    first = json.loads(record_path.read_text())
    r = ws.make("bench", "ONLY=swap0+compile", "CONTINUE=1", env=H200, timeout=300)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "--items 128 " in r.stdout  # the cut session's synthetic batches (ONLY=swap0+compile alone makes 64)
    record = json.loads(record_path.read_text())
    # Every run of the cut session is kept with the new one; its command stays, this one is added.
    assert [x["name"] for x in record["results"]] == ["current", "swap16", "swap12", "swap0+compile"]
    assert record["results"][:3] == first["results"]
    assert record["finished"] is False and record["command"] == "make bench CONFIG_FILE=configs/v1/config.toml"
    assert record["continued"] == ["make bench CONFIG_FILE=configs/v1/config.toml ONLY=swap0+compile"]
    assert (
        f"The session {record_path.parent.name} stays unfinished: ONLY= ran a part of its search; "
        "`make bench CONFIG_FILE=configs/v1/config.toml CONTINUE=1` goes on with the rest"
    ) in r.stdout
    (kept,) = json.loads(ws.read("bench/nvidia-h200_v1.runs.json"))
    assert kept["results"] == record["results"]
    table = ws.read("bench/nvidia-h200_v1.md")
    assert "- continued with: `make bench CONFIG_FILE=configs/v1/config.toml ONLY=swap0+compile`" in table
    assert "- unfinished: `make bench CONFIG_FILE=configs/v1/config.toml` has not run all its candidates" in table

    before = len(probe_calls(ws))
    r = ws.make("bench", "CONTINUE=1", env=H200, timeout=300)
    assert r.returncode == 0, r.stderr + r.stdout
    again = [c["env"]["TORCHINDUCTOR_CACHE_DIR"].split("/")[-2] for c in probe_calls(ws)[before:]]
    assert again[0] == "swap8" and not {"current", "swap16", "swap12", "swap0+compile"} & set(again)
    (done,) = json.loads(ws.read("bench/nvidia-h200_v1.runs.json"))
    names = [x["name"] for x in done["results"]]
    assert done["finished"] is True and len(names) == len(set(names)) and "swap0+compile" in names
    assert done["continued"] == record["continued"] and "unfinished" not in ws.read("bench/nvidia-h200_v1.md")


def test_continue_says_why_an_unfinished_session_of_another_setting_is_not_continued(ws):
    record_path = cut_bench(ws)
    assert ws.ws("bench-report", str(record_path), "--out", "bench/nvidia-h200_v1.runs.json").returncode == 0
    session = record_path.parent.name
    text = ws.read("configs/v1/config.toml").replace("blocks_to_swap = 20", "blocks_to_swap = 12")
    ws.write("configs/v1/config.toml", text)
    r = ws.make("bench", "ONLY=current", "CONTINUE=1", env=H200)
    assert r.returncode == 0, r.stderr + r.stdout
    assert (
        "CONTINUE=1: no unfinished bench of configs/v1/config.toml here with this GPU, STEPS, MEMORY, GPU count and "
        f"current setting; bench/nvidia-h200_v1.runs.json ({session}) has another current setting; starting afresh"
    ) in r.stdout


def test_continue_without_an_unfinished_session_starts_afresh(ws):
    assert ws.make("bench", "ONLY=current", env=H200).returncode == 0  # finished: not continued
    r = ws.make("bench", "ONLY=current", "CONTINUE=1", env=H200)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "CONTINUE=1: no unfinished bench of configs/v1/config.toml here with this GPU" in r.stdout
    assert len(probe_calls(ws)) == 2


def test_a_row_that_changes_numbers_is_compared_with_the_current_row_of_its_own_session():
    from musubi_workspace.tune import report

    fp8 = replace(SEED, weights="fp8_scaled")

    def session(loss: float) -> dict:
        cur, f = result(SEED, 22.0, 63.5), result(fp8, 21.0, 50.0, changes=["fp8 scaled weights"])
        cur.losses, f.losses = [loss] * 3, [loss + 0.01] * 3
        base = {k: getattr(SEED, k) for k in SEED.__dataclass_fields__}
        return {"base": base, "results": [cur.to_json(), f.to_json()], "command": f"make bench ({loss})"}

    text, _ = report([session(3.0), session(2.0)], "t", 2.5, allow_changes=False)
    rows = [line for line in text.splitlines() if line.startswith("| `fp8`")]
    assert "3.0100 / 3.0100 / 3.0100 (current: 3.0000 / 3.0000 / 3.0000)" in rows[0]
    assert "2.0100 / 2.0100 / 2.0100 (current: 2.0000 / 2.0000 / 2.0000)" in rows[1]


def test_a_run_past_run_timeout_is_stopped_with_its_processes_and_the_next_starts(ws):
    import subprocess

    env = {**H200, "STANDIN_PROBE_HANG": "swap8"}
    r = ws.make("bench", "ONLY=current,swap8,swap4", "RUN_TIMEOUT=3s", env=env, timeout=120)
    assert r.returncode == 0, r.stderr + r.stdout
    assert re.search(
        r"^\[2/3\] swap8: .*timeout \(\d+ s\)\n +stopped after 3 s \(RUN_TIMEOUT\) \(log: runs/", r.stdout, re.M
    )
    assert re.search(r"^\[3/3\] swap4: .*\d+\.\d+ s/step", r.stdout, re.M)
    # The hung trainer (the stand-in below accelerate's stand-in) is gone, not left holding its GPU.
    left = subprocess.run(["pgrep", "-f", "/swap8/config.toml"], capture_output=True, text=True)
    assert left.stdout.strip() == ""
    record = json.loads(next((ws.root / "runs" / "v1").glob("bench-*/bench.json")).read_text())
    assert [(x["name"], x["status"]) for x in record["results"]] == [
        ("current", "ok"),
        ("swap8", "timeout"),
        ("swap4", "ok"),
    ]
    # The limit is part of the command the record and the table keep: a timeout row reads against it.
    assert record["command"] == "make bench CONFIG_FILE=configs/v1/config.toml ONLY=current,swap8,swap4 RUN_TIMEOUT=3s"
    assert "- command: `make bench CONFIG_FILE=configs/v1/config.toml ONLY=current,swap8,swap4 RUN_TIMEOUT=3s`" in (
        ws.read("bench/nvidia-h200_v1.md")
    )


def test_the_same_continuation_in_several_calls_is_one_line_of_the_table():
    from musubi_workspace.tune import report

    base = {k: getattr(SEED, k) for k in SEED.__dataclass_fields__}
    again, other = "make bench CONFIG_FILE=c CONTINUE=1", "make bench CONFIG_FILE=c ONLY=swap0"
    session = {
        "base": base,
        "results": [result(SEED, 22.0, 63.5).to_json()],
        "command": "make bench CONFIG_FILE=c",
        "continued": [again, again, other, again],
    }
    text, _ = report([session], "t", 2.5, allow_changes=False)
    assert [line for line in text.splitlines() if line.startswith("- continued with")] == [
        f"- continued with: `{again}` (2 times)",
        f"- continued with: `{other}`",
        f"- continued with: `{again}`",
    ]


@pytest.mark.parametrize("value", ["0", "soon"])
def test_a_bad_run_timeout_is_one_clear_error(ws, value):
    r = ws.make("bench", f"RUN_TIMEOUT={value}", env=H200)
    assert r.returncode != 0 and "Traceback" not in r.stderr and not probe_calls(ws)
    assert error_line(r).startswith("error: RUN_TIMEOUT"), r.stdout + r.stderr
