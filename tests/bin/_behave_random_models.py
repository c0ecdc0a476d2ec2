"""Stand-in for `python -m musubi_workspace.smoke.random_models` (the random models and tokenizers of `make smoke`,
made on a GPU): writes small safetensors files (one number per tensor, with the tensors `make check` looks for)
where the real one writes the models, and the stand-in tokenizers, with the same names and markers. STANDIN_EXIT_RANDOM_MODELS=<n> makes it fail."""

from __future__ import annotations

import os
from pathlib import Path

from _fpack_dataset import option

NAMES = {
    "hunyuan_video_vae_random_fp16.safetensors": "vae",
    "llava_llama3_random_fp16.safetensors": "text_encoder1",
    "clip_l_random_fp16.safetensors": "text_encoder2",
    "sigclip_vision_384_random_fp16.safetensors": "image_encoder",
}


def _safetensors(path: Path, key: str) -> None:
    from musubi_workspace.model_files import TENSORS, write_placeholder

    write_placeholder(path, TENSORS[key][1])


def behave(argv: list[str]) -> int | None:
    if os.environ.get("STANDIN_EXIT_RANDOM_MODELS", "0") != "0":
        return None
    folder, hub, dit = (Path(option(argv, o)) for o in ("--folder", "--hub-cache", "--dit-folder"))
    for d in (folder, hub, dit):
        d.mkdir(parents=True, exist_ok=True)
    _safetensors(dit / "framepack_dit_random_bf16.safetensors", "dit")
    for n, key in NAMES.items():
        _safetensors(folder / n, key)
    snap = hub / "models--hunyuanvideo-community--HunyuanVideo" / "snapshots" / "standin"
    for sub in ("tokenizer", "tokenizer_2"):
        (snap / sub).mkdir(parents=True, exist_ok=True)
        (snap / sub / "tokenizer_config.json").write_text("{}")
    print(f"random_models (stand-in): models in {folder}, tokenizers in {hub}", flush=True)
    return None
