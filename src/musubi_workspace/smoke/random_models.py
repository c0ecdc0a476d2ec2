"""Random-weight FramePack models and offline tokenizers for `make smoke`: the whole loop with no downloads.

Models: the four that `make bench` does not make (the DiT is `make bench`'s, synthetic.py), each one file in the
single-file layout musubi-tuner loads with `strict=True` (`frame_pack/framepack_utils.py` at 30c658c):

  vae            `hunyuan_model.vae.load_vae`: AutoencoderKLCausal3D of a fixed config, `load_state_dict` (strict)
                 into an fp32 model, then cast to fp16; the file may hold any float dtype: fp16 (the real one's).
  text_encoder1  `load_text_encoder1`: LlamaModel(LLAMA_CONFIG), `load_state_dict(strict=True, assign=True)`;
                 assign keeps the file's dtype, so it must be fp16 (what the model runs in; fp8 is fp8_llm's job).
  text_encoder2  `load_text_encoder2`: CLIPTextModel(CLIP_CONFIG), the same way: fp16.
  image_encoder  `load_image_encoders`: SiglipVisionModel(IMAGE_ENCODER_CONFIG), the same way: fp16.

Each state dict is built from the loader's own model class and config, created with empty (meta) weights, so
the keys and shapes are the loader's by construction; values are drawn on the GPU: matrices N(0, s) with
s = min(0.02, 1/sqrt(fan-in)) (activations stay finite through 32 LLaMA layers in fp16), 1-d weights (norm
scales) ones, biases zeros.

Tokenizers: musubi-tuner loads `LlamaTokenizerFast.from_pretrained("hunyuanvideo-community/HunyuanVideo",
subfolder="tokenizer")` and `CLIPTokenizer.from_pretrained(..., subfolder="tokenizer_2")` at run time (text
caching, sampling, generation); SigLIP's image processor is built from a hard-coded config (no download).
The real tokenizer files cannot be made offline, so working stand-ins go into a Hugging Face hub cache
(`models--hunyuanvideo-community--HunyuanVideo/snapshots/<rev>/...`, `refs/main`) where `HF_HUB_OFFLINE=1`
finds them:

  tokenizer      byte-level BPE with LLaMA 3's pre-tokenizer regex and special tokens (`<|begin_of_text|>` 128000,
                 `<|end_of_text|>` 128001, `<|start_header_id|>` 128006, `<|end_header_id|>` 128007, `<|eot_id|>`
                 128009) and merges that make every piece of musubi-tuner's two prompt templates one token, so
                 the templates' system prefixes are exactly `crop_start` tokens long (95 video, 36 image), as
                 with the real tokenizer; right padding. Exact: special tokens and ids, the crop; stand-in: the
                 vocabulary (other words split into bytes and short pieces; ids below 128320).
  tokenizer_2    CLIP BPE (slow CLIPTokenizer files: vocab.json, merges.txt) with CLIP's byte alphabet (ids 0-511
                 as in CLIP), `<|startoftext|>` 49406 and `<|endoftext|>` 49407 (also the pad token), no merges:
                 every word is split into characters. Exact: special tokens and ids (CLIP's pooled output takes
                 the position of the highest id, `<|endoftext|>`), the 77-token padding; stand-in: the vocabulary.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

# File names under the smoke's model folder (the DiT is make bench's: synthetic.Plan.dit).
FILES = {
    "vae": "hunyuan_video_vae_random_fp16.safetensors",
    "text_encoder1": "llava_llama3_random_fp16.safetensors",
    "text_encoder2": "clip_l_random_fp16.safetensors",
    "image_encoder": "sigclip_vision_384_random_fp16.safetensors",
}
# Raised when what the builders make changes, so a folder made by an older workspace is made again.
FORMAT = "smoke-models-1"
HUB_REPO = "hunyuanvideo-community/HunyuanVideo"
# The stand-in tokenizers' revision folder in the hub cache (any name; recorded in refs/main).
HUB_REVISION = hashlib.sha1(b"musubi-workspace smoke tokenizers 1").hexdigest()

# HunyuanVideo's VAE as musubi-tuner builds it (`hunyuan_model/vae.py` load_vae's CONFIG_JSON at 30c658c; the
# tests/musubi suite loads the built file with musubi-tuner's own load_vae).
HUNYUAN_VAE_CONFIG = {
    "_class_name": "AutoencoderKLCausal3D",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlockCausal3D"] * 4,
    "in_channels": 3,
    "latent_channels": 16,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 256,
    "sample_tsize": 64,
    "up_block_types": ["UpDecoderBlockCausal3D"] * 4,
    "scaling_factor": 0.476986,
    "time_compression_ratio": 4,
    "mid_block_add_attention": True,
}

# LLaMA 3 special tokens (ids of the real tokenizer) and the pre-tokenizer regex of its tokenizer.json.
LLAMA_SPECIAL = {
    "<|begin_of_text|>": 128000,
    "<|end_of_text|>": 128001,
    "<|start_header_id|>": 128006,
    "<|end_header_id|>": 128007,
    "<|eot_id|>": 128009,
}
LLAMA_PAD = ("<|pad|>", 128258)  # below the text encoder's vocab_size (128320)
LLAMA_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)
CLIP_BOS, CLIP_EOS = ("<|startoftext|>", 49406), ("<|endoftext|>", 49407)


# ---------------------------------------------------------------------------------------------------------
# Model state dicts (torch, transformers, musubi-tuner)
# ---------------------------------------------------------------------------------------------------------


def meta_model(name: str):
    """The model musubi-tuner's loader builds for `name`, with empty (meta) weights."""
    import torch
    from accelerate import init_empty_weights

    if name == "vae":
        from musubi_tuner.hunyuan_model.autoencoder_kl_causal_3d import AutoencoderKLCausal3D

        with init_empty_weights():
            return AutoencoderKLCausal3D.from_config(dict(HUNYUAN_VAE_CONFIG))
    from musubi_tuner.frame_pack import framepack_utils as fu
    from transformers import CLIPConfig, CLIPTextModel, LlamaConfig, LlamaModel, SiglipVisionConfig, SiglipVisionModel

    cls, config = {
        "text_encoder1": (LlamaModel, lambda: LlamaConfig(**fu.LLAMA_CONFIG)),
        "text_encoder2": (CLIPTextModel, lambda: CLIPConfig(**fu.CLIP_CONFIG)),
        "image_encoder": (SiglipVisionModel, lambda: SiglipVisionConfig(**fu.IMAGE_ENCODER_CONFIG)),
    }[name]
    with init_empty_weights():
        return cls._from_config(config(), torch_dtype=torch.float16)


def expected_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """{key: shape} the loader's model takes with strict=True (persistent parameters and buffers)."""
    return {k: tuple(v.shape) for k, v in meta_model(name).state_dict().items()}


def random_state_dict(shapes: dict, dtype, device: str = "cuda", seed: int = 0) -> dict:
    """Random tensors of `shapes` in `dtype`, drawn on `device`, returned in CPU memory."""
    import math

    import torch

    gen = torch.Generator(device=device).manual_seed(seed)
    sd = {}
    for key, shape in shapes.items():
        if key.endswith("position_ids"):
            t = torch.arange(shape[-1], device=device).expand(shape).clone()
        elif key.endswith(".bias") or (len(shape) <= 1 and not key.endswith(".weight")):
            t = torch.zeros(shape, dtype=dtype, device=device)
        elif len(shape) <= 1:
            t = torch.ones(shape, dtype=dtype, device=device)
        else:
            fan_in = math.prod(shape[1:])
            t = torch.empty(shape, dtype=dtype, device=device).normal_(0.0, min(0.02, fan_in**-0.5), generator=gen)
        sd[key] = t.to("cpu")
    return sd


def write_model(name: str, path: Path, device: str = "cuda", seed: int = 0) -> int:
    """Write model `name` to `path` (one fp16 safetensors file); returns its parameter count."""
    import torch
    from safetensors.torch import save_file

    sd = random_state_dict(expected_shapes(name), torch.float16, device=device, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(sd, str(tmp), metadata={"format": "pt", "note": "musubi-workspace smoke: random weights"})
    tmp.replace(path)
    return sum(t.numel() for t in sd.values())


# ---------------------------------------------------------------------------------------------------------
# Tokenizers (tokenizers; no torch)
# ---------------------------------------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-to-character table (what ByteLevel and CLIP's BPE use)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def template_pieces() -> list[str]:
    """The pre-tokenizer pieces of musubi-tuner's prompt templates (special tokens left out), byte-level encoded."""
    import regex
    from musubi_tuner.hunyuan_model.text_encoder import PROMPT_TEMPLATE

    table = _bytes_to_unicode()
    pattern = "(" + "|".join(regex.escape(s) for s in LLAMA_SPECIAL) + ")"
    pieces: list[str] = []
    for entry in PROMPT_TEMPLATE.values():
        for part in regex.split(pattern, entry["template"].replace("{}", "")):
            if part and part not in LLAMA_SPECIAL:
                for p in regex.findall(LLAMA_SPLIT, part):
                    enc = "".join(table[b] for b in p.encode("utf-8"))
                    if enc not in pieces:
                        pieces.append(enc)
    return pieces


def llama_tokenizer_files(folder: Path) -> None:
    """tokenizer.json, tokenizer_config.json, special_tokens_map.json of the LLaMA stand-in."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    table = _bytes_to_unicode()
    vocab: dict[str, int] = {table[b]: i for i, b in enumerate(sorted(table))}
    merges: list[tuple[str, str]] = []
    for piece in template_pieces():
        cur = piece[0]
        for ch in piece[1:]:
            nxt = cur + ch
            if nxt not in vocab:
                merges.append((cur, ch))
                vocab[nxt] = len(vocab)
            cur = nxt
    # ignore_merges: a piece that is in the vocabulary is one token (as in LLaMA 3's tokenizer.json), whatever
    # the merges would make of it.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    data = json.loads(tok.to_str())
    # The special tokens in the model's vocabulary too, at their real ids: tokenizers numbers added tokens after
    # the vocabulary unless it holds them (added here, not before to_str, which warns about the gap in ids).
    specials = {**LLAMA_SPECIAL, LLAMA_PAD[0]: LLAMA_PAD[1]}
    data["model"]["vocab"].update(specials)
    data["added_tokens"] = [
        {
            "id": i,
            "content": s,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for s, i in sorted(specials.items(), key=lambda kv: kv[1])
    ]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    config = {
        "tokenizer_class": "LlamaTokenizerFast",
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|end_of_text|>",
        "pad_token": LLAMA_PAD[0],
        "add_bos_token": True,
        "add_eos_token": False,
        "padding_side": "right",
        "model_max_length": 131072,
        "clean_up_tokenization_spaces": True,
        "note": "musubi-workspace smoke: a stand-in, not the real LLaMA 3 tokenizer",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(
        json.dumps(
            {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "pad_token": LLAMA_PAD[0]}, indent=2
        )
    )


def clip_tokenizer_files(folder: Path) -> None:
    """vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json of the CLIP stand-in."""
    chars = [c for _, c in sorted(_bytes_to_unicode().items())]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    vocab.update({CLIP_BOS[0]: CLIP_BOS[1], CLIP_EOS[0]: CLIP_EOS[1]})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2 (musubi-workspace smoke stand-in: no merges)\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "bos_token": CLIP_BOS[0],
        "eos_token": CLIP_EOS[0],
        "unk_token": CLIP_EOS[0],
        "pad_token": CLIP_EOS[0],
        "model_max_length": 77,
        "do_lower_case": True,
        "note": "musubi-workspace smoke: a stand-in, not the real CLIP tokenizer",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(
        json.dumps(
            {"bos_token": CLIP_BOS[0], "eos_token": CLIP_EOS[0], "unk_token": CLIP_EOS[0], "pad_token": CLIP_EOS[0]},
            indent=2,
        )
    )


def hub_snapshot(hub_cache: Path) -> Path:
    """The snapshot folder of the stand-in tokenizers in a hub cache (HF_HUB_CACHE)."""
    return hub_cache / ("models--" + HUB_REPO.replace("/", "--")) / "snapshots" / HUB_REVISION


def write_tokenizers(hub_cache: Path) -> Path:
    repo = hub_cache / ("models--" + HUB_REPO.replace("/", "--"))
    snap = hub_snapshot(hub_cache)
    llama_tokenizer_files(snap / "tokenizer")
    clip_tokenizer_files(snap / "tokenizer_2")
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(HUB_REVISION)
    return snap


# ---------------------------------------------------------------------------------------------------------
# Making what is missing
# ---------------------------------------------------------------------------------------------------------


def _ready(marker: Path) -> bool:
    return marker.exists() and marker.read_text().strip() == FORMAT


def make(folder: Path, hub_cache: Path, dit_folder: Path, device: str = "cuda", seed: int = 0) -> None:
    """Make what is missing; one line per part with its time."""
    from musubi_workspace.tune.synthetic import CacheLayout, Plan, write_dit

    plan = Plan(folder=dit_folder, layout=CacheLayout(width=512, height=512), items=0, seed=seed)
    if plan.is_ready(caches=False):
        print(f"[smoke] dit: reusing {plan.dit}", flush=True)
    else:
        t = time.time()
        n = write_dit(plan.dit, plan.dit_config, device=device, seed=seed)
        plan.marker(False).write_text(plan.fingerprint(False))
        print(f"[smoke] dit: {n / 1e9:.2f}B parameters written to {plan.dit} in {time.time() - t:.0f} s", flush=True)
    for name, file in FILES.items():
        path = folder / file
        marker = path.with_suffix(".complete")
        if _ready(marker) and path.exists():
            print(f"[smoke] {name}: reusing {path}", flush=True)
            continue
        t = time.time()
        n = write_model(name, path, device=device, seed=seed)
        marker.write_text(FORMAT)
        print(f"[smoke] {name}: {n / 1e9:.2f}B parameters written to {path} in {time.time() - t:.0f} s", flush=True)
    marker = hub_cache / f".{FORMAT}-tokenizers.complete"
    if _ready(marker):
        print(f"[smoke] tokenizers: reusing {hub_snapshot(hub_cache)}", flush=True)
    else:
        snap = write_tokenizers(hub_cache)
        marker.write_text(FORMAT)
        print(f"[smoke] tokenizers: stand-ins of {HUB_REPO} (tokenizer, tokenizer_2) written to {snap}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m musubi_workspace.smoke.random_models", description=__doc__.splitlines()[0]
    )
    p.add_argument("--folder", required=True, help="where the VAE, text encoders and image encoder go")
    p.add_argument("--hub-cache", required=True, help="the Hugging Face hub cache for the tokenizers (HF_HUB_CACHE)")
    p.add_argument("--dit-folder", required=True, help="make bench's folder (the random DiT is shared)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    make(Path(a.folder), Path(a.hub_cache), Path(a.dit_folder), device=a.device, seed=a.seed)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
