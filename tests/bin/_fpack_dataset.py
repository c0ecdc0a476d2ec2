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

IMAGE_EXTENSIONS = [
    ".png",
    ".jpg",
    ".jpeg",
    ".webp",
    ".bmp",
    ".PNG",
    ".JPG",
    ".JPEG",
    ".WEBP",
    ".BMP",
    ".avif",
    ".AVIF",
]
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
                    out.append(
                        {"cache_dir": cache_dir, "path": data["video_path"], "caption": data["caption"], "video": True}
                    )
        elif ds.get("image_jsonl_file"):
            with open(ds["image_jsonl_file"], encoding="utf-8") as f:
                for line in f:
                    data = json.loads(line)
                    out.append({"cache_dir": cache_dir, "path": data["image_path"], "caption": data["caption"]})
        elif ds.get("image_directory") or ds.get("video_directory"):
            video = bool(ds.get("video_directory"))
            folder = ds.get("video_directory") or ds["image_directory"]
            cache_dir = ds.get("cache_directory") or folder
            paths = sorted(
                {
                    p
                    for e in (VIDEO_EXTENSIONS if video else IMAGE_EXTENSIONS)
                    for p in glob.glob(os.path.join(glob.escape(folder), "*" + e))
                }
            )
            bases = {os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(folder, "*" + ext))}
            for p in paths:
                if video or os.path.splitext(os.path.basename(p))[0] in bases:
                    with open(os.path.splitext(p)[0] + ext, encoding="utf-8") as f:
                        out.append({"cache_dir": cache_dir, "path": p, "caption": f.read().strip(), "video": video})
    return out


def stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def safetensors(path: str, tensors: dict, metadata: dict | None = None) -> None:
    """A valid safetensors file of zeros: `tensors` is {key: (dtype, shape)} (dtypes F16, F32, I64, BOOL)."""
    import struct

    size = {"F16": 2, "BF16": 2, "F32": 4, "I64": 8, "BOOL": 1}
    header, offset = {}, 0
    for key, (dtype, shape) in tensors.items():
        n = size[dtype]
        for d in shape:
            n *= d
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)


def one_frame_latent_tensors(dataset_config: str, argv: list[str]) -> dict:
    """The keys and shapes musubi-tuner's one-frame latent cache holds (encode_and_save_batch_one_frame)."""
    with open(dataset_config, "rb") as f:
        cfg = tomllib.load(f)
    w, h = cfg["general"]["resolution"]
    ds = cfg["datasets"][0]
    n_clean = len(ds.get("fp_1f_clean_indices", [0])) + (0 if ds.get("fp_1f_no_post") else 1)
    lh, lw = h // 8, w // 8
    out = {
        f"latents_1x{lh}x{lw}_float16": ("F16", (16, 1, lh, lw)),
        f"latents_clean_1x{lh}x{lw}_float16": ("F16", (16, n_clean, lh, lw)),
        "image_embeddings_float16": ("F16", (729, 1152)),
        "latent_indices_int64": ("I64", (1,)),
        "clean_latent_indices_int64": ("I64", (n_clean,)),
    }
    if "--one_frame_no_2x" not in argv:
        out["clean_latent_2x_indices_int64"] = ("I64", (2,))
    if "--one_frame_no_4x" not in argv:
        out["clean_latent_4x_indices_int64"] = ("I64", (16,))
    return out


TE_TENSORS = {
    "llama_vec_float16": ("F16", (512, 4096)),
    "llama_attention_mask": ("BOOL", (512,)),
    "clip_l_pooler_float16": ("F16", (768,)),
}


class Writer:
    """Writes cache files; STANDIN_DIE_AFTER_<PROG>=n: after n files, half-writes one more and is killed."""

    def __init__(self, prog: str):
        self.prog = prog
        self.die_after = os.environ.get(f"STANDIN_DIE_AFTER_{prog.upper()}")
        self.written: list[str] = []

    def write(self, path: str, content: dict, tensors: dict | None = None) -> None:
        """The file holds `content` as JSON; with STANDIN_REAL_FILES=1 a safetensors file of `tensors` (zeros)
        with `content` in its metadata."""
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if os.environ.get("STANDIN_REAL_FILES") == "1" and tensors:
            safetensors(path, tensors, {"standin": json.dumps(content)})
            self.written.append(path)
            return
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
