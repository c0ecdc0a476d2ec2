"""The tensors model_files.py requires are the ones musubi-tuner's loaders need, and its header reader agrees with
the safetensors library; mixed_precision = "no" fails on FramePack's bf16 DiT as checks/values.py says.

The models are musubi-tuner's own classes with its own configs, built on the meta device (no weights, no memory);
their state_dict names are what `load_state_dict(strict=True)` demands.
"""

from __future__ import annotations

import inspect
import json
import re

import pytest
from conftest import write_safetensors  # tests/conftest.py (tests/ is on sys.path)

from musubi_workspace.model_files import TENSORS, loader_keys, read_header, tensor_problem


@pytest.fixture(scope="module")
def models(musubi) -> dict[str, set[str]]:
    from accelerate import init_empty_weights
    from musubi_tuner.frame_pack import framepack_utils as fu
    from musubi_tuner.frame_pack.hunyuan_video_packed import HunyuanVideoTransformer3DModelPacked
    from musubi_tuner.hunyuan_model import vae as vae_module
    from musubi_tuner.hunyuan_model.autoencoder_kl_causal_3d import AutoencoderKLCausal3D
    from transformers import CLIPConfig, CLIPTextModel, LlamaConfig, LlamaModel, SiglipVisionConfig, SiglipVisionModel

    from musubi_workspace.tune.synthetic import FRAMEPACK_DIT

    vae_config = re.search(r'CONFIG_JSON = """(.*?)"""', inspect.getsource(vae_module.load_vae), re.S).group(1)
    with init_empty_weights():
        built = {
            "dit": HunyuanVideoTransformer3DModelPacked(**FRAMEPACK_DIT, attn_mode="torch", split_attn=False),
            "vae": AutoencoderKLCausal3D.from_config(json.loads(vae_config)),
            "text_encoder1": LlamaModel._from_config(LlamaConfig(**fu.LLAMA_CONFIG)),
            "text_encoder2": CLIPTextModel._from_config(CLIPConfig(**fu.CLIP_CONFIG)),
            "image_encoder": SiglipVisionModel._from_config(SiglipVisionConfig(**fu.IMAGE_ENCODER_CONFIG)),
        }
    return {key: set(m.state_dict()) for key, m in built.items()}


def test_the_required_tensors_are_in_musubis_models(models):
    for key, (_, needed) in TENSORS.items():
        missing = set(needed) - models[key]
        assert not missing, (key, missing)


def test_the_loaders_renaming_is_mirrored(models):
    """ComfyUI's LLaMA (`model.` prefix, which load_text_encoder1 drops) and a VAE under `vae.` pass too."""
    comfy = {f"model.{n}" for n in models["text_encoder1"]} | {"lm_head.weight"}
    assert set(TENSORS["text_encoder1"][1]) <= loader_keys("text_encoder1", comfy)
    assert set(TENSORS["vae"][1]) <= loader_keys("vae", {f"vae.{n}" for n in models["vae"]})


def test_a_file_of_another_model_is_refused(tmp_path, models):
    clip = write_safetensors(tmp_path / "clip_l.safetensors", sorted(models["text_encoder2"]))
    assert tensor_problem("text_encoder2", clip) is None
    assert tensor_problem("text_encoder1", clip).startswith("is not the LLaMA text encoder musubi-tuner loads")


def test_the_header_reader_agrees_with_the_safetensors_library(tmp_path, musubi):
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = tmp_path / "real.safetensors"
    save_file({"a.weight": torch.zeros(3, 2), "b": torch.ones(5, dtype=torch.bfloat16)}, str(path), metadata={"x": "1"})
    header, problem = read_header(path)
    assert problem is None and set(header) - {"__metadata__"} == {"a.weight", "b"}
    with safe_open(str(path), "pt") as f:
        assert set(f.keys()) == {"a.weight", "b"}
    # The tests' hand-written files are real safetensors files.
    ours = write_safetensors(tmp_path / "ours.safetensors", ["x", "y"], metadata={"m": "1"})
    with safe_open(str(ours), "pt") as f:
        assert set(f.keys()) == {"x", "y"} and f.get_tensor("y").dtype == torch.float16
    # A file cut short fails in the library and is named by the reader.
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(Exception):  # noqa: B017 - whatever safetensors raises on a cut file
        with safe_open(str(cut), "pt") as f:
            f.get_tensor("b")
    assert read_header(cut)[1].startswith("is cut short")


def test_fpack_training_fixes_the_dit_to_bf16(musubi):
    src = inspect.getsource(musubi["fpack_train_network"].main)
    assert 'args.dit_dtype = "bfloat16"' in src


def test_mixed_precision_no_fails_on_the_bf16_dit_at_the_first_step(musubi):
    """Without autocast (mixed_precision = "no"), the trainer feeds float32 latents to the bf16 DiT (call_dit casts
    them to network_dtype, float32): the first layer refuses them. A tiny model of musubi-tuner's own class."""
    import torch
    from musubi_tuner.frame_pack.hunyuan_video_packed import HunyuanVideoTransformer3DModelPacked

    model = HunyuanVideoTransformer3DModelPacked(
        attention_head_dim=16,
        num_attention_heads=2,
        num_layers=1,
        num_refiner_layers=1,
        num_single_layers=1,
        image_proj_dim=32,
        pooled_projection_dim=32,
        text_embed_dim=32,
        rope_axes_dim=(4, 6, 6),
        guidance_embeds=True,
        has_clean_x_embedder=True,
        has_image_proj=True,
        in_channels=16,
        mlp_ratio=4.0,
        out_channels=16,
        patch_size=2,
        patch_size_t=1,
        qk_norm="rms_norm",
        rope_theta=256.0,
        attn_mode="torch",
        split_attn=True,
    ).to(torch.bfloat16)
    b, h, w = 1, 8, 8
    with pytest.raises(RuntimeError, match=r"Input type \(float\) and bias type \(c10::BFloat16\) should be the same"):
        model(
            hidden_states=torch.randn(b, 16, 1, h, w),
            timestep=torch.tensor([500.0]),
            encoder_hidden_states=torch.randn(b, 10, 32, dtype=torch.bfloat16),
            encoder_attention_mask=torch.ones(b, 10, dtype=torch.int64),
            pooled_projections=torch.randn(b, 32, dtype=torch.bfloat16),
            guidance=torch.tensor([10000.0]),
            latent_indices=torch.tensor([[1]]),
            clean_latents=torch.randn(b, 16, 2, h, w, dtype=torch.float16),
            clean_latent_indices=torch.tensor([[0, 10]]),
            image_embeddings=torch.randn(b, 9, 32, dtype=torch.float16),
            return_dict=False,
        )
