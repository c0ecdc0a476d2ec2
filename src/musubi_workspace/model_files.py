"""Model files that are not models: a zero-byte shard, an HTML error page saved as `.safetensors`, a download cut
short, or the right kind of file under the wrong key.

A safetensors file is an 8-byte little-endian header length, a JSON header (`{name: {dtype, shape, data_offsets}}`
and an optional `__metadata__`), then the tensor bytes. Only the header is read, never the tensors, so checking
the 26 GB DiT costs a few kilobytes. musubi-tuner loads every model with `strict=True` (a missing tensor fails
after minutes of loading), so the header must also name the tensors its loader needs: a few per model, read off
the loaders at the pinned commit and proven against musubi-tuner's own model classes in
tests/musubi/test_model_files.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from musubi_workspace.downloads import SHARD_RE

# safetensors refuses headers above 100 MB; no real model comes near it.
HEADER_LIMIT = 100_000_000

# key -> (what musubi-tuner loads there, tensors its loader needs). Loaders at 30c658c: the DiT in
# frame_pack/hunyuan_video_packed.load_packed_model (every shard); the VAE in hunyuan_model/vae.load_vae (a
# `vae.` prefix is dropped); LLaMA in frame_pack/framepack_utils.load_text_encoder1 (ComfyUI's `model.` prefix is
# dropped; shards allowed); CLIP-L in load_text_encoder2; SigLIP in load_image_encoders. The first and last
# blocks are named so a file of another model (HunyuanVideo's DiT lacks clean_x_embedder) or a swapped key fails.
TENSORS: dict[str, tuple[str, tuple[str, ...]]] = {
    "dit": (
        "the FramePack DiT",
        (
            "x_embedder.proj.weight",
            "clean_x_embedder.proj.weight",
            "image_projection.up.weight",
            "transformer_blocks.0.attn.to_q.weight",
            "transformer_blocks.19.attn.to_q.weight",
            "single_transformer_blocks.39.attn.to_q.weight",
            "proj_out.weight",
        ),
    ),
    "vae": (
        "the HunyuanVideo VAE",
        (
            "encoder.conv_in.conv.weight",
            "quant_conv.weight",
            "post_quant_conv.weight",
            "decoder.conv_out.conv.weight",
        ),
    ),
    "text_encoder1": (
        "the LLaMA text encoder",
        (
            "embed_tokens.weight",
            "layers.0.self_attn.q_proj.weight",
            "layers.31.mlp.down_proj.weight",
            "norm.weight",
        ),
    ),
    "text_encoder2": (
        "the CLIP-L text encoder",
        (
            "text_model.embeddings.token_embedding.weight",
            "text_model.encoder.layers.11.mlp.fc2.weight",
            "text_model.final_layer_norm.weight",
        ),
    ),
    "image_encoder": (
        "the SigLIP image encoder",
        (
            "vision_model.embeddings.patch_embedding.weight",
            "vision_model.encoder.layers.26.mlp.fc2.weight",
            "vision_model.post_layernorm.weight",
        ),
    ),
}


def _looks_like(head: bytes) -> str:
    """What a file that is no safetensors file starts with, in words."""
    text = head.lstrip()
    low = text[:64].lower()
    if low.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")) or low.startswith(b"<"):
        return "an HTML or XML page (a download's error page?)"
    if low.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the file itself"
    if low.startswith((b"{", b"[")):
        return "JSON text (an error message from the server?)"
    if head.startswith(b"PK"):
        return "a zip archive (a PyTorch .pt/.bin checkpoint?)"
    shown = "".join(chr(b) if 32 <= b < 127 else "." for b in head[:16])
    return f"bytes `{shown}`"


def read_header(path: Path) -> tuple[dict | None, str | None]:
    """(header, None), or (None, what is wrong) for a file that is not a whole safetensors file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if size == 0:
                return None, "is empty (0 bytes), not a model"
            if size < 8:
                return None, f"is {size} bytes, too short to be a model"
            n = int.from_bytes(head, "little")
            if n < 2 or n > HEADER_LIMIT or n > size - 8:
                return None, f"is not a safetensors file: it starts with {_looks_like(head + f.read(56))}"
            raw = f.read(n)
    except OSError as e:
        return None, f"cannot be read ({e.strerror or e})"
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, "is not a safetensors file: its header is not JSON"
    if not isinstance(header, dict):
        return None, "is not a safetensors file: its header is not a JSON object"
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        return None, "is not a safetensors file: its header has no data offsets"
    if 8 + n + end > size:
        return (
            None,
            f"is cut short: its header describes {8 + n + end:,} bytes, the file has {size:,} (an interrupted download)",
        )
    return header, None


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is not a whole safetensors file, or None."""
    return read_header(path)[1]


def loaded_files(key: str, path: Path) -> list[Path]:
    """The safetensors files musubi-tuner reads for a model path: every shard of a sharded file; the first file of
    a DiT folder (sorted by name, with its shards); vae/diffusion_pytorch_model.safetensors of a VAE folder. Text
    and image encoder folders load through transformers' from_pretrained: none here."""
    if path.is_dir():
        if key == "dit":
            files = sorted(path.glob("*.safetensors"))
            return loaded_files(key, files[0]) if files else []
        if key == "vae":
            return [path / "vae" / "diffusion_pytorch_model.safetensors"]
        return []
    m = SHARD_RE.match(path.name)
    if m and key in ("dit", "text_encoder1"):
        return [
            path.with_name(f"{m.group(1)}-{i:05d}-of-{m.group(3)}{m.group(4)}") for i in range(1, int(m.group(3)) + 1)
        ]
    return [path] if path.suffix == ".safetensors" else []


def loader_keys(key: str, names: set[str]) -> set[str]:
    """Tensor names as the loader sees them after its own renaming."""
    if key == "vae" and any(n.startswith("vae.") for n in names):
        return {n[len("vae.") :] for n in names if n.startswith("vae.")}
    if key == "text_encoder1" and "model.embed_tokens.weight" in names:
        return {n[len("model.") :] if n.startswith("model.") else n for n in names}
    return names


def file_problems(key: str, path: Path) -> list[tuple[Path, str]]:
    """(file, what is wrong) for each file musubi-tuner would read for a model path that is not a whole
    safetensors file."""
    return [(f, problem) for f in loaded_files(key, path) if f.is_file() and (problem := safetensors_problem(f))]


def tensor_problem(key: str, path: Path) -> str | None:
    """The tensors the loader needs that the files do not have, in words; None when all are there (or when the
    files are not whole, which file_problems reports)."""
    files = loaded_files(key, path)
    if not files or key not in TENSORS:
        return None
    names: set[str] = set()
    for f in files:
        header, problem = read_header(f) if f.is_file() else (None, "missing")
        if header is None:
            return None
        names |= {k for k in header if k != "__metadata__"}
    what, needed = TENSORS[key]
    missing = [t for t in needed if t not in loader_keys(key, names)]
    if not missing:
        return None
    example = min(names) if names else "none"
    return (
        f"is not {what} musubi-tuner loads for `{key}`: {len(missing)} of the {len(needed)} tensors checked are "
        f"missing ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); it holds {len(names)} tensor(s) "
        f"such as {example}: check the file, or which key names it"
    )


def write_placeholder(path: Path, names, metadata: dict | None = None) -> Path:
    """A tiny but whole safetensors file holding `names` (one float16 number each, written by hand: no safetensors
    package needed): what the header check reads, for benchmarks and tests that need model files without the
    models (`TENSORS[key][1]` for a model's names)."""
    names = list(names)
    header: dict = {n: {"dtype": "F16", "shape": [1], "data_offsets": [2 * i, 2 * i + 2]} for i, n in enumerate(names)}
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + b"\x00\x3c" * len(names))
    return path


def write_placeholders(root: Path, options: dict) -> None:
    """Placeholder files for every model path in a config's options (each shard of a sharded DiT holding its share
    of the DiT's tensors, as the real shards do)."""
    for key, (_, names) in TENSORS.items():
        if not options.get(key):
            continue
        path = root / options[key]
        m = SHARD_RE.match(path.name)
        if m:
            n = int(m.group(3))
            for i in range(1, n + 1):
                shard = path.with_name(f"{m.group(1)}-{i:05d}-of-{m.group(3)}{m.group(4)}")
                write_placeholder(shard, names[i - 1 :: n])
        else:
            write_placeholder(path, names)
