"""How long `ws check` takes on a big one-frame dataset: 1,000 items of 512x768, each with two control images.

Builds the dataset itself in a temporary workspace (3,000 PNGs of noisy, distinct content, so decoding costs what
photos cost), then runs the real `ws check` twice: the first run decodes and hashes every image, the second reads
the facts from .cache/ws/images.json. Prints both times; exits non-zero if the check finds anything.

    .venv/bin/python bench/check_speed.py [--items 1000] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
SIZE = (512, 768)
WS = Path(sys.executable).parent / "ws"


def _noise_canvas(seed: int) -> Image.Image:
    random.seed(seed)
    return Image.effect_noise((SIZE[0] * 2, SIZE[1] * 2), 48).convert("RGB")


def _write(args: tuple[Path, int]) -> None:
    """One item: target and two controls, cut from a noise canvas at item-specific places, with shapes."""
    folder, i = args
    canvas = _noise_canvas(i // 50)
    rnd = random.Random(i)
    for name in (f"target/{i:04d}.png", f"control/{i:04d}_0.png", f"control/{i:04d}_1.png"):
        x, y = rnd.randrange(SIZE[0]), rnd.randrange(SIZE[1])
        img = canvas.crop((x, y, x + SIZE[0], y + SIZE[1]))
        d = ImageDraw.Draw(img)
        for _ in range(12):
            a, b = rnd.randrange(SIZE[0]), rnd.randrange(SIZE[1])
            d.ellipse((a, b, a + rnd.randrange(20, 200), b + rnd.randrange(20, 200)), fill=tuple(rnd.randrange(256) for _ in "rgb"))
        img.save(folder / name)


def _write_sample(folder: Path) -> None:
    canvas = _noise_canvas(10**6)
    canvas.crop((0, 0, *SIZE)).save(folder / "start.png")
    canvas.crop((SIZE[0], SIZE[1], SIZE[0] * 2, SIZE[1] * 2)).save(folder / "ref.png")


def build(root: Path, items: int) -> None:
    for name in ("Makefile", "pyproject.toml", "configs"):
        src = REPO / name
        shutil.copytree(src, root / name) if src.is_dir() else shutil.copy2(src, root / name)
    data = root / "datasets" / "bench"
    (data / "target").mkdir(parents=True)
    (data / "control").mkdir()
    with ProcessPoolExecutor() as pool:
        list(pool.map(_write, [(data, i) for i in range(items)], chunksize=16))
    lines = [
        {"image_path": f"datasets/bench/target/{i:04d}.png", "control_path_0": f"datasets/bench/control/{i:04d}_0.png",
         "control_path_1": f"datasets/bench/control/{i:04d}_1.png", "caption": f"item {i}"}
        for i in range(items)
    ]
    (data / "train.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    ds = root / "configs" / "v1" / "dataset.toml"
    ds.write_text(ds.read_text().replace("datasets/example-1f/train.jsonl", "datasets/bench/train.jsonl"))
    # Held-out sample images, as the example's prompt line wants them.
    (data / "samples").mkdir()
    _write_sample(data / "samples")
    prompts = root / "configs" / "v1" / "prompts.txt"
    prompts.write_text(prompts.read_text().replace("datasets/example-1f/samples/sample01_", "datasets/bench/samples/"))
    cfg = (root / "configs" / "v1" / "config.toml").read_text()
    import tomllib

    options = tomllib.loads(cfg)
    for key in ("dit", "vae", "text_encoder1", "text_encoder2", "image_encoder"):
        p = root / options[key]
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()
    for i in (2, 3):
        (root / "models" / "framepack" / f"diffusion_pytorch_model-0000{i}-of-00003.safetensors").touch()


def timed_check(root: Path) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "WS_ROOT": str(root), "WANDB_MODE": "offline"}
    t = time.perf_counter()
    r = subprocess.run([str(WS), "check", "--config", "v1"], cwd=root, env=env, capture_output=True, text=True)
    return time.perf_counter() - t, r


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=1000)
    p.add_argument("--keep", action="store_true", help="keep the temporary workspace")
    a = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ws-check-bench-"))
    try:
        t = time.perf_counter()
        build(root, a.items)
        size = sum(f.stat().st_size for f in (root / "datasets").rglob("*.png"))
        print(f"built {a.items} items ({3 * a.items} PNGs of {SIZE[0]}x{SIZE[1]}, {size / 1e9:.2f} GB) in {time.perf_counter() - t:.1f} s")
        first, r1 = timed_check(root)
        second, r2 = timed_check(root)
        print(f"ws check, first run (decodes every image): {first:.2f} s")
        print(f"ws check, second run (image facts cached): {second:.2f} s")
        print(f"CPU cores: {os.cpu_count()}")
        if r1.returncode or r2.returncode:
            print(r1.stdout[-3000:], r1.stderr[-2000:], sep="\n")
            return 1
        return 0
    finally:
        if a.keep:
            print(f"workspace kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
