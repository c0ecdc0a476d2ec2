"""The shipped example dataset: a handful of small kisekaeichi-style items drawn with Pillow (no downloads).

One-frame (configs/v1, datasets/example-1f): each item has a start image (a figure in a grey shirt), a reference image (a shirt of some colour alone), and a
target image (the same figure wearing that shirt), with a caption. A held-out start/reference pair feeds the
sample prompt, so samples measure generalisation rather than recall. Written to datasets/example-1f/, which
configs/v1 points at.

Validation (validation/dataset.toml, validation/example-1f): two more items of the same kind, in colours, skins
and backgrounds no training item has, held out from training and shared by every version: the set
`[workspace] validation` of configs/v1 names, whose loss compares versions. Its media lie beside its dataset.toml
in validation/ (not in datasets/), so the held-out items are one folder apart from anything a training dataset.toml
points at, and the set (definition and items) is one thing to copy to a pod.

Video (configs/example-video, datasets/example-video): a few clips of a shape turning 360 degrees at constant
speed, each a folder of 37 frames (musubi-tuner reads a folder of images as a video), with captions.

Existing files are never overwritten.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

from musubi_workspace.paths import Workspace

FOLDER = "datasets/example-1f"
SIZE = (512, 768)  # width, height: the example's resolution
ITEMS = [
    # name, shirt colour, colour word, skin, background
    ("item01", (200, 40, 40), "red", (240, 200, 170), (210, 225, 240)),
    ("item02", (40, 90, 200), "blue", (200, 150, 110), (235, 230, 210)),
    ("item03", (40, 160, 70), "green", (250, 215, 185), (225, 215, 240)),
    ("item04", (230, 180, 30), "yellow", (160, 110, 80), (215, 240, 225)),
]
HELD_OUT = ("sample01", (150, 60, 180), "purple", (235, 195, 160), (240, 220, 220))
GREY = (128, 128, 128)


def _figure(shirt, skin, background) -> Image.Image:
    w, h = SIZE
    img = Image.new("RGB", SIZE, background)
    d = ImageDraw.Draw(img)
    d.ellipse((w * 0.35, h * 0.10, w * 0.65, h * 0.30), fill=skin)  # head
    d.rectangle((w * 0.30, h * 0.32, w * 0.70, h * 0.62), fill=shirt)  # shirt
    d.rectangle((w * 0.33, h * 0.62, w * 0.47, h * 0.90), fill=(50, 50, 70))  # legs
    d.rectangle((w * 0.53, h * 0.62, w * 0.67, h * 0.90), fill=(50, 50, 70))
    return img


def _reference(shirt) -> Image.Image:
    w, h = SIZE
    img = Image.new("RGB", SIZE, (255, 255, 255))
    d = ImageDraw.Draw(img)
    d.rectangle((w * 0.25, h * 0.30, w * 0.75, h * 0.65), fill=shirt)
    d.rectangle((w * 0.10, h * 0.30, w * 0.25, h * 0.45), fill=shirt)  # sleeves
    d.rectangle((w * 0.75, h * 0.30, w * 0.90, h * 0.45), fill=shirt)
    return img


def _save(img: Image.Image, path: Path, written: list[Path]) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    written.append(path)


def caption(word: str) -> str:
    return f"The figure now wears the {word} shirt from the reference image."


def make_example_dataset(ws: Workspace) -> list[Path]:
    """Write the example dataset (missing files only); returns the files written."""
    base = ws.root / FOLDER
    written: list[Path] = []
    lines = []
    for name, shirt, word, skin, bg in ITEMS:
        start, ref, target = (
            base / "control" / f"{name}_0.png",
            base / "control" / f"{name}_1.png",
            base / "target" / f"{name}.png",
        )
        _save(_figure(GREY, skin, bg), start, written)
        _save(_reference(shirt), ref, written)
        _save(_figure(shirt, skin, bg), target, written)
        lines.append(
            {
                "image_path": f"{FOLDER}/target/{name}.png",
                "control_path_0": f"{FOLDER}/control/{name}_0.png",
                "control_path_1": f"{FOLDER}/control/{name}_1.png",
                "caption": caption(word),
            }
        )
    name, shirt, word, skin, bg = HELD_OUT
    _save(_figure(GREY, skin, bg), base / "samples" / f"{name}_start.png", written)
    _save(_reference(shirt), base / "samples" / f"{name}_ref.png", written)
    jsonl = base / "train.jsonl"
    if not jsonl.exists():
        jsonl.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
        written.append(jsonl)
    return written


VALIDATION_TOML = "validation/dataset.toml"
VALIDATION_FOLDER = "validation/example-1f"
VALIDATION_ITEMS = [
    # name, shirt colour, colour word, skin, background: none of them a training item's (ITEMS) or the sample's
    ("val01", (240, 120, 20), "orange", (225, 185, 150), (200, 235, 235)),
    ("val02", (20, 150, 150), "teal", (180, 130, 95), (240, 235, 200)),
]
# The validation set's dataset.toml: the training dataset's layout and resolution (configs/v1/dataset.toml), its
# own items and cache directory.
VALIDATION_DATASET = f"""\
# validation/dataset.toml: the held-out validation set, shared by every version ([workspace] validation in
# config.toml). A musubi-tuner dataset config; `make cache` caches it beside the training data, `make check`
# checks it like training data. Never train on these items: the loss would measure recall.
#
# Change the set and its numbers no longer compare with earlier ones (each is recorded with the set's hash).

[general]
# The training data's resolution: the loss compares at the size the model is trained at.
resolution = [512, 768]
# Items per batch when caching; the validation loss is computed per item, so it does not depend on it.
batch_size = 1
enable_bucket = false
num_repeats = 1

[[datasets]]
# JSONL with image_path, control_path_0, control_path_1, caption: the training data's kisekaeichi layout.
image_jsonl_file = "{VALIDATION_FOLDER}/validation.jsonl"
# Its own cache, shared by every version (the cache of one version's settings serves the next with the same).
cache_directory = "cache/validation/example-1f"
# The same one-frame indices as the training data (configs/v1/dataset.toml).
fp_1f_clean_indices = [0, 10]
fp_1f_target_index = 1
fp_1f_no_post = true
"""


def make_validation_set(ws: Workspace) -> list[Path]:
    """Write the example's validation set (missing files only); returns the files written."""
    base = ws.root / VALIDATION_FOLDER
    written: list[Path] = []
    lines = []
    for name, shirt, word, skin, bg in VALIDATION_ITEMS:
        _save(_figure(GREY, skin, bg), base / "control" / f"{name}_0.png", written)
        _save(_reference(shirt), base / "control" / f"{name}_1.png", written)
        _save(_figure(shirt, skin, bg), base / "target" / f"{name}.png", written)
        lines.append(
            {
                "image_path": f"{VALIDATION_FOLDER}/target/{name}.png",
                "control_path_0": f"{VALIDATION_FOLDER}/control/{name}_0.png",
                "control_path_1": f"{VALIDATION_FOLDER}/control/{name}_1.png",
                "caption": caption(word),
            }
        )
    for path, text in (
        (base / "validation.jsonl", "".join(json.dumps(line) + "\n" for line in lines)),
        (ws.root / VALIDATION_TOML, VALIDATION_DATASET),
    ):
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            written.append(path)
    return written


VIDEO_FOLDER = "datasets/example-video"
VIDEO_SIZE = (256, 256)
VIDEO_FRAMES = 37  # one FramePack section: latent window 9 x 4 frames + the first frame
CLIPS = [
    # name, shape colour, colour word, background
    ("clip01", (200, 40, 40), "red", (230, 230, 230)),
    ("clip02", (40, 90, 200), "blue", (245, 235, 215)),
    ("clip03", (40, 160, 70), "green", (220, 225, 245)),
]
VIDEO_HELD_OUT = ("sample01", (150, 60, 180), "purple", (240, 225, 225))


def _turned(colour, background, angle: float) -> Image.Image:
    """An arrow-like shape turned by `angle` degrees about the centre."""
    import math

    w, h = VIDEO_SIZE
    img = Image.new("RGB", VIDEO_SIZE, background)
    d = ImageDraw.Draw(img)
    cx, cy, r = w / 2, h / 2, w * 0.35
    points = [(r, 0), (-r * 0.6, r * 0.45), (-r * 0.3, 0), (-r * 0.6, -r * 0.45)]
    a = math.radians(angle)
    d.polygon(
        [(cx + x * math.cos(a) - y * math.sin(a), cy + x * math.sin(a) + y * math.cos(a)) for x, y in points],
        fill=colour,
    )
    return img


def video_caption(word: str) -> str:
    return f"A {word} arrow rotates 360 degrees clockwise at constant speed."


def make_video_example(ws: Workspace) -> list[Path]:
    """Write the video example dataset (missing files only); returns the files written."""
    base = ws.root / VIDEO_FOLDER
    written: list[Path] = []
    lines = []
    for name, colour, word, bg in CLIPS:
        for i in range(VIDEO_FRAMES):
            _save(
                _turned(colour, bg, 360.0 * i / (VIDEO_FRAMES - 1)),
                base / "clips" / name / f"frame_{i:03d}.png",
                written,
            )
        lines.append({"video_path": f"{VIDEO_FOLDER}/clips/{name}", "caption": video_caption(word)})
    name, colour, word, bg = VIDEO_HELD_OUT
    _save(_turned(colour, bg, 0.0), base / "samples" / f"{name}_start.png", written)
    jsonl = base / "train.jsonl"
    if not jsonl.exists():
        jsonl.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
        written.append(jsonl)
    return written
