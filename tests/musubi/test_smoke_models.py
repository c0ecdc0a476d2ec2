"""The random-weight models and stand-in tokenizers of `make smoke`, loaded by musubi-tuner's own loaders
(`frame_pack/framepack_utils.py`), which load single files with strict=True.

CLIP-L, SigLIP and the VAE are built at full size on the CPU. The LLaMA text encoder (7.5B) is checked at full
size on empty (meta) weights, and loaded for real at a tiny depth and width: musubi-tuner's LLAMA_CONFIG is made
small for that run, on both sides (the builder reads the same dict). The loaders and the text encoding run in a
child process with HF_HUB_OFFLINE=1 and the stand-in tokenizers in a scratch hub cache, as `make smoke` runs them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from musubi_workspace.smoke.random_models import FILES


def run_child(tmp_path, code: str) -> str:
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    r = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    return r.stdout


def test_the_full_llama_shape_is_llava_llama3_without_lm_head(musubi):
    from musubi_workspace.smoke.random_models import expected_shapes

    shapes = expected_shapes("text_encoder1")
    assert shapes["embed_tokens.weight"] == (128320, 4096)
    assert "lm_head.weight" not in shapes and len([k for k in shapes if k.startswith("layers.")]) == 32 * 9
    n = sum(__import__("math").prod(s) for s in shapes.values())
    assert n == 128320 * 4096 + 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096) + 4096  # 7.505B


def test_text_encoders_and_tokenizers_load_and_encode_through_musubi(musubi, tmp_path):
    out = run_child(
        tmp_path,
        f"""
        import argparse
        from pathlib import Path
        from musubi_tuner.frame_pack import framepack_utils as fu
        from musubi_tuner.frame_pack.hunyuan import encode_prompt_conds
        from musubi_workspace.smoke import random_models as sm

        fu.LLAMA_CONFIG.update(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                               num_key_value_heads=2, head_dim=16)
        sm.write_tokenizers(Path("hub"))
        te1, te2 = Path("te1.safetensors"), Path({FILES["text_encoder2"]!r})
        sm.write_model("text_encoder1", te1, device="cpu")
        sm.write_model("text_encoder2", te2, device="cpu")
        args = argparse.Namespace(text_encoder1=str(te1), text_encoder2=str(te2))
        tok1, enc1 = fu.load_text_encoder1(args, fp8_llm=False, device="cpu")
        tok2, enc2 = fu.load_text_encoder2(args)
        assert enc2.dtype.__str__() == "torch.float16", enc2.dtype
        enc1, enc2 = enc1.float(), enc2.float()
        vec, pooler = encode_prompt_conds("The figure now wears the purple shirt.", enc1, enc2, tok1, tok2)
        print("llama", tuple(vec.shape), bool(vec.isfinite().all()), "clip", tuple(pooler.shape), bool(pooler.isfinite().all()))
        """,
    )
    # The caption alone, cropped by musubi-tuner's crop_start: 8 words and a full stop split into byte-level
    # pieces plus <|eot_id|>, never the template's system prompt.
    line = out.strip().splitlines()[-1]
    assert line.startswith("llama (1, ") and ", 64) True clip (1, 768) True" in line, out


def test_vae_and_image_encoder_load_strictly_through_musubi(musubi, tmp_path):
    out = run_child(
        tmp_path,
        f"""
        import argparse
        from pathlib import Path
        import torch
        from musubi_tuner.frame_pack import framepack_utils as fu
        from musubi_workspace.smoke import random_models as sm

        vae, sig = Path({FILES["vae"]!r}), Path({FILES["image_encoder"]!r})
        sm.write_model("vae", vae, device="cpu")
        sm.write_model("image_encoder", sig, device="cpu")
        model = fu.load_vae(str(vae), 32, 128, False, "cpu")
        extractor, encoder = fu.load_image_encoders(argparse.Namespace(image_encoder=str(sig)))
        print("vae", model.dtype, "siglip", encoder.dtype, sum(p.numel() for p in encoder.parameters()))
        """,
    )
    assert out.strip().splitlines()[-1].startswith("vae torch.float16 siglip torch.float16 "), out
