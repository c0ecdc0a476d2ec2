"""The known-bad combinations of data/known_issues.toml, reproduced with the real musubi-tuner on CPU: each
calls the function that fails at the pinned commit with the combination, and the same with the fix.

Skips where musubi_tuner does not import (`make test-musubi` installs it with the train extra)."""

from __future__ import annotations

import types

import pytest

torch = pytest.importorskip("torch", reason="needs torch (the train extra)")
if not torch.cuda.is_available():
    # wan/modules/t5.py evaluates torch.cuda.current_device() in a default argument at import time.
    torch.cuda.current_device = lambda: 0
pytest.importorskip("musubi_tuner", reason="needs the real musubi-tuner (make test-musubi)")

from musubi_tuner import fpack_train_network  # noqa: E402
from musubi_tuner.frame_pack import hunyuan_video_packed as hvp  # noqa: E402
from musubi_tuner.modules.custom_offloading_utils import BlockSwapConfig  # noqa: E402
from musubi_tuner.training import parser_common  # noqa: E402

from musubi_workspace.combos import load_known  # noqa: E402

pytestmark = pytest.mark.musubi
NO_BATCH_ATTN = "No Attn Installed or batch_size > 1 is not supported in this configuration. Try `--split_attn`."


def args(*argv: str):
    p = fpack_train_network.framepack_setup_parser(parser_common.setup_parser_common())
    return p.parse_args(["--dit", "dit.safetensors", "--dataset_config", "dataset.toml", *argv])


def trainer():
    return fpack_train_network.FramePackNetworkTrainer()


def attention(mode: str, split_attn: bool, batch: int = 2):
    """FramePack's attention as the blocks call it at batch > 1 (masks present), on tiny CPU tensors."""
    seq, heads, dim = 8, 2, 4
    q, k, v = (torch.randn(batch, seq, heads, dim) for _ in range(3))
    cu_seqlens, seq_len = hvp.get_cu_seqlens(torch.ones(batch, 3, dtype=torch.bool), seq - 3)
    return hvp.attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, seq, seq, seq_len, attn_mode=mode, split_attn=split_attn)


def reason(ident: str) -> str:
    return next(i.reason for i in load_known()[0] if i.id == ident)


@pytest.mark.parametrize("mode", ["torch", "xformers", "flash3"])
def test_batch_above_one_without_split_attn_raises(mode):
    with pytest.raises(NotImplementedError) as e:
        attention(mode, split_attn=False)
    assert str(e.value) == NO_BATCH_ATTN
    assert NO_BATCH_ATTN in reason("batch-without-split-attn")


def test_sdpa_with_split_attn_runs_at_batch_two():
    assert tuple(attention("torch", split_attn=True).shape) == (2, 8, 2, 4)


def test_flash3_with_split_attn_asserts():
    with pytest.raises(AssertionError, match="Unsupported attention mode: flash3"):
        attention("flash3", split_attn=True)


def test_sage_attn_stops_training_at_the_argument_check():
    with pytest.raises(ValueError, match="SageAttention doesn't support training currently"):
        trainer()._validate_args_and_init(args("--sage_attn"))


def test_no_attention_option_stops_before_loading_the_dit():
    accelerator = types.SimpleNamespace(device=torch.device("cpu"))
    with pytest.raises(ValueError, match="either --sdpa, --flash-attn, --flash3, --sage-attn or --xformers must be specified"):
        trainer()._load_dit_and_swap(args(), accelerator, None)


def test_fp8_scaled_without_fp8_base_asserts():
    with pytest.raises(AssertionError, match="fp8_scaled requires fp8_base"):
        trainer()._validate_args_and_init(args("--fp8_scaled", "--sdpa"))
    assert trainer()._validate_args_and_init(args("--fp8_scaled", "--fp8_base", "--sdpa")) is True


def test_h2d_only_block_swap_needs_gradient_checkpointing():
    with pytest.raises(ValueError, match="--block_swap_h2d_only requires --gradient_checkpointing for training"):
        BlockSwapConfig.from_args(args("--blocks_to_swap", "20", "--block_swap_h2d_only"), torch.device("cpu"), supports_backward=True)
    ok = BlockSwapConfig.from_args(
        args("--blocks_to_swap", "20", "--block_swap_h2d_only", "--gradient_checkpointing"), torch.device("cpu"), supports_backward=True
    )
    assert ok.h2d_only is True
