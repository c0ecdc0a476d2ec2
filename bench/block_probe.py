"""Where a compiled step's time goes, one FramePack block at a time (issue 13, toward 11 s/step on an H200).

On one GPU, with musubi-tuner importable (the train extra): one real double-stream and one real single-stream block
of musubi-tuner's FramePack DiT (random weights, frozen as under LoRA, so the backward computes the activations'
gradients only), batch 16 at the shipped workload's token counts (512x768 one-frame, clean indices [0, 10], no
post: 5,376 image tokens; 1,241 text tokens, of them 749-848 valid), `split_attn` as configs/v1 trains. It prints:

1. sdpa on one item (6,145 tokens, 24 heads x 128), forward + backward, with the flash backend and with the backend
   torch picks by default, and their difference (torch 2.11 picks cuDNN's fused attention on an H200);
2. a d x 4d matmul's TFLOP/s at the blocks' token count;
3. per block, compiled (and the double block eager), forward + backward with gradient checkpointing (so the
   forward runs twice) and without, with the default sdpa backend, with flash first and with cuDNN first; the
   attention kernels the profiler saw; the activation memory one block keeps for the backward pass.

Run on the GPU: `python bench/block_probe.py [--seconds 400] [--out block_probe.json]`. Measured on an H200
(torch 2.11.0+cu130, cuDNN 9.19, musubi-tuner 30c658c), 2026-12-01, in two device calls of an earlier form of this
script (the same measurements, written as a scratch file; this form has not run on a GPU: the session's device
time was spent). The README's "Toward 11 s/step" quotes it:
  sdpa per item: flash 5.41 ms (300 TFLOP/s), default = cuDNN 2.95 ms (550 TFLOP/s), rel. difference 0.3%
  matmul d x 4d: 756-811 TFLOP/s
  compiled double block, checkpointed: default 0.233 s, flash first 0.283 s, cuDNN first 0.234 s
  compiled double block, not checkpointed: 0.173 s, keeps 7.26 GiB (0.61 GiB checkpointed: its inputs)
  compiled single block: checkpointed 0.239 s, not checkpointed 0.177 s, keeps 7.26 GiB
  eager double block: checkpointed 0.311 s; flash first: checkpointed 0.360 s, not checkpointed 0.267 s, keeps
  9.68 GiB
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time

# The workspace's compile environment (src/musubi_workspace/data/compile_env.toml).
os.environ.setdefault("TORCHDYNAMO_CAPTURE_SCALAR_OUTPUTS", "1")
os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "0")

# The shipped workload's shapes; --small: a tiny shape that runs on a CPU (the test suite's run, with the train extra).
# "valid": the range of an item's valid text tokens; "attended": one item's tokens in the sdpa measurement.
FULL = {"heads": 24, "head_dim": 128, "batch": 16, "image": 5376, "text": 1241, "valid": (749, 849), "attended": 6145}
SMALL = {"heads": 2, "head_dim": 16, "batch": 2, "image": 24, "text": 12, "valid": (6, 10), "attended": 32}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=400, help="stop starting new measurements after this long")
    ap.add_argument("--out", default="block_probe.json", help="the figures as JSON")
    ap.add_argument("--small", action="store_true", help="tiny shapes, on the CPU where there is no GPU")
    a = ap.parse_args()
    shape = SMALL if a.small else FULL
    heads, head_dim, batch = shape["heads"], shape["head_dim"], shape["batch"]
    image, text, tokens = shape["image"], shape["text"], shape["attended"]
    d = heads * head_dim

    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.profiler import ProfilerActivity, profile

    from musubi_workspace.schema import import_musubi

    import_musubi()
    from musubi_tuner.frame_pack import hunyuan_video_packed as hv

    cuda = torch.cuda.is_available()
    if not cuda and not a.small:
        raise SystemExit("block_probe: no GPU here; --small runs tiny shapes on the CPU")
    dev, bf16 = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    allocated = torch.cuda.memory_allocated if cuda else (lambda: 0)
    out: dict = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if cuda else "cpu", "shape": shape}
    end = time.time() + a.seconds

    def timeit(fn, reps=5, warm=2) -> float:
        for _ in range(warm):
            fn()
        sync()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        return (time.perf_counter() - t) / reps

    def save(key, value) -> None:
        out[key] = value
        print(key, value, flush=True)
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)

    def sdpa_per_item() -> None:
        # 1. sdpa on one item, as split_attn calls it (the [B, L, H, D] layout transposed).
        q, k, v = (
            torch.randn(1, tokens, heads, head_dim, device=dev, dtype=bf16, requires_grad=True) for _ in range(3)
        )
        grad = torch.randn(1, heads, tokens, head_dim, device=dev, dtype=bf16)

        def attention():
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            o.backward(grad)
            return o

        flops = 4 * tokens * tokens * d * 3.5  # forward, and 2.5x that backward
        ref = None
        backends = [("flash", sdpa_kernel([SDPBackend.FLASH_ATTENTION]))] if cuda else []
        for name, ctx in (*backends, ("default", contextlib.nullcontext())):
            with ctx:
                s = timeit(attention)
                q.grad = k.grad = v.grad = None
                o = attention()
            got = [o.detach().float(), q.grad.float(), k.grad.float(), v.grad.float()]
            q.grad = k.grad = v.grad = None
            fig = {"ms": s * 1e3, "tflops": flops / s / 1e12}
            if ref is None:
                ref = got
            else:
                fig["rel_diff_vs_flash"] = [float((x - y).norm() / y.norm()) for x, y in zip(got, ref)]
            save(f"sdpa_{name}", fig)

    def matmul() -> None:
        # 2. A linear layer's matmul at the blocks' token count.
        x = torch.randn(batch * (image + text), d, device=dev, dtype=bf16)
        w = torch.randn(4 * d, d, device=dev, dtype=bf16)
        save("matmul_tflops", 2 * x.shape[0] * d * 4 * d / timeit(lambda: x @ w.t()) / 1e12)

    sdpa_per_item()  # each part frees its tensors when it returns
    matmul()

    # 3. The blocks.
    valid = torch.randint(*shape["valid"], (batch,), device=dev)
    mask = (torch.arange(text, device=dev)[None, :] < valid[:, None]).to(torch.int64)
    cu, seq_len = hv.get_cu_seqlens(mask, image)
    attention_mask = (cu, cu, image + text, image + text, seq_len)
    rope = torch.randn(batch, image, 2 * head_dim, device=dev)
    temb = torch.randn(batch, d, device=dev, dtype=bf16)
    first = {
        "default": None,
        "flash": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH],
        "cudnn": [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
    }

    def block(kind: str):
        cls = hv.HunyuanVideoTransformerBlock if kind == "double" else hv.HunyuanVideoSingleTransformerBlock
        m = cls(heads, head_dim, 4.0, qk_norm="rms_norm", attn_mode="torch", split_attn=True).to(dev, bf16)
        for p in m.parameters():
            p.requires_grad_(False)
        return m

    def measure(kind: str, compiled: bool, backend: str, checkpointed: bool) -> dict:
        torch._dynamo.reset()
        m = block(kind)
        f = torch.compile(m) if compiled else m
        hs = (torch.randn(batch, image, d, device=dev, dtype=bf16) * 0.5).requires_grad_(True)
        es = (torch.randn(batch, text, d, device=dev, dtype=bf16) * 0.5).requires_grad_(True)
        gh, ge = torch.randn_like(hs), torch.randn_like(es)

        def forward():
            args = (hs, es, temb, attention_mask, rope)
            return torch.utils.checkpoint.checkpoint(f, *args, use_reentrant=False) if checkpointed else f(*args)

        def step():
            torch.autograd.backward(list(forward()), [gh, ge])
            hs.grad = es.grad = None

        ctx = sdpa_kernel(first[backend], set_priority=True) if first[backend] else contextlib.nullcontext()
        with ctx:
            t0 = time.perf_counter()
            step()
            sync()
            first_s = time.perf_counter() - t0
            s = timeit(step, reps=4, warm=1)
            with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
                step()
                sync()
            kernels = sorted(
                {e.key[:60] for e in prof.key_averages() if any(t in e.key.lower() for t in ("flash", "cudnn", "fmha"))}
            )
            base = allocated()
            kept_out = forward()
            kept = allocated() - base
            del kept_out
        return {"s_forward_backward": s, "first_s": first_s, "kept_gib": kept / 2**30, "attention_kernels": kernels}

    plan = [
        ("double", True, "default", True),
        ("double", True, "flash", True),
        ("double", True, "cudnn", True),
        ("double", True, "default", False),
        ("single", True, "default", True),
        ("single", True, "default", False),
        ("double", False, "default", True),
        ("double", False, "flash", True),
        ("double", False, "flash", False),
    ]
    if not cuda:  # the CPU run (--small): the wiring, eager, torch's own backend
        plan = [(kind, False, "default", ckpt) for kind in ("double", "single") for ckpt in (True, False)]
    for kind, compiled, backend, checkpointed in plan:
        key = f"{kind}_{'compiled' if compiled else 'eager'}_{backend}_{'ckpt' if checkpointed else 'nockpt'}"
        if time.time() > end:
            print("skipped (--seconds):", key, flush=True)
            continue
        save(key, measure(kind, compiled, backend, checkpointed))
        if cuda:
            torch.cuda.empty_cache()  # the block and its inputs went with measure()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
