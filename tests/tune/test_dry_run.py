"""Issue 25, 3: `make tune DRY_RUN=1` and `make bench DRY_RUN=1` on a fresh clone with no GPU stack (a laptop: no
stand-ins, no nvidia-smi) print the search and install nothing: no `.venv/.stamp-train`, no `uv sync --extra
train`, no torch in the venv. The clone is of this checkout's HEAD and `make setup example` runs there with the
real Makefile and uv (offline, from the uv cache the developer's own `make setup` filled)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, UV_DIR, isolated_env

# The candidates of the shipped configs/v1, in the order the search starts them when `current` fits (tune.axes).
SHIPPED_ORDER = [
    "current",
    "swap16",
    "swap12",
    "swap8",
    "swap4",
    "swap0",
    "pinned",
    "fp8",
    "swap0+fp8",
    "nocompile",
    "autotune",
    "swap0+autotune",
    "batch8+swap0",
    "nockpt",
    "offload",
    "batch32",
    "batch8",
    "combined",
]


def uv_cache() -> str:
    found = subprocess.run(["uv", "cache", "dir"], capture_output=True, text=True, env=dict(os.environ))
    return found.stdout.strip()


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> tuple[Path, dict]:
    if not UV_DIR:
        pytest.skip("uv not installed: the fresh clone's `make setup` needs it")
    tmp = tmp_path_factory.mktemp("fresh")
    root = tmp / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(root)], check=True, timeout=120)
    env = isolated_env(tmp)
    # A laptop: no stand-ins (no nvidia-smi, accelerate or tmux), only uv and the system's programs.
    env["PATH"] = os.pathsep.join([*UV_DIR, "/usr/local/bin", "/usr/bin", "/bin"])
    env.update(UV_CACHE_DIR=uv_cache(), UV_OFFLINE="1")
    env.pop("UV_PROJECT_ENVIRONMENT", None)
    r = subprocess.run(
        ["make", "--no-print-directory", "setup", "example"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return root, env


def dry_run(fresh, target: str) -> subprocess.CompletedProcess:
    root, env = fresh
    r = subprocess.run(
        ["make", "--no-print-directory", target, "DRY_RUN=1"], cwd=root, env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "--extra train" not in r.stdout + r.stderr  # make echoes the recipe of a stamp it would make
    assert not (root / ".venv" / ".stamp-train").exists()
    assert not list((root / ".venv").glob("lib/python*/site-packages/torch"))
    assert not list((root / ".venv").glob("lib/python*/site-packages/musubi_tuner"))
    return r


def candidates(out: str) -> list[str]:
    return [m.group(2) for m in re.finditer(r"^\[(\d+)/18\] ([^\s:]+)", out, re.M)]


@pytest.mark.parametrize("target", ["tune", "bench"])
def test_dry_run_in_a_fresh_clone_prints_the_search_and_installs_nothing(fresh, target):
    r = dry_run(fresh, target)
    out = r.stdout
    assert out.startswith(f"make {target} DRY_RUN=1: configs/v1/config.toml; nothing is installed, made or run\n")
    assert candidates(out) == SHIPPED_ORDER
    lines = out.splitlines()
    first = lines.index(next(l for l in lines if l.startswith("[1/18] current (current): ")))
    # each candidate's whole command under it: the probe through accelerate, its environment in front
    command = lines[first + 1].strip()
    assert "WS_PROBE_OUT=<scratch>/current/probe.json" in command
    assert "TORCHINDUCTOR_CACHE_DIR=<scratch>/current/inductor" in command
    assert "WANDB_MODE=disabled HF_HUB_OFFLINE=1" in command
    assert command.endswith("-m musubi_workspace.tune.probe --config_file <scratch>/current/config.toml")
    assert (
        "estimated time: no GPU visible here (nvidia-smi), so no measurement to go by; at most 18 run(s) x "
        "RUN_TIMEOUT 30m00s = 9h00m" in lines
    )
    if target == "bench":
        assert "synthetic inputs in cache/bench/ (torch and musubi-tuner make them at run time):" in lines
        [caches] = [l for l in lines if l.startswith("  cache/bench/cache_512x768_")]
        # 128 items: the batch of 32 (the search's largest) x (1 warm-up + 3 measured steps) x 1 process
        assert "/: 128 latent caches (synthetic00000_0512x0768_fp.safetensors, ...; 2.3 MB each) and 128 " in caches
        assert not (fresh[0] / "cache" / "bench").exists()
    assert not (fresh[0] / "runs").exists() or not list((fresh[0] / "runs").glob("v1/*-*"))
