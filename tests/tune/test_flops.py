"""The FLOP count of a training step (flops.py) against a hand count, the token counts of the one-frame layout,
and the dense bf16 peaks."""

from __future__ import annotations

from musubi_workspace.checks.machine import LORA_PARAMS_PER_DIM
from musubi_workspace.tune.flops import (
    DOUBLE_LORA_IO,
    HIDDEN,
    SINGLE_LORA_IO,
    Tokens,
    one_frame_tokens,
    peak_tflops,
    share_of_peak,
    step_flops,
)


def test_a_small_step_against_a_hand_count():
    # 1 double + 1 single block, d = 8 (MLP 32), 2 items of 32 image tokens, 10 text tokens (6 valid), LoRA rank 2.
    tokens = Tokens(image=32, text=10, text_valid=6)
    f = step_flops(tokens, batch=2, checkpointing=True, lora_rank=2, double=1, single=1, d=8)
    # Linear layers: 24 d^2 = 1,536 per token and block; 42 tokens, 2 blocks, 2 items.
    linear = 1_536 * 42 * 2 * 2
    assert linear == 258_048 and f.forward_linear == linear
    # Attention: QK^T + AV = 4 L^2 d over L = 32 + 6 attended tokens: 4 x 1,444 x 8 = 46,208 per block and item.
    attention = 46_208 * 2 * 2
    assert attention == 184_832 and f.forward_attention == attention
    # LoRA: 2 r (in + out) per token: double (one stream) 18d = 144 -> 576, single 17d = 136 -> 544; 42 tokens, 2 items.
    lora = (576 + 544) * 42 * 2
    assert lora == 94_080 and f.forward_lora == lora
    forward = linear + attention + lora  # 536,960
    # Step: forward + the recompute of checkpointing + backward of activations (1x linear, 2x attention, 2x LoRA).
    backward = linear + 2 * attention + 2 * lora  # 815,872
    assert f.total == forward + forward + backward == 1_889_792
    no_ckpt = step_flops(tokens, batch=2, checkpointing=False, lora_rank=2, double=1, single=1, d=8)
    assert no_ckpt.total == forward + backward == 1_352_832


def test_lora_layers_match_the_lora_size_the_disk_check_counts():
    assert (20 * 2 * DOUBLE_LORA_IO + 40 * SINGLE_LORA_IO) * HIDDEN == LORA_PARAMS_PER_DIM


def test_one_frame_tokens_of_the_shipped_layout_and_with_2x_4x():
    # 512x768: latent 64x96, patches 32x48 = 1,536 per frame; target + clean indices [0, 10] with no post.
    assert one_frame_tokens(512, 768, clean=2, no_post=True, no_2x=True, no_4x=True, caption_tokens=77) == Tokens(
        image=3 * 1_536, text=729 + 512, text_valid=729 + 77
    )
    # post latent (+1,536), 2x: ceil(96/4) x ceil(64/4) = 384, 4x: 4 x 12 x 8 = 384.
    assert (
        one_frame_tokens(512, 768, clean=1, no_post=False, no_2x=False, no_4x=False, caption_tokens=77).image
        == 3 * 1_536 + 384 + 384
    )


def test_the_shipped_workload_and_the_peak_table():
    tokens = one_frame_tokens(512, 768, clean=2, no_post=True, no_2x=True, no_4x=True, caption_tokens=77)
    total = step_flops(tokens, batch=16, checkpointing=True, lora_rank=32).total
    assert 5.2e15 < total < 5.3e15
    assert peak_tflops("NVIDIA H200") == peak_tflops("NVIDIA H100 80GB HBM3") == 989.5
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0 and peak_tflops("NVIDIA GeForce RTX 2080") is None
    assert abs(share_of_peak(989.5e12 * 2, 4.0, "NVIDIA H200") - 0.5) < 1e-12
    assert share_of_peak(1e15, 1.0, "unknown GPU") is None
