"""What the two FramePack caching stand-ins share: reading a dataset config the way musubi-tuner does (image
datasets only) and naming cache files exactly as it names them (architecture `fp`).

Independent of the workspace's own code on purpose: the stand-ins play musubi-tuner, so the tests compare the
workspace's idea of the dataset with a second reading of it. Stdlib only (the stand-in may run on any python3);
image sizes come from the PNG header, or Pillow for other formats.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import struct
import tomllib

IMAGE_EXTENSIONS = [".png", ".jpg", ".jpeg", ".webp", ".bmp", ".PNG", ".JPG", ".JPEG", ".WEBP", ".BMP", ".avif", ".AVIF"]
VIDEO_EXTENSIONS = [".mp4", ".webm", ".avi", ".mkv", ".mov"]


def option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def image_size(path: str) -> tuple[int, int]:
    """(width, height) of the original image, as `Image.open(path).size` gives it."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return struct.unpack(">II", head[16:24])
    from PIL import Image  # only for other formats

    with Image.open(path) as img:
        return img.size


def items(dataset_config: str) -> list[dict]:
    """Every item of every dataset: cache dir, item path, caption, video or not (stdlib re-reading of the TOML).

    Videos are not decoded: their latent file gets a fixed section and size (`_00000-001-0000_0512x0512`)."""
    with open(dataset_config, "rb") as f:
        cfg = tomllib.load(f)
    general = cfg.get("general", {})
    out = []
    for ds in cfg.get("datasets", []):
        cache_dir = ds.get("cache_directory") or ds.get("image_directory")
        ext = ds.get("caption_extension", general.get("caption_extension"))
        if ds.get("video_jsonl_file"):
            with open(ds["video_jsonl_file"], encoding="utf-8") as f:
                for line in f:
                    data = json.loads(line)
                    out.append({"cache_dir": cache_dir, "path": data["video_path"], "caption": data["caption"], "video": True})
        elif ds.get("image_jsonl_file"):
            with open(ds["image_jsonl_file"], encoding="utf-8") as f:
                for line in f:
                    data = json.loads(line)
                    out.append({"cache_dir": cache_dir, "path": data["image_path"], "caption": data["caption"]})
        elif ds.get("image_directory") or ds.get("video_directory"):
            video = bool(ds.get("video_directory"))
            folder = ds.get("video_directory") or ds["image_directory"]
            cache_dir = ds.get("cache_directory") or folder
            paths = sorted({p for e in (VIDEO_EXTENSIONS if video else IMAGE_EXTENSIONS) for p in glob.glob(os.path.join(glob.escape(folder), "*" + e))})
            bases = {os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(folder, "*" + ext))}
            for p in paths:
                if video or os.path.splitext(os.path.basename(p))[0] in bases:
                    with open(os.path.splitext(p)[0] + ext, encoding="utf-8") as f:
                        out.append({"cache_dir": cache_dir, "path": p, "caption": f.read().strip(), "video": video})
    return out


def stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


class Writer:
    """Writes cache files; STANDIN_DIE_AFTER_<PROG>=n: after n files, half-writes one more and is killed."""

    def __init__(self, prog: str):
        self.prog = prog
        self.die_after = os.environ.get(f"STANDIN_DIE_AFTER_{prog.upper()}")
        self.written: list[str] = []

    def write(self, path: str, content: dict) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        data = json.dumps(content).encode()
        if self.die_after is not None and len(self.written) >= int(self.die_after):
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])  # a truncated file, as a kill during save leaves it
            print(f"{self.prog} (stand-in): killed while writing {path}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        with open(path, "wb") as f:
            f.write(data)
        self.written.append(path)


def remove_unproduced(cache_dirs: set[str], produced: set[str], suffix: str, keep: bool) -> None:
    """Like musubi-tuner after encoding: delete every `*<suffix>` the config did not produce, unless --keep_cache."""
    for d in sorted(cache_dirs):
        for f in glob.glob(os.path.join(d, "*" + suffix)):
            if os.path.normpath(f) not in produced and not keep:
                os.remove(f)
                print(f"Removed old cache file: {f}")
