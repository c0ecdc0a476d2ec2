"""Every script under bench/ runs, at a small size, in the suite: a change that breaks a benchmark behind a README
figure fails `make test` instead of being found when someone re-measures."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from conftest import REPO, isolated_env

# The small-size arguments of each script; a new script under bench/ needs its line here.
SMALL = {
    "block_probe.py": ["--small", "--out", "probe.json"],
    "cache_speed.py": ["--items", "20", "--repeat", "2"],
    "check_speed.py": ["--items", "20", "--size", "128x192"],
    "one_graph_probe.py": ["--small"],
}
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
SCRIPTS = sorted(p.name for p in (REPO / "bench").glob("*.py"))
# Scripts that measure musubi-tuner's own modules: their small run needs the train extra.
NEEDS_MUSUBI = {"block_probe.py", "one_graph_probe.py"}


def test_every_bench_script_has_a_small_run_here():
    assert sorted(SMALL) == SCRIPTS


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
