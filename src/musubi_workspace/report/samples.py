"""The samples musubi-tuner renders while training, found in `{output_dir}/sample/`, and their grids.

File names: `{output_name}_{tag}_{NN}_{YYYYmmddHHMMSS}[_{seed}]` + `.mp4` (video) or `_000.png` (one frame), where
tag is `{step:06d}` for step samples and `e{epoch:06d}` for epoch samples (`sample_at_first` writes `e000000`) and
NN is the prompt's index in sample_prompts. A run of `make resume` from a state at step S is named
`{output_name}-resume{S}` and counts steps and epochs from 0 again: its `000100` is step S + 100, its `e000000`
step S. A video is shown as its first, middle and last frame; reading .mp4 needs PyAV (installed with the train
extra); without it the cell says so.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

# Longest side of a thumbnail in the grids and the page, in CSS pixels; the page's images hold twice as many
# pixels (sharp on HiDPI screens) and link to the full-size sample.
THUMB = 256
THUMB_PIXELS = 2 * THUMB
FRAME_NAMES = ("first", "middle", "last")


@dataclass(frozen=True)
class Sample:
    version: str
    prompt: int
    # The row it belongs in: (0, 0, 0) before training; (1, step, 0) at a step (the true step, a resumed run's
    # offset added); (2, epoch, offset) at the end of an epoch of the run that started at step `offset`.
    row: tuple[int, int, int]
    stamp: str
    path: Path
    offset: int = 0  # the steps before the run that made it (`-resume{S}` in its name), 0 for a fresh run

    @property
    def is_video(self) -> bool:
        return self.path.suffix == ".mp4"


def row_label(row: tuple[int, int, int]) -> str:
    kind, n, offset = row
    if kind == 0:
        return "start"
    if kind == 1:
        return f"step {n}"
    return f"epoch {n}" + (f" after the resume at step {offset}" if offset else "")


def find_samples(version: str, sample_dir: Path, output_name: str) -> list[Sample]:
    """The version's samples, a resumed run's (`{output_name}-resume{S}_...`) included at their true steps; a row
    rendered twice (a run restarted from scratch, or a resume's first sample at the step of its state) keeps the
    newest file."""
    if not sample_dir.is_dir():
        return []
    prefix = rf"{re.escape(output_name)}(?:-resume(\d+))?_" if output_name else "()"
    pattern = re.compile(rf"^{prefix}(e?)(\d{{6,}})_(\d{{2,}})_(\d{{14}})(?:_\d+)?(\.mp4|_000\.png)$")
    newest: dict[tuple, Sample] = {}
    for p in sample_dir.iterdir():
        m = pattern.match(p.name)
        if not m or not p.is_file():
            continue
        offset = int(m.group(1) or 0)
        epoch, n, nn, stamp = m.group(2), int(m.group(3)), int(m.group(4)), m.group(5)
        if epoch and n == 0:  # sample_at_first: before the run's first step
            row = (1, offset, 0) if offset else (0, 0, 0)
        else:
            row = (2, n, offset) if epoch else (1, n + offset, 0)
        s = Sample(version, nn, row, stamp, p, offset)
        key = (nn, row)
        if key not in newest or newest[key].stamp < stamp:
            newest[key] = s
    return sorted(newest.values(), key=lambda s: (s.prompt, s.row))


def thumbnail(img: Image.Image) -> Image.Image:
    img = img.convert("RGB")
    img.thumbnail((THUMB_PIXELS, THUMB_PIXELS))
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


def grid(
    prompt: int,
    versions: list[str],
    rows: list,
    cells: dict,
    path: Path,
    texts: dict[str, str] | None = None,
    labels: dict | None = None,
) -> None:
    """One prompt's samples as a PNG: the prompt's text on top (once, or under each version where they differ),
    rows are steps, columns versions; `cells[(row, version)]` are the frames (a list of images) or a sentence why
    there are none; `labels[row]` names a row (else `row_label`)."""
    texts, labels = texts or {}, labels or {}
    gap, label_w = 6, 150
    small_w = 7  # about the width of one character of the small font, for wrapping
    cells = {k: ([_fit(i) for i in c] if isinstance(c, list) else c) for k, c in cells.items()}
    widths = [sum(i.width for i in c) + gap * (len(c) - 1) for c in cells.values() if isinstance(c, list)]
    heights = [max(i.height for i in c) for c in cells.values() if isinstance(c, list)]
    cell_w, cell_h = max(widths, default=THUMB), max(heights, default=THUMB // 2)
    # a long column name (`v1 (earlier 2026-12-03 10:20Z)`) wraps to its column, at least 16 characters wide
    names = {v: textwrap.wrap(v, max(16, cell_w // 10)) or [v] for v in versions}
    cell_w = max([cell_w] + [round(font(18).getlength(line)) + gap for n in names.values() for line in n])
    W = label_w + len(versions) * (cell_w + gap) + gap
    shared = len(set(texts.values())) == 1 and len(texts) == len(versions)
    top = textwrap.wrap(next(iter(texts.values())), max(20, (W - 2 * gap) // small_w)) if shared else []
    per_version = (
        {}
        if shared
        else {
            v: textwrap.wrap(texts.get(v, "(not in this version's prompts)"), max(12, cell_w // small_w))
            for v in versions
        }
    )
    y_names = 32 + 15 * len(top) + (6 if top else 0)
    names_h = 22 * max((len(n) for n in names.values()), default=1)
    head_h = y_names + names_h + 2 + 15 * max((len(t) for t in per_version.values()), default=0) + 4
    H = head_h + len(rows) * (cell_h + gap) + gap
    canvas = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(canvas)
    big, small = font(18), font(12)
    draw.text((gap, 8), f"prompt {prompt:02d}", fill="black", font=big)
    for k, line in enumerate(top):
        draw.text((gap, 32 + 15 * k), line, fill="#333333", font=small)
    for j, v in enumerate(versions):
        x = label_w + j * (cell_w + gap) + gap
        for k, line in enumerate(names[v]):
            draw.text((x, y_names + 22 * k), line, fill="black", font=big)
        for k, line in enumerate(per_version.get(v, [])):
            draw.text((x, y_names + names_h + 2 + 15 * k), line, fill="#333333", font=small)
    for i, row in enumerate(rows):
        y = head_h + i * (cell_h + gap)
        for k, line in enumerate(textwrap.wrap(labels.get(row) or row_label(row), 18)):
            draw.text((gap, y + cell_h // 2 - 9 + 18 * k), line, fill="black", font=font(16))
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
                for k, line in enumerate(textwrap.wrap(text, max(12, cell_w // small_w))):
                    draw.text((x + 6, y + 6 + k * 15), line, fill="#884400" if cell else "#888888", font=small)
    canvas.save(path)


def _fit(img: Image.Image) -> Image.Image:
    """A frame at the grid's size (THUMB on its longest side)."""
    img = img.copy()
    img.thumbnail((THUMB, THUMB))
    return img
