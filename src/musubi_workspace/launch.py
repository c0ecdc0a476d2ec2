"""The thin launcher around musubi-tuner's trainer, for the one setting musubi-tuner has no option for.

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
"""

from __future__ import annotations

import os
import sys

ENV = "WS_BLOCKS_WITHOUT_CHECKPOINTING"
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


def apply_from_env() -> int:
    """The workspace's trainer settings from the environment, applied; the count of blocks without checkpointing."""
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

    sys.argv[0] = fpack_train_network.__file__
    fpack_train_network.main()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
