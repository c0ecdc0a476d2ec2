"""`make check`: every numbered check of the issue on real files in a workspace copy, asserting the exact lines."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from PIL import Image

CFG = "configs/v1/config.toml"
DS = "configs/v1/dataset.toml"
PROMPTS = "configs/v1/prompts.txt"
JSONL = "datasets/example-1f/train.jsonl"


def findings(r) -> list[str]:
    """The finding lines of a check's output (errors, warnings, notes), without their indent."""
    return [l.strip() for l in (r.stdout + r.stderr).splitlines() if re.match(r"^  (error|warning|note): ", l)]


def at(ws, rel: str, start: str) -> str:
    """`rel:N` for the first line of rel that starts with `start`."""
    lines = ws.read(rel).splitlines()
    return f"{rel}:{next(n for n, l in enumerate(lines, 1) if l.startswith(start))}"


def edit(ws, rel: str, old: str, new: str) -> None:
    text = ws.read(rel)
    assert old in text, old
    ws.write(rel, text.replace(old, new, 1))


def jsonl(ws) -> list[dict]:
    return [json.loads(l) for l in ws.read(JSONL).splitlines()]


def write_jsonl(ws, rows) -> None:
    ws.write(JSONL, "".join(json.dumps(r) + "\n" for r in rows))


def test_clean_example_passes_with_no_finding(ready):
    r = ready.tool("check")
    assert r.returncode == 0, r.stdout + r.stderr
    assert findings(r) == []
    assert r.stdout.splitlines()[0] == "[1/13] config keys ✓"
    assert r.stdout.splitlines()[-1] == "check configs/v1/config.toml: OK: 0 error(s), 0 warning(s)"


def test_clean_video_example_passes_with_no_finding(video_ws, ready):
    r = ready.tool("check", "CONFIG_FILE=configs/example-video/config.toml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert findings(r) == []
    assert "[8/13] version coherence ⊘ configs/example-video/config.toml is not in configs/vN" in r.stdout


def test_second_run_reads_the_image_facts_from_the_cache(ready):
    assert ready.tool("check").returncode == 0
    cached = json.loads((ready.root / ".cache" / "ws" / "images.json").read_text())
    # 4 items x (target + 2 controls) + the 2 sample images + the validation set's 2 items x 3
    assert len(cached["images"]) == 20
    assert ready.tool("check").returncode == 0


# 1. Config keys -----------------------------------------------------------------------------------------------


def test_unknown_key_is_rejected_with_the_nearest_name(ready):
    edit(ready, CFG, "learning_rate = 2e-4", "learing_rate = 2e-4")
    r = ready.tool("check")
    assert r.returncode == 3
    assert (
        f"error: {at(ready, CFG, 'learing_rate')}: unknown option `learing_rate` (did you mean `learning_rate`?); musubi-tuner would ignore it silently"
        in findings(r)
    )
    assert "error: configs/v1/config.toml: 1 error(s) found by `make check`; fix them and run again" in r.stderr


def test_abbreviated_option_is_not_accepted(ready):
    edit(ready, CFG, "learning_rate = 2e-4", "learning_r = 2e-4")
    assert (
        f"error: {at(ready, CFG, 'learning_r ')}: unknown option `learning_r` (did you mean `learning_rate`?); musubi-tuner would ignore it silently"
        in findings(ready.tool("check"))
    )


@pytest.mark.parametrize(
    "old, new, message",
    [
        (
            "learning_rate = 2e-4",
            'learning_rate = "1e-4"',
            "`learning_rate` must be a number, got '1e-4' (no quotes; musubi-tuner does not convert it)",
        ),
        (
            'mixed_precision = "bf16"',
            'mixed_precision = "bf17"',
            "`mixed_precision` = 'bf17' is not one of no, fp16, bf16",
        ),
        (
            "gradient_checkpointing = true",
            'gradient_checkpointing = "yes"',
            "`gradient_checkpointing` is a switch: write true or false, not 'yes'",
        ),
        ("max_train_steps = 1000", "max_train_steps = 1000.5", "`max_train_steps` must be a whole number, got 1000.5"),
        (
            "seed = 42",
            'seed = 42\noptimizer_args = "weight_decay=0.01"',
            '`optimizer_args` takes a list: write ["weight_decay=0.01"]',
        ),
    ],
)
def test_values_must_have_the_option_type_and_choices(ready, old, new, message):
    edit(ready, CFG, old, new)
    key = new.splitlines()[-1].split(" =")[0]
    assert findings(ready.tool("check")) == [f"error: {at(ready, CFG, key + ' =')}: {message}"]


def test_options_training_cannot_do_without(ready):
    edit(ready, CFG, 'output_name = "example-1f_v1"', "")
    edit(ready, CFG, 'network_module = "networks.lora_framepack"', 'network_module = "networks.lora"')
    assert findings(ready.tool("check")) == [
        "error: configs/v1/config.toml: `output_name` is not set; training crashes at the final save without it, after the whole run: add `output_name = ...` (see configs/v1)",
        f"error: {at(ready, CFG, 'network_module')}: network_module = 'networks.lora' does not target FramePack's blocks; use \"networks.lora_framepack\"",
    ]


# 2. Files -------------------------------------------------------------------------------------------------------


def test_sharded_dit_needs_every_shard(ready):
    (ready.root / "models/framepack/diffusion_pytorch_model-00002-of-00003.safetensors").unlink()
    r = ready.tool("check")
    assert r.returncode == 3
    assert findings(r) == [
        f"error: {at(ready, CFG, 'dit =')}: dit models/framepack/diffusion_pytorch_model-00001-of-00003.safetensors is one of 3 shards, "
        "and diffusion_pytorch_model-00002-of-00003.safetensors not found beside it; run `make models` to download it"
    ]


def test_dit_may_be_a_folder(ready):
    edit(
        ready,
        CFG,
        'dit = "models/framepack/diffusion_pytorch_model-00001-of-00003.safetensors"',
        'dit = "models/framepack"',
    )
    assert findings(ready.tool("check")) == []


def test_missing_models_are_warnings_in_a_dry_run(ws):
    r = ws.tool("check", "DRY_RUN=1", env={"WANDB_MODE": "offline"})
    assert r.returncode == 0
    assert (
        f"warning: {at(ws, CFG, 'vae =')}: vae models/hunyuanvideo/vae/diffusion_pytorch_model.safetensors not found; run `make models` to download it (dry run: not needed now)"
        in findings(r)
    )


def test_missing_inputs_and_unwritable_output_dir(ready):
    edit(ready, CFG, 'sample_prompts = "configs/v1/prompts.txt"', 'sample_prompts = "configs/v1/prompt.txt"')
    edit(ready, CFG, "seed = 42", 'seed = 42\nnetwork_weights = "outputs/v0/lora.safetensors"')
    ready.write("outputs", "a file where a folder should be")
    r = ready.tool("check")
    assert findings(r) == [
        f"error: {at(ready, CFG, 'sample_prompts')}: sample_prompts configs/v1/prompt.txt not found; create it (copy configs/v1/prompts.txt), fix the path, or remove the key",
        f"error: {at(ready, CFG, 'network_weights')}: network_weights outputs/v0/lora.safetensors not found; fix the path, or remove the key to start from a fresh LoRA",
        f"error: {at(ready, CFG, 'output_dir')}: output_dir outputs/v1 cannot be written: {ready.root / 'outputs'} is a file, not a folder; choose another folder",
    ]


# 3. dataset.toml --------------------------------------------------------------------------------------------------


def test_dataset_keys_are_checked_against_musubis_dataset_schema(ready):
    edit(ready, DS, "num_repeats = 1", 'num_repeats = 1\ncache_directory = "cache/x"')
    edit(ready, DS, "fp_1f_no_post = true", 'fp_1f_no_post = true\ncaption_extention = ".txt"\ntarget_frames = [1]')
    edit(ready, DS, "fp_1f_target_index = 1", 'fp_1f_target_index = "1"')
    edit(ready, DS, "[general]", "[genral]\n[general]")
    r = ready.tool("check")
    assert r.returncode == 3
    assert [f for f in findings(r) if DS in f] == [
        f"error: {at(ready, DS, '[genral]')}: unknown top-level key `genral` (did you mean `general`?); only [general] and [[datasets]] are allowed",
        f"error: {at(ready, DS, 'cache_directory')}: `cache_directory` is not allowed in [general] (musubi-tuner rejects it); move it into each [[datasets]]",
        f"error: {at(ready, DS, 'fp_1f_target_index')}: `fp_1f_target_index` must be a whole number, got '1'",
        f"error: {at(ready, DS, 'caption_extention')}: unknown key `caption_extention` (did you mean `caption_extension`?); musubi-tuner rejects the file",
        f"error: {at(ready, DS, 'target_frames')}: `target_frames` is a key of video datasets; dataset 1 is an image dataset (image_jsonl_file)",
    ]


def test_directory_dataset_images_without_caption_and_controls(ready):
    d = ready.root / "datasets" / "dir"
    (d / "img").mkdir(parents=True)
    (d / "ctl").mkdir()
    for name, colour in (("a", "red"), ("b", "blue"), ("c", "green")):
        Image.new("RGB", (512, 768), colour).save(d / "img" / f"{name}.png")
        Image.new("RGB", (512, 768), "white").save(d / "ctl" / f"{name}_0.png")
    for name in ("a", "c"):
        (d / "img" / f"{name}.txt").write_text(f"caption {name}")
    (d / "ctl" / "c_0.png").unlink()
    ready.write(
        DS,
        ready.read(DS).split("[[datasets]]")[0]
        + "\n".join(
            [
                "[[datasets]]",
                'image_directory = "datasets/dir/img"',
                'control_directory = "datasets/dir/ctl"',
                'caption_extension = ".txt"',
                'cache_directory = "cache/v1/dir"',
                "fp_1f_clean_indices = [0]",
                "fp_1f_target_index = 1",
                "",
            ]
        ),
    )
    r = ready.tool("check")
    assert [f for f in findings(r) if "datasets/dir" in f] == [
        "warning: datasets/dir/img/b.png: no caption file b.txt: musubi-tuner skips the image without a word; write one or remove the image",
        "error: datasets/dir/img/c.png: 0 control image(s) in datasets/dir/ctl, 1 needed (named c.png or c_0.png, c_1.png ...); caching fails on it",
    ]


def test_control_named_against_musubi_tuners_pattern_fails_check_and_cache_alike(ready):
    """x.png with a control x_a.png: musubi-tuner stops (Invalid digits suffix); check and cache say so in one line."""
    from musubi_workspace.config import Config
    from musubi_workspace.errors import WorkspaceError
    from musubi_workspace.paths import Workspace
    from musubi_workspace.runs import cache_plan as cache_state

    d = ready.root / "datasets" / "dir"
    (d / "img").mkdir(parents=True)
    (d / "ctl").mkdir()
    Image.new("RGB", (512, 768), "red").save(d / "img" / "x.png")
    (d / "img" / "x.txt").write_text("caption x")
    Image.new("RGB", (512, 768), "white").save(d / "ctl" / "x_a.png")
    ready.write(
        DS,
        ready.read(DS).split("[[datasets]]")[0]
        + "\n".join(
            [
                "[[datasets]]",
                'image_directory = "datasets/dir/img"',
                'control_directory = "datasets/dir/ctl"',
                'caption_extension = ".txt"',
                'cache_directory = "cache/v1/dir"',
                "fp_1f_clean_indices = [0]",
                "fp_1f_target_index = 1",
                "",
            ]
        ),
    )
    line = (
        "datasets/dir/ctl/x_a.png: control image x_a.png of x.png must be named x.<ext> or x_<number>.<ext>: "
        "musubi-tuner stops on it (Invalid digits suffix); rename it"
    )
    r = ready.tool("check")
    assert r.returncode == 3
    assert [f for f in findings(r) if "datasets/dir" in f] == [f"error: {line}"]
    r = ready.make("cache")
    assert r.returncode == 2 and f"error: {line}" in findings(r)
    assert ready.calls("fpack_cache_latents") == []
    cfg = Config.load(Workspace(ready.root), ready.root / CFG)
    with pytest.raises(WorkspaceError) as e:
        cache_state.plan(cfg)
    assert e.value.message == line


def test_jsonl_lines_must_parse_and_name_existing_files(ready):
    rows = jsonl(ready)
    rows[1]["control_path_1"] = "datasets/example-1f/control/nope.png"
    del rows[2]["caption"]
    lines = [json.dumps(r) for r in rows]
    lines.insert(3, '{"image_path": "x.png",')
    ready.write(JSONL, "\n".join(lines) + "\n\n")
    r = ready.tool("check")
    assert r.returncode == 3
    assert [f for f in findings(r) if JSONL in f] == [
        f"error: {JSONL}:2: control_path_1 datasets/example-1f/control/nope.png not found; fix the path (relative to the workspace root)",
        f'error: {JSONL}:3: no "caption"; musubi-tuner fails on the line (KeyError): add one',
        f"error: {JSONL}:4: not valid JSON (Expecting property name enclosed in double quotes at column 24); fix the line",
        f"error: {JSONL}:6: empty line: musubi-tuner fails on it (JSONDecodeError); remove it",
    ]


def test_truncated_image_and_sizes_against_the_resolution(ready):
    target = ready.root / "datasets/example-1f/target/item02.png"
    target.write_bytes(target.read_bytes()[:2000])
    Image.new("RGB", (256, 384), "red").save(ready.root / "datasets/example-1f/target/item03.png")
    r = ready.tool("check")
    header = at(ready, DS, "[[datasets]]")
    got = findings(r)
    assert got[0].startswith(f"error: {JSONL}:2: datasets/example-1f/target/item02.png cannot be read as an image (")
    assert got[1:] == [
        f"warning: {header}: dataset 1: 1 target image(s) of 256x384 (e.g. {JSONL}:3) are smaller than the resolution 512x768: upscaled, so blurry; use larger images or a lower resolution",
        f"error: {JSONL}:3: empty caption: the item trains without any text; write the caption",
    ] or got[1:] == [
        f"warning: {header}: dataset 1: 1 target image(s) of 256x384 (e.g. {JSONL}:3) are smaller than the resolution 512x768: upscaled, so blurry; use larger images or a lower resolution",
    ]


def test_empty_dataset_is_an_error(ready):
    ready.write(JSONL, "")
    r = ready.tool("check")
    assert findings(r) == [
        f"error: {at(ready, DS, '[[datasets]]')}: dataset 1 has no training items; add media with captions or fix its source"
    ]


def test_one_frame_needs_the_target_index_and_the_control_count(ready):
    edit(ready, DS, "fp_1f_target_index = 1\n", "")
    rows = jsonl(ready)
    del rows[0]["control_path_1"]
    write_jsonl(ready, rows)
    r = ready.tool("check")
    assert [f for f in findings(r) if "dataset" in f or JSONL in f] == [
        f"error: {at(ready, DS, '[[datasets]]')}: dataset 1: one_frame needs fp_1f_target_index (caching fails without it); add `fp_1f_target_index = 1`",
        f"error: {JSONL}:1: 1 control image(s), 2 needed (len(fp_1f_clean_indices)); caching fails on it",
    ]


# 4. Data that makes a run worthless ---------------------------------------------------------------------------


def test_target_identical_in_content_to_its_control_is_an_error_even_as_another_file(ready):
    root = ready.root / "datasets/example-1f"
    # The same pixels saved again with other compression: other bytes, same content.
    Image.open(root / "control/item01_0.png").save(root / "target/item01.png", compress_level=1)
    assert (root / "target/item01.png").read_bytes() != (root / "control/item01_0.png").read_bytes()
    r = ready.tool("check")
    assert r.returncode == 3
    assert findings(r) == [
        f"error: {JSONL}:1: the target image is identical in content to its control image 0 (datasets/example-1f/control/item01_0.png): "
        "the model learns to copy it (loss near 0.01 from step 0); the target must be the changed image"
    ]


def test_duplicate_items_and_empty_captions(ready):
    rows = jsonl(ready)
    rows[2]["caption"] = "  "
    write_jsonl(ready, rows + [dict(rows[0], caption="other words")])
    r = ready.tool("check")
    assert findings(r) == [
        f"warning: {JSONL}:5: same target and control images as {JSONL}:1: it trains twice as often; remove one",
        f"error: {JSONL}:3: empty caption: the item trains without any text; write the caption",
    ]


# 5. prompts.txt -------------------------------------------------------------------------------------------------


def test_prompt_lines_parse_with_musubis_syntax(ready):
    line = ready.read(PROMPTS).splitlines()[-1]
    bad = line.replace("--w 512", "--width 512").replace("--s 25", "--s 25.5").replace("no_post,", "no_pst,")
    ready.write(PROMPTS, ready.read(PROMPTS) + bad + "\n")
    r = ready.tool("check")
    n = len(ready.read(PROMPTS).splitlines())
    assert findings(r) == [
        f"error: {PROMPTS}:{n}: `--of` item `no_pst` is unknown (did you mean `no_post`?); musubi-tuner ignores it (known: control_index, no_2x, no_4x, no_post, target_index)",
        f"error: {PROMPTS}:{n}: unknown option `--width`; musubi-tuner ignores it (known: --w --h --f --d --s --g --fs --l --n --i --ei --cn --ci --of)",
        f"error: {PROMPTS}:{n}: `--s` takes a whole number (steps), got '25.5'; musubi-tuner would ignore or cut it",
    ]


def test_prompt_images_must_exist_and_one_frame_needs_i_and_of(ready):
    ready.write(PROMPTS, "a prompt --ci datasets/example-1f/samples/missing.png --w 512 --h 768\n")
    r = ready.tool("check")
    assert findings(r) == [
        f"error: {PROMPTS}:1: no start image: FramePack samples need `--i path/to/start.png` (sampling fails without it)",
        f"error: {PROMPTS}:1: one_frame = true needs `--of` on every prompt (e.g. --of target_index=1,control_index=0); sampling fails without it",
        f"error: {PROMPTS}:1: --ci datasets/example-1f/samples/missing.png not found; fix the path (relative to the workspace root)",
    ]


def test_a_sample_image_that_is_a_training_image_is_a_warning(ready):
    root = ready.root / "datasets/example-1f"
    shutil.copy(root / "control/item02_0.png", root / "samples/sample01_start.png")
    r = ready.tool("check")
    assert r.returncode == 0
    n = len(ready.read(PROMPTS).splitlines())
    expected = (
        "is a training control image (datasets/example-1f/train.jsonl:2): the sample shows recall, not generalisation; "
        "use a held-out image"
    )
    assert findings(r) == [
        f"warning: {PROMPTS}:{n}: --i datasets/example-1f/samples/sample01_start.png {expected}",
        f"warning: {PROMPTS}:{n}: --ci datasets/example-1f/samples/sample01_start.png {expected}",
    ]
    assert ready.tool("check", "STRICT=1").returncode == 3


# 6. Version coherence ---------------------------------------------------------------------------------------------


def test_a_version_that_names_another_versions_files_is_an_error(ready):
    assert ready.make("new").returncode == 0
    v2 = "configs/v2/config.toml"
    edit(ready, v2, 'dataset_config = "configs/v2/dataset.toml"', 'dataset_config = "configs/v1/dataset.toml"')
    edit(ready, v2, 'output_name = "example-1f_v2"', 'output_name = "example-1f_v1"')
    edit(
        ready,
        "configs/v2/dataset.toml",
        'cache_directory = "cache/v2/example-1f"',
        'cache_directory = "cache/v1/example-1f"',
    )
    r = ready.tool("check", "CONFIG_FILE=v2")
    assert r.returncode == 3
    assert findings(r) == [
        f"error: {at(ready, v2, 'dataset_config')}: dataset_config = 'configs/v1/dataset.toml' belongs to v1, this is v2: use configs/v2/dataset.toml (copy it there if it should differ)",
        f"error: {at(ready, v2, 'output_name')}: output_name = 'example-1f_v1' names v1, this is v2: it would mix this run with v1's; name v2 instead",
        f"error: {at(ready, DS, 'cache_directory')}: cache_directory = 'cache/v1/example-1f' names v1, this is v2: caching would overwrite v1's caches; name v2 instead",
    ]
    edit(ready, v2, 'dataset_config = "configs/v1/dataset.toml"', 'dataset_config = "configs/v2/dataset.toml"')
    edit(ready, v2, 'output_name = "example-1f_v1"', 'output_name = "example-1f_v2"')
    assert findings(ready.tool("check", "CONFIG_FILE=v2")) == [
        f"error: {at(ready, 'configs/v2/dataset.toml', 'cache_directory')}: cache_directory = 'cache/v1/example-1f' names v1, this is v2: caching would overwrite v1's caches; name v2 instead",
    ]


# 7. Machine and credentials -----------------------------------------------------------------------------------


def test_wandb_logging_without_a_key_is_an_error_and_the_key_in_env_file_is_enough(ready):
    env = {"WANDB_MODE": ""}
    r = ready.tool("check", env=env)
    assert r.returncode == 3
    assert findings(r) == [
        f"error: {at(ready, CFG, 'log_with')}: log_with = 'all' logs to wandb, but WANDB_API_KEY is not set: the run fails when wandb starts; add WANDB_API_KEY=... to .env (or set WANDB_MODE=offline)"
    ]
    ready.write(".env", "WANDB_API_KEY=" + "0123456789abcdef" * 2 + "01234567\n")
    assert findings(ready.tool("check", env=env)) == []


def test_hugging_face_upload_without_token_and_tokens_in_config_files(ready):
    edit(ready, CFG, '# huggingface_repo_id = "your-hf-name/example-1f"', 'huggingface_repo_id = "me/example-1f"')
    token = "hf_" + "Ab1" * 12
    ready.write(PROMPTS, ready.read(PROMPTS) + f"# my token {token}\n")
    n = len(ready.read(PROMPTS).splitlines())
    r = ready.tool("check")
    assert r.returncode == 3
    assert findings(r) == [
        f"error: {PROMPTS}:{n}: looks like a Hugging Face token: secrets do not belong in a config file (git, run records); remove it, put it in .env as HF_TOKEN and revoke the token if it was committed",
        f"error: {at(ready, CFG, 'huggingface_repo_id')}: huggingface_repo_id uploads every saved LoRA, but HF_TOKEN is not set: every upload fails; add HF_TOKEN=... (a write token) to .env",
    ]
    assert token not in r.stdout + r.stderr
    r = ready.tool("check", "DRY_RUN=1")
    assert findings(r)[1].startswith("warning: ") and findings(r)[1].endswith("(dry run: not needed now)")


def test_too_little_disk_for_what_the_run_writes(ready):
    edit(ready, CFG, "network_dim = 32", "network_dim = 100000")
    r = ready.tool("check")
    [line] = findings(r)
    assert re.fullmatch(
        rf"error: {at(ready, CFG, 'output_dir')}: [\d.]+ GB free on the disk of outputs/v1, the run writes about 19784\.7 GB "
        r"\(11 LoRA file\(s\) of 860\.2 GB \+ 4 state\(s\) of 2580\.5 GB\); free space, or keep fewer files "
        r"\(save_last_n_steps, save_last_n_steps_state\)",
        line,
    ), line


# 8. Batch size and learning rate --------------------------------------------------------------------------------


def test_batch_size_changed_without_learning_rate_gives_the_sqrt_scaled_value(ready):
    assert ready.make("new").returncode == 0
    edit(ready, "configs/v2/dataset.toml", "batch_size = 16", "batch_size = 32")
    r = ready.tool("check", "CONFIG_FILE=v2")
    assert r.returncode == 0
    assert findings(r) == [
        f"warning: {at(ready, 'configs/v2/dataset.toml', 'batch_size')}: batch size 16 in v1 -> 32 here, but learning_rate stayed 0.0002: "
        "square-root scaling gives learning_rate = 0.000283 (0.0002 x sqrt(32/16)); set it in config.toml, or keep it on purpose"
    ]
    r = ready.tool("check", "CONFIG_FILE=v2", "STRICT=1")
    assert r.returncode == 3 and findings(r)[0].startswith("error: configs/v2/dataset.toml:")
    edit(ready, "configs/v2/config.toml", "learning_rate = 2e-4", "learning_rate = 2.83e-4")
    assert findings(ready.tool("check", "CONFIG_FILE=v2")) == []


def test_several_gpus_and_accumulation_show_the_effective_batch(ready):
    edit(ready, CFG, "seed = 42", "seed = 42\ngradient_accumulation_steps = 2")
    r = ready.tool("check", env={"STANDIN_GPUS": "4"})
    assert r.returncode == 0
    assert findings(r) == [
        f"note: {at(ready, CFG, 'learning_rate')}: effective batch = 16 per GPU x 4 process(es) x 2 gradient accumulation step(s) = 128: "
        "learning_rate 0.0002 applies to that batch (square-root scaling from 16 gives 0.000566)"
    ]
    assert r.stdout.splitlines()[-1] == "check configs/v1/config.toml: OK: 0 error(s), 0 warning(s), 1 note(s)"
    assert ready.tool("check", "STRICT=1", env={"STANDIN_GPUS": "4"}).returncode == 0


# Preflight ------------------------------------------------------------------------------------------------------


def test_cache_runs_the_checks_first_and_stops_on_errors(ready):
    edit(ready, DS, "batch_size = 16", 'batch_size = 16\ncache_directory = "cache/x"')
    r = ready.make("cache")
    assert r.returncode == 2 and "Error 3" in r.stderr
    assert (
        "error: configs/v1/config.toml: `make cache` stopped before starting: 1 error(s) above; fix them (`make check`) and run again"
        in r.stderr
    )
    assert ready.calls() == []


def test_cache_does_not_need_the_training_credentials(ready):
    r = ready.make("cache", env={"WANDB_MODE": ""})
    assert r.returncode == 0, r.stderr
    assert (
        "[11/13] credentials ✓" in r.stderr
        and "[9/13] disk space ⊘ only needed for training, not for make cache" in r.stderr
    )
