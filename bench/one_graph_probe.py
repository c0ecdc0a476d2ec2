"""Per compiled FramePack block: split_attn in one graph, and torch's activation memory budget (issue 13).

On one GPU, with musubi-tuner importable (the train extra): one real double-stream and one real single-stream block
of musubi-tuner's FramePack DiT (random weights, frozen as under LoRA), batch 16 at the shipped workload's token
counts (as bench/block_probe.py), `split_attn` with sdpa, compiled. For each it measures forward + backward time,
the memory one block keeps for the backward pass, its first (compiling) call, torch._dynamo.explain's graph and
break counts, and the input gradients' difference from the first row of that block:

- `musubi` / `nobreak`: musubi-tuner's `attn_varlen_func`, or the form of `[workspace] split_attn_one_graph`
  (src/musubi_workspace/launch.py; this copy also calls `torch._check_is_size`, which the launcher leaves out: it is
  deprecated in torch 2.14 and `torch._check(n > 0)` says the same);
- `ckpt` / `nockpt`: inside `torch.utils.checkpoint` (as musubi-tuner's gradient checkpointing) or not;
- `bX`: `torch._functorch.config.activation_memory_budget = X` (1.0: torch's default partitioner).

Run on the GPU: `SECONDS_LIMIT=440 PROBE_OUT=one_graph_probe.json python bench/one_graph_probe.py`; `--small` runs
tiny shapes on the CPU (the test suite's run where musubi-tuner imports). Measured in this form on an H200 (torch
2.11.0+cu130, musubi-tuner 30c658c), 2026-12-01 04:05 UTC (s a forward + backward; GiB kept; first call s):
  double musubi  ckpt 0.2344, 0.61 GiB, 32.4 s | nobreak ckpt 0.2273, 0.61 GiB, 5.0 s
  double nobreak nockpt 0.1670, 7.26 GiB       | musubi nockpt 0.1688, 7.26 GiB
  double musubi  nockpt budget 0.1: 0.1892, 4.23 GiB; 0.3: 0.1865, 4.78 GiB; 0.05: 0.1874, 4.23 GiB
  single musubi  ckpt 0.2386, 0.61 GiB, 8.5 s  | nobreak ckpt 0.2309, 0.61 GiB, 2.0 s
  single nobreak nockpt 0.1723, 7.26 GiB       | musubi nockpt budget 0.1: 0.1933, 4.23 GiB; 0.3: 0.1928, 4.23 GiB
  input gradients against the first row: 1e-5 to 3e-5 relative (0.3 budget on the double block: 1e-3)
  explain: 4 graphs, 3 breaks in every row on the H200; on the CPU (torch 2.14, --small) musubi 4/3, nobreak 1/0
The budget rows with the nobreak form failed on the CPU (inductor: pending unbacked symbols, the lengths' reads
recomputed in the backward), so they were not run on the GPU. (The code is the one that ran there, reformatted by
ruff.)
"""

import json
import os
import sys
import time

os.environ.setdefault("TORCHDYNAMO_CAPTURE_SCALAR_OUTPUTS", "1")
os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "0")
import torch
import torch.nn.functional as F

from musubi_workspace.schema import import_musubi

import_musubi()
from musubi_tuner.frame_pack import hunyuan_video_packed as hv  # noqa: E402 - after import_musubi()

small = "--small" in sys.argv
SECONDS = float(os.environ.get("SECONDS_LIMIT", "480"))
end = time.time() + SECONDS
FULL = {"heads": 24, "head_dim": 128, "batch": 16, "image": 5376, "text": 1241, "valid": (749, 849)}
SMALL = {"heads": 2, "head_dim": 16, "batch": 3, "image": 24, "text": 12, "valid": (6, 10)}
shape = SMALL if small else FULL
heads, head_dim, batch, image, text = (shape[k] for k in ("heads", "head_dim", "batch", "image", "text"))
d = heads * head_dim
cuda = torch.cuda.is_available()
dev, dt = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
sync = torch.cuda.synchronize if cuda else (lambda: None)
alloc = torch.cuda.memory_allocated if cuda else (lambda: 0)
out = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if cuda else "cpu"}
OUTF = os.environ.get("PROBE_OUT", "budget_probe.json")

orig_attn = hv.attn_varlen_func


def attn_nobreak(
    q, k, v, cu_seqlens_q, cu_seqlens_kv, max_seqlen_q, max_seqlen_kv, seq_len, attn_mode=None, split_attn=False
):
    if not (split_attn and cu_seqlens_q is not None and attn_mode in (None, "torch")):
        return orig_attn(
            q, k, v, cu_seqlens_q, cu_seqlens_kv, max_seqlen_q, max_seqlen_kv, seq_len, attn_mode, split_attn
        )
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    lens = seq_len.tolist()
    xs = []
    for i in range(q.size(0)):
        n = lens[i]
        torch._check_is_size(n)
        torch._check(n <= max_seqlen_q)
        torch._check(n > 0)
        x_i = F.scaled_dot_product_attention(q[i : i + 1, :, :n], k[i : i + 1, :, :n], v[i : i + 1, :, :n])
        xs.append(F.pad(x_i, (0, 0, 0, max_seqlen_q - n)))
    return torch.cat(xs, dim=0).transpose(1, 2)


def save(key, value):
    out[key] = value
    print(key, value, flush=True)
    with open(OUTF, "w") as f:
        json.dump(out, f, indent=1)


torch.manual_seed(0)
valid = torch.randint(*shape["valid"], (batch,), device=dev)
mask = (torch.arange(text, device=dev)[None, :] < valid[:, None]).to(torch.int64)
cu, seq_len = hv.get_cu_seqlens(mask, image)
amask = (cu, cu, image + text, image + text, seq_len)
rope = torch.randn(batch, image, 2 * head_dim, device=dev)
temb = torch.randn(batch, d, device=dev, dtype=dt)


def block(kind):
    torch.manual_seed(1)
    cls = hv.HunyuanVideoTransformerBlock if kind == "double" else hv.HunyuanVideoSingleTransformerBlock
    m = cls(heads, head_dim, 4.0, qk_norm="rms_norm", attn_mode="torch", split_attn=True).to(dev, dt)
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def measure(kind, ckpt, budget, attn):
    torch._dynamo.reset()
    import torch._functorch.config as fc

    fc.activation_memory_budget = budget
    hv.attn_varlen_func = attn_nobreak if attn == "nobreak" else orig_attn
    m = block(kind)
    f = torch.compile(m)
    torch.manual_seed(2)
    hs = (torch.randn(batch, image, d, device=dev, dtype=dt) * 0.5).requires_grad_(True)
    es = (torch.randn(batch, text, d, device=dev, dtype=dt) * 0.5).requires_grad_(True)
    gh, ge = torch.randn_like(hs), torch.randn_like(es)

    def fwd():
        a = (hs, es, temb, amask, rope)
        return torch.utils.checkpoint.checkpoint(f, *a, use_reentrant=False) if ckpt else f(*a)

    def step():
        torch.autograd.backward(list(fwd()), [gh, ge])

    t0 = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - t0
    grads = [hs.grad.float().clone(), es.grad.float().clone()]
    hs.grad = es.grad = None
    reps = 4 if cuda else 1
    step()
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        step()
    sync()
    s = (time.perf_counter() - t) / reps
    hs.grad = es.grad = None
    base = alloc()
    o = fwd()
    kept = alloc() - base
    del o
    breaks = None
    try:
        torch._dynamo.reset()
        ex = torch._dynamo.explain(m)(hs, es, temb, amask, rope)
        breaks = (ex.graph_count, ex.graph_break_count)
    except Exception as e:  # noqa
        breaks = repr(e)[:200]
    hv.attn_varlen_func = orig_attn
    fc.activation_memory_budget = 1.0
    return {"s": s, "first_s": first, "kept_gib": kept / 2**30, "graphs_breaks": breaks}, grads


ref = {}
plan = [
    ("double", True, 1.0, "musubi"),
    ("double", True, 1.0, "nobreak"),
    ("double", False, 1.0, "nobreak"),
    ("double", False, 1.0, "musubi"),
    ("double", False, 0.1, "musubi"),
    ("double", False, 0.3, "musubi"),
    ("single", True, 1.0, "musubi"),
    ("single", True, 1.0, "nobreak"),
    ("single", False, 0.1, "musubi"),
    ("single", False, 1.0, "nobreak"),
    ("double", False, 0.05, "musubi"),
    ("single", False, 0.3, "musubi"),
]
for kind, ckpt, budget, attn in plan:
    key = f"{kind}_{attn}_{'ckpt' if ckpt else 'nockpt'}_b{budget}"
    if time.time() > end:
        print("skipped", key, flush=True)
        continue
    try:
        fig, grads = measure(kind, ckpt, budget, attn)
        if kind in ref:
            fig["grad_rel_diff"] = [float((a - b).norm() / b.norm()) for a, b in zip(grads, ref[kind])]
        else:
            ref[kind] = grads
        save(key, fig)
    except Exception as e:
        save(key, {"error": repr(e)[:400]})
    if cuda:
        torch.cuda.empty_cache()
