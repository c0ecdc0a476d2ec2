"""Stand-in for `python -m musubi_tuner.fpack_cache_text_encoder_outputs`: writes `{stem}_fp_te.safetensors` per
item; with --skip_existing skips the files that existed when it started; then deletes the `*_fp_te.safetensors`
files no item produced unless --keep_cache (cache_text_encoder_outputs.py at the pinned commit)."""

from __future__ import annotations

import glob
import os

from _fpack_dataset import TE_TENSORS, Writer, items, option, remove_unproduced, stem


def behave(argv: list[str]) -> int | None:
    if os.environ.get("STANDIN_EXIT_FPACK_CACHE_TEXT_ENCODER_OUTPUTS", "0") != "0":
        return None
    all_items = items(option(argv, "--dataset_config"))
    dirs = {i["cache_dir"] for i in all_items}
    existing = {os.path.normpath(f) for d in dirs for f in glob.glob(os.path.join(d, "*_fp_te.safetensors"))}
    writer = Writer("fpack_cache_text_encoder_outputs")
    produced, encoded = set(), []
    for item in all_items:
        path = os.path.normpath(os.path.join(item["cache_dir"], f"{stem(item['path'])}_fp_te.safetensors"))
        produced.add(path)
        if "--skip_existing" in argv and path in existing:
            continue
        writer.write(path, {"caption": item["caption"], "argv": argv}, TE_TENSORS)
        encoded.append(stem(item["path"]))
    print(f"fpack_cache_text_encoder_outputs (stand-in): encoded {len(encoded)}: {' '.join(encoded)}", flush=True)
    remove_unproduced(dirs, produced, "_fp_te.safetensors", "--keep_cache" in argv)
    return None
