"""Known-bad option combinations, GPU memory against the settings, and the compile cache keyed by settings:
through the real `make check` / `make train` on a workspace copy with real edits of config.toml and dataset.toml."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomlkit
import tomllib

KNOWN = Path(__file__).resolve().parents[2] / "src" / "musubi_workspace" / "data" / "known_issues.toml"
CONFIG = "configs/v1/config.toml"
DATASET = "configs/v1/dataset.toml"


def edit(w, rel: str, table: str | None = None, **values) -> None:
    """Set (or, with None, remove) keys of a TOML file in place, keeping its comments."""
    doc = tomlkit.parse(w.read(rel))
    target = doc if table is None else (doc[table][0] if table == "datasets" else doc[table])
    for key, value in values.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
    w.write(rel, tomlkit.dumps(doc))


def line_of(w, rel: str, key: str, last: bool = False) -> int:
    found = [n for n, line in enumerate(w.read(rel).splitlines(), 1) if line.split("=")[0].strip() == key]
    assert found, f"{key} not in {rel}"
    return found[-1] if last else found[0]


def check(w, **env):
    r = w.tool("check", f"CONFIG_FILE={CONFIG}", env=env)
    return r, [l.strip() for l in r.stdout.splitlines() if l.strip().startswith(("error:", "warning:"))]


def findings_of(lines, ident):
    return [l for l in lines if f"[{ident}," in l]


# Each known combination: the edits that make it, the keys its finding must name (key -> file), the edits that fix it.
CASES = {
    "batch-without-split-attn": dict(
        make=[(CONFIG, None, dict(split_attn=None))],
        names={"sdpa": CONFIG, "batch_size": DATASET, "split_attn": None},
        fix=[(CONFIG, None, dict(split_attn=True))],
    ),
    "flash3-with-split-attn": dict(
        make=[(CONFIG, None, dict(sdpa=None, flash3=True))],
        names={"flash3": CONFIG, "split_attn": CONFIG},
        fix=[(CONFIG, None, dict(flash3=None, sdpa=True))],
    ),
    "sage-attn-in-training": dict(
        make=[(CONFIG, None, dict(sdpa=None, sage_attn=True))],
        names={"sage_attn": CONFIG},
        fix=[(CONFIG, None, dict(sage_attn=None, sdpa=True))],
    ),
    "no-attention": dict(
        make=[(CONFIG, None, dict(sdpa=None))],
        names={},
        fix=[(CONFIG, None, dict(sdpa=True))],
    ),
    "fp8-scaled-without-fp8-base": dict(
        make=[(CONFIG, None, dict(fp8_scaled=True))],
        names={"fp8_scaled": CONFIG, "fp8_base": None},
        fix=[(CONFIG, None, dict(fp8_base=True))],
    ),
    "h2d-only-swap-without-checkpointing": dict(
        make=[(CONFIG, None, dict(block_swap_h2d_only=True, gradient_checkpointing=None))],
        names={"block_swap_h2d_only": CONFIG, "blocks_to_swap": CONFIG, "gradient_checkpointing": None},
        fix=[(CONFIG, None, dict(gradient_checkpointing=True))],
    ),
    "blocks-to-swap-too-many": dict(
        make=[(CONFIG, None, dict(blocks_to_swap=39))],
        names={"blocks_to_swap": CONFIG},
        fix=[(CONFIG, None, dict(blocks_to_swap=36))],
    ),
}


def test_every_known_combination_has_a_test_case():
    ids = [e["id"] for e in tomllib.loads(KNOWN.read_text())["issue"]]
    assert sorted(ids) == sorted(CASES)


def test_the_shipped_config_has_no_known_combination(ready):
    r, lines = check(ready)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "option combinations ✓" in r.stdout
    assert lines == []


@pytest.mark.parametrize("ident", sorted(CASES))
def test_known_combination_is_an_error_naming_its_keys_and_the_fix_passes(ready, ident):
    case = CASES[ident]
    for rel, table, values in case["make"]:
        edit(ready, rel, table, **values)
    r, lines = check(ready)
    assert r.returncode != 0
    [line] = findings_of(lines, ident)
    assert line.startswith("error: ")
    for key, rel in case["names"].items():
        if rel is None:
            assert f"`{key}` not set" in line
        else:
            assert f"`{key} = " in line
            assert f"{rel}:{line_of(ready, rel, key)}" in line
    assert "fix: " in line and "seen at musubi-tuner 30c658c" in line

    for rel, table, values in case["fix"]:
        edit(ready, rel, table, **values)
    r, lines = check(ready)
    assert findings_of(lines, ident) == []
    assert r.returncode == 0, r.stdout


def test_batch_without_split_attn_exact_finding(ready):
    edit(ready, CONFIG, split_attn=False)
    _, lines = check(ready)
    sdpa, split = line_of(ready, CONFIG, "sdpa"), line_of(ready, CONFIG, "split_attn")
    batch = line_of(ready, DATASET, "batch_size")
    assert findings_of(lines, "batch-without-split-attn") == [
        f"error: {CONFIG}:{sdpa}: `sdpa = true` with `batch_size = 16` ({DATASET}:{batch}) and `split_attn = false` "
        f"({CONFIG}:{split}): at batch size > 1 FramePack's attention needs a varlen kernel (flash_attn or "
        'SageAttention) or split_attn; the first step, after the DiT has loaded, raises "No Attn Installed or '
        'batch_size > 1 is not supported in this configuration. Try `--split_attn`."; fix: set `split_attn = true` '
        "(or use `flash_attn = true` with flash-attn installed) [batch-without-split-attn, seen at musubi-tuner "
        "30c658c, upstream issue #245]"
    ]


def test_batch_size_of_one_needs_no_split_attn(ready):
    edit(ready, CONFIG, split_attn=None)
    edit(ready, DATASET, "general", batch_size=1)
    _, lines = check(ready)
    assert findings_of(lines, "batch-without-split-attn") == []


def test_a_datasets_own_batch_size_overrides_general(ready):
    edit(ready, CONFIG, split_attn=None)
    edit(ready, DATASET, "general", batch_size=1)
    edit(ready, DATASET, "datasets", batch_size=4)
    _, lines = check(ready)
    [line] = findings_of(lines, "batch-without-split-attn")
    assert f"`batch_size = 4` ({DATASET}:{line_of(ready, DATASET, 'batch_size', last=True)})" in line


def test_combinations_are_reported_by_check_before_train_starts(ready):
    edit(ready, CONFIG, split_attn=None)
    r = ready.tool("train")
    assert r.returncode != 0
    assert "[batch-without-split-attn," in r.stderr
    assert ready.calls("accelerate") == []


# --- GPU memory: the table of runs that fitted or ran out, against the GPU nvidia-smi shows -------------------

H100 = dict(STANDIN_GPU_NAME="NVIDIA H100 80GB HBM3", STANDIN_GPU_MEM_MIB="81559")


def memory_warnings(lines):
    return [l for l in lines if "run out of GPU memory" in l]


def test_bf16_without_block_swap_at_batch_16_warns_and_names_what_fitted(ready):
    edit(ready, CONFIG, blocks_to_swap=None)
    r, lines = check(ready, **H100)
    assert r.returncode == 0, r.stdout  # a warning, not an error
    [line] = memory_warnings(lines)
    batch = line_of(ready, DATASET, "batch_size")
    assert line == (
        f"warning: {CONFIG}: NVIDIA H100 80GB HBM3 (80 GiB): `batch_size = 16` ({DATASET}:{batch}) at 512x768 "
        "with bf16 weights, no `blocks_to_swap` will likely run out of GPU memory after the DiT has loaded: batch 16 "
        "at 512x768, bf16 weights, no block swap ran out on one H100 80GB (musubi-tuner 30c658c); these fitted: "
        "batch 16 at 512x768, bf16 weights, blocks_to_swap = 8, ~70.5 GiB (H100 80GB); batch 16 at 512x768, bf16 "
        "weights, blocks_to_swap = 12, ~68.1 GiB (H100 80GB); batch 16 at 512x768, bf16 weights, blocks_to_swap = 20, "
        "~63.5 GiB (H100 80GB); batch 16 at 512x768, fp8_base + fp8_scaled, no block swap + compile (H100 80GB): "
        "use one of them"
    )


@pytest.mark.parametrize("fix", [dict(blocks_to_swap=8), dict(blocks_to_swap=12), dict(fp8_base=True, fp8_scaled=True)])
def test_settings_that_fitted_give_no_memory_warning(ready, fix):
    edit(ready, CONFIG, blocks_to_swap=None)
    edit(ready, CONFIG, **fix)
    _, lines = check(ready, **H100)
    assert memory_warnings(lines) == []


def test_no_swap_at_batch_8_fits_an_80gb_gpu(ready):
    edit(ready, CONFIG, blocks_to_swap=None)
    edit(ready, DATASET, "general", batch_size=8)
    _, lines = check(ready, **H100)
    assert memory_warnings(lines) == []


def test_a_smaller_gpu_warns_where_an_80gb_one_ran_out_and_points_to_a_bigger_gpu(ready):
    edit(ready, CONFIG, blocks_to_swap=None)
    _, lines = check(ready, STANDIN_GPU_NAME="NVIDIA L40S", STANDIN_GPU_MEM_MIB="46068")
    [line] = memory_warnings(lines)
    assert "NVIDIA L40S (45 GiB)" in line and "no `blocks_to_swap`" in line
    assert "on a bigger GPU these fitted:" in line and "on this one lower `batch_size`" in line


def host_ram_warnings(lines):
    return [l for l in lines if "of host RAM" in l]


def test_two_gpus_with_block_swap_warn_when_the_host_ram_cannot_hold_a_dit_per_process(ready, tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       39062500 kB\nMemFree:        1000 kB\n")  # 40 GB
    two = {**H100, "STANDIN_GPUS": "2", "WS_MEMINFO": str(meminfo)}
    r, lines = check(ready, **two)
    assert r.returncode == 0, r.stdout  # a warning
    [line] = host_ram_warnings(lines)
    assert line == (
        f"warning: {CONFIG}:{line_of(ready, CONFIG, 'blocks_to_swap')}: 2 training processes need about 54 GB of host "
        "RAM (with block swap each holds the DiT on the CPU: about 27 GB a process, measured in "
        "bench/nvidia-h200_v1_1-and-2-gpus.md) and this machine has 40 GB: the system may kill the run; train on "
        "fewer GPUs (`num_processes` in [workspace]), or rent a pod with more RAM"
    )
    _, one = check(ready, **{**two, "CUDA_VISIBLE_DEVICES": "0"})  # one process: 27 GB fits
    assert host_ram_warnings(one) == []
    edit(ready, CONFIG, blocks_to_swap=None)  # no swap: 8.9 GB a process
    _, noswap = check(ready, **two)
    assert host_ram_warnings(noswap) == []
    meminfo.write_text("MemTotal:       15625000 kB\n")  # 16 GB
    _, small = check(ready, **two)
    [line] = host_ram_warnings(small)
    assert "2 training processes need about 18 GB of host RAM (without block swap: about 9 GB a process" in line


def test_without_nvidia_smi_the_memory_check_says_it_did_not_happen(ready):
    edit(ready, CONFIG, blocks_to_swap=None)
    path = ready.env["PATH"].split(":", 1)[1]  # tests/bin (with the nvidia-smi stand-in) left out
    r = ready.tool("check", f"CONFIG_FILE={CONFIG}", env={"PATH": path})
    assert "[10/13] GPU memory ⊘ no GPU visible: not checked" in r.stdout.splitlines()
    assert "GPU memory ✓" not in r.stdout and "run out of GPU memory" not in r.stdout


def test_a_machine_whose_nvidia_smi_lists_no_gpu_is_not_checked_either(ready):
    r = ready.tool("check", f"CONFIG_FILE={CONFIG}", env={"STANDIN_GPUS": "0"})
    assert "[10/13] GPU memory ⊘ no GPU visible: not checked" in r.stdout.splitlines()


def test_dry_run_asks_no_gpu_and_says_the_memory_is_not_checked(ready):
    edit(ready, CONFIG, blocks_to_swap=None)
    r = ready.tool("check", f"CONFIG_FILE={CONFIG}", "DRY_RUN=1", env=H100)
    assert "[10/13] GPU memory ⊘ dry run: no GPU needed, not checked" in r.stdout.splitlines()
    assert "run out of GPU memory" not in r.stdout
    assert [c for c in ready.calls("nvidia-smi") if c["argv"] != ["-L"]] == []  # -L: the GPU count (effective batch)


def test_settings_easier_than_every_run_that_ran_out_pass_on_the_gpu_shown(ready):
    r, lines = check(ready, **H100)  # the shipped blocks_to_swap = 20: more swap than every run that ran out
    assert memory_warnings(lines) == [] and "[10/13] GPU memory ✓" in r.stdout.splitlines()


# --- torch's compile cache: one folder per set of compile-relevant settings ------------------------------------


def compile_dir(w, **env) -> str:
    assert w.tool("cache").returncode == 0  # make train needs an up-to-date cache (a dataset edit makes it stale)
    before = len(w.calls("accelerate"))
    r = w.tool("train", env=env)
    assert r.returncode == 0, r.stderr
    calls = w.calls("accelerate")
    assert len(calls) == before + 1
    return calls[-1]["env"]["TORCHINDUCTOR_CACHE_DIR"]


@pytest.mark.usefixtures("cached")  # make train needs an up-to-date cache
def test_compile_cache_dir_reaches_the_trainer_inside_the_workspace_cache(ready):
    edit(ready, CONFIG, compile=True)
    r = ready.tool("train")
    assert r.returncode == 0, r.stderr
    folder = ready.calls("accelerate")[0]["env"]["TORCHINDUCTOR_CACHE_DIR"]
    assert Path(folder).parent == ready.root / "cache" / "torch_compile"
    assert f"torch compile cache: cache/torch_compile/{Path(folder).name} " in r.stderr


@pytest.mark.parametrize(
    "change",
    [
        (CONFIG, None, dict(fp8_base=True, fp8_scaled=True)),
        (CONFIG, None, dict(blocks_to_swap=12)),
        (CONFIG, None, dict(compile_mode="max-autotune-no-cudagraphs")),
        (DATASET, "general", dict(batch_size=8)),
        (DATASET, "general", dict(resolution=[640, 640])),
        (CONFIG, "workspace", dict(blocks_without_checkpointing=4)),
    ],
)
def test_compile_cache_dir_differs_when_a_compile_relevant_setting_differs(ready, change):
    edit(ready, CONFIG, compile=True, blocks_to_swap=0)  # blocks_without_checkpointing needs no block swap
    first = compile_dir(ready)
    rel, table, values = change
    edit(ready, rel, table, **values)
    assert compile_dir(ready) != first


def test_compile_cache_dir_is_the_same_when_only_unrelated_settings_differ(ready):
    edit(ready, CONFIG, compile=True)
    first = compile_dir(ready)
    edit(ready, CONFIG, learning_rate=1e-4, max_train_steps=500, seed=7)
    assert compile_dir(ready) == first


@pytest.mark.usefixtures("cached")  # make train needs an up-to-date cache
def test_users_own_torchinductor_cache_dir_is_kept_and_said(ready):
    edit(ready, CONFIG, compile=True)
    ready.write(".env", "TORCHINDUCTOR_CACHE_DIR=/volume/inductor\n")
    r = ready.tool("train")
    assert r.returncode == 0, r.stderr
    assert ready.calls("accelerate")[0]["env"]["TORCHINDUCTOR_CACHE_DIR"] == "/volume/inductor"
    assert "TORCHINDUCTOR_CACHE_DIR=/volume/inductor (yours, kept)" in r.stderr
