"""The validation set of issue 26, the workspace side: `make example` writes the example's, `make new` keeps the
key, `make cache` caches it like the training data (shared by every version), `make train` refuses a stale cache of
it and hands the launcher its environment (WS_VALIDATION*, the set's content hash)."""

from __future__ import annotations

import json

import pytest
from conftest import error_line
from PIL import Image, ImageDraw
from runs.test_resume import NAME, state

from musubi_workspace.paths import Workspace
from musubi_workspace.validation.items import set_hash

SET = "validation/dataset.toml"
CACHE = "cache/validation/example-1f"
JSONL = "validation/example-1f/validation.jsonl"


def on_the_set(w) -> list[tuple[str, list[str]]]:
    """(program, argv) of the runs on the validation set."""
    return [(c["prog"], c["argv"]) for c in w.calls() if SET in c["argv"]]


def digest(w) -> str:
    return set_hash(Workspace(w.root), w.root / SET)


def test_example_writes_a_held_out_set_of_the_training_kind_and_never_overwrites(ws):
    rows = [json.loads(line) for line in ws.read(JSONL).splitlines()]
    train = [json.loads(line) for line in ws.read("datasets/example-1f/train.jsonl").splitlines()]
    assert [sorted(r) for r in rows] == [sorted(train[0])] * 2  # the kisekaeichi layout: target, 2 controls, caption
    pixels = {Image.open(ws.root / r["image_path"]).tobytes() for r in train}
    assert all(Image.open(ws.root / r["image_path"]).tobytes() not in pixels for r in rows)
    assert 'cache_directory = "cache/validation/example-1f"' in ws.read(SET)
    ws.write(SET, "# mine\n")
    r = ws.ws("example")
    assert r.returncode == 0 and "validation: 0 file(s) written (already present; nothing overwritten)" in r.stdout
    assert ws.read(SET) == "# mine\n"


def test_new_keeps_the_validation_key(ready):
    assert ready.make("new").returncode == 0
    assert '\nvalidation = "validation/dataset.toml"\n' in ready.read("configs/v2/config.toml")


def test_cache_runs_both_scripts_on_the_set_and_a_second_version_finds_it_fresh(ready):
    r = ready.tool("cache")
    assert r.returncode == 0, r.stderr
    assert [(prog, argv[argv.index("--dataset_config") + 1]) for prog, argv in on_the_set(ready)] == [
        ("fpack_cache_latents", SET),
        ("fpack_cache_text_encoder_outputs", SET),
    ]
    assert (
        f"[cache] validation set {CACHE}: 2 item(s): latents: all 2 to encode (2 new); "
        "text-encoder outputs: all 2 to encode (2 new)"
    ) in r.stderr
    assert "[cache] v1 validation set validation/dataset.toml: up to date" in r.stderr
    assert sorted(p.name for p in (ready.root / CACHE).glob("*.safetensors")) == [
        "val01_0512x0768_fp.safetensors",
        "val01_fp_te.safetensors",
        "val02_0512x0768_fp.safetensors",
        "val02_fp_te.safetensors",
    ]
    ready.record.unlink()
    assert ready.make("new").returncode == 0
    r = ready.tool("cache", "CONFIG_FILE=v2")
    assert r.returncode == 0, r.stderr
    assert on_the_set(ready) == []  # v2's own training cache runs; the shared set is fresh
    assert f"[cache] validation set {CACHE}: 2 item(s): up to date" in r.stderr


def redraw(w, rel: str) -> None:
    p = w.root / rel
    img = Image.open(p).convert("RGB")
    ImageDraw.Draw(img).rectangle((10, 10, 60, 60), fill=(0, 0, 0))
    img.save(p)


def test_train_refuses_a_stale_validation_cache_and_names_the_set(cached):
    redraw(cached, "validation/example-1f/target/val02.png")
    r = cached.tool("train", "AUTO_STOP=0")
    assert r.returncode == 3
    assert error_line(r) == (
        "error: configs/v1/config.toml: the cache of the validation set validation/dataset.toml ([workspace] "
        f"validation) is missing or stale ({CACHE}: latents: 1 of 2 to encode (1 changed)); run `make cache` first"
    )
    assert cached.calls("accelerate") == []
    assert cached.tool("cache").returncode == 0
    assert [prog for prog, _ in on_the_set(cached)] == ["fpack_cache_latents"]
    assert cached.tool("train", "AUTO_STOP=0").returncode == 0


def test_train_refuses_a_validation_set_never_cached(cached):
    for p in (cached.root / CACHE).iterdir():
        p.unlink()
    r = cached.tool("train", "AUTO_STOP=0")
    assert r.returncode == 3
    assert error_line(r) == (
        "error: configs/v1/config.toml: the cache of the validation set validation/dataset.toml ([workspace] "
        f"validation) is missing or stale ({CACHE}: not cached yet); run `make cache` first"
    )


@pytest.mark.parametrize("target", ["train", "resume"])
def test_train_and_resume_hand_the_launcher_the_set_its_cadence_timesteps_and_hash(cached, target):
    text = cached.read("configs/v1/config.toml").replace(
        '\nvalidation = "validation/dataset.toml"\n',
        '\nvalidation = "validation/dataset.toml"\nvalidation_every_n_steps = 25\nvalidation_timesteps = [0.25, 0.5]\n',
    )
    cached.write("configs/v1/config.toml", text)
    if target == "resume":
        state(cached, f"{NAME}-step00000400-state", age=100)
    r = cached.tool(target, "AUTO_STOP=0")
    assert r.returncode == 0, r.stderr
    (call,) = cached.calls("accelerate")
    assert call["argv"][call["argv"].index("-m") + 1] == "musubi_workspace.launch"
    assert {k: v for k, v in call["env"].items() if k.startswith("WS_VALIDATION")} == {
        "WS_VALIDATION": SET,
        "WS_VALIDATION_EVERY": "25",
        "WS_VALIDATION_TIMESTEPS": "0.25,0.5",
        "WS_VALIDATION_SET": digest(cached),
    }


def test_the_cadence_defaults_to_save_every_n_steps_and_zero_without_saves(ws):
    r = ws.tool("train", "DRY_RUN=1")
    assert r.returncode == 0 and " WS_VALIDATION_EVERY=100 " in r.stdout  # configs/v1: save_every_n_steps = 100
    ws.write("configs/v1/config.toml", ws.read("configs/v1/config.toml").replace("\nsave_every_n_steps = 100\n", "\n"))
    r = ws.tool("train", "DRY_RUN=1")
    assert r.returncode == 0 and " WS_VALIDATION_EVERY=0 " in r.stdout


def test_the_set_hash_is_of_the_toml_and_every_items_files(ws):
    first = digest(ws)
    assert len(first) == 16 and int(first, 16) >= 0 and digest(ws) == first
    redraw(ws, "validation/example-1f/control/val01_1.png")
    second = digest(ws)
    ws.write(JSONL, ws.read(JSONL).replace("orange shirt", "amber shirt"))
    third = digest(ws)
    ws.write(SET, ws.read(SET).replace("num_repeats = 1", "num_repeats = 1  # edited"))
    assert len({first, second, third, digest(ws)}) == 4


# `make check`: the validation set, checked as training data is (checks/validation.py).


def check_line(w) -> int:
    return w.read("configs/v1/config.toml").splitlines().index('validation = "validation/dataset.toml"') + 1


def findings(r) -> list[str]:
    return [line.strip() for line in r.stdout.splitlines() if line.startswith("  ")]


def test_the_example_passes_its_check_with_the_set(ready):
    r = ready.tool("check")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[13/13] validation set ✓" in r.stdout.splitlines()
    assert r.stdout.splitlines()[-1] == "check configs/v1/config.toml: OK: 0 error(s), 0 warning(s)"


def test_check_without_a_set_says_so(ready):
    text = ready.read("configs/v1/config.toml").replace('\nvalidation = "validation/dataset.toml"\n', "\n")
    ready.write("configs/v1/config.toml", text)
    r = ready.tool("check")
    assert r.returncode == 0 and "[13/13] validation set ⊘ no [workspace] validation set" in r.stdout


def test_check_a_missing_set_is_an_error_naming_the_key(ready):
    (ready.root / SET).unlink()
    r = ready.tool("check")
    assert r.returncode == 3
    assert findings(r) == [
        f'error: configs/v1/config.toml:{check_line(ready)}: [workspace] validation = "validation/dataset.toml": file '
        "not found; write the validation set's dataset.toml there (`make example` writes the example's)"
    ]


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "[general]\nresolution = [512, 768]\n",
            "is empty: no [[datasets]] entry; add one with its own items and cache_directory (`make example` "
            "writes the example's)",
        ),
        (
            'dit = "models/x.safetensors"\n',
            "is not a dataset.toml: no [[datasets]], but dit; name the validation set's dataset.toml (`make example` "
            "writes the example's)",
        ),
    ],
)
def test_check_an_empty_set_or_another_toml_is_an_error(ready, text, message):
    ready.write(SET, text)
    r = ready.tool("check")
    assert r.returncode == 3
    assert findings(r) == [
        f'error: configs/v1/config.toml:{check_line(ready)}: [workspace] validation = "validation/dataset.toml" '
        + message
    ]


def test_check_a_set_whose_items_are_gone_says_it_has_none(ready):
    ready.write(JSONL, "")
    r = ready.tool("check")
    assert r.returncode == 3
    line = ready.read(SET).splitlines().index("[[datasets]]") + 1
    assert f"error: {SET}:{line}: dataset 1 has no training items; add media with captions or fix its source" in (
        findings(r)
    )


def test_check_reads_the_set_as_training_data(ready):
    rows = [json.loads(line) for line in ready.read(JSONL).splitlines()]
    rows[0]["caption"] = ""
    del rows[1]["control_path_1"]
    ready.write(JSONL, "".join(json.dumps(r) + "\n" for r in rows))
    (ready.root / "validation/example-1f/control/val01_0.png").write_bytes(b"not a png")
    r = ready.tool("check")
    assert r.returncode == 3
    found = "\n".join(findings(r))
    assert f"error: {JSONL}:1: empty caption: the item trains without any text; write the caption" in found
    assert f"{JSONL}:2" in found and "control" in found  # one control image short of fp_1f_clean_indices
    assert "validation/example-1f/control/val01_0.png cannot be read as an image" in found


def test_check_warns_where_a_validation_item_is_a_training_item_by_pixels(ready):
    # The same pixels saved again with another compression: other bytes, the same image.
    Image.open(ready.root / "datasets/example-1f/target/item02.png").save(
        ready.root / "validation/example-1f/target/val02.png", compress_level=1
    )
    r = ready.tool("check")
    assert r.returncode == 0, r.stdout
    assert findings(r) == [
        f"warning: {JSONL}:2: its target image is the training item datasets/example-1f/train.jsonl:2's (the same "
        "decoded pixels): the validation loss would measure recall, not what the LoRA learnt; hold the item out of "
        "the training data"
    ]
    assert "[13/13] validation set !" in r.stdout


def test_check_refuses_a_set_caching_into_the_training_cache(ready):
    ready.write(SET, ready.read(SET).replace("cache/validation/example-1f", "cache/v1/example-1f"))
    r = ready.tool("check")
    assert r.returncode == 3
    line = ready.read(SET).splitlines().index("[[datasets]]") + 1
    assert findings(r) == [
        f"error: {SET}:{line}: the validation set caches into cache/v1/example-1f like dataset 1 of "
        "configs/v1/dataset.toml: each `make cache` would delete the other's files; give it its own cache_directory"
    ]
