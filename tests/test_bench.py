"""Every script under bench/ runs, at a small size, in the suite: a change that breaks a benchmark behind a README
figure fails `make test` instead of being found when someone re-measures."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from conftest import REPO, isolated_env

# The small-size arguments of each script; a new script under bench/ needs its line here.
SMALL = {
    "block_probe.py": ["--small", "--out", "probe.json"],
    "cache_speed.py": ["--items", "20", "--repeat", "2"],
    "check_speed.py": ["--items", "20", "--size", "128x192"],
    "one_graph_probe.py": ["--small"],
}
# Scripts that need a workspace and the stand-ins: their own tests below.
OWN_TEST = {"validation_cost.py"}
# What each script prints once it measured what its README figure says.
PRINTS = {
    "block_probe.py": ["sdpa_default {", "double_eager_default_ckpt {", "single_eager_default_nockpt {"],
    "cache_speed.py": [
        "`ws cache` when up to date (whole process, pre-flight checks included): best",
        "planning alone:",
    ],
    "check_speed.py": ["ws check, first run (decodes every image):", "ws check, second run (image facts cached):"],
    # A row that failed prints {'error': ...}: these three compiled and measured.
    "one_graph_probe.py": [
        "double_musubi_ckpt_b1.0 {'s': ",
        "double_nobreak_ckpt_b1.0 {'s': ",
        "single_nobreak_nockpt_b1.0 {'s': ",
    ],
}
SCRIPTS = sorted(p.name for p in (REPO / "bench").glob("*.py") if p.name not in OWN_TEST)
# Scripts that measure musubi-tuner's own modules: their small run needs the train extra.
NEEDS_MUSUBI = {"block_probe.py", "one_graph_probe.py"}


def test_every_bench_script_has_a_small_run_here():
    assert sorted([*SMALL, *OWN_TEST]) == sorted(p.name for p in (REPO / "bench").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_script_runs_at_a_small_size(script, tmp_path):
    if script in NEEDS_MUSUBI and importlib.util.find_spec("musubi_tuner") is None:
        pytest.skip(f"bench/{script} runs musubi-tuner's DiT blocks: needs the train extra (`uv sync --extra train`)")
    env = {**isolated_env(tmp_path), "TMPDIR": str(tmp_path)}
    r = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *SMALL.get(script, ["--items", "20"])],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    for text in PRINTS.get(script, []):
        assert text in r.stdout, r.stdout


def test_validation_cost_runs_the_trainer_twice_alike_but_for_the_validation_variables(ws, tmp_path):
    """bench/validation_cost.py with the stand-ins: make bench's synthetic inputs and a held-out set of another seed
    (caches only), then the same `accelerate launch -m musubi_workspace.launch` command twice, the second with the
    launcher's WS_VALIDATION variables alone added; the report's tables from the runs' tensorboard files and
    validation records."""
    out = tmp_path / "report" / "cost.md"
    env = {
        **ws.env,
        "STANDIN_STEPS": "all",
        "STANDIN_OUTPUTS": "1",
        "STANDIN_RECORD_ENV": "all",
        "TMPDIR": str(tmp_path),
    }
    argv = [sys.executable, str(REPO / "bench" / "validation_cost.py"), "--steps", "6", "--items", "3", "--every", "2"]
    argv += ["--keep"]
    r = subprocess.run([*argv, "--out", str(out)], cwd=ws.root, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    synth = [c["argv"] for c in ws.calls("synthetic")]
    assert len(synth) == 2 and all(a[:2] == ["-m", "musubi_workspace.tune.synthetic"] for a in synth)
    train, held_out = synth
    # A batch of 16 for each of the 6 steps; the held-out set: 3 items of seed 1, no DiT.
    assert train[train.index("--items") + 1] == "96" and train[train.index("--seed") + 1] == "0"
    assert held_out[held_out.index("--items") + 1] == "3" and held_out[held_out.index("--seed") + 1] == "1"
    assert "--caches-only" in held_out and "--caches-only" not in train
    without, with_ = ws.calls("accelerate")
    assert without["argv"] == with_["argv"]
    assert without["argv"][without["argv"].index("-m") + 1] == "musubi_workspace.launch"
    differ = {
        k
        for k in without["env_all"].keys() | with_["env_all"].keys()
        if without["env_all"].get(k) != with_["env_all"].get(k)
    }
    assert differ == {"WS_VALIDATION", "WS_VALIDATION_EVERY", "WS_VALIDATION_TIMESTEPS", "WS_VALIDATION_SET"}
    assert with_["env"]["WS_VALIDATION_EVERY"] == "2"
    assert with_["env"]["WS_VALIDATION_TIMESTEPS"] == "0.1,0.3,0.5,0.7,0.9"
    # The run's config: configs/v1's setting (compile, block swap 20, one graph) and seed, no sampling or saving.
    kept = Path(r.stdout.split("kept: ", 1)[1].split()[0])
    cfg = tomllib.loads((kept / "config.toml").read_text())
    assert cfg["compile"] is True and cfg["blocks_to_swap"] == 20 and cfg["seed"] == 42 and cfg["max_train_steps"] == 6
    assert cfg["workspace"] == {"split_attn_one_graph": True} and without["env"]["WS_SPLIT_ATTN_ONE_GRAPH"] == "1"
    assert not [k for k in cfg if k.startswith(("sample_", "save_", "huggingface_", "wandb_"))]
    assert cfg["log_with"] == "tensorboard"
    # Without bitsandbytes (not in the default suite's environment), AdamW instead of the config's 8-bit AdamW.
    assert cfg["optimizer_type"] == ("adamw8bit" if importlib.util.find_spec("bitsandbytes") else "AdamW")
    assert without["argv"][without["argv"].index("--config_file") + 1] == str(kept / "config.toml")
    # The held-out set: the shipped set's layout (batch 1, its one-frame keys) over its own caches.
    held = tomllib.loads(Path(with_["env"]["WS_VALIDATION"]).read_text())
    train_set = tomllib.loads(Path(cfg["dataset_config"]).read_text())
    assert held["general"]["batch_size"] == 1 and held["datasets"][0]["fp_1f_clean_indices"] == [0, 10]
    assert held["datasets"][0]["cache_directory"] != train_set["datasets"][0]["cache_directory"]
    assert held["datasets"][0]["cache_directory"].startswith(str(ws.root / "cache" / "bench"))
    report = out.read_text()
    data = json.loads(out.with_suffix(".json").read_text())
    assert report in r.stdout
    # Each run's output beside the report, named in it.
    assert "cost.without.log, cost.with.log" in report
    assert "musubi_workspace.launch" in (out.parent / "cost.with.log").read_text()
    assert data["runs"]["without"]["status"] == data["runs"]["with"]["status"] == "ok"
    assert data["losses_equal"] == "yes" and "Training loss, equal: **yes**" in report
    assert [row["step"] for row in data["step_table"]] == [1, 2, 3, 4, 5, 6]
    # The stand-in's loss curve, logged at every step of both runs.
    assert data["runs"]["without"]["losses"]["6"] == pytest.approx(0.05 + 0.15 * 0.97**6, rel=1e-6)
    assert data["default_cadence"]["passes"] == 11 and data["shipped_items"] == 2 and "**11 passes**" in report
    assert data["config"] == "configs/v1/config.toml" and data["seed"] == 42
    if not (REPO / "tests" / "bin" / "_standin_validation.py").exists():
        # A stand-in trainer that writes no validation records (before branch i26-out): no passes to time.
        assert data["passes_measured"] == {} and data["pass_seconds"] is None
        return
    # Passes at 0, 2, 4, 6 (the stand-in records 0.5 s each), the step-0 numbers from the series.
    assert list(data["passes_measured"]) == ["0", "2", "4", "6"] and data["pass_seconds"] == 0.5
    assert data["step0_seconds"] == 0.5 and data["step0_loss"] > 0 and len(data["step0_by_timestep"]) == 5
    assert [row["val_loss"] is not None for row in data["step_table"]] == [False, True, False, True, False, True]
    assert data["default_cadence"]["share_pct"] > 0
