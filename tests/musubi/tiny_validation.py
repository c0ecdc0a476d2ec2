"""A tiny FramePack DiT with a LoRA on a small cached validation set, on the CPU, for the validation tests.

Imported by test_validation_real.py (by path) and run as a script by torchrun for the two-process test:
`python -m torch.distributed.run --nproc_per_node 2 tiny_validation.py <folder> <out.json>` scores the set
saved in <folder> with each process's share and writes each process's Record (rank 0 writes the file).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

from PIL import Image

# TINY of test_synthetic.py, with the text-encoder and image-encoder widths of the caches musubi-tuner writes
# (the synthetic caches have the real widths: LLaMA 4096, CLIP-L 768, SigLIP 1152).
TINY_DIT = dict(
    attention_head_dim=16,
    guidance_embeds=True,
    has_clean_x_embedder=True,
    has_image_proj=True,
    image_proj_dim=1152,
    in_channels=16,
    mlp_ratio=4.0,
    num_attention_heads=2,
    num_layers=1,
    num_refiner_layers=1,
    num_single_layers=1,
    out_channels=16,
    patch_size=2,
    patch_size_t=1,
    pooled_projection_dim=768,
    qk_norm="rms_norm",
    rope_axes_dim=(4, 6, 6),
    rope_theta=256.0,
    text_embed_dim=4096,
)
ITEMS = 5


def make_set(folder: Path, items: int = ITEMS, batch_size: int = 2) -> Path:
    """Images with captions, their synthetic one-frame caches, and a dataset.toml naming both; its path."""
    from musubi_workspace.tune.synthetic import CacheLayout, write_caches

    images = folder / "validation" / "images"
    images.mkdir(parents=True, exist_ok=True)
    for i in range(items):
        Image.new("RGB", (64, 96), (40 * i, 90, 200 - 30 * i)).save(images / f"synthetic{i:05d}.png")
        (images / f"synthetic{i:05d}.txt").write_text(f"a test item number {i}\n")
    layout = CacheLayout(width=64, height=96, clean_indices=(0, 10), target_index=1, no_post=True)
    write_caches(folder / "validation" / "cache", layout, items=items, seed=3)
    return write_toml(folder, batch_size)


def write_toml(folder: Path, batch_size: int) -> Path:
    path = folder / "validation" / f"dataset_b{batch_size}.toml"
    path.write_text(
        "[general]\nresolution = [64, 96]\n"
        f'batch_size = {batch_size}\ncaption_extension = ".txt"\n\n'
        "[[datasets]]\n"
        f'image_directory = "{folder / "validation" / "images"}"\n'
        f'cache_directory = "{folder / "validation" / "cache"}"\n'
        "fp_1f_clean_indices = [0, 10]\nfp_1f_target_index = 1\nfp_1f_no_post = true\n"
    )
    return path


def trainer_args(extra: list[str] | None = None):
    """musubi-tuner's FramePack trainer's arguments, parsed by its own parser (defaults but for the DiT)."""
    from musubi_tuner import fpack_train_network as fp
    from musubi_tuner.training.parser_common import setup_parser_common

    parser = fp.framepack_setup_parser(setup_parser_common())
    args = parser.parse_args(["--dit", "tiny.safetensors", "--sdpa", *(extra or [])])
    args.dit_dtype = "bfloat16"
    return args


def build_model(seed: int = 0):
    """The tiny DiT in fp32 on the CPU with a LoRA (rank 4) applied, its up weights non-zero."""
    import torch
    from musubi_tuner.frame_pack.hunyuan_video_packed import HunyuanVideoTransformer3DModelPacked
    from musubi_tuner.networks import lora_framepack

    from musubi_workspace.tune.synthetic import random_dit_state_dict

    sd = random_dit_state_dict(TINY_DIT, device="cpu", seed=seed)
    model = HunyuanVideoTransformer3DModelPacked(**TINY_DIT, attn_mode="torch", split_attn=True)
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    model.requires_grad_(False)
    network = lora_framepack.create_arch_network(1.0, 4, 1.0, None, None, model, neuron_dropout=0.1)
    network.apply_to(None, model, apply_text_encoder=False, apply_unet=True)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in network.named_parameters():
            if "lora_up" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model, network


def save_model(folder: Path, model, network) -> None:
    import torch

    torch.save({"dit": model.state_dict(), "lora": network.state_dict()}, folder / "tiny_model.pt")


def load_model(folder: Path):
    import torch

    model, network = build_model()
    saved = torch.load(folder / "tiny_model.pt")
    model.load_state_dict(saved["dit"])
    network.load_state_dict(saved["lora"])
    return model, network


def child(folder: Path, out: Path) -> None:
    """One process of the two-process test: score this process's share; rank 0 writes the joined Record."""
    from accelerate import Accelerator

    from musubi_workspace.schema import import_musubi

    mods = import_musubi()
    from musubi_workspace.paths import Workspace
    from musubi_workspace.validation.score import ValidationSet, score

    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    trainer = mods["fpack_train_network"].FramePackNetworkTrainer()
    args = trainer_args()
    model, network = load_model(folder)
    vset = ValidationSet.build(
        args, trainer.architecture, str(folder / "validation" / "dataset_b2.toml"), ws=Workspace(folder)
    )
    mine = [it.index for batch in vset.batches(accelerator.process_index, accelerator.num_processes) for it in batch]
    r = score(trainer, args, accelerator, model, network, vset, [0.2, 0.8], step=7)
    shares = accelerator.gather_for_metrics([mine], use_gather_object=True)
    if accelerator.is_main_process:
        out.write_text(json.dumps({"record": asdict(r), "shares": shares, "world": accelerator.num_processes}))
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    child(Path(sys.argv[1]), Path(sys.argv[2]))
