"""Every shipped config, through the real path: the command lines the workspace builds for cache, train and
generate are parsed by musubi-tuner's own parsers, the config file by its own `read_config_from_file`, the
dataset by its own sanitizer and blueprint generator, and the prompts by its own prompt-line parser."""

from __future__ import annotations

import os
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from musubi_workspace import dataset as dataset_model
from musubi_workspace.commands import cache_commands, generate_command, train_command
from musubi_workspace.config import Config
from musubi_workspace.schema import build_parsers

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted(REPO.glob("configs/*/config.toml"))


@pytest.fixture(scope="module")
def parsers(musubi):
    return build_parsers(musubi)


def module_args(argv: list[str], *modules: str) -> list[str]:
    """What follows `-m <module>` in a command line (one of `modules`)."""
    i = argv.index("-m")
    assert argv[i + 1] in modules
    return argv[i + 2 :]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.parent.name)
def test_cache_commands_parse_with_the_real_cache_parsers(parsers, workspace, config):
    cfg = Config.load(workspace, workspace.root / config.relative_to(REPO))
    latents, te = cache_commands(cfg)
    a = parsers["fpack_cache_latents"].parse_args(module_args(latents.argv, "musubi_tuner.fpack_cache_latents"))
    assert a.dataset_config == cfg.get("dataset_config") and a.one_frame is bool(cfg.get("one_frame"))
    assert a.vae == cfg.get("vae") and a.image_encoder == cfg.get("image_encoder")
    b = parsers["fpack_cache_text_encoder_outputs"].parse_args(
        module_args(te.argv, "musubi_tuner.fpack_cache_text_encoder_outputs")
    )
    assert (b.text_encoder1, b.text_encoder2) == (cfg.get("text_encoder1"), cfg.get("text_encoder2"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.parent.name)
def test_train_command_and_config_file_parse_with_the_real_training_parser(
    parsers, musubi, workspace, config, monkeypatch
):
    cfg = Config.load(workspace, workspace.root / config.relative_to(REPO))
    cmd = train_command(cfg, visible_gpus=1)
    # configs/v1 runs the workspace's launcher (split_attn_one_graph), which hands these arguments to this parser
    argv = module_args(cmd.argv, "musubi_tuner.fpack_train_network", "musubi_workspace.launch")
    parser = parsers["fpack_train_network"]
    args = parser.parse_args(argv)
    monkeypatch.setattr(sys, "argv", ["fpack_train_network.py", *argv])
    args = musubi["training.parser_common"].read_config_from_file(args, parser)
    # Every musubi option of the file arrived with the value the workspace read.
    for key, value in cfg.options.items():
        assert getattr(args, key) == value, key
    assert args.network_module == "networks.lora_framepack" and args.sdpa is True


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.parent.name)
def test_generate_command_parses_with_the_real_generate_parser(musubi, workspace, config, monkeypatch):
    cfg = Config.load(workspace, workspace.root / config.relative_to(REPO))
    cmd = generate_command(cfg, "outputs/x/lora.safetensors", 0.8)
    argv = module_args(cmd.argv, "musubi_tuner.fpack_generate_video")
    monkeypatch.setattr(sys, "argv", ["fpack_generate_video.py", *argv])
    args = musubi["fpack_generate_video"].parse_args()
    assert args.from_file == cfg.get("sample_prompts") and args.lora_multiplier == [0.8]
    assert args.attn_mode == cfg.settings.generate_attn_mode and os.path.basename(args.save_path) == "lora_x0.8"
    # one-frame: a PNG and its latent, not a one-frame .mp4; video: the .mp4
    assert args.output_type == ("latent_images" if cfg.get("one_frame") is True else "video")


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.parent.name)
def test_dataset_config_passes_the_real_sanitizer_with_the_values_the_cache_scripts_see(
    parsers, musubi, workspace, config
):
    cfg = Config.load(workspace, workspace.root / config.relative_to(REPO))
    cu = musubi["dataset.config_utils"]
    user = cu.load_user_config(cfg.get("dataset_config"))
    latents, _ = cache_commands(cfg)
    namespace = parsers["fpack_cache_latents"].parse_args(module_args(latents.argv, "musubi_tuner.fpack_cache_latents"))
    blueprint = cu.BlueprintGenerator(cu.ConfigSanitizer()).generate(user, namespace, architecture="fp")
    datasets = blueprint.dataset_group.datasets
    assert datasets, "no dataset in the blueprint"
    # Every parameter of musubi-tuner's blueprint is the value the dataset model gives ([general] merged, defaults).
    model = dataset_model.load(cfg)
    assert len(model.datasets) == len(datasets)
    for bp, d in zip(datasets, model.datasets):
        for key, value in asdict(bp.params).items():
            if key not in ("architecture", "debug_dataset"):
                assert _plain(key, d.get(key)) == _plain(key, value), key


def _plain(key, value):
    """Tuples as lists, a square resolution as [n, n]: the two spellings of one value."""
    if key in ("resolution", "control_resolution") and isinstance(value, int):
        value = [value, value]
    return list(value) if isinstance(value, (tuple, list)) else value


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.parent.name)
def test_prompts_parse_with_the_real_prompt_parser(musubi, workspace, config):
    cfg = Config.load(workspace, workspace.root / config.relative_to(REPO))
    prompts = musubi["training.sampling_prompts"].load_prompts(cfg.get("sample_prompts"))
    assert prompts, "no prompt"
    for p in prompts:
        assert os.path.exists(p["image_path"])
        if cfg.get("one_frame"):
            assert p["one_frame"], p
        for control in p.get("control_image_path", []) or []:
            assert os.path.exists(control)
