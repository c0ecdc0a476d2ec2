"""cache, train and generate through the real Makefile, with recording stand-ins for the GPU programs."""

from __future__ import annotations

import pytest
from conftest import split_env, write_safetensors

CACHE_LATENTS = [
    "-m",
    "musubi_tuner.fpack_cache_latents",
    "--dataset_config",
    "configs/v1/dataset.toml",
    "--vae",
    "models/hunyuanvideo/vae/diffusion_pytorch_model.safetensors",
    "--image_encoder",
    "models/sigclip/sigclip_vision_patch14_384.safetensors",
    "--vae_chunk_size",
    "32",
    "--vae_spatial_tile_sample_min_size",
    "128",
    "--one_frame",
    "--one_frame_no_2x",
    "--one_frame_no_4x",
]
CACHE_TE = [
    "-m",
    "musubi_tuner.fpack_cache_text_encoder_outputs",
    "--dataset_config",
    "configs/v1/dataset.toml",
    "--text_encoder1",
    "models/hunyuanvideo_repackaged/split_files/text_encoders/llava_llama3_fp16.safetensors",
    "--text_encoder2",
    "models/hunyuanvideo_repackaged/split_files/text_encoders/clip_l.safetensors",
]
# configs/v1's validation set (`[workspace] validation`): the same two scripts, on its own dataset.toml.
VALIDATION_LATENTS = [a if a != "configs/v1/dataset.toml" else "validation/dataset.toml" for a in CACHE_LATENTS]
VALIDATION_TE = [a if a != "configs/v1/dataset.toml" else "validation/dataset.toml" for a in CACHE_TE]
TRAIN_1GPU = [
    "launch",
    "--num_cpu_threads_per_process",
    "1",
    "--mixed_precision",
    "bf16",
    "--dynamo_backend",
    "no",
    "--num_processes",
    "1",
    "--num_machines",
    "1",
    "-m",
    # configs/v1 ships [workspace] split_attn_one_graph: the trainer runs through the workspace's launcher
    "musubi_workspace.launch",
    "--config_file",
    "configs/v1/config.toml",
]


def test_cache_runs_latents_then_text_encoders_with_values_from_the_config(ready):
    r = ready.tool("cache", "CONFIG_FILE=configs/v1/config.toml")
    assert r.returncode == 0, r.stderr
    calls = ready.calls()
    assert [c["prog"] for c in calls] == ["fpack_cache_latents", "fpack_cache_text_encoder_outputs"] * 2
    assert [c["argv"] for c in calls] == [CACHE_LATENTS, CACHE_TE, VALIDATION_LATENTS, VALIDATION_TE]
    assert all(c["cwd"] == str(ready.root) for c in calls)


def test_cache_takes_fp8_llm_and_batch_settings_from_the_config(ready):
    cfg = ready.read("configs/v1/config.toml").replace("fp8_llm = false", "fp8_llm = true")
    cfg = cfg.replace("\n[workspace]\n", "\n[workspace]\ncache_batch_size = 4\ncache_num_workers = 3\n")
    ready.write("configs/v1/config.toml", cfg)
    assert ready.tool("cache").returncode == 0
    lat, te, *validation = ready.calls()
    assert [c["argv"][-4:] for c in validation] == [["--batch_size", "4", "--num_workers", "3"]] * 2
    assert lat["argv"][-4:] == ["--batch_size", "4", "--num_workers", "3"]
    assert "--fp8_llm" in te["argv"] and "--fp8_llm" not in lat["argv"]


@pytest.mark.usefixtures("cached")  # make train needs an up-to-date cache
def test_train_launches_accelerate_with_the_config_file_and_secrets_only_in_the_environment(ready):
    ready.write(".env", "HF_TOKEN=hf_" + "a" * 34 + "\nWANDB_API_KEY=" + "b" * 40 + "\n")
    r = ready.tool("train")
    assert r.returncode == 0, r.stderr
    [call] = ready.calls("accelerate")
    assert call["argv"] == TRAIN_1GPU
    assert call["env"]["HF_TOKEN"] == "hf_" + "a" * 34
    assert call["env"]["WANDB_API_KEY"] == "b" * 40
    assert "a" * 34 not in r.stdout + r.stderr


@pytest.mark.usefixtures("cached")  # make train needs an up-to-date cache
def test_train_uses_every_visible_gpu(ready):
    assert ready.tool("train", env={"STANDIN_GPUS": "4"}).returncode == 0
    argv = ready.calls("accelerate")[0]["argv"]
    assert argv[argv.index("--num_processes") + 1] == "4" and "--multi_gpu" in argv


@pytest.mark.usefixtures("cached")  # make train needs an up-to-date cache
def test_train_process_count_from_workspace_table(ready):
    cfg = ready.read("configs/v1/config.toml").replace('num_processes = "auto"', "num_processes = 2")
    ready.write("configs/v1/config.toml", cfg)
    assert ready.tool("train", env={"STANDIN_GPUS": "8"}).returncode == 0
    argv = ready.calls("accelerate")[0]["argv"]
    assert argv[argv.index("--num_processes") + 1] == "2" and "--multi_gpu" in argv


def test_generate_uses_the_newest_lora_and_names_the_folder_after_it(ready):
    out = ready.root / "outputs" / "v1"
    out.mkdir(parents=True)
    import os
    import time

    for i, name in enumerate(["example-1f_v1-step00000100", "example-1f_v1-step00000200", "other_v9"]):
        p = out / f"{name}.safetensors"
        p.write_bytes(b"x")
        os.utime(p, (time.time() + i, time.time() + i))
    r = ready.tool("generate", "MULTIPLIER=0.8")
    assert r.returncode == 0, r.stderr
    [call] = ready.calls("fpack_generate_video")
    argv = call["argv"]
    assert argv[argv.index("--lora_weight") + 1] == "outputs/v1/example-1f_v1-step00000200.safetensors"
    assert argv[argv.index("--lora_multiplier") + 1] == "0.8"
    assert argv[argv.index("--save_path") + 1] == "outputs/v1/generate/example-1f_v1-step00000200_x0.8"
    assert argv[argv.index("--from_file") + 1] == "configs/v1/prompts.txt"
    assert argv[argv.index("--attn_mode") + 1] == "sageattn"
    assert argv[argv.index("--output_type") + 1] == "latent_images"  # one-frame: an image, not a one-frame .mp4
    assert (
        "LORA not set: using outputs/v1/example-1f_v1-step00000200.safetensors (the newest of this version)" in r.stderr
    )


def test_generate_without_any_lora_says_what_to_do(ready):
    r = ready.tool("generate")
    assert r.returncode == 2  # bad input
    assert (
        "error: configs/v1/config.toml: no LoRA of `example-1f_v1` in outputs/v1 yet; train first (`make train`) or pass LORA=path/to/lora.safetensors"
        in r.stderr
    )
    assert ready.calls() == []


# The shipped version compiles (data/compile_env.toml) and runs split_attn in one graph (launch.py).
COMPILE_ENV = ["TORCHINDUCTOR_AUTOGRAD_CACHE=0", "TORCHDYNAMO_CAPTURE_SCALAR_OUTPUTS=1", "WS_SPLIT_ATTN_ONE_GRAPH=1"]


def validation_env(w) -> dict[str, str]:
    """What configs/v1's `[workspace] validation` adds to the launcher's environment (the contract of issue 26)."""
    from musubi_workspace.paths import Workspace
    from musubi_workspace.validation.items import set_hash

    return {
        "WS_VALIDATION": "validation/dataset.toml",
        "WS_VALIDATION_EVERY": "100",  # configs/v1's save_every_n_steps
        "WS_VALIDATION_TIMESTEPS": "0.1,0.3,0.5,0.7,0.9",
        "WS_VALIDATION_SET": set_hash(Workspace(w.root), w.root / "validation" / "dataset.toml"),
    }


@pytest.mark.parametrize("target", ["cache", "train"])
def test_dry_run_prints_commands_and_runs_nothing_even_without_models(ws, target):
    r = ws.make(target, "DRY_RUN=1")
    assert r.returncode == 0, r.stderr
    assert [c["prog"] for c in ws.calls()] in ([], ["nvidia-smi"])  # only asked how many GPUs there are
    # Each line is whole: the variables the run gets lead it (tests/runs/test_pasteable.py pastes them).
    lines = [split_env(l) for l in r.stdout.strip().splitlines()]
    if target == "cache":
        assert [argv for _, argv in lines] == [
            ["python", *argv] for argv in (CACHE_LATENTS, CACHE_TE, VALIDATION_LATENTS, VALIDATION_TE)
        ]
    else:
        [(env, argv)] = lines
        assert argv == ["accelerate", *TRAIN_1GPU]
        # The shipped version compiles: its environment leads the line (data/compile_env.toml).
        assert [f"{k}={v}" for k, v in env.items()][: len(COMPILE_ENV)] == COMPILE_ENV
        assert env["TORCHINDUCTOR_CACHE_DIR"].endswith("/cache/torch_compile/" + env["TORCHINDUCTOR_CACHE_DIR"][-12:])
        assert {k: v for k, v in env.items() if k.startswith("WS_VALIDATION")} == validation_env(ws)
    assert "not found; run `make models` to download it (dry run: not needed now)" in r.stderr


def test_dry_run_generate_with_explicit_lora(ws):
    write_safetensors(ws.root / "outputs/v1/x.safetensors", ["lora_unet_x.lora_down.weight"])
    r = ws.tool("generate", "DRY_RUN=1", "LORA=outputs/v1/x.safetensors")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("python -m musubi_tuner.fpack_generate_video --dit ")
    assert "--lora_weight outputs/v1/x.safetensors --lora_multiplier 1" in r.stdout
    assert ws.calls() == []
    assert len(r.stdout.splitlines()) == 1


def test_without_models_the_real_run_stops_before_starting_and_names_make_models(ws):
    r = ws.tool("train")
    assert r.returncode == 3  # check errors
    assert (
        "error: configs/v1/config.toml:13: dit models/framepack/diffusion_pytorch_model-00001-of-00003.safetensors not found; run `make models` to download it"
        in r.stderr
    )
    assert ws.calls() == []


def test_config_file_defaults_to_the_newest_version_and_says_so(ready):
    assert ready.make("new").returncode == 0
    r = ready.tool("train", "DRY_RUN=1")
    assert r.returncode == 0, r.stderr
    assert "CONFIG_FILE not set: using configs/v2/config.toml (the newest version)" in r.stdout + r.stderr
    assert "--config_file configs/v2/config.toml" in r.stdout


def test_config_file_may_name_just_the_version(ready):
    r = ready.tool("train", "DRY_RUN=1", "CONFIG_FILE=v1")
    assert r.returncode == 0 and "--config_file configs/v1/config.toml" in r.stdout


@pytest.mark.usefixtures("cached")  # make train needs an up-to-date cache
def test_train_on_several_machines_uses_the_accelerate_config_and_each_machines_environment(ready):
    ready.write("accelerate_multi.yaml", "num_machines: 2\nnum_processes: 16\ndistributed_type: MULTI_GPU\n")
    cfg = ready.read("configs/v1/config.toml").replace(
        "\n[workspace]\n", '\n[workspace]\naccelerate_config = "accelerate_multi.yaml"\n'
    )
    ready.write("configs/v1/config.toml", cfg)
    machine = {"MACHINE_RANK": "1", "MAIN_PROCESS_IP": "10.0.0.1", "MAIN_PROCESS_PORT": "29500", "STANDIN_GPUS": "8"}
    dry = ready.tool("train", "DRY_RUN=1", env=machine)
    assert dry.returncode == 0, dry.stderr
    expected = [
        "launch",
        "--num_cpu_threads_per_process",
        "1",
        "--mixed_precision",
        "bf16",
        "--dynamo_backend",
        "no",
        "--config_file",
        "accelerate_multi.yaml",
        "--machine_rank",
        "1",
        "--main_process_ip",
        "10.0.0.1",
        "--main_process_port",
        "29500",
        "-m",
        "musubi_workspace.launch",
        "--config_file",
        "configs/v1/config.toml",
    ]
    env, argv = split_env(dry.stdout.strip())
    assert argv == ["accelerate", *expected]
    assert [f"{k}={v}" for k, v in env.items()][: len(COMPILE_ENV)] == COMPILE_ENV
    assert {k: v for k, v in env.items() if k.startswith("WS_VALIDATION")} == validation_env(ready)
    assert ready.tool("train", env=machine).returncode == 0
    assert ready.calls("accelerate")[0]["argv"] == expected
