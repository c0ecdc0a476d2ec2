"""The committed musubi-tuner schema loads without musubi-tuner and says what the pinned code says.

The facts below were read off musubi-tuner's source at the pinned commit; `make test-musubi` checks the whole file
against the live parsers (tests/musubi/test_schema.py).
"""

from __future__ import annotations

import re

import pytest

from musubi_workspace.schema import load_schema, pinned_commit


@pytest.fixture(scope="module")
def schema() -> dict:
    return load_schema()


@pytest.fixture(scope="module")
def train(schema) -> dict:
    return schema["parsers"]["fpack_train_network"]


def test_the_schema_is_for_the_pinned_commit(schema):
    assert re.fullmatch(r"[0-9a-f]{40}", schema["musubi_tuner_commit"])
    assert schema["musubi_tuner_commit"] == pinned_commit()
    assert set(schema["parsers"]) == {
        "fpack_train_network",
        "fpack_cache_latents",
        "fpack_cache_text_encoder_outputs",
        "fpack_generate_video",
    }
    assert set(schema["dataset"]) == {"general", "image", "video"}


def test_training_options(train):
    assert len(train) == 131
    lr = train["learning_rate"]
    assert (lr["kind"], lr["type"], lr["default"], lr["flags"]) == ("value", "float", 2e-6, ["--learning_rate"])
    assert train["sdpa"]["kind"] == "store_true" and train["sdpa"]["default"] is False
    assert train["mixed_precision"]["choices"] == ["no", "fp16", "bf16"]
    assert train["max_train_steps"]["default"] == 1600 and train["max_train_steps"]["type"] == "int"
    assert train["dataset_config"]["type"] == "path"
    assert train["lr_warmup_steps"]["type"] == "int_or_float"
    assert train["network_args"]["nargs"] == "*"
    assert "sigma" in train["timestep_sampling"]["choices"] and train["timestep_sampling"]["default"] == "sigma"
    assert not any(opt["required"] for opt in train.values())
    # Options the docs mention that training does not have.
    for absent in ("fp8", "dit_dtype", "text_encoder_dtype", "output_config"):
        assert absent not in train


def test_cache_and_generate_options(schema):
    latents = schema["parsers"]["fpack_cache_latents"]
    assert {d for d, o in latents.items() if o["required"]} == {"dataset_config", "image_encoder"}
    assert latents["debug_mode"]["choices"] == ["image", "console", "video"]
    te = schema["parsers"]["fpack_cache_text_encoder_outputs"]
    assert {d for d, o in te.items() if o["required"]} == {"dataset_config", "text_encoder1", "text_encoder2"}
    gen = schema["parsers"]["fpack_generate_video"]
    assert {d for d, o in gen.items() if o["required"]} == {
        "text_encoder1",
        "text_encoder2",
        "image_encoder",
        "save_path",
    }
    assert gen["video_size"]["nargs"] == 2 and gen["video_size"]["default"] == [256, 256]
    assert gen["fp8"]["kind"] == "store_true"


def test_dataset_keys(schema):
    general, image, video = (schema["dataset"][k] for k in ("general", "image", "video"))
    assert general == {
        "resolution": "int_or_pair",
        "caption_extension": "str",
        "batch_size": "int",
        "num_repeats": "int",
        "enable_bucket": "bool",
        "bucket_no_upscale": "bool",
    }
    assert image["fp_1f_target_index"] == "int"
    assert image["fp_1f_clean_indices"] == "list[int]"
    assert image["control_resolution"] == "int_or_pair"
    assert video["source_fps"] == "float" and video["target_frames"] == "list[int]"
    assert "cache_directory" not in general and "fp_latent_window_size" not in general
    assert general.items() <= image.items() and general.items() <= video.items()


def test_prompt_options(schema):
    prompts = schema["prompt_options"]
    assert prompts["train"] == ["w", "h", "f", "d", "s", "g", "fs", "l", "n", "i", "ei", "cn", "ci", "of"]
    assert "of" in prompts["train"] and "vs" not in prompts["train"]
    assert {"vs", "cim", "mcrr", "mct", "mck"} <= set(prompts["generate"]) and "cn" not in prompts["generate"]
    assert prompts["one_frame"] == ["control_index", "no_2x", "no_4x", "no_post", "target_index"]


def test_the_schema_is_plain_sorted_json():
    import json

    from musubi_workspace.schema import DATA, dumps

    text = DATA.read_text(encoding="utf-8")
    assert dumps(json.loads(text)) == text
    assert "/tmp" not in text and "file://" not in text


def test_optimizer_and_scheduler_names(schema):
    """Read off get_optimizer / get_lr_scheduler at the pinned commit (tests/musubi/test_option_names.py runs them)."""
    names = schema["names"]
    assert names["optimizer_type"]["case_insensitive"] == ["adafactor", "adamw", "adamw8bit"]
    assert {"Adam", "SGD", "RAdam"} <= set(names["optimizer_type"]["torch_optim"])
    assert "AdamW" not in names["optimizer_type"]["torch_optim"]  # "adamw" in any case is get_optimizer's own
    assert set(names["optimizer_type"]["fails_at_step"]) == {"LBFGS", "SparseAdam"}
    sched = names["lr_scheduler"]
    assert {"constant", "cosine", "linear", "rex"} <= set(sched["names"]) and sched["case_insensitive"] == ["rex"]
    assert sched["needs"] == {
        "cosine_with_min_lr": "lr_scheduler_min_lr_ratio",
        "piecewise_constant": "lr_scheduler_args",
    }
    assert "reduce_lr_on_plateau" in sched["fails"] and "adafactor" in sched["fails"]
    assert "CosineAnnealingLR" in names["lr_scheduler_type"]


def test_make_schema_without_the_gpu_stack_is_one_line_naming_the_package(ws):
    """Where musubi-tuner's imports fail (here: no torch, the default environment), `ws schema` says which package
    is missing in one line and writes nothing."""
    r = ws.ws("schema", "--out", str(ws.root / "schema.json"))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.splitlines() == [
        "error: the musubi-tuner schema cannot be built here: importing musubi_tuner fails: "
        "ModuleNotFoundError: No module named 'torch'"
    ], r.stderr
    assert not (ws.root / "schema.json").exists()
