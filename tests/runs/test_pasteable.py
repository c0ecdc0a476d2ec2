"""Issue 25, 5: a dry run's command line is the whole command. Pasted into a shell (`bash -c`, the stand-ins on
PATH), the lines of `make train/train-bg/cache/generate DRY_RUN=1` start exactly the argv and environment that
the real `make` target starts: the stand-ins record the whole environment (STANDIN_RECORD_ENV=all). Secrets are
never in the line: they reach the run from the environment or .env."""

from __future__ import annotations

import subprocess

from conftest import error_line, split_env, write_safetensors

from runs.test_ledger import records
from runs.test_pod import wait_for

# What make itself exports to its recipes (and so to the tool and its programs), with the variables given on its
# command line (AUTO_STOP=0): not part of the run's command.
MAKE_OWN = ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES")
# A shell's bookkeeping, which differs with how deep a program sits below the shell, not with the command.
SHELL_OWN = ("_", "SHLVL", "OLDPWD")
RECORD_ALL = {"STANDIN_RECORD_ENV": "all"}


def paste(w, line: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", line], cwd=w.root, env={**w.env, **RECORD_ALL}, capture_output=True, text=True, timeout=60
    )


def started(calls: list[dict], make_vars: tuple[str, ...] = ()) -> list[tuple[list[str], str, dict]]:
    """(argv, cwd, environment) of each recorded program, less make's and the shell's own variables."""
    drop = (*MAKE_OWN, *SHELL_OWN, *(v.split("=")[0] for v in make_vars))
    return [(c["argv"], c["cwd"], {k: v for k, v in c["env_all"].items() if k not in drop}) for c in calls]


def dry_lines(w, target: str, *make_vars: str) -> list[str]:
    r = w.make(target, "DRY_RUN=1", *make_vars)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().splitlines()


def test_pasted_train_line_starts_what_make_train_starts(cached):
    cached.write(".env", "HF_TOKEN=hf_" + "a" * 34 + "\nHF_HUB_ENABLE_HF_TRANSFER=1\n")
    [line] = dry_lines(cached, "train")
    env, argv = split_env(line)
    assert argv[:2] == ["accelerate", "launch"]
    # the variables that used to be on other lines or nowhere (issue 25, 6)
    assert {"TORCHINDUCTOR_CACHE_DIR", "WS_SPLIT_ATTN_ONE_GRAPH", "HF_HUB_ENABLE_HF_TRANSFER"} <= env.keys()
    assert "hf_aaaa" not in line and "HF_TOKEN" not in line
    r = cached.make("train", "AUTO_STOP=0", env=RECORD_ALL)
    assert r.returncode == 0, r.stderr
    [real] = started(cached.calls("accelerate"), ("AUTO_STOP=0",))
    pasted = paste(cached, line)
    assert pasted.returncode == 0, pasted.stderr
    [_, again] = started(cached.calls("accelerate"))
    assert again[:2] == real[:2]
    # The one difference: the secret from .env, which the line leaves to the environment.
    assert {k: v for k, v in real[2].items() if again[2].get(k) != v} == {"HF_TOKEN": "hf_" + "a" * 34}
    assert again[2].keys() <= real[2].keys()


def test_pasted_train_bg_line_starts_what_make_train_starts(cached):
    [line] = dry_lines(cached, "train-bg")
    assert "''" not in line  # an empty AUTO_STOP is left out, not quoted inside quotes (issue 25, 6)
    pasted = paste(cached, line)
    assert pasted.returncode == 0, pasted.stderr
    wait_for(lambda: [r for r in records(cached, "train") if r["status"] == "succeeded"])
    [bg] = started(cached.calls("accelerate"))
    r = cached.make("train", env=RECORD_ALL)
    assert r.returncode == 0, r.stderr
    [_, real] = started(cached.calls("accelerate"))
    assert bg == real


def test_pasted_cache_lines_start_what_make_cache_starts(ready):
    lines = dry_lines(ready, "cache")
    assert len(lines) == 4  # the two scripts on the training data, then on the validation set
    r = ready.make("cache", env=RECORD_ALL)
    assert r.returncode == 0, r.stderr
    real = started(ready.calls())
    assert [c[0][:2] for c in real] == [
        ["-m", "musubi_tuner.fpack_cache_latents"],
        ["-m", "musubi_tuner.fpack_cache_text_encoder_outputs"],
    ] * 2
    for line in lines:
        pasted = paste(ready, line)
        assert pasted.returncode == 0, pasted.stderr
    assert started(ready.calls())[4:] == real


def test_pasted_generate_line_starts_what_make_generate_starts(ready):
    write_safetensors(ready.root / "outputs/v1/example-1f_v1.safetensors", ["lora_unet_x.lora_down.weight"])
    [line] = dry_lines(ready, "generate", "MULTIPLIER=0.8")
    r = ready.make("generate", "MULTIPLIER=0.8", env=RECORD_ALL)
    assert r.returncode == 0, r.stderr
    [real] = started(ready.calls("fpack_generate_video"), ("MULTIPLIER=0.8",))
    pasted = paste(ready, line)
    assert pasted.returncode == 0, pasted.stderr
    assert started(ready.calls("fpack_generate_video"))[1] == real


GENERATE_WITHOUT_LORA = (
    "PYTHONUNBUFFERED=1 python -m musubi_tuner.fpack_generate_video"
    " --dit models/framepack/diffusion_pytorch_model-00001-of-00003.safetensors"
    " --vae models/hunyuanvideo/vae/diffusion_pytorch_model.safetensors"
    " --text_encoder1 models/hunyuanvideo_repackaged/split_files/text_encoders/llava_llama3_fp16.safetensors"
    " --text_encoder2 models/hunyuanvideo_repackaged/split_files/text_encoders/clip_l.safetensors"
    " --image_encoder models/sigclip/sigclip_vision_patch14_384.safetensors"
    " --attn_mode sageattn --vae_chunk_size 32 --vae_spatial_tile_sample_min_size 128"
    " --blocks_to_swap {swap} --output_type latent_images --from_file configs/v1/prompts.txt"
    " --save_path '<SAVE>' --lora_weight '<the newest LoRA of example-1f_v1 in outputs/v1 at run time>'"
    " --lora_multiplier 1"
)


def test_generate_dry_run_before_any_lora_names_the_lora_it_takes_at_run_time(ready):
    ws = ready
    ws.env.pop("PYTHONUNBUFFERED", None)
    r = ws.make("generate", "DRY_RUN=1")
    assert r.returncode == 0, r.stderr
    swap = next(l for l in ws.read("configs/v1/config.toml").splitlines() if l.startswith("blocks_to_swap = "))
    expected = GENERATE_WITHOUT_LORA.format(swap=swap.split(" = ")[1]).replace(
        "'<SAVE>'", "'outputs/v1/generate/<its name>_x1'"
    )
    assert r.stdout == expected + "\n"
    assert (
        "LORA not set and no LoRA of `example-1f_v1` in outputs/v1 yet: the run takes the newest one there at run "
        "time (after `make train`); LORA=path/to/lora.safetensors picks one" in r.stderr
    )
    assert ws.calls("fpack_generate_video") == []
    # the real run still refuses, as before
    real = ws.make("generate")
    assert real.returncode == 2
    assert error_line(real) == (
        "error: configs/v1/config.toml: no LoRA of `example-1f_v1` in outputs/v1 yet; train first (`make train`) "
        "or pass LORA=path/to/lora.safetensors"
    )
