"""FLOPs of one FramePack LoRA training step, counted from the DiT's shapes and the workload's token counts, and
the dense bf16 peak of the GPUs the workspace knows: what fraction of the hardware a setting reaches.

The DiT (musubi-tuner 30c658c, frame_pack/hunyuan_video_packed.py, built by `load_packed_model` with the values
in synthetic.FRAMEPACK_DIT): 20 double-stream blocks (`HunyuanVideoTransformerBlock`) and 40 single-stream blocks
(`HunyuanVideoSingleTransformerBlock`), hidden size d = 24 heads x 128 = 3072, MLP width 4d = 12288.

Per token and block, the matrix multiplies (2 FLOPs per multiply-add):
- double block, image tokens: to_q, to_k, to_v, to_out (4 of d x d) and the feed-forward (d x 4d, 4d x d):
  2 (4 d^2 + 8 d^2) = 24 d^2; text tokens the same through the context weights (add_q/k/v_proj, to_add_out,
  ff_context).
- single block, every token: to_q, to_k, to_v (3 d^2), proj_mlp (4 d^2), proj_out (5 d x d): 2 x 12 d^2 = 24 d^2.
- attention, per sequence and block: QK^T and AV, 2 x 2 L^2 d, over L = image tokens + valid text tokens (with
  split_attn or a batch of 1, musubi-tuner attends over each item's valid tokens only; the linear layers see the
  padded text).
Tokens of one item: the noisy latent (H/16 x W/16: VAE downscale 8, patch 2x2), each clean latent of the one-frame
layout (the clean indices, plus the post latent unless fp_1f_no_post) as many again, the 2x latents (1 x ceil(h/4)
x ceil(w/4), h, w the latent size) and 4x latents (4 x ceil(h/8) x ceil(w/8)) unless no_2x / no_4x; text: the
SigLIP image embedding (729 tokens) and the LLaMA tokens (512, padded; valid: the caption's).
LoRA (networks.lora_framepack, every Linear of the 60 blocks): 2 r (in + out) per token and layer forward.

A training step: forward; the forward again under gradient checkpointing (every block is recomputed, or all but
the N of `[workspace] blocks_without_checkpointing`: (60 - N) / 60 of it); backward of
the activations only, since the base weights are frozen: 1x the forward for the linear layers (dX = dY W^T, no
dW), 2x for attention (dQ, dK, dV and dP); LoRA's backward is 2x its forward (activation and weight grads). Not
counted: the embedders, the text refiner (2 layers on 512 tokens), the output layer, norms, RoPE, elementwise ops
and the optimiser (together under 1% here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# The DiT's shapes (verified in hunyuan_video_packed.py at 30c658c; synthetic.FRAMEPACK_DIT builds the same).
HIDDEN = 24 * 128
MLP = 4 * HIDDEN
DOUBLE_BLOCKS, SINGLE_BLOCKS = 20, 40
VAE_DOWNSCALE, PATCH = 8, 2
SIGLIP_TOKENS, LLAMA_TOKENS = 729, 512
# Sum of (in + out) features of the LoRA'd Linear layers one token passes in one block, in units of d (MLP 4d):
# double (one stream): q, k, v, out 4 x 2d, ff up and down 2 x 5d = 18d; single: q, k, v 3 x 2d, proj_mlp 5d,
# proj_out 6d = 17d. (20 x 2 x 18d + 40 x 17d = 1400d = 4,300,800 at d = 3072: checks.LORA_PARAMS_PER_DIM.)
DOUBLE_LORA_IO, SINGLE_LORA_IO = 18, 17

# Dense bf16 tensor-core peak per GPU (TFLOP/s, no sparsity), matched on the name torch / nvidia-smi report:
# first match wins, so the more specific names come first.
PEAK_BF16_TFLOPS = (
    ("H200", 989.5),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.5),  # H100 SXM ("NVIDIA H100 80GB HBM3")
    ("A100", 312.0),
    ("L40S", 362.05),
)


def peak_tflops(gpu: str) -> float | None:
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in (gpu or "").lower():
            return tflops
    return None


@dataclass(frozen=True)
class Tokens:
    """Tokens of one item through the blocks: image (noisy + clean latents), text as padded, text attended."""

    image: int
    text: int
    text_valid: int

    @property
    def attended(self) -> int:
        return self.image + self.text_valid


def one_frame_tokens(
    width: int,
    height: int,
    clean: int,
    no_post: bool,
    no_2x: bool,
    no_4x: bool,
    caption_tokens: int,
    padded_text: bool = True,
) -> Tokens:
    """Token counts of a one-frame item at width x height with `clean` clean indices."""
    h, w = height // VAE_DOWNSCALE, width // VAE_DOWNSCALE
    frame = (h // PATCH) * (w // PATCH)
    image = frame * (1 + clean + (0 if no_post else 1))
    if not no_2x:
        image += math.ceil(h / 4) * math.ceil(w / 4)
    if not no_4x:
        image += 4 * math.ceil(h / 8) * math.ceil(w / 8)
    valid = SIGLIP_TOKENS + caption_tokens
    return Tokens(image=image, text=SIGLIP_TOKENS + LLAMA_TOKENS if padded_text else valid, text_valid=valid)


@dataclass(frozen=True)
class StepFlops:
    forward_linear: float
    forward_attention: float
    forward_lora: float
    checkpointing: float  # the share of the blocks recomputed: 1 (True) every block, 0 (False) none

    @property
    def forward(self) -> float:
        return self.forward_linear + self.forward_attention + self.forward_lora

    @property
    def total(self) -> float:
        recompute = self.forward * float(self.checkpointing)
        backward = self.forward_linear + 2 * self.forward_attention + 2 * self.forward_lora
        return self.forward + recompute + backward


def step_flops(
    tokens: Tokens,
    batch: int,
    checkpointing: float,
    lora_rank: int = 0,
    double: int = DOUBLE_BLOCKS,
    single: int = SINGLE_BLOCKS,
    d: int = HIDDEN,
) -> StepFlops:
    """FLOPs of one optimiser step at `batch` items of `tokens` (see the module's docstring); `checkpointing`: the
    share of the blocks recomputed (True: all)."""
    per_token = 24 * d * d
    blocks = double + single
    linear = blocks * per_token * (tokens.image + tokens.text)
    attention = blocks * 4 * tokens.attended**2 * d
    lora = 2 * lora_rank * (double * DOUBLE_LORA_IO + single * SINGLE_LORA_IO) * d * (tokens.image + tokens.text)
    return StepFlops(
        forward_linear=batch * linear,
        forward_attention=batch * attention,
        forward_lora=batch * lora,
        checkpointing=checkpointing,
    )


def share_of_peak(flops: float, seconds: float, gpu: str) -> float | None:
    """FLOPs per second over the GPU's dense bf16 peak; None for a GPU not in the table."""
    peak = peak_tflops(gpu)
    if peak is None or seconds <= 0:
        return None
    return flops / seconds / (peak * 1e12)
