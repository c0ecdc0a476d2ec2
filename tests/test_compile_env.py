"""The compile environment (data/compile_env.toml) reaches every compiled run: `make train`, `make resume`,
`make train-bg` (through `make train`), and the compiled candidates of `make tune` and `make bench`; the dry run
shows it in front of the command; a value the user set is kept; a run without compile gets none of it."""

from __future__ import annotations

from checks.test_combinations import CONFIG, edit
from conftest import split_env
from runs.test_ledger import records
from runs.test_pod import wait_for
from runs.test_resume import NAME, state
from tune.test_tune import probe_calls, with_caches

from musubi_workspace.compile_env import compile_vars

VARS = {v.name: v.value for v in compile_vars()}


def test_the_set_is_read_from_the_data_file_and_says_where_it_stands():
    assert VARS == {"TORCHINDUCTOR_AUTOGRAD_CACHE": "0", "TORCHDYNAMO_CAPTURE_SCALAR_OUTPUTS": "1"}
    assert all(v.why and v.verified for v in compile_vars())


def shown(env: dict) -> list[str]:
    return [f"{k}={v}" for k, v in env.items()]


def compiled_env(call) -> dict:
    return {k: call["env"].get(k) for k in VARS}


def test_compiled_train_gets_the_variables_and_the_dry_run_shows_them(cached):
    edit(cached, CONFIG, compile=True)
    assert cached.tool("cache").returncode == 0
    dry = cached.tool("train", "DRY_RUN=1")
    assert dry.returncode == 0, dry.stderr
    env, argv = split_env(dry.stdout.strip().splitlines()[-1])
    # configs/v1 also runs split_attn in one graph: the launcher's variable follows the compile environment; the
    # rest of what the run gets (the compile cache folder) after them
    assert shown(env)[:3] == [
        "TORCHINDUCTOR_AUTOGRAD_CACHE=0",
        "TORCHDYNAMO_CAPTURE_SCALAR_OUTPUTS=1",
        "WS_SPLIT_ATTN_ONE_GRAPH=1",
    ]
    assert "TORCHINDUCTOR_CACHE_DIR" in env
    assert argv[:2] == ["accelerate", "launch"]
    r = cached.tool("train", "AUTO_STOP=0")
    assert r.returncode == 0, r.stderr
    (call,) = cached.calls("accelerate")
    assert compiled_env(call) == VARS
    (rec,) = records(cached, "train")
    assert rec["commands"][0]["shell"].startswith(
        "TORCHINDUCTOR_AUTOGRAD_CACHE=0 TORCHDYNAMO_CAPTURE_SCALAR_OUTPUTS=1 "
    )


def test_a_run_without_compile_gets_none_of_them(cached):
    cached.seed_setting()
    dry = cached.tool("train", "DRY_RUN=1")
    env, argv = split_env(dry.stdout.strip().splitlines()[-1])
    assert not VARS.keys() & env.keys() and argv[:2] == ["accelerate", "launch"]
    assert cached.tool("train", "AUTO_STOP=0").returncode == 0
    assert compiled_env(cached.calls("accelerate")[0]) == {k: None for k in VARS}


def test_the_users_own_value_is_kept(cached):
    edit(cached, CONFIG, compile=True)
    assert cached.tool("cache").returncode == 0
    cached.write(".env", "TORCHDYNAMO_CAPTURE_SCALAR_OUTPUTS=0\n")
    dry = cached.tool("train", "DRY_RUN=1", env={"TORCHINDUCTOR_AUTOGRAD_CACHE": "1"})
    # nothing of the compile environment added: both are the user's (the one from .env shown, as the run gets it)
    env, argv = split_env(dry.stdout.strip().splitlines()[-1])
    assert shown(env)[0] == "WS_SPLIT_ATTN_ONE_GRAPH=1" and argv[:2] == ["accelerate", "launch"]
    assert "TORCHINDUCTOR_AUTOGRAD_CACHE" not in env and env["TORCHDYNAMO_CAPTURE_SCALAR_OUTPUTS"] == "0"
    assert cached.tool("train", "AUTO_STOP=0", env={"TORCHINDUCTOR_AUTOGRAD_CACHE": "1"}).returncode == 0
    assert compiled_env(cached.calls("accelerate")[0]) == {
        "TORCHINDUCTOR_AUTOGRAD_CACHE": "1",
        "TORCHDYNAMO_CAPTURE_SCALAR_OUTPUTS": "0",
    }


def test_compiled_resume_gets_them(cached):
    edit(cached, CONFIG, compile=True)
    assert cached.tool("cache").returncode == 0
    state(cached, f"{NAME}-step00000400-state", age=100)
    dry = cached.tool("resume", "DRY_RUN=1")
    assert dry.returncode == 0, dry.stderr
    env, argv = split_env(dry.stdout.strip().splitlines()[-1])
    assert (
        shown(env)[:3]
        == ["TORCHINDUCTOR_AUTOGRAD_CACHE=0", "TORCHDYNAMO_CAPTURE_SCALAR_OUTPUTS=1", "WS_SPLIT_ATTN_ONE_GRAPH=1"]
        and argv[0] == "accelerate"
    )
    assert cached.tool("resume", "AUTO_STOP=0").returncode == 0
    assert compiled_env(cached.calls("accelerate")[-1]) == VARS


def test_compiled_train_bg_gets_them_through_make_train(cached):
    edit(cached, CONFIG, compile=True)
    assert cached.tool("cache").returncode == 0
    r = cached.make("train-bg", "AUTO_STOP=0", env={"STANDIN_STEPS": "2"})
    assert r.returncode == 0, r.stderr
    wait_for(lambda: cached.calls("accelerate"))
    assert compiled_env(cached.calls("accelerate")[0]) == VARS


def test_tune_and_bench_give_them_to_compiled_candidates_only(ready):
    ready.seed_setting()
    with_caches(ready)
    r = ready.tool("tune", "ONLY=current,compile")
    assert r.returncode == 0, r.stderr + r.stdout
    current, compiled = probe_calls(ready)
    assert compiled_env(current) == {k: None for k in VARS} and compiled_env(compiled) == VARS
    ready.record.unlink()
    r = ready.tool("bench", "ONLY=swap0+compile", env={"TORCHINDUCTOR_AUTOGRAD_CACHE": "1"})
    assert r.returncode == 0, r.stderr + r.stdout
    (call,) = probe_calls(ready)
    assert compiled_env(call) == {"TORCHINDUCTOR_AUTOGRAD_CACHE": "1", "TORCHDYNAMO_CAPTURE_SCALAR_OUTPUTS": "1"}
    record = next((ready.root / "runs" / "v1").glob("bench-*/bench.json")).read_text()
    assert "swap0+compile: TORCHDYNAMO_CAPTURE_SCALAR_OUTPUTS=1 accelerate launch" in record
