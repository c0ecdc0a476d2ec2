"""How long `ws check` takes on a big one-frame dataset: 1,000 items of 512x768, each with two control images.

Builds the dataset itself in a temporary workspace (3,000 PNGs of noisy, distinct content, so decoding costs what
photos cost), then runs the real `ws check` twice: the first run decodes and hashes every image, the second reads
the facts from .cache/ws/images.json. Prints both times; exits non-zero if the check finds anything.

    .venv/bin/python bench/check_speed.py [--items 1000] [--size 512x768] [--keep]

The test suite runs it at a small size (tests/test_bench.py), so a change that breaks it fails `make test`.
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


def _noise_canvas(seed: int, size: tuple[int, int]) -> Image.Image:
    random.seed(seed)
    return Image.effect_noise((size[0] * 2, size[1] * 2), 48).convert("RGB")


def _write(args: tuple[Path, int, tuple[int, int]]) -> None:
    """One item: target and two controls, cut from a noise canvas at item-specific places, with shapes."""
    folder, i, size = args
    canvas = _noise_canvas(i // 50, size)
    rnd = random.Random(i)
    for name in (f"target/{i:04d}.png", f"control/{i:04d}_0.png", f"control/{i:04d}_1.png"):
        x, y = rnd.randrange(size[0]), rnd.randrange(size[1])
        img = canvas.crop((x, y, x + size[0], y + size[1]))
        d = ImageDraw.Draw(img)
        for _ in range(12):
            a, b = rnd.randrange(size[0]), rnd.randrange(size[1])
            d.ellipse(
                (a, b, a + rnd.randrange(20, 200), b + rnd.randrange(20, 200)),
                fill=tuple(rnd.randrange(256) for _ in "rgb"),
            )
        img.save(folder / name)


def _write_sample(folder: Path, size: tuple[int, int]) -> None:
    canvas = _noise_canvas(10**6, size)
    canvas.crop((0, 0, *size)).save(folder / "start.png")
    canvas.crop((size[0], size[1], size[0] * 2, size[1] * 2)).save(folder / "ref.png")


def build(root: Path, items: int, size: tuple[int, int] = SIZE) -> None:
    for name in ("Makefile", "pyproject.toml", "configs"):
        src = REPO / name
        shutil.copytree(src, root / name) if src.is_dir() else shutil.copy2(src, root / name)
    data = root / "datasets" / "bench"
    (data / "target").mkdir(parents=True)
    (data / "control").mkdir()
    with ProcessPoolExecutor() as pool:
        list(pool.map(_write, [(data, i, size) for i in range(items)], chunksize=16))
    lines = [
        {
            "image_path": f"datasets/bench/target/{i:04d}.png",
            "control_path_0": f"datasets/bench/control/{i:04d}_0.png",
            "control_path_1": f"datasets/bench/control/{i:04d}_1.png",
            "caption": f"item {i}",
        }
        for i in range(items)
    ]
    (data / "train.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    ds = root / "configs" / "v1" / "dataset.toml"
    ds.write_text(ds.read_text().replace("datasets/example-1f/train.jsonl", "datasets/bench/train.jsonl"))
    # The training data's check is measured: without configs/v1's validation set (its items are not written here).
    config = root / "configs" / "v1" / "config.toml"
    config.write_text(config.read_text().replace('\nvalidation = "validation/dataset.toml"\n', "\n"))
    # Held-out sample images, as the example's prompt line wants them.
    (data / "samples").mkdir()
    _write_sample(data / "samples", size)
    prompts = root / "configs" / "v1" / "prompts.txt"
    prompts.write_text(prompts.read_text().replace("datasets/example-1f/samples/sample01_", "datasets/bench/samples/"))
    cfg = (root / "configs" / "v1" / "config.toml").read_text()
    import tomllib

    from musubi_workspace.model_files import write_placeholders

    write_placeholders(root, tomllib.loads(cfg))


def timed_check(root: Path) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "WS_ROOT": str(root), "WANDB_MODE": "offline"}
    t = time.perf_counter()
    r = subprocess.run([str(WS), "check", "--config", "v1"], cwd=root, env=env, capture_output=True, text=True)
    return time.perf_counter() - t, r


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=1000)
    p.add_argument("--size", default=f"{SIZE[0]}x{SIZE[1]}", help="WxH of every image (the default is the example's)")
    p.add_argument("--keep", action="store_true", help="keep the temporary workspace")
    a = p.parse_args()
    size = tuple(int(v) for v in a.size.split("x"))
    root = Path(tempfile.mkdtemp(prefix="ws-check-bench-"))
    try:
        t = time.perf_counter()
        build(root, a.items, size)
        total = sum(f.stat().st_size for f in (root / "datasets").rglob("*.png"))
        print(
            f"built {a.items} items ({3 * a.items} PNGs of {size[0]}x{size[1]}, {total / 1e9:.2f} GB) in {time.perf_counter() - t:.1f} s"
        )
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
