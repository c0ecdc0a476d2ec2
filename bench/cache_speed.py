"""How long `make cache` takes to say "up to date" on 1,000 one-frame items (3,000 images).

Builds a throwaway workspace in a temporary folder: configs/v1 of this repository pointed at a JSONL dataset of
1,000 items drawn with Pillow (a 512x768 target and two controls each, as in the shipped example), empty model
files, and the recording stand-ins of tests/bin on PATH in place of musubi-tuner's caching scripts. Then it runs
the real `ws cache` (what `make cache` calls):

1. the first run: every item is hashed and "encoded" by the stand-ins;
2. the "up to date" run, timed (best and median of --repeat), which is what a user waits for after editing nothing;
3. the in-process planning alone (`cache_state.plan`), and planning with the hash cache dropped (every image read
   and hashed again: the cost after a copy that changed every modification time).

Run: `.venv/bin/python bench/cache_speed.py [--items 1000] [--repeat 5]`.
The test suite runs it at a small size (tests/test_bench.py), so a change that breaks it fails `make test`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
STANDINS = REPO / "tests" / "bin"
WS = Path(sys.executable).parent / "ws"


def build(root: Path, n: int) -> None:
    shutil.copytree(REPO / "configs" / "v1", root / "configs" / "v1")
    import tomllib

    from musubi_workspace.model_files import write_placeholders

    write_placeholders(root, tomllib.loads((root / "configs/v1/config.toml").read_text()))
    data = root / "datasets" / "bench"
    for sub in ("target", "control"):
        (data / sub).mkdir(parents=True)
    lines = []
    for i in range(n):
        for path, colour in (
            (f"target/i{i:04d}.png", (i % 256, 40, 90)),
            (f"control/i{i:04d}_0.png", (90, i % 256, 40)),
            (f"control/i{i:04d}_1.png", (40, 90, i % 256)),
        ):
            img = Image.new("RGB", (512, 768), colour)
            ImageDraw.Draw(img).text((10, 10), f"{i}", fill=(255, 255, 255))
            img.save(data / path, compress_level=1)
        lines.append(
            {
                "image_path": f"datasets/bench/target/i{i:04d}.png",
                "control_path_0": f"datasets/bench/control/i{i:04d}_0.png",
                "control_path_1": f"datasets/bench/control/i{i:04d}_1.png",
                "caption": f"Item {i}: the figure now wears the shirt from the reference image.",
            }
        )
    (data / "train.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    ds = (
        (root / "configs/v1/dataset.toml")
        .read_text()
        .replace("datasets/example-1f/train.jsonl", "datasets/bench/train.jsonl")
    )
    (root / "configs/v1/dataset.toml").write_text(ds)
    # The training data's cache is measured: without configs/v1's validation set (its two items are not written here).
    config = root / "configs/v1/config.toml"
    config.write_text(config.read_text().replace('\nvalidation = "validation/dataset.toml"\n', "\n"))
    # The held-out sample images the prompt line names (the pre-flight check of `ws cache` reads prompts.txt).
    (data / "samples").mkdir()
    for name, colour in (("start", (200, 30, 30)), ("ref", (30, 30, 200))):
        Image.new("RGB", (512, 768), colour).save(data / "samples" / f"{name}.png", compress_level=1)
    prompts = root / "configs/v1/prompts.txt"
    prompts.write_text(prompts.read_text().replace("datasets/example-1f/samples/sample01_", "datasets/bench/samples/"))


def ws_cache(root: Path, env: dict) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    r = subprocess.run([str(WS), "cache", "--config", "v1"], cwd=root, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"ws cache failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return dt, r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ws-cache-bench-") as tmp:
        root = Path(tmp) / "workspace"
        t = time.perf_counter()
        build(root, a.items)
        print(f"built {a.items} items ({3 * a.items} images) in {time.perf_counter() - t:.1f} s")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WS_", "STANDIN_"))}
        env.update(
            WS_ROOT=str(root),
            WS_RECORD=str(Path(tmp) / "record.jsonl"),
            PATH=os.pathsep.join([str(STANDINS), str(WS.parent), env.get("PATH", "")]),
        )
        dt, r = ws_cache(root, env)
        print(f"first `ws cache` (hash everything, stand-ins write {2 * a.items} files): {dt:.2f} s")
        times = []
        for _ in range(a.repeat):
            dt, r = ws_cache(root, env)
            assert "up to date, nothing to run" in r.stderr, r.stderr
            times.append(dt)
        # The caching scripts ran once, on the first run (each run record also asks nvidia-smi for the GPU model).
        calls = [json.loads(l)["prog"] for l in (Path(tmp) / "record.jsonl").read_text().splitlines()]
        calls = [c for c in calls if c != "nvidia-smi"]
        assert calls == ["fpack_cache_latents", "fpack_cache_text_encoder_outputs"], calls
        print(
            f"`ws cache` when up to date (whole process, pre-flight checks included): best {min(times):.2f} s, median {statistics.median(times):.2f} s over {a.repeat} runs"
        )

        os.environ["WS_ROOT"] = str(root)
        os.chdir(root)
        from musubi_workspace.config import Config
        from musubi_workspace.paths import Workspace
        from musubi_workspace.runs import cache_plan as cache_state

        cfg = Config.load(Workspace(root), root / "configs/v1/config.toml")
        t = time.perf_counter()
        p = cache_state.plan(cfg)
        warm = time.perf_counter() - t
        assert p.up_to_date
        manifest = root / "cache/v1/example-1f" / cache_state.MANIFEST
        data = json.loads(manifest.read_text())
        data["hashes"] = {}
        manifest.write_text(json.dumps(data))
        t = time.perf_counter()
        p = cache_state.plan(cfg)
        cold = time.perf_counter() - t
        assert p.up_to_date
        print(
            f"planning alone: {warm * 1000:.0f} ms with the hash cache, {cold:.2f} s reading and hashing all {3 * a.items} images"
        )


if __name__ == "__main__":
    main()
