"""Where the validation loss shows (issue 26), through the real make targets with the stand-in trainer writing
the numbers as `musubi_workspace.launch` writes them (tests/bin/_standin_validation.py): the series and the JSON
beside each LoRA after `make train`, `make runs` (best @ step), `make report` (validation.png and the
per-timestep panels), `make generate LORA=best`."""

from __future__ import annotations

import json

import pytest
from conftest import error_line
from PIL import Image

from musubi_workspace.validation import records

NAME = "example-1f_v1"
# max_train_steps 10, a LoRA every 3 steps, a validation pass every 2: numbers at 0, 2, 3, 4, 6, 8, 9, 10.
SHORT = {"max_train_steps = 1000": "max_train_steps = 10", "save_every_n_steps = 100": "save_every_n_steps = 3"}
SET_TOML = "validation/dataset.toml"


def short_run(w, version: str = "v1", **more: str) -> None:
    path = f"configs/{version}/config.toml"
    text = w.read(path)
    for old, new in {**SHORT, **more}.items():
        assert old in text, old
        text = text.replace(old, new)
    if SHIPPED in text and "\nvalidation_every_n_steps" not in text:
        text = text.rstrip("\n") + "\nvalidation_every_n_steps = 2\n"
    w.write(path, text)


SHIPPED = f'validation = "{SET_TOML}"'


def validating(w) -> None:
    """The shipped configs/v1 names the example's validation set (`make example` writes it); until it does, the
    launcher's variables as `make train` sets them."""
    if SHIPPED in w.read("configs/v1/config.toml"):
        assert (w.root / SET_TOML).is_file()
        return
    items = json.dumps({"image_path": "datasets/example-1f/target/item01.png", "caption": "x"})
    w.write("validation/example-1f/validation.jsonl", items + "\n" + items + "\n")
    w.write(SET_TOML, '[[datasets]]\nimage_jsonl_file = "validation/example-1f/validation.jsonl"\n')
    w.env.update(
        WS_VALIDATION=SET_TOML,
        WS_VALIDATION_EVERY="2",
        WS_VALIDATION_TIMESTEPS="0.1,0.3,0.5,0.7,0.9",
        WS_VALIDATION_SET="0123456789abcdef",
    )


def train(w, version: str = "v1", **env: str):
    r = w.make("train", f"CONFIG_FILE={version}", "AUTO_STOP=0", env={"STANDIN_STEPS": "all", **env})
    assert r.returncode == 0, r.stderr
    return r


@pytest.fixture
def trained(cached):
    validating(cached)
    short_run(cached)
    train(cached)
    return cached


def test_train_writes_the_series_and_a_json_beside_each_lora(trained):
    out = trained.root / "outputs" / "v1"
    series = records.read_series(out, NAME)
    assert [(r.step, r.lora) for r in series] == [
        (0, None),
        (2, None),
        (3, f"{NAME}-step00000003.safetensors"),
        (4, None),
        (6, f"{NAME}-step00000006.safetensors"),
        (8, None),
        (9, f"{NAME}-step00000009.safetensors"),
        (10, f"{NAME}.safetensors"),  # the final save: end_training ran before it, the JSON and the series only
    ]
    base = series[0]
    assert base.ratio == 1.0 and base.by == "training" and base.timesteps == [0.1, 0.3, 0.5, 0.7, 0.9]
    assert len(base.set) == 16 and int(base.set, 16) >= 0
    assert base.dataset_config == SET_TOML and base.items == 2
    assert sorted(base.by_timestep) == ["0.1", "0.3", "0.5", "0.7", "0.9"]
    assert base.loss == pytest.approx(sum(base.by_timestep.values()) / 5, abs=1e-6)
    losses = [r.loss for r in series]
    assert losses.index(min(losses)) == 4  # step 6 (6/10 of the run) is the lowest: falls, then rises
    assert losses[:5] == sorted(losses[:5], reverse=True) and losses[4:] == sorted(losses[4:])
    for lora in ("-step00000003", "-step00000006", "-step00000009", ""):
        beside = records.read_beside(out / f"{NAME}{lora}.safetensors")
        assert beside is not None and beside.lora == f"{NAME}{lora}.safetensors"
        assert beside == next(r for r in series if r.lora == beside.lora)
        assert beside.ratio == pytest.approx(beside.loss / base.loss, abs=1e-5)
    log = trained.read(f"runs/v1/{run_id(trained)}/log.txt")
    assert f"musubi-workspace: validation loss at step 0: {base.loss:.6f} (the base model)" in log


def run_id(w, target: str = "train") -> str:
    [folder] = sorted((w.root / "runs" / "v1").glob(f"*-{target}"))
    return folder.name


def test_make_runs_shows_the_best_validation_loss_and_its_step(trained):
    best = records.read_beside(trained.root / "outputs" / "v1" / f"{NAME}-step00000006.safetensors")
    r = trained.make("runs")
    assert r.returncode == 0, r.stderr
    head, *rows = r.stdout.splitlines()
    assert "  last loss  best val loss  cost" in head
    [row] = [row for row in rows if row.split()[1:3] == ["v1", "train"]]
    assert f"  {best.loss:.4g} @ 6  " in row
    [cache] = [row for row in rows if row.split()[2] == "cache"]
    assert cache.split()[6:] == ["-", "-", "$0.00", "-"]  # last loss, best val loss, cost, estimate


def test_generate_lora_best_renders_the_lowest_validation_loss(trained):
    r = trained.make("generate", "LORA=best")
    assert r.returncode == 0, r.stderr
    [call] = trained.calls("fpack_generate_video")
    argv = call["argv"]
    assert argv[argv.index("--lora_weight") + 1] == f"outputs/v1/{NAME}-step00000006.safetensors"
    best = records.read_beside(trained.root / "outputs" / "v1" / f"{NAME}-step00000006.safetensors")
    assert (
        f"LORA=best: using outputs/v1/{NAME}-step00000006.safetensors (validation loss {best.loss:.4g} at step 6, "
        "the lowest of 4 scored LoRA(s) of v1)"
    ) in r.stderr


def test_generate_lora_best_without_numbers_says_to_validate_first(ready):
    out = ready.root / "outputs" / "v1"
    out.mkdir(parents=True)
    (out / f"{NAME}.safetensors").write_bytes(b"x")
    r = ready.tool("generate", "LORA=best")
    assert r.returncode == 2
    assert error_line(r) == (
        "error: LORA=best: no LoRA of v1 in outputs/v1 has a validation loss yet (a <name>.validation.json beside "
        "it); run `make validate CONFIG_FILE=v1 LORA=all` first"
    )
    assert ready.calls("fpack_generate_video") == []


def decodes(path) -> tuple[int, int]:
    with Image.open(path) as img:
        img.load()
        return img.size


def test_report_draws_every_versions_validation_loss_and_marks_the_best(trained):
    # v2: half the learning rate (a shallower dip); v3: never trained, no numbers.
    assert trained.ws("new").returncode == 0
    text = trained.read("configs/v2/config.toml").replace("learning_rate = 2e-4", "learning_rate = 1e-4")
    trained.write("configs/v2/config.toml", text)
    assert trained.make("cache", "CONFIG_FILE=v2").returncode == 0
    train(trained, "v2")
    assert trained.ws("new").returncode == 0
    r = trained.tool("report", "VERSIONS=v1,v2,v3")
    assert r.returncode == 0, r.stderr
    report = trained.root / "runs" / "report"
    for name in ("validation.png", "validation_timesteps.png"):
        w, h = decodes(report / name)
        assert w > 0 and h > 0
    b1 = records.read_beside(trained.root / "outputs/v1" / f"{NAME}-step00000006.safetensors")
    b2 = records.read_beside(trained.root / "outputs/v2/example-1f_v2-step00000006.safetensors")
    assert b2.loss > b1.loss  # the shallower dip: v1 is the better version
    assert f"validation: v1: best {b1.loss:.4g} at step 6 ({NAME}-step00000006.safetensors)" in r.stdout
    assert f"validation: v2: best {b2.loss:.4g} at step 6 (example-1f_v2-step00000006.safetensors)" in r.stdout
    assert (
        "validation: v3: no validation numbers (no series, no .validation.json beside its LoRAs); "
        "`make validate CONFIG_FILE=v3 LORA=all` scores its LoRAs"
    ) in r.stdout
    page = trained.read("runs/report/index.html")
    assert '<a href="validation.png">validation.png</a>' in page
    assert '<a href="validation_timesteps.png">validation_timesteps.png</a>' in page
    assert f"<tr><td>v1</td><td>{b1.loss:.4g}</td><td>6</td><td><code>{NAME}-step00000006.safetensors</code>" in page
    assert "validation: v3: no validation numbers" in page
