"""`[workspace] blocks_without_checkpointing` (launch.py): `make train` and `make resume` then run the trainer through
the workspace's thin launcher with the count in its environment (the dry run shows both), `make check` refuses the
combinations it is not for, `make bench` / `make tune` measure it as `nockptN`, APPLY=1 and `make check`'s `faster:`
line write and name it, and the FLOP count drops the blocks that are not recomputed.

That the launcher really keeps those blocks out of checkpointing is tested against musubi-tuner's own DiT in
tests/musubi/test_launch_real.py."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import replace

import pytest
from checks.test_combinations import CONFIG, check, edit, line_of
from runs.test_estimate import H200, V1, h200_table, row, speed_lines, with_table
from runs.test_ledger import records
from runs.test_resume import NAME, state
from tune.test_tune import probe_calls, with_caches

from musubi_workspace import launch
from musubi_workspace.tune import parse_name
from musubi_workspace.tune.flops import Tokens, step_flops

ENV = launch.ENV


def unchecked(w, n: int = 6, **options) -> None:
    """configs/v1 without block swap, with `n` blocks without checkpointing (and `options`)."""
    edit(w, CONFIG, blocks_to_swap=0, **options)
    edit(w, CONFIG, table="workspace", blocks_without_checkpointing=n)


def test_train_runs_the_launcher_with_the_count_and_the_dry_run_shows_it(cached):
    unchecked(cached)
    dry = cached.tool("train", "DRY_RUN=1")
    assert dry.returncode == 0, dry.stderr
    line = dry.stdout.strip().splitlines()[-1]
    words = shlex.split(line)
    assert f"{ENV}=6" in words[: words.index("accelerate")]
    assert words[words.index("-m") + 1 : words.index("-m") + 4] == [
        "musubi_workspace.launch",
        "--config_file",
        "configs/v1/config.toml",
    ]
    r = cached.tool("train", "AUTO_STOP=0")
    assert r.returncode == 0, r.stderr
    (call,) = cached.calls("accelerate")
    assert call["argv"][call["argv"].index("-m") + 1] == "musubi_workspace.launch" and call["env"][ENV] == "6"
    (rec,) = records(cached, "train")
    assert f"{ENV}=6 " in rec["commands"][0]["shell"]


def test_without_the_setting_train_runs_musubi_tuners_module_directly(cached):
    edit(cached, CONFIG, table="workspace", split_attn_one_graph=False, validation=None)  # v1 ships them
    r = cached.tool("train", "AUTO_STOP=0")
    assert r.returncode == 0, r.stderr
    (call,) = cached.calls("accelerate")
    assert call["argv"][call["argv"].index("-m") + 1] == "musubi_tuner.fpack_train_network" and ENV not in call["env"]


def test_resume_runs_the_launcher_too(cached):
    unchecked(cached, 4)
    state(cached, f"{NAME}-step00000400-state", age=100)
    assert cached.tool("resume", "AUTO_STOP=0").returncode == 0
    call = cached.calls("accelerate")[-1]
    assert call["argv"][call["argv"].index("-m") + 1] == "musubi_workspace.launch" and call["env"][ENV] == "4"
    assert "--resume" in call["argv"]


@pytest.mark.parametrize(
    "options, message",
    [
        (
            {"gradient_checkpointing": False},
            "[workspace] blocks_without_checkpointing = 6 does nothing without gradient checkpointing",
        ),
        (
            {"blocks_to_swap": 20},
            "[workspace] blocks_without_checkpointing = 6 with blocks_to_swap = 20: not verified with block swap",
        ),
    ],
)
def test_check_refuses_it_where_it_does_not_apply_and_train_does_not_start(ready, options, message):
    unchecked(ready)
    edit(ready, CONFIG, **options)
    r, lines = check(ready)
    line = line_of(ready, CONFIG, "blocks_without_checkpointing")
    assert r.returncode != 0 and any(l.startswith(f"error: {CONFIG}:{line}: {message}") for l in lines), lines
    assert "Traceback" not in r.stderr
    assert ready.tool("train", "AUTO_STOP=0").returncode != 0 and not ready.calls("accelerate")


def test_bench_measures_nockpt_n_through_the_probe_with_the_count(ready):
    ready.seed_setting()
    r = ready.tool(
        "bench", "ONLY=current,swap0+compile,swap0+compile+nockpt4", env=H200 | {"STANDIN_GPU_MEM_GIB": "140"}
    )
    assert r.returncode == 0, r.stderr + r.stdout
    current, swap0c, nockpt = probe_calls(ready)
    assert ENV not in current["env"] and ENV not in swap0c["env"] and nockpt["env"][ENV] == "4"
    (log,) = (ready.root / "runs" / "v1").glob("bench-*/swap0+compile+nockpt4.log")  # it holds the run's config
    assert "[workspace]\nblocks_without_checkpointing = 4\n" in log.read_text()
    table = ready.read("bench/nvidia-h200_v1.md")
    row_line = next(l for l in table.splitlines() if l.startswith("| `swap0+compile+nockpt4`"))
    assert "checkpointing but the first 4 blocks, compile" in row_line
    # The stand-in's model: 0.4 GiB per item and block kept, a share of the recompute saved.
    s = {x["name"]: x for x in json.loads(ready.read("bench/nvidia-h200_v1.runs.json"))[0]["results"]}
    kept = s["swap0+compile+nockpt4"]["peak_allocated"] - s["swap0+compile"]["peak_allocated"]
    assert kept == pytest.approx(16 * 0.4 * 4 * 2**30, rel=1e-6)
    assert s["swap0+compile+nockpt4"]["step_times"][0] < s["swap0+compile"]["step_times"][0]


def applies_workspace_key(ready, name: str, key: str, value: str, env: dict | None = None) -> None:
    """`make tune ONLY=current,<name> APPLY=1` (the stand-in's pick: `name`) writes `swap0+compile` and
    `[workspace] <key> = <value>` into configs/v2, which passes its own check."""
    ready.seed_setting()
    with_caches(ready)
    r = ready.make("tune", f"ONLY=current,{name}", "APPLY=1", env=env)
    assert r.returncode == 0, r.stderr + r.stdout
    assert (
        "Wrote the picked setting into configs/v2/config.toml: blocks_to_swap = 0; compile = true; "
        f"[workspace] {key} = {value}"
    ) in r.stdout
    new = ready.read("configs/v2/config.toml")
    assert re.search(rf"^\[workspace\]$(?:(?!^\[).)*^{key} = {value}$", new, re.M | re.S)  # in [workspace]
    c = ready.tool("check", "CONFIG_FILE=configs/v2/config.toml")
    assert key not in c.stdout, c.stdout  # the written version passes its own check


def test_apply_writes_the_count_into_the_new_versions_workspace_table(ready):
    applies_workspace_key(
        ready, "swap0+compile+nockpt4", "blocks_without_checkpointing", "4", env={"STANDIN_GPU_MEM_GIB": "140"}
    )


def test_check_names_the_count_when_a_measured_nockpt_row_is_faster(ready):
    ready.seed_setting()
    sessions = h200_table()
    fast = replace(V1, blocks_to_swap=0, compile=True, blocks_without_checkpointing=4)
    sessions[0]["results"].append(row(fast, 12.0, 110.0))
    with_table(ready, sessions)
    r = ready.tool("check", env=H200)
    assert r.returncode == 0, r.stdout + r.stderr
    assert speed_lines(r)[-1] == (
        "faster: NVIDIA H200: `swap0+compile+nockpt4` measured 1.66x faster than this version's setting (12.00 "
        "against 19.87 s/step, same numbers) in bench/nvidia-h200_v1.runs.json: set blocks_to_swap = 0, "
        "compile = true, [workspace] blocks_without_checkpointing = 4 in configs/v1/config.toml"
    )


def test_names_parse_to_the_count_and_a_bad_one_is_one_clear_error():
    assert parse_name("swap0+compile+nockpt4", V1) == replace(
        V1, blocks_to_swap=0, compile=True, blocks_without_checkpointing=4
    )
    assert parse_name("nockpt", V1).checkpointing is False  # no digits: no checkpointing at all
    from musubi_workspace.errors import WorkspaceError

    with pytest.raises(WorkspaceError) as e:
        parse_name("nockpt61", V1)
    assert e.value.message == "ONLY=nockpt61: nockpt61: the FramePack DiT has 60 blocks"
    with pytest.raises(WorkspaceError) as e:
        parse_name("nockpt4", V1)  # V1 swaps 20 blocks
    assert e.value.message == (
        "ONLY=nockpt4: blocks without checkpointing (nockpt4) with block swap 20 is not verified (make check "
        "refuses it); add swap0"
    )


def test_a_current_setting_that_does_not_fit_searches_swap_with_every_block_checkpointed():
    from musubi_workspace.tune import axes

    base = replace(V1, blocks_to_swap=0, blocks_without_checkpointing=6)
    (swap,) = [a for a in axes(base, ["sdpa"], current_fits=False) if a.name == "blocks_to_swap"]
    assert [(s.blocks_to_swap, s.blocks_without_checkpointing) for s in swap.settings][:2] == [(4, 0), (8, 0)]
    assert [s.name(base) for s in swap.settings][:2] == ["swap4+nockpt0", "swap8+nockpt0"]


def test_the_recompute_counts_only_the_checkpointed_blocks():
    # 1 double + 1 single block, d = 8, as tests/tune/test_flops.py's hand count: forward 536,960, backward 815,872.
    tokens = Tokens(image=32, text=10, text_valid=6)
    half = step_flops(tokens, batch=2, checkpointing=0.5, lora_rank=2, double=1, single=1, d=8)
    assert half.total == 536_960 + 536_960 // 2 + 815_872  # one of the two blocks recomputed


@pytest.mark.parametrize("value", ["61", "x", "-1", "2.5"])
def test_the_launcher_reads_a_bad_count_as_one_line(value):
    with pytest.raises(SystemExit) as e:
        launch.blocks_from_env({ENV: value})
    assert str(e.value) == f"musubi-workspace: {ENV}={value!r} is not a whole number from 0 to 60"
    assert launch.blocks_from_env({}) == 0 and launch.blocks_from_env({ENV: "6"}) == 6
