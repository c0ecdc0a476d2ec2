"""The workspace's thin launcher (launch.py) against the real musubi-tuner: `[workspace] blocks_without_checkpointing`
keeps the first N blocks of the FramePack DiT out of gradient checkpointing (each runs once, not again in the
backward pass), the gradients stay the same, and the launcher hands its arguments to musubi-tuner's own trainer."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

from musubi_workspace import launch
from tests.musubi.test_synthetic import TINY


@pytest.fixture
def dit_class(musubi):
    cls = importlib.import_module("musubi_tuner.frame_pack.hunyuan_video_packed").HunyuanVideoTransformer3DModelPacked
    original = cls.gradient_checkpointing_method
    yield cls
    cls.gradient_checkpointing_method = original  # the patch is the class's: undo it for the other tests


def _run_blocks(model, torch) -> tuple[list[int], list]:
    """Every block of `model` in order through its gradient_checkpointing_method, then backward: how often each
    block's forward ran, and the inputs' gradients."""
    blocks = [*model.transformer_blocks, *model.single_transformer_blocks]
    calls = [0] * len(blocks)
    hooks = [
        b.register_forward_pre_hook(lambda _m, _a, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, b in enumerate(blocks)
    ]
    g = torch.Generator().manual_seed(0)
    d = TINY["num_attention_heads"] * TINY["attention_head_dim"]
    hidden = torch.randn(1, 6, d, generator=g, requires_grad=True)
    text = torch.randn(1, 3, d, generator=g, requires_grad=True)
    temb = torch.randn(1, d, generator=g)
    rope = torch.randn(1, 6, 2 * TINY["attention_head_dim"], generator=g)
    h, c = hidden, text
    for b in blocks:
        h, c = model.gradient_checkpointing_method(b, h, c, temb, (None,) * 5, rope)
    (h.square().sum() + c.square().sum()).backward()
    for hook in hooks:
        hook.remove()
    return calls, [hidden.grad, text.grad]


def _tiny(cls, torch):
    torch.manual_seed(0)
    shape = {k: v for k, v in TINY.items() if k in cls.__init__.__code__.co_varnames}
    model = cls(**{**shape, "num_layers": 2, "num_single_layers": 2, "attn_mode": "torch"})
    for p in model.parameters():
        p.requires_grad_(False)  # frozen, as under LoRA: the backward computes the activations' gradients
    model.enable_gradient_checkpointing()
    return model


def test_the_first_blocks_skip_the_recompute_and_the_gradients_stay_the_same(dit_class):
    import torch

    model = _tiny(dit_class, torch)
    calls, grads = _run_blocks(model, torch)
    assert calls == [2, 2, 2, 2]  # every block checkpointed: its forward runs again in the backward pass

    launch.without_checkpointing(3)
    calls, patched = _run_blocks(model, torch)
    assert calls == [1, 1, 1, 2]  # the two double blocks and the first single block keep their activations
    assert all(torch.allclose(a, b) for a, b in zip(grads, patched))

    launch.without_checkpointing(1)  # patched again: the new count, not the patch on top of the patch
    assert _run_blocks(model, torch)[0] == [1, 2, 2, 2]

    model.disable_gradient_checkpointing()  # no checkpointing at all: the setting changes nothing
    assert _run_blocks(model, torch)[0] == [1, 1, 1, 1]


def test_under_no_grad_the_blocks_run_as_musubi_tuner_runs_them(dit_class):
    import torch

    model = _tiny(dit_class, torch)
    launch.without_checkpointing(4)
    d = TINY["num_attention_heads"] * TINY["attention_head_dim"]
    with torch.no_grad():  # sampling during training
        out = model.gradient_checkpointing_method(
            model.transformer_blocks[0],
            torch.zeros(1, 6, d),
            torch.zeros(1, 3, d),
            torch.zeros(1, d),
            (None,) * 5,
            torch.zeros(1, 6, 2 * TINY["attention_head_dim"]),
        )
    assert out[0].shape == (1, 6, d)


# `python -m musubi_workspace.launch --help`, on a host without CUDA first with the stub import_musubi uses.
LAUNCH = (
    "import sys, torch\n"
    "if not torch.cuda.is_available(): torch.cuda.current_device = lambda: 0\n"
    "from musubi_workspace import launch\n"
    "sys.argv = [launch.__file__, '--help']\n"
    "sys.exit(launch.main())\n"
)


def test_the_launcher_runs_musubi_tuners_trainer_with_its_arguments(musubi):
    env = {**os.environ, launch.ENV: "8"}
    r = subprocess.run([sys.executable, "-c", LAUNCH], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "the first 8 of the DiT's 60 blocks train without gradient checkpointing" in r.stdout
    assert "--blocks_to_swap" in r.stdout and "--gradient_checkpointing" in r.stdout  # fpack_train_network's parser


def test_a_bad_count_in_the_environment_is_one_line(musubi):
    env = {**os.environ, launch.ENV: "61"}
    r = subprocess.run([sys.executable, "-c", LAUNCH], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"musubi-workspace: {launch.ENV}='61' is not a whole number from 0 to 60"


# ---------------------------------------------------------------------------------------------------------
# [workspace] split_attn_one_graph
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def hv(musubi):
    module = importlib.import_module("musubi_tuner.frame_pack.hunyuan_video_packed")
    original = module.attn_varlen_func
    yield module
    module.attn_varlen_func = original  # the patch is the module's: undo it for the other tests


def _qkv(torch, batch=3, tokens=20, heads=2, dim=8):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(batch, tokens, heads, dim, generator=g) for _ in range(3)]


def test_the_one_graph_attention_makes_musubi_tuners_sdpa_calls_bit_for_bit(hv):
    import torch

    musubi_attn = hv.attn_varlen_func
    launch.split_attn_in_one_graph()
    assert hv.attn_varlen_func is not musubi_attn and hv.attn_varlen_func.__wrapped__ is musubi_attn
    q, k, v = _qkv(torch)
    lengths = torch.tensor([20, 13, 17])  # one item at the full length: musubi-tuner pads it not at all, this by 0
    # None: sdpa too, where no other attention package imports (a pod's train extra has SageAttention: CUDA only).
    others = (hv.sageattn, hv.flash_attn_func, hv.xformers_attn_func)
    for mode in ("torch", None) if all(f is None for f in others) else ("torch",):
        ours = hv.attn_varlen_func(q, k, v, 1, 1, 20, 20, lengths, mode, True)
        theirs = musubi_attn(q, k, v, 1, 1, 20, 20, lengths, mode, True)
        assert torch.equal(ours, theirs)
        assert ours[1, 13:].abs().sum() == 0  # the rows after an item's tokens are zero, as musubi-tuner's
    # Not split_attn, or no lengths: musubi-tuner's own function, unchanged.
    assert torch.equal(
        hv.attn_varlen_func(q, k, v, None, None, None, None, None, "torch", True),
        musubi_attn(q, k, v, None, None, None, None, None, "torch", True),
    )
    launch.split_attn_in_one_graph()  # patched again: the original is still the one wrapped, not the patch
    assert hv.attn_varlen_func.__wrapped__ is musubi_attn


def _block(hv, torch):
    torch.manual_seed(1)
    block = hv.HunyuanVideoTransformerBlock(2, 16, 4.0, qk_norm="rms_norm", attn_mode="torch", split_attn=True)
    for p in block.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(3, 24, 32, generator=g, requires_grad=True)
    text = torch.randn(3, 12, 32, generator=g, requires_grad=True)
    mask = (torch.arange(12)[None, :] < torch.tensor([6, 9, 12])[:, None]).to(torch.int64)
    cu, seq_len = hv.get_cu_seqlens(mask, 24)
    args = (
        hidden,
        text,
        torch.randn(3, 32, generator=g),
        (cu, cu, 36, 36, seq_len),
        torch.randn(3, 24, 32, generator=g),
    )
    return block, args


def test_a_compiled_double_block_is_one_graph_with_the_same_gradients(hv):
    import torch

    block, args = _block(hv, torch)
    h, c = block(*args)
    (h.square().sum() + c.square().sum()).backward()
    eager = [args[0].grad.clone(), args[1].grad.clone()]
    args[0].grad = args[1].grad = None
    with torch._dynamo.config.patch(capture_scalar_outputs=True):  # the workspace's compile environment
        torch._dynamo.reset()
        theirs = torch._dynamo.explain(block)(*args)
        launch.split_attn_in_one_graph()
        torch._dynamo.reset()
        ours = torch._dynamo.explain(block)(*args)
        torch._dynamo.reset()
        h, c = torch.compile(block)(*args)
        (h.square().sum() + c.square().sum()).backward()
        torch._dynamo.reset()
    # musubi-tuner's loop breaks the graph at each item's length; the workspace's form traces in one graph.
    assert theirs.graph_break_count >= 3 and (ours.graph_count, ours.graph_break_count) == (1, 0)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(eager, (args[0].grad, args[1].grad)))


def test_the_launcher_applies_it_from_the_environment(musubi):
    env = {**os.environ, launch.ONE_GRAPH_ENV: "1"}
    r = subprocess.run([sys.executable, "-c", LAUNCH], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (
        "split_attn's per-item attention reads the batch's lengths at once and pads every item ([workspace] "
        "split_attn_one_graph)"
    ) in r.stdout
    assert "--split_attn" in r.stdout  # fpack_train_network's parser
