"""`make bench`'s synthetic inputs against the real musubi-tuner: a random DiT of a tiny shape built from its model
class loads back strictly, the full shape has the FramePack DiT's size, and synthetic one-frame caches train
through musubi-tuner's own dataset code (the batch keys and shapes the trainer reads)."""

from __future__ import annotations

import argparse
import importlib
from multiprocessing import Value

import pytest

from musubi_workspace.tune.synthetic import FRAMEPACK_DIT, CacheLayout, write_caches

TINY = dict(
    FRAMEPACK_DIT,
    num_attention_heads=2,
    attention_head_dim=16,
    num_layers=1,
    num_single_layers=1,
    num_refiner_layers=1,
    rope_axes_dim=(4, 6, 6),
    text_embed_dim=64,
    pooled_projection_dim=32,
    image_proj_dim=48,
)


def test_random_dit_of_a_tiny_shape_loads_strictly_into_the_model_class(musubi, tmp_path):
    import torch
    from accelerate import init_empty_weights
    from safetensors.torch import load_file

    from musubi_workspace.tune.synthetic import write_dit

    packed = importlib.import_module("musubi_tuner.frame_pack.hunyuan_video_packed")
    path = tmp_path / "dit.safetensors"
    n = write_dit(path, TINY, device="cpu", seed=1)
    sd = load_file(str(path))
    assert sum(t.numel() for t in sd.values()) == n
    assert {t.dtype for t in sd.values()} == {torch.bfloat16}
    with init_empty_weights():
        model = packed.HunyuanVideoTransformer3DModelPacked(**TINY, attn_mode="sdpa", split_attn=False)
    assert str(model.load_state_dict(sd, strict=True, assign=True)) == "<All keys matched successfully>"
    weights = [t for k, t in sd.items() if t.dim() == 2]
    assert all(torch.isfinite(t.float()).all() for t in weights) and 0.015 < weights[0].float().std() < 0.025


def test_the_full_shape_is_the_framepack_dit(musubi):
    from accelerate import init_empty_weights

    packed = importlib.import_module("musubi_tuner.frame_pack.hunyuan_video_packed")
    with init_empty_weights():
        model = packed.HunyuanVideoTransformer3DModelPacked(**FRAMEPACK_DIT, attn_mode="sdpa", split_attn=False)
    # 12,874,314,816 parameters: what the H100 run built, and what musubi-tuner loaded with strict=True.
    assert sum(p.numel() for p in model.parameters()) == 12_874_314_816


@pytest.mark.parametrize("no_post,no_2x", [(True, True), (False, False)])
def test_synthetic_one_frame_caches_load_through_musubis_dataset(musubi, tmp_path, monkeypatch, no_post, no_2x):
    config_utils = musubi["dataset.config_utils"]
    layout = CacheLayout(
        width=64, height=96, clean_indices=(0, 10), target_index=1, no_post=no_post, no_2x=no_2x, no_4x=no_2x
    )
    cache = tmp_path / "cache"
    write_caches(cache, layout, items=4)
    (tmp_path / "images").mkdir()
    user = {
        "general": {"resolution": [64, 96], "batch_size": 2, "caption_extension": ".txt"},
        "datasets": [
            {
                "image_directory": str(tmp_path / "images"),
                "cache_directory": str(cache),
                "fp_1f_clean_indices": [0, 10],
                "fp_1f_target_index": 1,
                "fp_1f_no_post": no_post,
            }
        ],
    }
    sanitizer = config_utils.ConfigSanitizer()
    blueprint = config_utils.BlueprintGenerator(sanitizer).generate(
        user, argparse.Namespace(debug_dataset=False), architecture="fp"
    )
    group = config_utils.generate_dataset_group_by_blueprint(
        blueprint.dataset_group, training=True, shared_epoch=Value("i", 0)
    )
    (dataset,) = group.datasets
    dataset.prepare_for_training()
    assert len(dataset) == 2  # 4 items, batch 2
    batch = dataset[0]
    n_clean = 2 if no_post else 3
    assert tuple(batch["latents"].shape) == (2, 16, 1, 12, 8)
    assert tuple(batch["latents_clean"].shape) == (2, 16, n_clean, 12, 8)
    assert tuple(batch["image_embeddings"].shape) == (2, 729, 1152)
    assert tuple(batch["llama_vec"].shape) == (2, 512, 4096) and int(batch["llama_attention_mask"][0].sum()) == 77
    assert batch["clean_latent_indices"][0].tolist() == ([0, 10] if no_post else [0, 10, 10])
    assert ("clean_latent_2x_indices" in batch) == (not no_2x)


def test_caches_only_makes_a_held_out_set_of_another_seed_and_no_dit(musubi, tmp_path):
    """`--caches-only` (bench/validation_cost.py's held-out set): the caches of its seed beside the bench's, the
    DiT neither made nor touched."""
    from safetensors.torch import load_file

    from musubi_workspace.tune.synthetic import main

    common = ["--folder", str(tmp_path), "--items", "2", "--width", "64", "--height", "96", "--no-post"]
    assert main([*common, "--seed", "1", "--caches-only", "--device", "cpu"]) == 0
    assert not list(tmp_path.glob("*.safetensors"))  # no DiT
    (held,) = tmp_path.glob("cache_64x96_*")
    assert (held / ".complete").exists() and len(list(held.glob("*_fp.safetensors"))) == 2
    assert main([*common, "--seed", "0", "--caches-only", "--device", "cpu"]) == 0
    train = next(p for p in tmp_path.glob("cache_64x96_*") if p != held)
    name = "synthetic00000_0064x0096_fp.safetensors"
    a, b = load_file(str(held / name)), load_file(str(train / name))
    key = next(k for k in a if k.startswith("latents_1x"))
    assert not (a[key] == b[key]).all()  # another seed: other latents
