"""The known-bad combinations of data/known_issues.toml, reproduced with the real musubi-tuner on CPU: each
calls the function that fails at the pinned commit with the combination, and the same with the fix.

Like every test here, musubi-tuner is imported only through the `musubi` fixture (skipped without it)."""

from __future__ import annotations

import importlib
import types

import pytest

from musubi_workspace.checks.combinations import load_known

NO_BATCH_ATTN = "No Attn Installed or batch_size > 1 is not supported in this configuration. Try `--split_attn`."


@pytest.fixture
def mt(musubi):
    """The musubi-tuner pieces these tests call."""
    return types.SimpleNamespace(
        torch=importlib.import_module("torch"),
        train=musubi["fpack_train_network"],
        parser_common=musubi["training.parser_common"],
        hvp=importlib.import_module("musubi_tuner.frame_pack.hunyuan_video_packed"),
        offload=importlib.import_module("musubi_tuner.modules.custom_offloading_utils"),
    )


def args(mt, *argv: str):
    p = mt.train.framepack_setup_parser(mt.parser_common.setup_parser_common())
    return p.parse_args(["--dit", "dit.safetensors", "--dataset_config", "dataset.toml", *argv])


def trainer(mt):
    return mt.train.FramePackNetworkTrainer()


def attention(mt, mode: str, split_attn: bool, batch: int = 2):
    """FramePack's attention as the blocks call it at batch > 1 (masks present), on tiny CPU tensors."""
    torch, hvp = mt.torch, mt.hvp
    seq, heads, dim = 8, 2, 4
    q, k, v = (torch.randn(batch, seq, heads, dim) for _ in range(3))
    cu_seqlens, seq_len = hvp.get_cu_seqlens(torch.ones(batch, 3, dtype=torch.bool), seq - 3)
    return hvp.attn_varlen_func(
        q, k, v, cu_seqlens, cu_seqlens, seq, seq, seq_len, attn_mode=mode, split_attn=split_attn
    )


def reason(ident: str) -> str:
    return next(i.reason for i in load_known()[0] if i.id == ident)


@pytest.mark.parametrize("mode", ["torch", "xformers", "flash3"])
def test_batch_above_one_without_split_attn_raises(mt, mode):
    with pytest.raises(NotImplementedError) as e:
        attention(mt, mode, split_attn=False)
    assert str(e.value) == NO_BATCH_ATTN
    assert NO_BATCH_ATTN in reason("batch-without-split-attn")


def test_sdpa_with_split_attn_runs_at_batch_two(mt):
    assert tuple(attention(mt, "torch", split_attn=True).shape) == (2, 8, 2, 4)


def test_flash3_with_split_attn_asserts(mt):
    with pytest.raises(AssertionError, match="Unsupported attention mode: flash3"):
        attention(mt, "flash3", split_attn=True)


def test_sage_attn_stops_training_at_the_argument_check(mt):
    with pytest.raises(ValueError, match="SageAttention doesn't support training currently"):
        trainer(mt)._validate_args_and_init(args(mt, "--sage_attn"))


def test_no_attention_option_stops_before_loading_the_dit(mt):
    accelerator = types.SimpleNamespace(device=mt.torch.device("cpu"))
    with pytest.raises(
        ValueError, match="either --sdpa, --flash-attn, --flash3, --sage-attn or --xformers must be specified"
    ):
        trainer(mt)._load_dit_and_swap(args(mt), accelerator, None)


def test_fp8_scaled_without_fp8_base_asserts(mt):
    with pytest.raises(AssertionError, match="fp8_scaled requires fp8_base"):
        trainer(mt)._validate_args_and_init(args(mt, "--fp8_scaled", "--sdpa"))
    assert trainer(mt)._validate_args_and_init(args(mt, "--fp8_scaled", "--fp8_base", "--sdpa")) is True


def test_h2d_only_block_swap_needs_gradient_checkpointing(mt):
    cpu, config = mt.torch.device("cpu"), mt.offload.BlockSwapConfig
    with pytest.raises(ValueError, match="--block_swap_h2d_only requires --gradient_checkpointing for training"):
        config.from_args(args(mt, "--blocks_to_swap", "20", "--block_swap_h2d_only"), cpu, supports_backward=True)
    ok = config.from_args(
        args(mt, "--blocks_to_swap", "20", "--block_swap_h2d_only", "--gradient_checkpointing"),
        cpu,
        supports_backward=True,
    )
    assert ok.h2d_only is True
