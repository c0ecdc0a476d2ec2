"""The thin launcher around musubi-tuner's trainer, for the two settings musubi-tuner has no option for.

`[workspace] blocks_without_checkpointing = N` (with `gradient_checkpointing = true`): the first N of the DiT's 60
blocks (the 20 double-stream blocks first, then the 40 single-stream ones) keep their activations for the backward
pass instead of recomputing them. Each such block saves its share of the recompute and costs its activations in GPU
memory (on an H200 at batch 16, 512x768 one-frame, compiled: 0.06 s of a step and 6.6 GiB each; see the README).
The losses do not change: the same block computes the same values, once instead of twice.

`make train` and `make resume` then run `accelerate launch ... -m musubi_workspace.launch <the trainer's arguments>`
with the count in `$WS_BLOCKS_WITHOUT_CHECKPOINTING`; this module patches
`HunyuanVideoTransformer3DModelPacked.gradient_checkpointing_method` and calls musubi-tuner's own
`fpack_train_network.main()` with the same arguments, so the trainer runs unchanged otherwise. Without the setting
the workspace runs musubi-tuner's module directly. `make tune` / `make bench`'s probe applies the same patch.

`[workspace] split_attn_one_graph = true` (with `split_attn` and sdpa): musubi-tuner's split_attn runs sdpa once
per item of the batch, reading each item's length with `.item()` and padding only the shorter items; under
`--compile` every one of those reads and branches breaks the block's graph. This module's `attn_varlen_func` makes
the same sdpa calls on the same slices, reads the batch's lengths at once and pads every item (by zero rows where
it is full), so torch can trace a compiled block as one graph (it does on the CPU; on an H200 at the shipped
workload, compiled, 3% less time a block and a 2.5% faster step: README). The values are the same sdpa results; `$WS_SPLIT_ATTN_ONE_GRAPH=1` carries it.

`[workspace] validation = "validation/dataset.toml"`: `$WS_VALIDATION` (with `$WS_VALIDATION_EVERY`,
`$WS_VALIDATION_TIMESTEPS`, `$WS_VALIDATION_SET`) makes `main()` install the validating subclass of
musubi-tuner's trainer (`musubi_workspace.validation.trainer`) before musubi-tuner's `main()` looks it up.
"""

from __future__ import annotations

import os
import sys

ENV = "WS_BLOCKS_WITHOUT_CHECKPOINTING"
ONE_GRAPH_ENV = "WS_SPLIT_ATTN_ONE_GRAPH"
# The validation dataset.toml (musubi_workspace.validation.trainer reads it and its other variables), the steps
# between passes, the raw timesteps (comma list) and the set's content hash (validation/items.py).
VALIDATION_ENV = "WS_VALIDATION"
VALIDATION_EVERY_ENV = "WS_VALIDATION_EVERY"
VALIDATION_TIMESTEPS_ENV = "WS_VALIDATION_TIMESTEPS"
VALIDATION_SET_ENV = "WS_VALIDATION_SET"
MODULE = "musubi_workspace.launch"
# The FramePack DiT's blocks (hunyuan_video_packed.py at the pinned commit): 20 double-stream, 40 single-stream.
DIT_BLOCKS = 60


def blocks_from_env(env: dict | None = None) -> int:
    value = (os.environ if env is None else env).get(ENV, "").strip()
    if not value:
        return 0
    if not value.isdigit() or int(value) > DIT_BLOCKS:
        raise SystemExit(f"musubi-workspace: {ENV}={value!r} is not a whole number from 0 to {DIT_BLOCKS}")
    return int(value)


def without_checkpointing(n: int) -> None:
    """Patch the FramePack DiT so that, under gradient checkpointing, its first `n` blocks are not checkpointed."""
    import torch
    from musubi_tuner.frame_pack.hunyuan_video_packed import HunyuanVideoTransformer3DModelPacked as DiT

    checkpointed = DiT.gradient_checkpointing_method
    if getattr(checkpointed, "workspace_blocks", None) is not None:  # patched already: take the new count
        checkpointed = checkpointed.__wrapped__

    def gradient_checkpointing_method(self, block, *args):
        if n and self.use_gradient_checkpointing and torch.is_grad_enabled():
            # Looked up at each call: musubi-tuner's --compile replaces the blocks in their lists after loading.
            kept = [*self.transformer_blocks, *self.single_transformer_blocks][:n]
            if any(block is b for b in kept):
                return block(*args)
        return checkpointed(self, block, *args)

    gradient_checkpointing_method.__wrapped__ = checkpointed
    gradient_checkpointing_method.workspace_blocks = n
    DiT.gradient_checkpointing_method = gradient_checkpointing_method


def one_graph_from_env(env: dict | None = None) -> bool:
    value = (os.environ if env is None else env).get(ONE_GRAPH_ENV, "").strip()
    if value not in ("", "0", "1"):
        raise SystemExit(f"musubi-workspace: {ONE_GRAPH_ENV}={value!r} is not 0 or 1")
    return value == "1"


def split_attn_in_one_graph() -> None:
    """Patch musubi-tuner's FramePack attention so that split_attn with sdpa breaks no compiled graph."""
    import torch
    import torch.nn.functional as F
    from musubi_tuner.frame_pack import hunyuan_video_packed as hv

    original = getattr(hv.attn_varlen_func, "__wrapped__", hv.attn_varlen_func)

    def attn_varlen_func(
        q, k, v, cu_seqlens_q, cu_seqlens_kv, max_seqlen_q, max_seqlen_kv, seq_len, attn_mode=None, split_attn=False
    ):
        # musubi-tuner's sdpa branch: "torch", or no mode while none of the other attention packages imported.
        others = (hv.sageattn, hv.flash_attn_func, hv.xformers_attn_func)
        sdpa = attn_mode == "torch" or (attn_mode is None and all(f is None for f in others))
        if not (split_attn and sdpa and cu_seqlens_q is not None):
            return original(
                q, k, v, cu_seqlens_q, cu_seqlens_kv, max_seqlen_q, max_seqlen_kv, seq_len, attn_mode, split_attn
            )
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        lengths = seq_len.tolist() if torch.is_tensor(seq_len) else list(seq_len)  # one read for the whole batch
        items = []
        for i, n in enumerate(lengths):
            # What musubi-tuner's loop knows of a length, told to the compiler: more than one token (an item holds its
            # image's tokens; torch 2.10's CPU attention backward needs to know it) and at most the padded length.
            torch._check(n > 1)
            torch._check(n <= max_seqlen_q)
            x = F.scaled_dot_product_attention(q[i : i + 1, :, :n], k[i : i + 1, :, :n], v[i : i + 1, :, :n])
            items.append(F.pad(x, (0, 0, 0, max_seqlen_q - n)))  # zero rows after the item's tokens
        return torch.cat(items, dim=0).transpose(1, 2)

    attn_varlen_func.__wrapped__ = original
    hv.attn_varlen_func = attn_varlen_func


def apply_from_env() -> int:
    """The workspace's trainer settings from the environment, applied; the count of blocks without checkpointing."""
    if one_graph_from_env():
        split_attn_in_one_graph()
        print(
            "musubi-workspace: split_attn's per-item attention reads the batch's lengths at once and pads every "
            "item ([workspace] split_attn_one_graph)",
            flush=True,
        )
    n = blocks_from_env()
    if n:
        without_checkpointing(n)
        print(
            f"musubi-workspace: the first {n} of the DiT's {DIT_BLOCKS} blocks train without gradient checkpointing "
            f"([workspace] blocks_without_checkpointing)",
            flush=True,
        )
    return n


def main() -> int:
    apply_from_env()
    from musubi_tuner import fpack_train_network

    if os.environ.get(VALIDATION_ENV, "").strip():
        from musubi_workspace.validation.trainer import install

        install(fpack_train_network)
        print(
            f"musubi-workspace: validation loss on {os.environ[VALIDATION_ENV]} at step 0, every "
            f"{os.environ.get('WS_VALIDATION_EVERY') or 'save_every_n_steps'} steps, at each save and at the end "
            "([workspace] validation)",
            flush=True,
        )
    sys.argv[0] = fpack_train_network.__file__
    fpack_train_network.main()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
