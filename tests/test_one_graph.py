"""`[workspace] split_attn_one_graph` (launch.py): `make train` and `make resume` then run the trainer through the
workspace's thin launcher with `WS_SPLIT_ATTN_ONE_GRAPH=1` (the dry run shows both), `make check` refuses it where
it replaces nothing, `make bench` / `make tune` measure it as `onegraph`, APPLY=1 and `make check`'s `faster:` line
write and name it, and the compile cache tells it apart.

That the launcher's attention makes the same sdpa calls as musubi-tuner's, and traces a block as one graph, is
tested against musubi-tuner's own code in tests/musubi/test_launch_real.py."""

from __future__ import annotations

import json
import shlex
from dataclasses import replace

import pytest
from checks.test_combinations import CONFIG, check, compile_dir, edit, line_of
from runs.test_estimate import H200, V1, h200_table, row, speed_lines, with_table
from runs.test_ledger import records
from runs.test_resume import NAME, state
from test_launch import applies_workspace_key
from tune.test_tune import probe_calls

from musubi_workspace import launch
from musubi_workspace.errors import WorkspaceError
from musubi_workspace.tune import parse_name

ENV = launch.ONE_GRAPH_ENV


def one_graph(w, **options) -> None:
    edit(w, CONFIG, table="workspace", split_attn_one_graph=True)
    if options:
        edit(w, CONFIG, **options)


def test_train_runs_the_launcher_with_the_setting_and_the_dry_run_shows_it(cached):
    one_graph(cached)
    dry = cached.tool("train", "DRY_RUN=1")
    assert dry.returncode == 0, dry.stderr
    words = shlex.split(dry.stdout.strip().splitlines()[-1])
    assert f"{ENV}=1" in words[: words.index("accelerate")]
    assert launch.ENV not in " ".join(words)  # no blocks without checkpointing asked for
    assert words[words.index("-m") + 1] == "musubi_workspace.launch"
    r = cached.tool("train", "AUTO_STOP=0")
    assert r.returncode == 0, r.stderr
    (call,) = cached.calls("accelerate")
    assert call["argv"][call["argv"].index("-m") + 1] == "musubi_workspace.launch" and call["env"][ENV] == "1"
    (rec,) = records(cached, "train")
    assert f"{ENV}=1 " in rec["commands"][0]["shell"]


def test_both_launcher_settings_reach_one_launch(cached):
    one_graph(cached, blocks_to_swap=0)
    edit(cached, CONFIG, table="workspace", blocks_without_checkpointing=2)
    assert cached.tool("train", "AUTO_STOP=0").returncode == 0
    (call,) = cached.calls("accelerate")
    assert call["env"][ENV] == "1" and call["env"][launch.ENV] == "2"
    assert call["argv"][call["argv"].index("-m") + 1] == "musubi_workspace.launch"


def test_resume_runs_the_launcher_with_it_too(cached):
    one_graph(cached)
    state(cached, f"{NAME}-step00000400-state", age=100)
    assert cached.tool("resume", "AUTO_STOP=0").returncode == 0
    call = cached.calls("accelerate")[-1]
    assert call["argv"][call["argv"].index("-m") + 1] == "musubi_workspace.launch" and call["env"][ENV] == "1"


@pytest.mark.parametrize(
    "options, message",
    [
        (
            {"split_attn": False},
            "[workspace] split_attn_one_graph = true does nothing without `split_attn = true`; set it, or remove the "
            "line",
        ),
        (
            {"sdpa": None, "xformers": True},
            "[workspace] split_attn_one_graph = true replaces split_attn's sdpa loop, but this version trains with "
            "`xformers = true`; set `sdpa = true`, or remove the line",
        ),
    ],
)
def test_check_refuses_it_where_it_replaces_nothing_and_train_does_not_start(ready, options, message):
    one_graph(ready, **options)
    r, lines = check(ready)
    line = line_of(ready, CONFIG, "split_attn_one_graph")
    assert r.returncode != 0 and f"error: {CONFIG}:{line}: {message}" in lines, lines
    assert "Traceback" not in r.stderr
    assert ready.tool("train", "AUTO_STOP=0").returncode != 0 and not ready.calls("accelerate")


def test_with_sdpa_set_it_passes_whatever_other_attention_is_set(ready):
    # musubi-tuner trains with sdpa whenever `sdpa = true` (trainer_base.py), so the replacement applies.
    one_graph(ready, flash_attn=True)
    r, lines = check(ready)
    assert not [l for l in lines if "split_attn_one_graph" in l], lines


def test_bench_measures_onegraph_through_the_probe(ready):
    ready.seed_setting()
    r = ready.tool("bench", "ONLY=current,swap0+compile,swap0+compile+onegraph", env=H200)
    assert r.returncode == 0, r.stderr + r.stdout
    current, swap0c, one = probe_calls(ready)
    assert ENV not in current["env"] and ENV not in swap0c["env"] and one["env"][ENV] == "1"
    (log,) = (ready.root / "runs" / "v1").glob("bench-*/swap0+compile+onegraph.log")  # it holds the run's config
    assert "[workspace]\nsplit_attn_one_graph = true\n" in log.read_text()
    table = ready.read("bench/nvidia-h200_v1.md")
    line = next(l for l in table.splitlines() if l.startswith("| `swap0+compile+onegraph`"))
    assert "sdpa, split_attn (one graph), checkpointing, compile" in line
    # The stand-in's model: 3% less a compiled step with it; so it is the pick.
    s = {x["name"]: x for x in json.loads(ready.read("bench/nvidia-h200_v1.runs.json"))[0]["results"]}
    ratio = s["swap0+compile+onegraph"]["step_times"][0] / s["swap0+compile"]["step_times"][0]
    assert ratio == pytest.approx(0.97, rel=1e-3)
    assert "**Pick: `swap0+compile+onegraph`**" in table


def test_apply_writes_it_into_the_new_versions_workspace_table(ready):
    applies_workspace_key(ready, "swap0+compile+onegraph", "split_attn_one_graph", "true")


def test_check_names_it_when_a_measured_onegraph_row_is_faster(ready):
    ready.seed_setting()
    sessions = h200_table()
    sessions[0]["results"].append(row(replace(V1, blocks_to_swap=0, compile=True, one_graph=True), 12.83, 71.1))
    with_table(ready, sessions)
    r = ready.tool("check", env=H200)
    assert r.returncode == 0, r.stdout + r.stderr
    assert speed_lines(r)[-1] == (
        "faster: NVIDIA H200: `swap0+compile+onegraph` measured 1.55x faster than this version's setting (12.83 "
        "against 19.87 s/step, same numbers) in bench/nvidia-h200_v1.runs.json: set blocks_to_swap = 0, "
        "compile = true, [workspace] split_attn_one_graph = true in configs/v1/config.toml"
    )


def test_the_compile_cache_tells_it_apart(ready):
    edit(ready, CONFIG, table="workspace", split_attn_one_graph=False)  # configs/v1 ships it on
    first = compile_dir(ready)
    one_graph(ready)
    assert compile_dir(ready) != first


def test_names_parse_to_it_and_one_without_split_attn_is_one_clear_error():
    assert parse_name("swap0+compile+onegraph", V1) == replace(V1, blocks_to_swap=0, compile=True, one_graph=True)
    assert parse_name("onegraph", V1).workspace() == {"split_attn_one_graph": True}
    with pytest.raises(WorkspaceError) as e:
        parse_name("nosplit+onegraph", V1)
    assert e.value.message == (
        "ONLY=nosplit+onegraph: onegraph changes split_attn's sdpa loop; this setting has sdpa without split_attn "
        "(make check refuses it); use it with split and sdpa"
    )


@pytest.mark.parametrize("value", ["2", "yes", "true"])
def test_the_launcher_reads_a_bad_value_as_one_line(value):
    with pytest.raises(SystemExit) as e:
        launch.one_graph_from_env({ENV: value})
    assert str(e.value) == f"musubi-workspace: {ENV}={value!r} is not 0 or 1"
    assert launch.one_graph_from_env({}) is False and launch.one_graph_from_env({ENV: "1"}) is True
