"""The Makefile itself: help, loop order, strict shell, variables reaching the tool intact."""

from __future__ import annotations

import re

from conftest import REPO

LOOP = ["setup", "new", "diff", "check", "cache", "train", "generate"]


def public_targets() -> list[str]:
    text = (REPO / "Makefile").read_text()
    return re.findall(r"^([a-z][a-zA-Z_-]+):.*## ", text, re.M)


def test_make_alone_prints_help_with_every_public_target(ws):
    r = ws.make()
    assert r.returncode == 0, r.stderr
    for target in public_targets():
        assert re.search(rf"^  {re.escape(target)}\s+\S", r.stdout, re.M), f"{target} missing from help:\n{r.stdout}"
    assert "[CONFIG_FILE DRY_RUN]" in r.stdout


def test_help_lists_the_loop_in_order(ws):
    out = ws.make("help").stdout
    positions = [out.index(f"  {t} ") for t in LOOP]
    assert positions == sorted(positions), out


def test_every_public_target_is_phony_and_documented():
    text = (REPO / "Makefile").read_text()
    for target in public_targets():
        assert re.search(rf"^\.PHONY: {re.escape(target)}$", text, re.M), target


def test_strict_preamble_comes_first():
    head = (REPO / "Makefile").read_text().splitlines()[:6]
    assert head == [
        "SHELL := bash",
        ".SHELLFLAGS := -eu -o pipefail -c",
        ".DELETE_ON_ERROR:",
        ".SUFFIXES:",
        "MAKEFLAGS += --warn-undefined-variables --no-builtin-rules",
        ".DEFAULT_GOAL := help",
    ]


def test_no_recipe_line_uses_a_variable_set_on_an_earlier_line():
    """Each recipe line is its own shell: no `X=...` on one line and `$$X` on the next (the seed's bug)."""
    text = (REPO / "Makefile").read_text()
    for block in re.split(r"\n(?=\S)", text):
        lines = [l for l in block.splitlines() if l.startswith("\t")]
        assigned = set()
        for l in lines:
            for name in assigned:
                assert f"$${name}" not in l and f"$${{{name}}}" not in l, block
            assigned |= set(re.findall(r"(?:^|[;&|]\s*|\t)([A-Za-z_][A-Za-z0-9_]*)=", l))


def test_recipes_are_echoed_without_secrets(ready):
    r = ready.make("train", "DRY_RUN=1", env={"HF_TOKEN": "hf_" + "x" * 34, "WANDB_API_KEY": "f" * 40})
    assert r.returncode == 0, r.stderr
    assert "hf_xxx" not in r.stdout + r.stderr and "f" * 40 not in r.stdout + r.stderr


def test_config_path_with_spaces_reaches_the_tool_intact(ready):
    src = ready.root / "configs" / "v1"
    spaced = ready.root / "my configs" / "try one"
    spaced.mkdir(parents=True)
    for f in src.iterdir():
        (spaced / f.name).write_text(f.read_text())
    r = ready.make("train", "DRY_RUN=1", "CONFIG_FILE=my configs/try one/config.toml")
    assert r.returncode == 0, r.stderr
    assert "--config_file 'my configs/try one/config.toml'" in r.stdout


def test_a_failing_step_fails_the_target_with_its_exit_code(ready):
    r = ready.make("cache", env={"STANDIN_EXIT_FPACK_CACHE_LATENTS": "7"})
    assert r.returncode != 0
    assert "cache latents failed with exit code 7" in r.stderr
    assert [c["prog"] for c in ready.calls()] == ["fpack_cache_latents"]  # text encoders never ran


def test_monitor_runs_nvitop_from_the_gpu_stack(ws):
    r = ws.make("monitor")
    assert r.returncode == 0, r.stderr
    assert [c["prog"] for c in ws.calls()] == ["nvitop"]
