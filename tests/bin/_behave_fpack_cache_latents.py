"""Stand-in for `python -m musubi_tuner.fpack_cache_latents`: writes `{stem}_{W:04d}x{H:04d}_fp.safetensors`
(W x H the original image size) per image item; with --skip_existing skips items whose file exists; then deletes
the `*_fp.safetensors` files no item produced unless --keep_cache (encode_datasets_framepack at the pinned
commit). The file holds what it was made from, for the tests."""

from __future__ import annotations

import hashlib
import os

from _fpack_dataset import Writer, image_size, items, one_frame_latent_tensors, option, remove_unproduced, stem


def behave(argv: list[str]) -> int | None:
    if os.environ.get("STANDIN_EXIT_FPACK_CACHE_LATENTS", "0") != "0":
        return None
    skip = "--skip_existing" in argv
    writer = Writer("fpack_cache_latents")
    produced, dirs, encoded = set(), set(), []
    for item in items(option(argv, "--dataset_config")):
        if item.get("video"):
            path = os.path.join(item["cache_dir"], f"{stem(item['path'])}_00000-001-0000_0512x0512_fp.safetensors")
        else:
            w, h = image_size(item["path"])
            path = os.path.join(item["cache_dir"], f"{stem(item['path'])}_{w:04d}x{h:04d}_fp.safetensors")
        produced.add(os.path.normpath(path))
        dirs.add(item["cache_dir"])
        if skip and os.path.exists(path):
            continue
        sha = None
        if os.path.isfile(item["path"]):
            with open(item["path"], "rb") as f:
                sha = hashlib.sha256(f.read()).hexdigest()
        tensors = one_frame_latent_tensors(option(argv, "--dataset_config"), argv) if "--one_frame" in argv else None
        writer.write(path, {"image": item["path"], "sha256": sha, "argv": argv}, tensors)
        encoded.append(stem(item["path"]))
    print(f"fpack_cache_latents (stand-in): encoded {len(encoded)}: {' '.join(encoded)}", flush=True)
    remove_unproduced(dirs, produced, "_fp.safetensors", "--keep_cache" in argv)
    return None
