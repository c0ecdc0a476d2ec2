"""`make models`: download the FramePack checkpoints a config names, and the hub files musubi-tuner fetches at
run time (tokenizers), so later runs work offline."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from musubi_workspace.config import Config
from musubi_workspace.errors import WorkspaceError

# Where each model file of the shipped configs comes from: local path (relative to the root) -> (repo, file).
# The local path is models/<folder>/<file in repo>, as huggingface_hub's local_dir lays it out.
SOURCES = {
    "models/framepack": "lllyasviel/FramePackI2V_HY",
    "models/framepack_f1": "lllyasviel/FramePack_F1_I2V_HY_20250503",
    "models/hunyuanvideo": "hunyuanvideo-community/HunyuanVideo",
    "models/hunyuanvideo_repackaged": "Comfy-Org/HunyuanVideo_repackaged",
    "models/sigclip": "Comfy-Org/sigclip_vision_384",
}
# musubi-tuner loads these with from_pretrained(repo, subfolder=...) in text-encoder caching, sampling and
# generation: they must be in the Hugging Face cache before a pod goes offline.
RUNTIME_HUB_FILES = ("hunyuanvideo-community/HunyuanVideo", ["tokenizer/*", "tokenizer_2/*"])
SHARD_RE = re.compile(r"^(.*)-(\d{5})-of-(\d{5})(\.safetensors)$")


@dataclass(frozen=True)
class Download:
    repo: str
    filename: str
    local_dir: str

    @property
    def target(self) -> str:
        return f"{self.local_dir}/{self.filename}"


def plan(cfg: Config) -> list[Download]:
    """Downloads for every model path of the config (all shards of a sharded DiT)."""
    out: list[Download] = []
    for key in ("dit", "vae", "text_encoder1", "text_encoder2", "image_encoder"):
        value = cfg.get(key)
        if not isinstance(value, str) or not value:
            continue
        rel = Path(value).as_posix()
        match = next(((d, r) for d, r in SOURCES.items() if rel.startswith(d + "/")), None)
        if match is None:
            raise WorkspaceError(
                f"{cfg.where(key)}: {key} = {value!r} is not under a folder `make models` knows "
                f"({', '.join(SOURCES)}); download it yourself or use one of those paths"
            )
        folder, repo = match
        filename = rel[len(folder) + 1 :]
        m = SHARD_RE.match(filename)
        names = (
            [f"{m.group(1)}-{i:05d}-of-{m.group(3)}{m.group(4)}" for i in range(1, int(m.group(3)) + 1)]
            if m
            else [filename]
        )
        out += [Download(repo, n, folder) for n in names]
    return out


def download(cfg: Config, dry_run: bool = False) -> None:
    items = plan(cfg)
    root = cfg.ws.root
    for d in items:
        state = "present" if (root / d.target).exists() else "to download"
        print(f"{d.target}  <- {d.repo}/{d.filename}  ({state})")
    repo, patterns = RUNTIME_HUB_FILES
    print(f"Hugging Face cache <- {repo} {' '.join(patterns)} (tokenizers musubi-tuner loads at run time)")
    if dry_run:
        return
    from huggingface_hub import hf_hub_download, snapshot_download

    token = os.environ.get("HF_TOKEN") or None
    for d in items:
        if (root / d.target).exists():
            continue
        hf_hub_download(d.repo, d.filename, local_dir=str(root / d.local_dir), token=token)
    snapshot_download(repo, allow_patterns=patterns, token=token)
    print("All model files present. Runs can now set HF_HUB_OFFLINE=1.")
