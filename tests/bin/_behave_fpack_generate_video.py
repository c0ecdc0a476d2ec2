"""Stand-in for `python -m musubi_tuner.fpack_generate_video`: with STANDIN_REAL_FILES=1 writes one PNG per
prompt line of --from_file into --save_path (`{YYYYmmdd-HHMMSS}_{seed}.png`, a one-frame result)."""

from __future__ import annotations

import os
import time

from _fpack_dataset import option


def behave(argv: list[str]) -> int | None:
    if os.environ.get("STANDIN_REAL_FILES") != "1":
        return None
    from PIL import Image

    save = option(argv, "--save_path")
    prompts = option(argv, "--from_file")
    lines = [l for l in open(prompts, encoding="utf-8").read().splitlines() if l.strip() and not l.startswith("#")]
    os.makedirs(save, exist_ok=True)
    for i, _ in enumerate(lines):
        Image.new("RGB", (64, 96), (120, 60, 180)).save(
            os.path.join(save, f"{time.strftime('%Y%m%d-%H%M%S')}_{1234 + i}.png")
        )
    print(f"fpack_generate_video (stand-in): {len(lines)} image(s) in {save}", flush=True)
    return None
