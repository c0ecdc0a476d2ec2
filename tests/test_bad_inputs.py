"""Issue 16: wrong inputs a new user tried against `make check`, `make train DRY_RUN=1`, `make new`, `make diff` and
`make generate`. Each gets one clear line (asserted exactly), a non-zero exit and no change on disk: every file of
the workspace but the tool's own `.cache/` (what it learnt about images) and `.venv/` is the same afterwards.
Warnings are run with STRICT=1, which makes them fail the check.

The first part is the issue's list, in its order; "Day one" below adds mistakes of our own.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re

import pytest
from checks.test_checks import CFG, DS, JSONL, PROMPTS, at, edit, findings
from conftest import error_line, split_env

SKIPPED = (".cache", ".venv")


def snapshot(w) -> dict[str, str]:
    """Every file and link of the workspace (but .cache/, .venv/): its content hash or link target."""
    out = {}
    for folder, dirs, files in os.walk(w.root):
        if os.path.samefile(folder, w.root):
            dirs[:] = [d for d in dirs if d not in SKIPPED]
        for name in dirs + files:
            p = os.path.join(folder, name)
            key = os.path.relpath(p, w.root)
            if os.path.islink(p):
                out[key] = "-> " + os.readlink(p)
            elif os.path.isfile(p):
                out[key] = hashlib.sha256(open(p, "rb").read()).hexdigest()
            else:
                out[key] = "dir"
    return out


def run(w, *args, env=None):
    """`make ARGS`, asserting nothing on disk changed and no traceback was printed."""
    before = snapshot(w)
    r = w.make(*args, env=env)
    assert snapshot(w) == before, "the run changed files on disk"
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    return r


def run_tool(w, target, *args, env=None):
    """`make TARGET ARGS` as the tool runs it, in this process (conftest's TmpWorkspace.tool), with `run`'s checks."""
    before = snapshot(w)
    r = w.tool(target, *args, env=env)
    assert snapshot(w) == before, "the run changed files on disk"
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    return r


def check_fails(w, line: str, *args, env=None) -> None:
    """`make check` fails with the tool's exit 3, and `line` is among its findings. A warning passes the plain
    check and fails under STRICT=1 (where it is printed as an error)."""
    if line.startswith("warning: "):
        r = run_tool(w, "check", *args, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert line in findings(r), "\n".join(findings(r))
        args, line = ("STRICT=1", *args), "error: " + line[len("warning: ") :]
    r = run_tool(w, "check", *args, env=env)
    assert r.returncode == 3, r.stdout + r.stderr
    got = findings(r)
    assert line in got, "\n".join(got)


def fails_with(r, line: str, code: int = 2) -> None:
    """The tool's one error line and its exit code (make reports it as `Error N` and exits 2)."""
    assert r.returncode == 2 and f"Error {code}" in r.stderr, r.stderr
    assert error_line(r) == line


def set_option(w, line: str, rel: str = CFG) -> None:
    """Add `line` to config.toml's top level (above the first table)."""
    edit(w, rel, "seed = 42\n", f"seed = 42\n{line}\n")


def to_directory_dataset(w) -> None:
    """The example as an image_directory dataset: targets with .txt captions, controls item01_0.png ... beside them."""
    for row in map(json.loads, w.read(JSONL).splitlines()):
        w.write(row["image_path"].rsplit(".", 1)[0] + ".txt", row["caption"])
    head = w.read(DS).split("[[datasets]]")[0]
    w.write(
        DS,
        head
        + "\n".join(
            [
                "[[datasets]]",
                'image_directory = "datasets/example-1f/target"',
                'control_directory = "datasets/example-1f/control"',
                'caption_extension = ".txt"',
                'cache_directory = "cache/v1/example-1f"',
                "fp_1f_clean_indices = [0, 10]",
                "fp_1f_target_index = 1",
                "fp_1f_no_post = true",
                "",
            ]
        ),
    )


# Tracebacks --------------------------------------------------------------------------------------------------------


def test_zero_resolution_is_one_line_not_a_zero_division(ready):
    edit(ready, DS, "resolution = [512, 768]", "resolution = [0, 0]")
    check_fails(
        ready,
        f"error: {at(ready, DS, 'resolution')}: `resolution` = [0, 0]: width and height must be above 0 "
        "(musubi-tuner divides by them), e.g. [512, 768]",
    )


def test_zero_batch_size_is_one_line_not_a_crash_in_the_disk_check(ready):
    edit(ready, DS, "batch_size = 16", "batch_size = 0")
    check_fails(
        ready,
        f"error: {at(ready, DS, 'batch_size')}: `batch_size` = 0: it must be 1 or more (items per batch); "
        "0 leaves the dataset with nothing to train",
    )


# Accepted without a word -------------------------------------------------------------------------------------------


def test_a_training_key_set_again_in_another_table_is_an_error(ready):
    ready.write(CFG, ready.read(CFG).replace("\n[workspace]\n", "\n[training]\nlearning_rate = 1e-3\n\n[workspace]\n"))
    top = at(ready, CFG, "learning_rate").split(":")[1]
    check_fails(
        ready,
        f"error: {CFG}:{ready.read(CFG).splitlines().index('learning_rate = 1e-3') + 1}: `learning_rate` is set "
        f"at the top level (line {top}) and again in [training]: musubi-tuner flattens every table into one set of "
        "options, so it trains with learning_rate = 0.001 without a word; keep one, at the top level",
    )


def test_an_unknown_optimizer_type_is_an_error(ready):
    edit(ready, CFG, 'optimizer_type = "adamw8bit"', 'optimizer_type = "adamw9bit"')
    check_fails(
        ready,
        f"error: {at(ready, CFG, 'optimizer_type')}: optimizer_type = 'adamw9bit' is not an optimiser "
        "musubi-tuner knows (did you mean 'adamw8bit'?): it fails after the DiT has loaded (torch.optim has no "
        "adamw9bit); use adafactor, adamw, adamw8bit (any case), a torch.optim class (ASGD, Adadelta, Adagrad, "
        'Adam, Adamax, Muon, NAdam, RAdam, RMSprop, Rprop, SGD) or a module path ("module.Class")',
    )


def test_an_unknown_lr_scheduler_is_an_error(ready):
    edit(ready, CFG, 'lr_scheduler = "constant"', 'lr_scheduler = "Cosine"')
    check_fails(
        ready,
        f"error: {at(ready, CFG, 'lr_scheduler')}: lr_scheduler = 'Cosine' is not a scheduler musubi-tuner "
        "knows (did you mean 'cosine'?): it fails after the DiT has loaded; use one of constant, constant_with_warmup, "
        "cosine, cosine_with_min_lr, cosine_with_restarts, inverse_sqrt, linear, piecewise_constant, polynomial, "
        "rex, warmup_stable_decay",
    )


@pytest.mark.parametrize("steps", [0, -100])
def test_max_train_steps_zero_or_negative_is_an_error(ready, steps):
    edit(ready, CFG, "max_train_steps = 1000", f"max_train_steps = {steps}")
    check_fails(
        ready,
        f"error: {at(ready, CFG, 'max_train_steps')}: max_train_steps = {steps}: training needs at least 1; "
        "musubi-tuner would load everything and train nothing",
    )


@pytest.mark.parametrize(
    "rate, message",
    [
        (
            "0.0",
            "learning_rate = 0.0: it must be above 0 (0 trains nothing; torch's optimisers refuse a negative rate after "
            "the DiT has loaded); LoRA rates are about 1e-4",
        ),
        (
            "-2e-4",
            "learning_rate = -0.0002: it must be above 0 (0 trains nothing; torch's optimisers refuse a negative rate "
            "after the DiT has loaded); LoRA rates are about 1e-4",
        ),
        (
            "2e4",
            "learning_rate = 20000 is far above any LoRA learning rate (did you mean 2e-4?): the loss diverges at once; "
            "AdamW-type rates are about 1e-4, adaptive optimizers (Prodigy, D-Adaptation) take 1.0".replace(
                "optimizers", "optimisers"
            ),
        ),
    ],
)
def test_learning_rate_zero_negative_or_absurd_is_an_error(ready, rate, message):
    edit(ready, CFG, "learning_rate = 2e-4", f"learning_rate = {rate}")
    check_fails(ready, f"error: {at(ready, CFG, 'learning_rate')}: {message}")


def test_network_alpha_far_above_network_dim_is_a_warning(ready):
    edit(ready, CFG, "network_alpha = 16", "network_alpha = 512")
    check_fails(
        ready,
        f"warning: {at(ready, CFG, 'network_alpha')}: network_alpha = 512 is above network_dim = 32: the "
        "LoRA's output is scaled by alpha/dim = 16, which multiplies its effective learning rate; usual is "
        "alpha <= dim (dim/2 halves it)",
    )


def test_num_repeats_zero_is_an_error(ready):
    edit(ready, DS, "num_repeats = 1", "num_repeats = 0")
    check_fails(
        ready,
        f"error: {at(ready, DS, 'num_repeats')}: `num_repeats` = 0: it must be 1 or more (times each item "
        "is seen per epoch); 0 leaves the dataset with nothing to train",
    )


def test_max_train_epochs_with_max_train_steps_is_a_warning(ready):
    set_option(ready, "max_train_epochs = 10")
    check_fails(
        ready,
        f"warning: {at(ready, CFG, 'max_train_epochs')}: max_train_epochs = 10 and max_train_steps = 1000 "
        "are both set: musubi-tuner trains 10 epoch(s) and ignores max_train_steps; remove one",
    )


def test_a_zero_byte_shard_is_not_a_model(ready):
    (ready.root / "models/framepack/diffusion_pytorch_model-00002-of-00003.safetensors").write_bytes(b"")
    check_fails(
        ready,
        f"error: {at(ready, CFG, 'dit =')}: dit models/framepack/diffusion_pytorch_model-00002-of-00003.safetensors "
        "is empty (0 bytes), not a model: musubi-tuner fails on it while loading; delete it and run `make models` "
        "to download it again",
    )


def test_an_html_error_page_saved_as_safetensors_is_not_a_model(ready):
    (ready.root / "models/sigclip/sigclip_vision_patch14_384.safetensors").write_text(
        "<!DOCTYPE html>\n<html><head><title>401 Unauthorized</title></head><body>Access denied</body></html>\n"
    )
    check_fails(
        ready,
        f"error: {at(ready, CFG, 'image_encoder')}: image_encoder models/sigclip/sigclip_vision_patch14_384.safetensors "
        "is not a safetensors file: it starts with an HTML or XML page (a download's error page?): musubi-tuner fails "
        "on it while loading; delete it and run `make models` to download it again",
    )


def test_a_caption_that_is_not_utf8_is_an_error(ready):
    to_directory_dataset(ready)
    (ready.root / "datasets/example-1f/target/item02.txt").write_bytes(
        "the figure in a purple shirt, caf\xe9".encode("latin-1")
    )
    check_fails(
        ready,
        "error: datasets/example-1f/target/item02.txt: is not UTF-8 text (byte 0xe9 on line 1): musubi-tuner "
        "fails on it (UnicodeDecodeError) while caching; save it as UTF-8",
    )


def test_a_dangling_symlink_in_an_image_directory_is_an_error(ready):
    to_directory_dataset(ready)
    (ready.root / "datasets/example-1f/target/item05.png").symlink_to("/nowhere/item05.png")
    ready.write("datasets/example-1f/target/item05.txt", "a caption")  # without one musubi-tuner skips the name unread
    check_fails(
        ready,
        "error: datasets/example-1f/target/item05.png: is a symlink to /nowhere/item05.png, which does not "
        "exist: musubi-tuner lists it and fails on it while caching; fix or remove the link",
    )


def test_a_looping_symlink_in_an_image_directory_is_an_error(ready):
    to_directory_dataset(ready)
    (ready.root / "datasets/example-1f/target/loop.png").symlink_to("loop.png")
    ready.write("datasets/example-1f/target/loop.txt", "a caption")
    check_fails(
        ready,
        "error: datasets/example-1f/target/loop.png: is a symlink loop: musubi-tuner lists it and fails on it "
        "while caching; fix or remove the link",
    )


def test_a_caption_longer_than_the_text_encoder_reads_is_a_warning(ready):
    rows = [json.loads(l) for l in ready.read(JSONL).splitlines()]
    rows[1]["caption"] = " ".join(["a figure in a purple shirt"] * 50)  # 300 words
    ready.write(JSONL, "".join(json.dumps(r) + "\n" for r in rows))
    check_fails(
        ready,
        f"warning: {JSONL}:2: caption of 300 words: at least 300 tokens, but FramePack's LLaMA text encoder "
        "reads the first 256 and cuts the rest; shorten it to what matters",
    )


def test_a_dry_run_refuses_auto_stop_banana_like_a_real_run(ready):
    for dry in ("1", "0"):
        r = run(ready, "train", f"DRY_RUN={dry}", "AUTO_STOP=banana")
        fails_with(
            r, 'error: AUTO_STOP=banana: expected a duration such as "10m", "30s", "1h" or "off", got \'banana\''
        )
    assert ready.calls() == []


def test_a_dry_run_refuses_a_missing_lora_like_a_real_run(ready):
    for dry in ("1", "0"):
        r = run(ready, "generate", f"DRY_RUN={dry}", "LORA=missing.safetensors")
        fails_with(
            r,
            "error: LORA=missing.safetensors: file not found; give the path of a LoRA file (relative to the workspace root)",
        )
    assert ready.calls() == []


# Confusing ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["true", "yes", "on", "1"])
def test_every_dry_run_value_the_tool_takes_keeps_make_off_the_gpu_stack(ws, value):
    (ws.root / ".venv" / ".stamp-train").unlink()  # as on a machine where the GPU stack was never installed
    plan = ws.make("-n", "train", f"DRY_RUN={value}").stdout
    assert "--extra train" not in plan and "ws train" in plan
    r = run(ws, "train", f"DRY_RUN={value}", env={"WANDB_MODE": "offline"})
    assert r.returncode == 0, r.stderr
    env, argv = split_env(r.stdout.strip())
    assert [f"{k}={v}" for k, v in list(env.items())[:3]] == [
        "TORCHINDUCTOR_AUTOGRAD_CACHE=0",
        "TORCHDYNAMO_CAPTURE_SCALAR_OUTPUTS=1",
        "WS_SPLIT_ATTN_ONE_GRAPH=1",
    ]
    assert argv[:2] == ["accelerate", "launch"]
    assert "--extra train" in ws.make("-n", "train", "DRY_RUN=no").stdout  # a real run does install it


def test_any_other_dry_run_value_is_refused_before_anything_installs(ws):
    (ws.root / ".venv" / ".stamp-train").unlink()
    assert "--extra train" not in ws.make("-n", "train", "DRY_RUN=banana").stdout
    r = run(ws, "train", "DRY_RUN=banana")
    fails_with(
        r,
        "error: DRY_RUN=banana: expected 1, true, yes or on to turn it on, or 0, false, no, off or empty to leave it off",
    )
    assert ws.calls() == []


def test_help_and_readme_name_the_off_pod_check(ws):
    from conftest import REPO

    help_line = next(l for l in ws.make("help").stdout.splitlines() if l.strip().startswith("check "))
    assert (
        help_line.split(None, 1)[1]
        == "Find mistakes that would waste a GPU run; off the pod: DRY_RUN=1  [CONFIG_FILE DRY_RUN STRICT]"
    )
    readme = " ".join((REPO / "README.md").read_text().split())
    assert (
        "Off the pod, `make check DRY_RUN=1` is the check to run: missing model files and credentials are then warnings"
        in readme
    )
    r = run(ws, "check", "DRY_RUN=1", env={"WANDB_MODE": "offline"})  # no models, no GPU stack: it passes
    assert r.returncode == 0, r.stdout + r.stderr


def test_no_gpu_visible_says_the_memory_check_did_not_happen(ready):
    r = run(ready, "check", env={"STANDIN_GPUS": "0"})
    assert r.returncode == 0
    assert "[10/13] GPU memory ⊘ no GPU visible: not checked" in r.stdout.splitlines()


def test_make_new_renames_the_version_in_comments_that_quote_renamed_values(ws):
    cfg = ws.read(CFG).replace("seed = 42\n", "seed = 42\n# v1 was too slow; outputs/v1/logs showed it\n")
    ws.write(CFG, cfg)
    r = ws.make("new")
    assert r.returncode == 0, r.stderr
    new = ws.read("configs/v2/config.toml")
    assert (
        new.splitlines()[0]
        == "# configs/v2/config.toml: one-frame (kisekaeichi-style) FramePack LoRA training, the shipped example."
    )
    assert "# LoRA file names: example-1f_v2-step00000100.safetensors ..., final example-1f_v2.safetensors." in new
    assert "# Samples while training (rendered from prompts.txt; shown in wandb and outputs/v2/sample/)" in new
    assert "# v1 was too slow; outputs/v2/logs showed it" in new  # history stays; the quoted path follows the value
    assert ws.read("configs/v2/dataset.toml").splitlines()[0].startswith("# configs/v2/dataset.toml: ")
    assert ws.read("configs/v2/prompts.txt").splitlines()[0].startswith("# configs/v2/prompts.txt: ")
    assert not re.search(r"configs/v1|_v1\b|outputs/v1", new)
    assert "  configs/v2/config.toml: 4 comment line(s) quoting those values renamed too" in r.stdout


def test_a_byte_order_mark_is_named(ws):
    (ws.root / CFG).write_bytes(b"\xef\xbb\xbf" + (ws.root / CFG).read_bytes())
    r = run(ws, "check")
    fails_with(
        r,
        f"error: {CFG}:1: starts with a UTF-8 byte-order mark (BOM, an invisible character some editors write), "
        "which TOML does not allow (musubi-tuner fails on the file or misreads its first key); save it as UTF-8 without BOM",
    )


def test_a_duplicate_key_is_named_with_both_lines(ws):
    edit(ws, CFG, "seed = 42\n", "seed = 42\nlearning_rate = 1e-3\n")
    first = at(ws, CFG, "learning_rate = 2e-4").split(":")[1]
    again = ws.read(CFG).splitlines().index("learning_rate = 1e-3") + 1
    r = run(ws, "check")
    fails_with(
        r,
        f"error: {CFG}:{again}: `learning_rate` is set twice (first at line {first}); TOML allows each key once "
        "per table: keep one",
    )


def test_a_folder_given_as_an_image_is_called_a_folder(ready):
    rows = [json.loads(l) for l in ready.read(JSONL).splitlines()]
    rows[2]["control_path_1"] = "datasets/example-1f/control"
    ready.write(JSONL, "".join(json.dumps(r) + "\n" for r in rows))
    ready.write(
        PROMPTS,
        ready.read(PROMPTS).replace(
            "--i datasets/example-1f/samples/sample01_start.png", "--i datasets/example-1f/samples"
        ),
    )
    n = len(ready.read(PROMPTS).splitlines())
    r = run(ready, "check")
    assert r.returncode == 2 and "Error 3" in r.stderr
    assert (
        f"error: {JSONL}:3: control_path_1 datasets/example-1f/control is a folder, not an image file; name the image in it"
        in findings(r)
    )
    assert (
        f"error: {PROMPTS}:{n}: --i datasets/example-1f/samples is a folder, not an image file; name the image in it"
        in findings(r)
    )


def test_a_training_option_after_the_workspace_table_says_how_toml_reads_it(ws):
    ws.write(CFG, ws.read(CFG) + "\n# raised for v1\nlearning_rate_warmup = 3\nnetwork_dim = 64\n")
    r = run(ws, "check")
    fails_with(
        r,
        f"error: {CFG}:{len(ws.read(CFG).splitlines()) - 1}: unknown key `learning_rate_warmup` in [workspace]; "
        "known keys: num_processes, accelerate_config, auto_stop, hang_timeout, price_per_hour, cache_batch_size, "
        "cache_num_workers, one_frame_no_2x, one_frame_no_4x, generate_attn_mode, generate_fp8, "
        "blocks_without_checkpointing, split_attn_one_graph, validation, validation_every_n_steps, "
        "validation_timesteps (TOML puts every key after the [workspace] header into it: training options go above it)",
    )
    ws.write(CFG, ws.read(CFG).replace("learning_rate_warmup = 3\n", ""))
    r = run(ws, "check")
    fails_with(
        r,
        f"error: {CFG}:{len(ws.read(CFG).splitlines())}: `network_dim` is a training option, but it stands below "
        "the [workspace] header: TOML puts every key after a table header into that table; move it above the "
        "[workspace] line",
    )


def test_mixed_precision_fp16_trains_but_is_a_warning(ready):
    edit(ready, CFG, 'mixed_precision = "bf16"', 'mixed_precision = "fp16"')
    check_fails(
        ready,
        f'warning: {at(ready, CFG, "mixed_precision")}: mixed_precision = "fp16": FramePack\'s DiT is fixed '
        "to bf16; fp16 autocasts its computation to fp16, which trains, but outside the documented bf16 and with "
        'fp16\'s narrower range (risk of inf/NaN losses); use "bf16"',
    )


# Day one: more mistakes of our own ---------------------------------------------------------------------------------


def test_day_one_no_optimizer_type_at_all(ready):
    edit(ready, CFG, 'optimizer_type = "adamw8bit"\n', "")
    check_fails(
        ready,
        "error: configs/v1/config.toml: `optimizer_type` is not set; musubi-tuner has no default optimizer: "
        'training fails after the DiT has loaded (e.g. "adamw8bit"): add `optimizer_type = ...` (see configs/v1)',
    )


def test_day_one_mixed_precision_no_fails_at_the_first_step(ready):
    edit(ready, CFG, 'mixed_precision = "bf16"', 'mixed_precision = "no"')
    check_fails(
        ready,
        f'error: {at(ready, CFG, "mixed_precision")}: mixed_precision = "no": FramePack\'s DiT is fixed to '
        'bf16 and fails at the first step without autocast ("Input type (float) and bias type (c10::BFloat16) '
        'should be the same"), after it has loaded; use "bf16"',
    )


@pytest.mark.parametrize(
    "value, message",
    [
        (
            "PagedAdamW8bit",
            "optimizer_type = 'PagedAdamW8bit' is not an optimiser musubi-tuner knows (8-bit optimisers other "
            'than adamw8bit need their module path, e.g. "bitsandbytes.optim.PagedAdamW8bit"): it fails after '
            "the DiT has loaded (torch.optim has no PagedAdamW8bit); use adafactor, adamw, adamw8bit (any case), "
            "a torch.optim class (ASGD, Adadelta, Adagrad, Adam, Adamax, Muon, NAdam, RAdam, RMSprop, Rprop, SGD) "
            'or a module path ("module.Class")',
        ),
        (
            "LBFGS",
            "optimizer_type = 'LBFGS' builds, then fails at the first step (TypeError: LBFGS.step() missing 1 required "
            "positional argument: 'closure'); use another, e.g. \"adamw8bit\"",
        ),
        (
            "tomlkit.AdamW",
            "optimizer_type = 'tomlkit.AdamW': module tomlkit has no AdamW: musubi-tuner fails after the DiT has loaded",
        ),
    ],
)
def test_day_one_optimizers_that_fail_late(ready, value, message):
    edit(ready, CFG, 'optimizer_type = "adamw8bit"', f'optimizer_type = "{value}"')
    check_fails(ready, f"error: {at(ready, CFG, 'optimizer_type')}: {message}")


def test_day_one_any_case_of_the_built_in_names_is_fine(ready):
    edit(ready, CFG, 'optimizer_type = "adamw8bit"', 'optimizer_type = "AdamW8bit"')
    edit(ready, CFG, 'lr_scheduler = "constant"', 'lr_scheduler = "REX"')
    assert findings(run(ready, "check", "STRICT=1")) == []


@pytest.mark.parametrize(
    "scheduler, message",
    [
        (
            "cosine_with_min_lr",
            "lr_scheduler = 'cosine_with_min_lr' needs `lr_scheduler_min_lr_ratio` (musubi-tuner fails "
            "without it after the DiT has loaded); set it, or choose another scheduler",
        ),
        (
            "reduce_lr_on_plateau",
            "lr_scheduler = 'reduce_lr_on_plateau' fails in musubi-tuner after the DiT has loaded "
            "(TypeError: ReduceLROnPlateau.__init__() got an unexpected keyword argument 'num_warmup_steps'); "
            "use one of constant, constant_with_warmup, cosine, cosine_with_min_lr, cosine_with_restarts, "
            "inverse_sqrt, linear, piecewise_constant, polynomial, rex, warmup_stable_decay",
        ),
    ],
)
def test_day_one_schedulers_that_fail_late(ready, scheduler, message):
    edit(ready, CFG, 'lr_scheduler = "constant"', f'lr_scheduler = "{scheduler}"')
    check_fails(ready, f"error: {at(ready, CFG, 'lr_scheduler')}: {message}")


def test_day_one_a_custom_scheduler_class_that_torch_does_not_have(ready):
    set_option(ready, 'lr_scheduler_type = "CosineAnnealing"')
    check_fails(
        ready,
        f"error: {at(ready, CFG, 'lr_scheduler_type')}: lr_scheduler_type = 'CosineAnnealing' is not a class of "
        "torch.optim.lr_scheduler (did you mean 'CosineAnnealingLR'?): musubi-tuner fails after the DiT has loaded; "
        "use one of ChainedScheduler, ConstantLR, CosineAnnealingLR, CosineAnnealingWarmRestarts, CyclicLR, "
        "ExponentialLR, LambdaLR, LinearLR, MultiStepLR, MultiplicativeLR, OneCycleLR, PolynomialLR, "
        'ReduceLROnPlateau, SequentialLR, StepLR, or a module path ("module.Class")',
    )


@pytest.mark.parametrize(
    "key, item, message",
    [
        ("optimizer_args", "weight_decay 0.01", "has 0 `=`, musubi-tuner splits it into exactly key=value"),
        (
            "optimizer_args",
            "decouple=yes",
            "value 'yes' is not a Python literal (musubi-tuner evaluates it: numbers as they are, "
            "strings in quotes, e.g. decouple='yes')",
        ),
        ("network_args", "loraplus_lr_ratio=4=8", "has 2 `=`, musubi-tuner splits it into exactly key=value"),
    ],
)
def test_day_one_key_value_lists_musubi_cannot_split(ready, key, item, message):
    set_option(ready, f'{key} = ["{item}"]')
    check_fails(
        ready, f"error: {at(ready, CFG, key)}: `{key}` item {item!r} {message}; it fails after the DiT has loaded"
    )


def test_day_one_a_learning_rate_high_for_adamw_is_a_warning(ready):
    edit(ready, CFG, "learning_rate = 2e-4", "learning_rate = 0.05")
    check_fails(
        ready,
        f"warning: {at(ready, CFG, 'learning_rate')}: learning_rate = 0.05 is high for adamw8bit: LoRA rates "
        "are about 1e-4 to 1e-3, and the loss may diverge; lower it, or keep it on purpose",
    )
    edit(ready, CFG, 'optimizer_type = "adamw8bit"', 'optimizer_type = "prodigyopt.Prodigy"')
    edit(ready, CFG, "learning_rate = 0.05", "learning_rate = 1.0")
    # Adaptive optimisers take 1.0. Where musubi-tuner is installed (a pod), the module must be there too.
    expected = []
    if importlib.util.find_spec("musubi_tuner") is not None and importlib.util.find_spec("prodigyopt") is None:
        expected = [
            f"error: {at(ready, CFG, 'optimizer_type')}: optimizer_type = 'prodigyopt.Prodigy': module prodigyopt is "
            "not installed here: musubi-tuner fails with ModuleNotFoundError after the DiT has loaded; install it "
            "into .venv (`uv pip install ...`) or choose another"
        ]
    assert findings(run(ready, "check", "STRICT=1")) == expected


def test_day_one_network_dim_zero(ready):
    edit(ready, CFG, "network_dim = 32", "network_dim = 0")
    check_fails(
        ready,
        f"error: {at(ready, CFG, 'network_dim')}: network_dim = 0: the LoRA rank must be 1 or more (16-32 "
        "for poses and edits, 64+ for styles)",
    )


def test_day_one_max_train_epochs_zero(ready):
    set_option(ready, "max_train_epochs = 0")
    check_fails(
        ready,
        f"error: {at(ready, CFG, 'max_train_epochs')}: max_train_epochs = 0: training needs at least 1; "
        "musubi-tuner would load everything and train nothing",
    )


def test_day_one_a_training_key_in_a_table_of_its_own_is_a_warning(ready):
    ready.write(
        CFG, ready.read(CFG).replace("\n[workspace]\n", "\n[extra]\ngradient_accumulation_steps = 2\n\n[workspace]\n")
    )
    check_fails(
        ready,
        f"warning: {at(ready, CFG, 'gradient_accumulation_steps')}: `gradient_accumulation_steps` is in table "
        "[extra]: musubi-tuner flattens every table into its options, so a second `gradient_accumulation_steps` "
        "anywhere would silently replace one of them; keep training options at the top level, above the first table header",
    )


def test_day_one_text_encoders_swapped(ready):
    edit(
        ready,
        CFG,
        'text_encoder1 = "models/hunyuanvideo_repackaged/split_files/text_encoders/llava_llama3_fp16.safetensors"',
        'text_encoder1 = "models/hunyuanvideo_repackaged/split_files/text_encoders/clip_l.safetensors"',
    )
    check_fails(
        ready,
        f"error: {at(ready, CFG, 'text_encoder1')}: text_encoder1 models/hunyuanvideo_repackaged/split_files/"
        "text_encoders/clip_l.safetensors is not the LLaMA text encoder musubi-tuner loads for `text_encoder1`: 4 of "
        "the 4 tensors checked are missing (embed_tokens.weight, layers.0.self_attn.q_proj.weight, "
        "layers.31.mlp.down_proj.weight, ...); it holds 3 tensor(s) such as "
        "text_model.embeddings.token_embedding.weight: check the file, or which key names it",
    )


def test_day_one_a_download_cut_short(ready):
    vae = ready.root / "models/hunyuanvideo/vae/diffusion_pytorch_model.safetensors"
    data = vae.read_bytes()
    vae.write_bytes(data[:-3])
    check_fails(
        ready,
        f"error: {at(ready, CFG, 'vae =')}: vae models/hunyuanvideo/vae/diffusion_pytorch_model.safetensors is "
        f"cut short: its header describes {len(data):,} bytes, the file has {len(data) - 3:,} (an interrupted "
        "download): musubi-tuner fails on it while loading; delete it and run `make models` to download it again",
    )


def test_day_one_a_git_lfs_pointer_instead_of_the_model(ready):
    (ready.root / "models/hunyuanvideo_repackaged/split_files/text_encoders/clip_l.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 246144152\n"
    )
    check_fails(
        ready,
        f"error: {at(ready, CFG, 'text_encoder2')}: text_encoder2 models/hunyuanvideo_repackaged/split_files/"
        "text_encoders/clip_l.safetensors is not a safetensors file: it starts with a Git LFS pointer, not the file "
        "itself: musubi-tuner fails on it while loading; delete it and run `make models` to download it again",
    )


def test_day_one_an_html_page_given_as_lora(ready):
    ready.write("loras/mine.safetensors", "<html><body>Not Found</body></html>\n")
    r = run(ready, "generate", "DRY_RUN=1", "LORA=loras/mine.safetensors")
    fails_with(
        r,
        "error: LORA=loras/mine.safetensors: is not a safetensors file: it starts with an HTML or XML page "
        "(a download's error page?)",
    )
    r = run(ready, "generate", "DRY_RUN=1", "LORA=loras")
    fails_with(r, "error: LORA=loras: is a folder; give the LoRA file, e.g. LORA=loras/<name>.safetensors")


def test_day_one_a_duplicate_table_in_dataset_toml(ready):
    ready.write(DS, ready.read(DS) + "\n[general]\nnum_repeats = 2\n")
    first = at(ready, DS, "[general]").split(":")[1]
    check_fails(
        ready,
        f"error: {DS}:{len(ready.read(DS).splitlines()) - 1}: table [general] is declared twice (first at "
        f"line {first}); TOML allows each table once: merge the two",
    )


def test_day_one_prompts_and_jsonl_that_are_not_utf8(ready):
    (ready.root / PROMPTS).write_bytes((ready.root / PROMPTS).read_bytes() + "# caf\xe9\n".encode("latin-1"))
    data = (ready.root / JSONL).read_bytes()
    (ready.root / JSONL).write_bytes(data.replace(b"blue", "bl\xfce".encode("latin-1"), 1))
    r = run(ready, "check")
    assert r.returncode == 2 and "Error 3" in r.stderr
    got = findings(r)
    last = len((ready.root / PROMPTS).read_bytes().splitlines())
    assert (
        f"error: {PROMPTS}: is not UTF-8 text (byte 0xe9 on line {last}): musubi-tuner fails on it (UnicodeDecodeError) "
        "when it reads the prompts; save it as UTF-8" in got
    ), got
    line = data[: data.index(b"blue")].count(b"\n") + 1
    assert (
        f"error: {JSONL}: is not UTF-8 text (byte 0xfc on line {line}): musubi-tuner fails on it (UnicodeDecodeError) "
        "while caching; save it as UTF-8" in got
    ), got


def test_day_one_make_new_and_diff_with_a_file_that_is_not_utf8(ws):
    assert ws.make("new").returncode == 0
    (ws.root / PROMPTS).write_bytes(b"a cat \xe9\n")
    line = f"error: {PROMPTS}: not UTF-8 text (byte 0xe9 at offset 6); save it as UTF-8 (musubi-tuner reads it as UTF-8 too)"
    fails_with(run(ws, "new", "FROM=v1"), line)
    fails_with(run(ws, "diff"), line)


@pytest.mark.parametrize("var", ["STRICT", "FORCE"])
def test_day_one_other_switches_take_the_same_values(ready, var):
    r = run(ready, "cache", "DRY_RUN=1", f"{var}=2")
    fails_with(
        r, f"error: {var}=2: expected 1, true, yes or on to turn it on, or 0, false, no, off or empty to leave it off"
    )


def test_day_one_a_dangling_caption_link_is_named_once(ready):
    to_directory_dataset(ready)
    cap = ready.root / "datasets/example-1f/target/item03.txt"
    cap.unlink()
    cap.symlink_to("../captions/item03.txt")
    r = run(ready, "check")
    assert r.returncode == 2
    assert [f for f in findings(r) if "item03" in f] == [
        "error: datasets/example-1f/target/item03.txt: is a symlink to ../captions/item03.txt, which does not exist: "
        "musubi-tuner lists it and fails on it while caching; fix or remove the link"
    ]


def test_day_one_a_negative_network_alpha_is_a_warning(ready):
    edit(ready, CFG, "network_alpha = 16", "network_alpha = -16")
    check_fails(
        ready,
        f"warning: {at(ready, CFG, 'network_alpha')}: network_alpha = -16 is negative: it flips the sign of the "
        "LoRA's output (scale alpha/dim = -0.5); use a value between 1 and network_dim",
    )


def test_day_one_the_clean_example_stays_clean_under_strict(ready):
    """Nothing above fires on the shipped example (no false alarm from the new checks)."""
    r = run(ready, "check", "STRICT=1")
    assert r.returncode == 0 and findings(r) == [], r.stdout


# Issue 25: messages that sent a user the wrong way -----------------------------------------------------------------


def test_a_dataset_config_naming_a_folder_says_so_and_names_the_file_inside(ready):
    edit(ready, CFG, 'dataset_config = "configs/v1/dataset.toml"', 'dataset_config = "configs/v1"')
    check_fails(
        ready,
        f"error: {at(ready, CFG, 'dataset_config')}: dataset_config configs/v1 is a folder, not a file: did you "
        "mean configs/v1/dataset.toml?",
    )


def test_a_dataset_config_naming_a_folder_without_a_dataset_toml_says_it_is_a_folder(ready):
    edit(ready, CFG, 'dataset_config = "configs/v1/dataset.toml"', 'dataset_config = "datasets"')
    check_fails(
        ready,
        f"error: {at(ready, CFG, 'dataset_config')}: dataset_config datasets is a folder, not a file; name the file "
        "inside it, or create it (copy configs/v1/dataset.toml) or fix the path",
    )


def test_a_dataset_file_passed_as_the_config_is_named_as_such(ready):
    r = run(ready, "check", "CONFIG_FILE=configs/v1/dataset.toml")
    fails_with(
        r,
        "error: configs/v1/dataset.toml: is a dataset file ([general]/[[datasets]]), not a training config; use "
        "configs/v1/config.toml beside it (CONFIG_FILE=configs/v1/config.toml), whose dataset_config names the "
        "dataset file",
    )
    assert "unknown option" not in r.stdout + r.stderr


@pytest.mark.parametrize(
    ("key", "meant"),
    [
        ("learning_rate_warmup", "lr_warmup_steps"),
        ("warmup_steps", "lr_warmup_steps"),
        ("epochs", "max_train_epochs"),
        ("train_steps", "max_train_steps"),
        ("lora_rank", "network_dim"),
        ("lora_alpha", "network_alpha"),
        ("lr", "learning_rate"),
        ("max_train_step", "max_train_steps"),  # a typo: the spelling wins over `step`'s meaning
    ],
)
def test_an_unknown_option_is_matched_by_meaning_before_spelling(ready, key, meant):
    set_option(ready, f"{key} = 1")
    check_fails(
        ready,
        f"error: {at(ready, CFG, key + ' =')}: unknown option `{key}` (did you mean `{meant}`?); musubi-tuner would "
        "ignore it silently",
    )
