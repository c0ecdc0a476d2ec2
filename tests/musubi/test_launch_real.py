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
