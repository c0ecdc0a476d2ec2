"""The samples musubi-tuner renders while training, found in `{output_dir}/sample/`, and their grids.

File names: `{output_name}_{tag}_{NN}_{YYYYmmddHHMMSS}[_{seed}]` + `.mp4` (video) or `_000.png` (one frame), where
tag is `{step:06d}` for step samples and `e{epoch:06d}` for epoch samples (`sample_at_first` writes `e000000`) and
NN is the prompt's index in sample_prompts. A video is shown as its first, middle and last frame; reading .mp4
needs PyAV (installed with the train extra); without it the cell says so.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

# Longest side of a thumbnail in the grids and the page, in pixels.
THUMB = 256
FRAME_NAMES = ("first", "middle", "last")


@dataclass(frozen=True)
class Sample:
    version: str
    prompt: int
    row: tuple[int, int]  # sort key: (0, 0) before training, (1, step), (2, epoch)
    stamp: str
    path: Path

    @property
    def is_video(self) -> bool:
        return self.path.suffix == ".mp4"


def row_label(row: tuple[int, int]) -> str:
    kind, n = row
    return "start" if kind == 0 else f"step {n}" if kind == 1 else f"epoch {n}"


def find_samples(version: str, sample_dir: Path, output_name: str) -> list[Sample]:
    """The version's samples; a tag rendered twice (a resumed run restarts at step 0) keeps the newest file."""
    if not sample_dir.is_dir():
        return []
    prefix = re.escape(output_name + "_") if output_name else ""
    pattern = re.compile(rf"^{prefix}(e?)(\d{{6,}})_(\d{{2,}})_(\d{{14}})(?:_\d+)?(\.mp4|_000\.png)$")
    newest: dict[tuple, Sample] = {}
    for p in sample_dir.iterdir():
        m = pattern.match(p.name)
        if not m or not p.is_file():
            continue
        epoch, n, nn, stamp = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
        row = (0, 0) if epoch and n == 0 else (2, n) if epoch else (1, n)
        s = Sample(version, nn, row, stamp, p)
        key = (nn, row)
        if key not in newest or newest[key].stamp < stamp:
            newest[key] = s
    return sorted(newest.values(), key=lambda s: (s.prompt, s.row))


def thumbnail(img: Image.Image) -> Image.Image:
    img = img.convert("RGB")
    img.thumbnail((THUMB, THUMB))
    return img


def frames(sample: Sample) -> list[Image.Image] | str:
    """Thumbnails to show: the image, or a video's first, middle and last frame; a str says why none."""
    if not sample.is_video:
        try:
            with Image.open(sample.path) as img:
                return [thumbnail(img)]
        except OSError as e:
            return f"image not shown: cannot read {sample.path.name} ({e.__class__.__name__})"
    try:
        import av
    except ImportError:
        return "video not shown: reading .mp4 needs PyAV (comes with the train extra; or `uv pip install av`)"
    try:
        with av.open(str(sample.path)) as c:
            count = c.streams.video[0].frames or sum(1 for p in c.demux(video=0) if p.size)
        wanted = {0: 0, (count - 1) // 2: 1, count - 1: 2}
        picked: dict[int, Image.Image] = {}
        last = None
        with av.open(str(sample.path)) as c:
            for i, frame in enumerate(c.decode(video=0)):
                if i in wanted:
                    picked[wanted[i]] = thumbnail(frame.to_image())
                last = frame
            if last is not None and 2 not in picked:  # the container's frame count was off: take the true last frame
                picked[2] = thumbnail(last.to_image())
    except (av.error.FFmpegError, IndexError, ValueError) as e:
        return f"video not shown: cannot read {sample.path.name} ({e.__class__.__name__})"
    if not picked:
        return f"video not shown: {sample.path.name} has no frames"
    return [picked[k] for k in sorted(picked)]


def font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)  # a scalable font (Pillow >= 10.1; the floor is 11.3)


def grid(prompt: int, versions: list[str], rows: list[tuple[int, int]], cells: dict, path: Path) -> None:
    """One prompt's samples as a PNG: rows are steps, columns versions; `cells[(row, version)]` are the thumbnails
    (a list of images) or a sentence why there are none."""
    gap, label_w, head_h = 6, 110, 34
    widths = [sum(i.width for i in c) + gap * (len(c) - 1) for c in cells.values() if isinstance(c, list)]
    heights = [max(i.height for i in c) for c in cells.values() if isinstance(c, list)]
    cell_w, cell_h = max(widths, default=THUMB), max(heights, default=THUMB // 2)
    W = label_w + len(versions) * (cell_w + gap) + gap
    H = head_h + len(rows) * (cell_h + gap) + gap
    canvas = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(canvas)
    big, small = font(18), font(12)
    draw.text((gap, 8), f"prompt {prompt:02d}", fill="black", font=big)
    for j, v in enumerate(versions):
        draw.text((label_w + j * (cell_w + gap) + gap, 8), v, fill="black", font=big)
    for i, row in enumerate(rows):
        y = head_h + i * (cell_h + gap)
        draw.text((gap, y + cell_h // 2 - 9), row_label(row), fill="black", font=big)
        for j, v in enumerate(versions):
            x = label_w + j * (cell_w + gap) + gap
            cell = cells.get((row, v))
            if isinstance(cell, list):
                for img in cell:
                    canvas.paste(img, (x, y))
                    x += img.width + gap
            else:
                draw.rectangle((x, y, x + cell_w - 1, y + cell_h - 1), outline="#cccccc")
                text = cell or "no sample"
                for k, line in enumerate(textwrap.wrap(text, max(12, cell_w // 7))):
                    draw.text((x + 6, y + 6 + k * 15), line, fill="#884400" if cell else "#888888", font=small)
    canvas.save(path)

