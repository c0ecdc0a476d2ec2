"""The image facts of a check cut short (issue 25): written as they come and at Ctrl-C, so the next check decodes
only the rest. A real `ws check` over a few hundred Pillow JPEGs, interrupted with SIGINT mid-way."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from conftest import VENV
from PIL import Image

from checks.test_checks import DS

N = 300
FOLDER = "datasets/many"


def many_images(w) -> None:
    """A dataset of N noisy 1024x1024 JPEGs (one image's bytes written N times: each file is decoded on its own)
    with captions, in place of the example's."""
    folder = w.root / FOLDER
    folder.mkdir(parents=True)
    noise = Image.frombytes("RGB", (1024, 1024), os.urandom(1024 * 1024 * 3))
    noise.save(folder / "img0000.jpg", quality=95)
    data = (folder / "img0000.jpg").read_bytes()
    for i in range(N):
        (folder / f"img{i:04d}.jpg").write_bytes(data)
        (folder / f"img{i:04d}.txt").write_text(f"a noisy picture number {i}\n")
    head = w.read(DS).split("[[datasets]]")[0]
    w.write(
        DS,
        head
        + f'[[datasets]]\nimage_directory = "{FOLDER}"\ncaption_extension = ".txt"\ncache_directory = "cache/v1/many"\n',
    )


def ours(cache) -> dict[str, list]:
    return {k: v for k, v in cache.items() if f"/{FOLDER}/" in k}


def test_a_check_interrupted_while_decoding_keeps_the_facts_and_the_next_decodes_only_the_rest(ready):
    many_images(ready)
    cache = ready.root / ".cache" / "ws" / "images.json"
    cmd = [str(VENV / "bin" / "ws"), "check", "--config", "configs/v1/config.toml", "--dry-run", "1"]
    p = subprocess.Popen(cmd, cwd=ready.root, env=ready.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and p.poll() is None:  # the first periodic save, about 1 s into decoding
        if cache.exists() and ours(json.loads(cache.read_text())["images"]):
            break
        time.sleep(0.02)
    assert p.poll() is None, "the check ended before it could be interrupted: make the images slower to decode"
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, out + err
    assert err.splitlines()[-1] == "interrupted", err
    assert "Traceback" not in out + err, err

    kept = ours(json.loads(cache.read_text())["images"])  # valid JSON, by json.loads
    assert 0 < len(kept) < N, len(kept)
    assert all(e[4] and not e[5] for e in kept.values())  # each a finished decode: a digest, no error
    # Mark what the first check wrote: the next check re-decoding one would overwrite its digest.
    data = json.loads(cache.read_text())
    for i, key in enumerate(kept):
        data["images"][key][4] = f"kept{i:028d}"
    cache.write_text(json.dumps(data))

    r = ready.ws("check", "--config", "configs/v1/config.toml", "--dry-run", "1", timeout=300)
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    after = ours(json.loads(cache.read_text())["images"])
    assert len(after) == N
    assert {k: after[k][4] for k in kept} == {k: f"kept{i:028d}" for i, k in enumerate(kept)}  # not decoded again
    real = {e[4] for k, e in after.items() if k not in kept}
    assert len(real) == 1 and not real & {f"kept{i:028d}" for i in range(len(kept))}  # the rest decoded now
