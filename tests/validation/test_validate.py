"""`make validate` (issue 26 item 4) through the real Makefile: the stand-in accelerate answers
`-m musubi_workspace.validation.offline` by writing the JSON beside each `--lora`, as the module does."""

from __future__ import annotations

import shlex

from conftest import error_line

from musubi_workspace.validation import records
from validation.test_outputs import NAME, SET_TOML, SHIPPED, short_run, train, validating

OUT = "outputs/v1"


def offline_argv(w) -> list[str]:
    [call] = [c for c in w.calls("accelerate") if "musubi_workspace.validation.offline" in c["argv"]]
    return call["argv"]


def loras_of(argv: list[str]) -> list[str]:
    return argv[argv.index("--lora") + 1 :]


def untrained_numbers(w) -> None:
    """Drop the JSON the training wrote, so that what is there afterwards is make validate's."""
    for p in (w.root / OUT).glob("*.validation.json"):
        p.unlink()


def test_validate_one_lora_writes_its_json_with_a_run_record(cached):
    validating(cached)
    short_run(cached)
    train(cached)
    untrained_numbers(cached)
    lora = f"{OUT}/{NAME}-step00000006.safetensors"
    r = cached.make("validate", f"LORA={lora}")
    assert r.returncode == 0, r.stderr
    argv = offline_argv(cached)
    assert argv[0] == "launch" and argv[argv.index("--num_processes") + 1] == "1"
    assert argv[argv.index("--config_file", argv.index("-m")) + 1] == "configs/v1/config.toml"
    assert argv[argv.index("--validation") + 1] == SET_TOML
    assert argv[argv.index("--validation_timesteps") + 1] == "0.1,0.3,0.5,0.7,0.9"
    assert len(argv[argv.index("--validation_set") + 1]) == 16
    assert loras_of(argv) == [lora]
    beside = records.read_beside(cached.root / lora)
    assert beside is not None and beside.by == records.BY_VALIDATE and beside.step == 6
    assert sorted(p.name for p in (cached.root / OUT).glob("*.validation.json")) == [
        f"{NAME}-step00000006.validation.json"
    ]
    assert len(list((cached.root / "runs/v1").glob("*-validate/run.json"))) == 1


def test_validate_all_scores_every_lora_and_empty_the_newest(cached):
    validating(cached)
    short_run(cached)
    train(cached)
    untrained_numbers(cached)
    r = cached.make("validate", "LORA=all")
    assert r.returncode == 0, r.stderr
    assert sorted(loras_of(offline_argv(cached))) == sorted(
        f"{OUT}/{NAME}{s}.safetensors" for s in ("", "-step00000003", "-step00000006", "-step00000009")
    )
    for s in ("", "-step00000003", "-step00000006", "-step00000009"):
        assert records.read_beside(cached.root / OUT / f"{NAME}{s}.safetensors").by == records.BY_VALIDATE


def test_an_old_version_trained_without_validation_is_scored_and_shows_in_the_report(cached):
    validating(cached)
    short_run(cached)
    cfg = cached.read("configs/v1/config.toml")
    cached.write("configs/v1/config.toml", cfg.replace(SHIPPED, ""))
    for k in ("WS_VALIDATION", "WS_VALIDATION_EVERY", "WS_VALIDATION_TIMESTEPS", "WS_VALIDATION_SET"):
        cached.env.pop(k, None)
    train(cached)
    assert list((cached.root / OUT).glob("*.validation.json*")) == []
    cached.write("configs/v1/config.toml", cfg)  # the set named afterwards
    r = cached.make("validate", "LORA=all")
    assert r.returncode == 0, r.stderr
    r = cached.tool("report", "VERSIONS=v1")
    assert r.returncode == 0, r.stderr
    best = min((records.read_beside(p) for p in (cached.root / OUT).glob("*.safetensors")), key=lambda rec: rec.loss)
    assert f"validation: v1: best {best.loss:.4g} at step {best.step} ({best.lora})" in r.stdout
    assert (cached.root / "runs/report/validation.png").is_file()


def test_dry_run_prints_the_pasteable_command_and_runs_nothing(cached):
    validating(cached)
    short_run(cached)
    train(cached)
    before = len(cached.calls("accelerate"))
    r = cached.make("validate", "DRY_RUN=1", "LORA=all")
    assert r.returncode == 0, r.stderr
    [line] = [l for l in r.stdout.splitlines() if "musubi_workspace.validation.offline" in l]
    argv = shlex.split(line[line.index("accelerate launch") :])
    assert argv[argv.index("-m") + 1] == "musubi_workspace.validation.offline" and len(loras_of(argv)) == 4
    assert len(cached.calls("accelerate")) == before
    assert list((cached.root / "runs/v1").glob("*-validate")) == []


def test_no_validation_set_is_one_line(cached):
    cfg = cached.read("configs/v1/config.toml")
    cached.write("configs/v1/config.toml", cfg.replace(SHIPPED, ""))
    r = cached.make("validate")
    assert r.returncode == 2
    assert error_line(r).startswith("error: configs/v1/config.toml: no validation set ([workspace] validation)")
    assert cached.calls("accelerate") == []
