"""Synthetic inputs for `make bench`: a random-weight FramePack DiT of the exact shapes and random caches.

With these, musubi-tuner's real trainer runs on a bare GPU machine with no downloads: the DiT is built from
musubi-tuner's own model class with empty weights, filled with random values on the GPU and saved as one
safetensors file (musubi-tuner then loads it with `strict=True`, so a shape mismatch cannot pass silently);
the caches have the names, keys, shapes and dtypes musubi-tuner's caching scripts write (one-frame layout of
`fpack_cache_latents.encode_and_save_batch_one_frame`).

The layout functions are plain Python (no torch), so the tool can plan and fingerprint without the GPU stack.
The writers need torch and musubi-tuner; `make bench` runs them in a child process
(`python -m musubi_workspace.tune.synthetic ...`) so their GPU memory is freed before the trainer starts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

# The FramePack DiT as musubi-tuner builds it (`frame_pack/hunyuan_video_packed.load_packed_model`, 30c658c).
FRAMEPACK_DIT = dict(
    attention_head_dim=128,
    guidance_embeds=True,
    has_clean_x_embedder=True,
    has_image_proj=True,
    image_proj_dim=1152,
    in_channels=16,
    mlp_ratio=4.0,
    num_attention_heads=24,
    num_layers=20,
    num_refiner_layers=2,
    num_single_layers=40,
    out_channels=16,
    patch_size=2,
    patch_size_t=1,
    pooled_projection_dim=768,
    qk_norm="rms_norm",
    rope_axes_dim=(16, 56, 56),
    rope_theta=256.0,
    text_embed_dim=4096,
)
# Text-encoder cache shapes (LLaMA hidden states cropped/padded to 512 tokens; CLIP-L pooled output).
LLAMA_TOKENS, LLAMA_DIM, CLIP_DIM = 512, 4096, 768
# Tokens marked valid in the synthetic attention mask: a caption of a few dozen words.
CAPTION_TOKENS = 77
# SigLIP image embedding of the first control image.
SIGLIP_TOKENS, SIGLIP_DIM = 729, 1152
LATENT_CHANNELS = 16
FORMAT_VERSION = "1.0.1"


@dataclass(frozen=True)
class CacheLayout:
    """What one-frame caches of one dataset look like (the values that decide shapes and names)."""

    width: int
    height: int
    clean_indices: tuple[int, ...] = (0,)
    target_index: int = 1
    no_post: bool = False
    no_2x: bool = False
    no_4x: bool = False
    window: int = 9

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.height // 8, self.width // 8

    def latent_tensors(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """`{key: (shape, dtype)}` of one latent cache file, as musubi-tuner names them."""
        h, w = self.latent_hw
        n_clean = len(self.clean_indices) + (0 if self.no_post else 1)
        out = {
            f"latents_1x{h}x{w}_float16": ((LATENT_CHANNELS, 1, h, w), "float16"),
            f"latents_clean_1x{h}x{w}_float16": ((LATENT_CHANNELS, n_clean, h, w), "float16"),
            "image_embeddings_float16": ((SIGLIP_TOKENS, SIGLIP_DIM), "float16"),
            "latent_indices_int64": ((1,), "int64"),
            "clean_latent_indices_int64": ((n_clean,), "int64"),
        }
        if not self.no_2x:
            out["clean_latent_2x_indices_int64"] = ((2,), "int64")
        if not self.no_4x:
            out["clean_latent_4x_indices_int64"] = ((16,), "int64")
        return out

    def indices(self) -> dict[str, list[int]]:
        clean = list(self.clean_indices) + ([] if self.no_post else [1 + self.window])
        out = {"latent_indices_int64": [self.target_index], "clean_latent_indices_int64": clean}
        if not self.no_2x:
            out["clean_latent_2x_indices_int64"] = list(range(self.window + 2, self.window + 4))
        if not self.no_4x:
            out["clean_latent_4x_indices_int64"] = list(range(self.window + 4, self.window + 20))
        return out

    @staticmethod
    def te_tensors() -> dict[str, tuple[tuple[int, ...], str]]:
        return {
            "llama_vec_float16": ((LLAMA_TOKENS, LLAMA_DIM), "float16"),
            "llama_attention_mask": ((LLAMA_TOKENS,), "bool"),
            "clip_l_pooler_float16": ((CLIP_DIM,), "float16"),
        }

    def file_names(self, i: int) -> tuple[str, str]:
        """Latent and text-encoder cache names of item i (the image size is the bucket size: no resizing)."""
        stem = f"synthetic{i:05d}"
        return f"{stem}_{self.width:04d}x{self.height:04d}_fp.safetensors", f"{stem}_fp_te.safetensors"


@dataclass
class Plan:
    """Everything `make bench` makes: where, and the values that decide it (fingerprinted for reuse)."""

    folder: Path
    layout: CacheLayout
    items: int
    dit_config: dict = field(default_factory=lambda: dict(FRAMEPACK_DIT))
    seed: int = 0

    @property
    def dit(self) -> Path:
        return self.folder / "framepack_dit_random_bf16.safetensors"

    @property
    def cache_dir(self) -> Path:
        return self.folder / f"cache_{self.layout.width}x{self.layout.height}_{self.fingerprint(caches=True)[:8]}"

    @property
    def image_dir(self) -> Path:
        """An empty image folder: training reads only the caches, but the dataset needs a source."""
        return self.folder / "images"

    def fingerprint(self, caches: bool) -> str:
        what = {"layout": asdict(self.layout), "items": self.items} if caches else {"dit": self.dit_config}
        what["seed"] = self.seed
        return hashlib.sha256(json.dumps(what, sort_keys=True, default=list).encode()).hexdigest()

    def marker(self, caches: bool) -> Path:
        return (self.cache_dir / ".complete") if caches else self.dit.with_suffix(".complete")

    def is_ready(self, caches: bool) -> bool:
        m = self.marker(caches)
        return m.exists() and m.read_text().strip() == self.fingerprint(caches)

    def argv(self) -> list[str]:
        """The child command that makes what is missing."""
        lo = self.layout
        argv = [
            "python",
            "-m",
            "musubi_workspace.tune.synthetic",
            "--folder",
            str(self.folder),
            "--items",
            str(self.items),
            "--width",
            str(lo.width),
            "--height",
            str(lo.height),
            "--window",
            str(lo.window),
            "--clean-indices",
            ",".join(str(i) for i in lo.clean_indices),
            "--target-index",
            str(lo.target_index),
            "--seed",
            str(self.seed),
        ]
        argv += ["--no-post"] if lo.no_post else []
        argv += ["--no-2x"] if lo.no_2x else []
        argv += ["--no-4x"] if lo.no_4x else []
        return argv


# ---------------------------------------------------------------------------------------------------------
# Writers (torch, and musubi-tuner for the model class)
# ---------------------------------------------------------------------------------------------------------


def random_dit_state_dict(config: dict, device: str = "cuda", seed: int = 0, attn_mode: str = "sdpa"):
    """A state dict of the FramePack DiT with random bf16 weights, built from musubi-tuner's model class.

    Matrices get N(0, 0.02) (the usual transformer init, so activations stay finite through 60 blocks), 1-d
    weights (norm scales) ones, biases zeros. The model is created with empty (meta) weights, so no 50 GB fp32
    copy is ever made; each tensor is drawn on `device` and copied to CPU memory for saving.
    """
    import torch
    from accelerate import init_empty_weights
    from musubi_tuner.frame_pack.hunyuan_video_packed import HunyuanVideoTransformer3DModelPacked

    with init_empty_weights():
        model = HunyuanVideoTransformer3DModelPacked(**config, attn_mode=attn_mode, split_attn=False)
    gen = torch.Generator(device=device).manual_seed(seed)
    sd = {}
    for name, p in model.state_dict().items():
        if name.endswith(".bias"):
            t = torch.zeros(p.shape, dtype=torch.bfloat16, device=device)
        elif p.dim() <= 1:
            t = torch.ones(p.shape, dtype=torch.bfloat16, device=device)
        else:
            t = torch.empty(p.shape, dtype=torch.bfloat16, device=device).normal_(0.0, 0.02, generator=gen)
        sd[name] = t.to("cpu")
    return sd


def write_dit(path: Path, config: dict, device: str = "cuda", seed: int = 0) -> int:
    """Write the random DiT to `path` (one safetensors file); returns its parameter count."""
    from safetensors.torch import save_file

    sd = random_dit_state_dict(config, device=device, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(sd, str(tmp), metadata={"format": "pt", "note": "musubi-workspace bench: random weights"})
    tmp.replace(path)
    return sum(t.numel() for t in sd.values())


def write_caches(folder: Path, layout: CacheLayout, items: int, seed: int = 0) -> list[Path]:
    """`items` one-frame latent caches and text-encoder caches of `layout` in `folder`."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    dtypes = {"float16": torch.float16, "int64": torch.int64, "bool": torch.bool}
    indices = layout.indices()
    meta = {
        "architecture": "framepack",
        "width": str(layout.width),
        "height": str(layout.height),
        "format_version": FORMAT_VERSION,
    }
    written = []
    for i in range(items):
        latent_name, te_name = layout.file_names(i)
        sd = {}
        for key, (shape, dtype) in layout.latent_tensors().items():
            if key in indices:
                sd[key] = torch.tensor(indices[key], dtype=torch.int64)
            else:
                sd[key] = torch.randn(shape, generator=gen).to(dtypes[dtype])
        save_file(sd, str(folder / latent_name), metadata=meta)
        te = {}
        for key, (shape, dtype) in layout.te_tensors().items():
            if dtype == "bool":
                mask = torch.zeros(shape, dtype=torch.bool)
                mask[:CAPTION_TOKENS] = True
                te[key] = mask
            else:
                te[key] = torch.randn(shape, generator=gen).to(dtypes[dtype])
        te["llama_vec_float16"][CAPTION_TOKENS:] = 0  # zero padding, as the caching script writes
        save_file(
            te,
            str(folder / te_name),
            metadata={"architecture": "framepack", "caption1": f"synthetic {i}", "format_version": FORMAT_VERSION},
        )
        written += [folder / latent_name, folder / te_name]
    return written


def make(plan: Plan, device: str = "cuda", dit: bool = True) -> None:
    """Make what is missing or stale; print one line per part with its time. `dit=False`: the caches only (a
    held-out set beside the bench's, of another seed: bench/validation_cost.py), the DiT left as it is."""
    plan.image_dir.mkdir(parents=True, exist_ok=True)
    if dit and plan.is_ready(caches=False):
        print(f"[bench] random DiT: reusing {plan.dit}", flush=True)
    elif dit:
        t = time.time()
        n = write_dit(plan.dit, plan.dit_config, device=device, seed=plan.seed)
        plan.marker(False).write_text(plan.fingerprint(False))
        print(
            f"[bench] random DiT: {n / 1e9:.2f}B parameters written to {plan.dit} in {time.time() - t:.0f} s",
            flush=True,
        )
    if plan.is_ready(caches=True):
        print(f"[bench] caches: reusing {plan.cache_dir}", flush=True)
    else:
        t = time.time()
        write_caches(plan.cache_dir, plan.layout, plan.items, seed=plan.seed)
        plan.marker(True).write_text(plan.fingerprint(True))
        print(
            f"[bench] caches: {plan.items} items of {plan.layout.width}x{plan.layout.height} written to "
            f"{plan.cache_dir} in {time.time() - t:.1f} s",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m musubi_workspace.tune.synthetic", description=__doc__.splitlines()[0])
    p.add_argument("--folder", required=True)
    p.add_argument("--items", type=int, required=True)
    p.add_argument("--width", type=int, required=True)
    p.add_argument("--height", type=int, required=True)
    p.add_argument("--window", type=int, default=9)
    p.add_argument("--clean-indices", default="0")
    p.add_argument("--target-index", type=int, default=1)
    p.add_argument("--no-post", action="store_true")
    p.add_argument("--no-2x", action="store_true")
    p.add_argument("--no-4x", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda")
    p.add_argument("--caches-only", action="store_true", help="make no DiT (a held-out set of another --seed)")
    a = p.parse_args(argv)
    layout = CacheLayout(
        width=a.width,
        height=a.height,
        clean_indices=tuple(int(i) for i in a.clean_indices.split(",") if i != ""),
        target_index=a.target_index,
        no_post=a.no_post,
        no_2x=a.no_2x,
        no_4x=a.no_4x,
        window=a.window,
    )
    import fcntl

    folder = Path(a.folder)
    folder.mkdir(parents=True, exist_ok=True)
    # Two `make bench` processes (one per GPU) may start together: one makes the inputs, the other then reuses them.
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        make(Plan(folder=folder, layout=layout, items=a.items, seed=a.seed), device=a.device, dit=not a.caches_only)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
