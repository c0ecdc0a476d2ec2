"""Checks 3 and 4: dataset.toml against musubi-tuner's dataset schema, its sources, and the data itself.

`scan(ctx)` reads dataset.toml the way musubi-tuner's ConfigSanitizer and datasources do, reports what they would
reject (or, worse, silently drop), and returns the training items it found: target image, control images,
caption. The content checks and the prompt check read the same scan (`ctx.memo`).
"""

from __future__ import annotations

import errno
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import suggest
from .errors import WorkspaceError
from .findings import ERROR, WARNING
from .image_cache import ImageCache, ImageFacts
from .options import schema_of

if TYPE_CHECKING:
    from .findings import Context

_IMAGE = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".avif")
IMAGE_EXTENSIONS = frozenset(_IMAGE + tuple(e.upper() for e in _IMAGE))
_VIDEO = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".flv", ".wmv", ".m4v", ".mpg", ".mpeg")
VIDEO_EXTENSIONS = frozenset(_VIDEO + tuple(e.upper() for e in _VIDEO))
DEFAULT_RESOLUTION = (960, 544)  # musubi-tuner's dataset default, [width, height]
SOURCE_KEYS = ("image_directory", "image_jsonl_file", "video_directory", "video_jsonl_file")
# How far an image's aspect ratio may differ from the resolution's before centre-cropping is worth a warning.
ASPECT_TOLERANCE = 0.02


@dataclass
class Item:
    """One training item as musubi-tuner would read it."""

    where: str  # datasets/x/train.jsonl:3 or datasets/x/img.png
    target: Path
    controls: list[Path]
    caption: str | None
    dataset: int


@dataclass
class Dataset:
    index: int  # 1-based, in the order of [[datasets]]
    kind: str  # "image" or "video"
    values: dict  # [general] merged with the entry
    where: str  # dataset.toml:line of its [[datasets]] header
    items: list[Item] = field(default_factory=list)
    has_controls: bool = False
    # keys of this dataset (or of [general]) whose value was rejected: what depends on them is not checked further
    rejected: set = field(default_factory=set)

    @property
    def resolution(self) -> tuple[int, int]:
        r = self.values.get("resolution", DEFAULT_RESOLUTION)
        return (r, r) if isinstance(r, int) else (int(r[0]), int(r[1]))

    @property
    def batch_size(self) -> int:
        b = self.values.get("batch_size", 1)
        return int(b) if isinstance(b, int) else 1


@dataclass
class Scan:
    path: Path | None = None  # set once dataset.toml parsed
    shown: str = ""
    data: dict = field(default_factory=dict)
    text: str = ""
    lines: dict = field(default_factory=dict)
    datasets: list[Dataset] = field(default_factory=list)
    images: dict[Path, ImageFacts] = field(default_factory=dict)

    @property
    def items(self) -> list[Item]:
        return [i for d in self.datasets for i in d.items]

    def at(self, table: Any, key: str | None = None) -> str:
        """dataset.toml:line of a key (or of a table's header when key is None)."""
        line = self.lines.get((table, key))
        return f"{self.shown}:{line}" if line else self.shown


def toml_lines(text: str) -> dict:
    """(table, key) -> line: table is None (top level), a table name, or ("datasets", i) for the i-th [[datasets]]
    (1-based); key None is the table's header line."""
    out: dict = {}
    table: Any = None
    counts: dict[str, int] = {}
    key_re = re.compile(r"""^\s*("[^"]+"|'[^']+'|[A-Za-z0-9_-]+)\s*=""")
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if s.startswith("[["):
            name = s.strip("[] ").split("#")[0].strip("[] ")
            counts[name] = counts.get(name, 0) + 1
            table = (name, counts[name])
            out.setdefault((table, None), n)
        elif s.startswith("["):
            table = s.split("#")[0].strip().strip("[]").strip()
            out.setdefault((table, None), n)
        else:
            m = key_re.match(line)
            if m:
                out.setdefault((table, m.group(1).strip("\"'")), n)
    return out


def value_problem(value: Any, t: str) -> str | None:
    """Why a dataset value fails musubi-tuner's voluptuous schema, or None."""
    is_int = isinstance(value, int)  # voluptuous's int accepts TOML booleans too
    if t == "int":
        return None if is_int else f"must be a whole number, got {value!r}"
    if t == "float":
        return None if isinstance(value, float) else f"must be a decimal number such as 30.0 (musubi-tuner rejects {value!r})"
    if t == "str":
        return None if isinstance(value, str) else f"must be a string in quotes, got {value!r}"
    if t == "bool":
        return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
    if t == "int_or_pair":
        ok = (is_int and not isinstance(value, bool)) or (
            isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        )
        return None if ok else f"must be a whole number or [width, height], got {value!r}"
    if t.startswith("list["):
        inner = {"list[int]": int, "list[str]": str}.get(t, object)
        ok = isinstance(value, list) and all(isinstance(v, inner) for v in value)
        return None if ok else f"must be a list ({t}), got {value!r}"
    return None


# FramePack's LLaMA text encoder reads this many tokens of a caption (frame_pack/hunyuan.encode_prompt_conds,
# max_length=256); the rest is cut. Every whitespace-separated word is at least one token, so more words than
# this are cut for certain.
CAPTION_TOKENS = 256


def range_problem(key: str, value: Any) -> str | None:
    """A dataset value of the right type that musubi-tuner still cannot use (0 or negative): None when fine."""
    if key in ("resolution", "control_resolution"):
        sizes = value if isinstance(value, list) else [value]
        if any(isinstance(v, int) and v <= 0 for v in sizes):
            return f"= {value!r}: width and height must be above 0 (musubi-tuner divides by them), e.g. [512, 768]"
    if key in ("batch_size", "num_repeats") and isinstance(value, int) and value <= 0:
        what = "items per batch" if key == "batch_size" else "times each item is seen per epoch"
        return f"= {value}: it must be 1 or more ({what}); {value} leaves the dataset with nothing to train"
    return None


def _problem(value: Any, key: str, t: str) -> str | None:
    return value_problem(value, t) or range_problem(key, value)


def scan(ctx: "Context") -> Scan:
    """The dataset as musubi-tuner sees it; findings go to ctx.report (check 3). Run once per check run."""
    return ctx.memo("scan", lambda: _scan(ctx))


def _scan(ctx: "Context") -> Scan:
    cfg, report = ctx.cfg, ctx.report
    s = Scan()
    path = cfg.path_of("dataset_config") if isinstance(cfg.get("dataset_config"), str) else None
    if path is None or not path.is_file():
        return s  # reported by the options and files checks
    shown = cfg.ws.rel(path)
    if path.suffix.lower() != ".toml":
        report.error(shown, "the workspace reads dataset configs as TOML; rename it to .toml (musubi-tuner also takes .json)")
        return s
    try:
        data, text = cfg.load_dataset()
    except WorkspaceError as e:
        where, _, message = e.message.partition(": ")
        report.error(where, message)
        return s
    s.path, s.shown, s.data, s.text, s.lines = path, shown, data, text, toml_lines(text)
    schema = schema_of(ctx)["dataset"]

    for key in data:
        if key not in ("general", "datasets"):
            report.error(s.at(key) if (key, None) in s.lines else s.at(None, key),
                         f"unknown top-level key `{key}`{suggest(key, ['general', 'datasets'])}; only [general] and [[datasets]] are allowed")
    general = data.get("general", {})
    if not isinstance(general, dict):
        report.error(s.at(None, "general"), "`general` must be a table ([general])")
        general = {}
    dataset_keys = set(schema["image"]) | set(schema["video"])
    for key, value in general.items():
        where = s.at("general", key)
        if key not in schema["general"]:
            if key in dataset_keys:
                report.error(where, f"`{key}` is not allowed in [general] (musubi-tuner rejects it); move it into each [[datasets]]")
            else:
                report.error(where, f"unknown key `{key}` in [general]{suggest(key, schema['general'])}; musubi-tuner rejects the file")
        elif problem := _problem(value, key, schema["general"][key]):
            report.error(where, f"`{key}` {problem}")
    # Only valid values go on (a wrong one is reported above and would only break what follows).
    general_ok = {k: v for k, v in general.items() if k in schema["general"] and not _problem(v, k, schema["general"][k])}
    general_rejected = {k for k in general if k in schema["general"] and k not in general_ok}

    entries = data.get("datasets", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        report.error(s.at(None, "datasets"), "`datasets` must be [[datasets]] tables")
        return s
    if not entries:
        report.error(s.shown, "no [[datasets]] entry: the dataset is empty; add one (see configs/v1/dataset.toml)")
        return s

    cache = ctx.memo("images", lambda: ImageCache(cfg.ws))
    for i, entry in enumerate(entries, 1):
        d = _dataset(ctx, s, schema, i, entry, general_ok)
        if d is not None:
            d.rejected |= general_rejected | {k for k in entry if k in schema[d.kind] and k not in d.values}
            s.datasets.append(d)
    _cache_directories(ctx, s)
    images = [p for item in s.items for p in (item.target, *item.controls) if p.suffix in IMAGE_EXTENSIONS]
    s.images = cache.facts(images)
    _images(ctx, s)
    for d in s.datasets:
        if not d.items:
            report.error(d.where, f"dataset {d.index} has no training items; add media with captions or fix its source")
    return s


def _dataset(ctx, s: Scan, schema: dict, i: int, entry: dict, general: dict) -> Dataset | None:
    report, ws = ctx.report, ctx.cfg.ws
    table = ("datasets", i)
    sources = [k for k in SOURCE_KEYS if k in entry]
    kind = "video" if any(k.startswith("video") for k in sources) else "image"
    header = s.at(table)
    if not sources:
        report.error(header, f"dataset {i} has no source; set one of {', '.join(SOURCE_KEYS)}")
        return None
    if len(sources) > 1:
        report.error(header, f"dataset {i} sets {' and '.join(sources)}; set only one (musubi-tuner would use {sources[0]} alone)")
    other = "image" if kind == "video" else "video"
    for key, value in entry.items():
        where = s.at(table, key)
        if key not in schema[kind]:
            if key in schema[other]:
                report.error(where, f"`{key}` is a key of {other} datasets; dataset {i} is an {kind} dataset ({sources[0]})")
            else:
                report.error(where, f"unknown key `{key}`{suggest(key, schema[kind])}; musubi-tuner rejects the file")
        elif problem := _problem(value, key, schema[kind][key]):
            report.error(where, f"`{key}` {problem}")
    values = {**general, **{k: v for k, v in entry.items() if k in schema[kind] and not _problem(v, k, schema[kind][k])}}
    d = Dataset(index=i, kind=kind, values=values, where=header)
    one_frame = ctx.cfg.get("one_frame") is True
    if kind == "image":
        indices = values.get("fp_1f_clean_indices")
        need = len(indices) if isinstance(indices, list) and indices else 1
        if one_frame and "fp_1f_target_index" not in entry:
            report.error(header, f"dataset {i}: one_frame needs fp_1f_target_index (caching fails without it); add `fp_1f_target_index = 1`")
        if one_frame and "fp_1f_clean_indices" not in entry:
            report.warn(header, f"dataset {i}: fp_1f_clean_indices is not set, so musubi-tuner uses [0] (one control image); set it to say so")
        if not one_frame:
            report.error(header, f"dataset {i} is an image dataset: FramePack trains on images only in one-frame mode; set `one_frame = true` in {ctx.cfg.shown}")
        if isinstance(values.get("image_directory"), str):
            _image_directory(ctx, s, d, ws.resolve(values["image_directory"]), values, need)
        elif isinstance(values.get("image_jsonl_file"), str):
            _image_jsonl(ctx, d, ws.resolve(values["image_jsonl_file"]), need)
        if one_frame and not d.has_controls and d.items:
            report.error(header, f"dataset {i}: one_frame needs control images (control_directory, or control_path in the JSONL); none found")
    else:
        if one_frame:
            report.error(header, f"dataset {i} is a video dataset, but one_frame = true trains on image datasets with control images only")
        if isinstance(values.get("video_directory"), str):
            _video_directory(ctx, d, ws.resolve(values["video_directory"]), values)
        elif isinstance(values.get("video_jsonl_file"), str):
            _video_jsonl(ctx, d, ws.resolve(values["video_jsonl_file"]))
    return d


def _media(folder: Path, extensions) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in extensions and p.is_file())


def broken_links(ctx, folder: Path, extensions, noun: str) -> None:
    """Symlinks in a source folder whose target is gone or that loop: musubi-tuner's glob lists them (it does not
    look behind a name), then fails on them when caching opens them. `_media` skips them, so they are said here."""
    ws = ctx.cfg.ws
    found = []
    for p in sorted(folder.iterdir()):
        if p.suffix not in extensions or not p.is_symlink() or p.exists():
            continue
        try:
            p.resolve(strict=True)
        except RuntimeError:  # a loop, before Python 3.13
            what = "is a symlink loop"
        except OSError as e:
            what = "is a symlink loop" if e.errno == errno.ELOOP else f"is a symlink to {os.readlink(p)}, which does not exist"
        else:  # pragma: no cover - exists() said it does not
            continue
        shown = f"{ws.rel(p.parent)}/{p.name}"  # the link itself (ws.rel would follow it)
        found.append((shown, f"{what}: musubi-tuner lists it and fails on it while caching; fix or remove the link"))
    ctx.report.listed(ERROR, found, f"{{n}} more broken {noun} links", ws.rel(folder))


def utf8_problem(path: Path) -> str | None:
    """musubi-tuner opens captions (and JSONL files) with encoding="utf-8": other bytes fail caching
    (UnicodeDecodeError). None when the file is UTF-8."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        return (f"is not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}): musubi-tuner fails on it "
                f"(UnicodeDecodeError) while caching; save it as UTF-8")
    return None


def _folder(ctx, d: Dataset, key: str, folder: Path) -> bool:
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "not found"
        ctx.report.error(d.where, f"dataset {d.index}: {key} {ctx.cfg.ws.rel(folder)} {what}; fix the path")
        return False
    return True


def missing_file(path: Path) -> str:
    """What to say of a path that should be an image file and is not one."""
    if path.is_dir():
        return "is a folder, not an image file; name the image in it"
    return "not found; fix the path (relative to the workspace root)"


def _read_caption(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace").strip()


def _captions(ctx, d: Dataset, media: list[Path], values: dict, noun: str, drops: bool) -> list[tuple[Path, str]]:
    """(media, caption) for media with a caption file; the others are reported (musubi-tuner drops images without
    a caption silently and fails on videos without one)."""
    ws = ctx.cfg.ws
    ext = values.get("caption_extension")
    if not ext:
        ctx.report.error(d.where, f"dataset {d.index}: caption_extension is not set, so caching fails (FileNotFoundError); add `caption_extension = \".txt\"`")
        return []
    found, missing, unreadable = [], [], []
    for m in media:
        cap = m.with_name(m.stem + ext)
        if cap.is_file():
            if problem := utf8_problem(cap):
                unreadable.append((ws.rel(cap), problem))
            found.append((m, _read_caption(cap)))
        elif cap.is_symlink():
            continue  # a broken link: broken_links says so (musubi-tuner counts it as a caption and fails on it)
        else:
            consequence = "musubi-tuner skips the image without a word" if drops else "caching fails on it"
            missing.append((ws.rel(m), f"no caption file {cap.name}: {consequence}; write one or remove the {noun}"))
    # A skipped image is a smaller dataset (a warning; none left is an error below); a video without one crashes.
    severity = WARNING if drops else ERROR
    ctx.report.listed(severity, missing, f"{{n}} more {noun}s without a caption file", ws.rel(media[0].parent) if media else d.where)
    ctx.report.listed(ERROR, unreadable, "{n} more captions that are not UTF-8", ws.rel(media[0].parent) if media else d.where)
    return found


def _image_directory(ctx, s: Scan, d: Dataset, folder: Path, values: dict, need: int) -> None:
    ws = ctx.cfg.ws
    if not _folder(ctx, d, "image_directory", folder):
        return
    caption_ext = values.get("caption_extension")
    broken_links(ctx, folder, IMAGE_EXTENSIONS | ({caption_ext} if isinstance(caption_ext, str) else set()), "image")
    captioned = _captions(ctx, d, _media(folder, IMAGE_EXTENSIONS), values, "image", drops=True)
    controls: dict[Path, list[Path]] = {}
    control_dir = values.get("control_directory")
    if isinstance(control_dir, str):
        cdir = ws.resolve(control_dir)
        if _folder(ctx, d, "control_directory", cdir):
            broken_links(ctx, cdir, IMAGE_EXTENSIONS, "control image")
            d.has_controls = True
            controls = match_controls([m for m, _ in captioned], _media(cdir, IMAGE_EXTENSIONS))
            short = [(ws.rel(m), f"{len(controls.get(m, []))} control image(s) in {ws.rel(cdir)}, {need} needed "
                      f"(named {m.stem}.png or {m.stem}_0.png, {m.stem}_1.png ...); caching fails on it")
                     for m, _ in captioned if len(controls.get(m, [])) < need]
            ctx.report.listed(ERROR, short, "{n} more images without enough control images", ws.rel(cdir))
    for m, caption in captioned:
        d.items.append(Item(ws.rel(m), m, controls.get(m, [])[:need], caption, d.index))


def match_controls(images: list[Path], candidates: list[Path]) -> dict[Path, list[Path]]:
    """musubi-tuner's control matching: for x.png, files named x.<ext> or x_<suffix>.<ext>, longest image names
    first (each control used once), the unsuffixed one first, then by the number after the last `_`."""
    pool = set(candidates)
    out: dict[Path, list[Path]] = {}
    for img in sorted(images, key=lambda p: len(p.name), reverse=True):
        stem = img.stem
        found = [p for p in pool if p.name.startswith(stem + ".") or p.name.startswith(stem + "_")]
        pool.difference_update(found)

        def order(p: Path) -> tuple[int, str]:
            if p.stem == stem:
                return (0, p.name)
            suffix = p.stem.rsplit("_", 1)[-1]
            return (int(suffix) + 1 if suffix.isdigit() else 10**9, p.name)

        if found:
            out[img] = sorted(found, key=order)
    return out


def _jsonl_lines(ctx, d: Dataset, path: Path, problems: list) -> list[tuple[int, dict]]:
    """(line number, object) of each JSONL line; blank and broken lines go to `problems` (musubi-tuner fails on
    them)."""
    shown = ctx.cfg.ws.rel(path)
    if not path.is_file():
        ctx.report.error(d.where, f"dataset {d.index}: {shown} not found; fix the path")
        return []
    out = []
    if problem := utf8_problem(path):
        ctx.report.error(shown, problem)
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                problems.append((n, "empty line: musubi-tuner fails on it (JSONDecodeError); remove it"))
                continue
            try:
                obj = json.loads(line.strip())
            except json.JSONDecodeError as e:
                problems.append((n, f"not valid JSON ({e.msg} at column {e.colno}); fix the line"))
                continue
            if not isinstance(obj, dict):
                problems.append((n, "expected a JSON object {\"image_path\": ..., \"caption\": ...}"))
                continue
            out.append((n, obj))
    return out


def _report_lines(ctx, shown: str, problems: list[tuple[int, str]]) -> None:
    """A JSONL file's problems in line order, the first few, then a count."""
    problems.sort(key=lambda p: p[0])
    ctx.report.listed(ERROR, [(f"{shown}:{n}", m) for n, m in problems], "{n} more problems in " + shown, shown)


def control_keys(obj: dict) -> list[str]:
    """A JSONL line's control keys in musubi-tuner's order: control_path first, then control_path_N by number."""
    numbered = sorted((k for k in obj if re.fullmatch(r"control_path_\d+", k)), key=lambda k: int(k.rsplit("_", 1)[1]))
    return (["control_path"] if "control_path" in obj else []) + numbered


def _image_jsonl(ctx, d: Dataset, path: Path, need: int) -> None:
    ws = ctx.cfg.ws
    shown = ws.rel(path)
    problems: list[tuple[int, str]] = []
    lines = _jsonl_lines(ctx, d, path, problems)
    d.has_controls = any(control_keys(obj) for _, obj in lines)
    for n, obj in lines:
        target = obj.get("image_path")
        if not isinstance(target, str) or not target:
            problems.append((n, "no \"image_path\"; every line needs the target image"))
            continue
        if not isinstance(obj.get("caption"), str):
            problems.append((n, "no \"caption\"; musubi-tuner fails on the line (KeyError): add one"))
            continue
        keys = control_keys(obj)
        if d.has_controls and len(keys) < need:
            problems.append((n, f"{len(keys)} control image(s), {need} needed (len(fp_1f_clean_indices)); caching fails on it"))
        elif len(keys) > need:
            ctx.report.warn(f"{shown}:{n}", f"{len(keys)} control images, but fp_1f_clean_indices uses {need}: {', '.join(keys[need:])} ignored")
        paths = [(k, obj[k]) for k in ["image_path", *keys[:need]]]
        bad = [(k, v) for k, v in paths if not isinstance(v, str) or not ws.resolve(v).is_file()]
        for k, v in bad:
            problems.append((n, f"{k} {v} {missing_file(ws.resolve(v)) if isinstance(v, str) else 'is not a path'}"))
        if not bad:
            d.items.append(Item(f"{shown}:{n}", ws.resolve(target), [ws.resolve(v) for _, v in paths[1:]], obj["caption"].strip(), d.index))
    _report_lines(ctx, shown, problems)


def _video_directory(ctx, d: Dataset, folder: Path, values: dict) -> None:
    if not _folder(ctx, d, "video_directory", folder):
        return
    caption_ext = values.get("caption_extension")
    broken_links(ctx, folder, VIDEO_EXTENSIONS | ({caption_ext} if isinstance(caption_ext, str) else set()), "video")
    for m, caption in _captions(ctx, d, _media(folder, VIDEO_EXTENSIONS), values, "video", drops=False):
        d.items.append(Item(ctx.cfg.ws.rel(m), m, [], caption, d.index))


def _video_jsonl(ctx, d: Dataset, path: Path) -> None:
    ws = ctx.cfg.ws
    shown = ws.rel(path)
    problems: list[tuple[int, str]] = []
    for n, obj in _jsonl_lines(ctx, d, path, problems):
        video = obj.get("video_path")
        if not isinstance(video, str) or not video:
            problems.append((n, "no \"video_path\"; every line needs one"))
        elif not isinstance(obj.get("caption"), str):
            problems.append((n, "no \"caption\"; musubi-tuner fails on the line (KeyError): add one"))
        elif not ws.resolve(video).exists():
            problems.append((n, f"video_path {video} not found; fix the path (relative to the workspace root)"))
        else:
            d.items.append(Item(f"{shown}:{n}", ws.resolve(video), [], obj["caption"].strip(), d.index))
    _report_lines(ctx, shown, problems)


def _cache_directories(ctx, s: Scan) -> None:
    seen: dict[str, int] = {}
    for d in s.datasets:
        v = d.values
        cache_dir = v.get("cache_directory")
        if cache_dir is None and ("image_jsonl_file" in v or "video_jsonl_file" in v):
            ctx.report.error(d.where, f"dataset {d.index}: a JSONL dataset needs cache_directory (caching fails without it); add `cache_directory = \"cache/...\"`")
            continue
        cache_dir = cache_dir or v.get("image_directory") or v.get("video_directory")
        if not isinstance(cache_dir, str):
            continue
        key = str(ctx.cfg.ws.resolve(cache_dir).resolve())
        if key in seen:
            ctx.report.error(d.where, f"dataset {d.index} caches into {cache_dir} like dataset {seen[key]} (musubi-tuner refuses); give each its own cache_directory")
        seen.setdefault(key, d.index)


def _images(ctx, s: Scan) -> None:
    """Every image decodes; sizes against the dataset's resolution (one line per size, not per image)."""
    ws, report = ctx.cfg.ws, ctx.report
    broken = [(item.where if p == item.target else ws.rel(p), f"{ws.rel(p)} cannot be read as an image ({s.images[p].error}); replace it")
              for item in s.items for p in (item.target, *item.controls) if p in s.images and s.images[p].error]
    report.listed(ERROR, list(dict.fromkeys(broken)), "{n} more unreadable images", s.shown)
    for d in s.datasets:
        if d.kind != "image" or "resolution" in d.rejected:
            continue
        rw, rh = d.resolution
        bucket = d.values.get("enable_bucket") is True
        sizes: dict[tuple[int, int], list[Item]] = {}
        for item in d.items:
            f = s.images.get(item.target)
            if f and not f.error:
                sizes.setdefault(f.size, []).append(item)
        for (w, h), items in sorted(sizes.items()):
            what = f"{len(items)} target image(s) of {w}x{h} (e.g. {items[0].where})"
            if bucket:
                if w * h < rw * rh / 2 and d.values.get("bucket_no_upscale") is not True:
                    report.warn(d.where, f"dataset {d.index}: {what} have less than half the pixels of {rw}x{rh}: upscaled, so blurry; use larger images")
                continue
            if w < rw or h < rh:
                report.warn(d.where, f"dataset {d.index}: {what} are smaller than the resolution {rw}x{rh}: upscaled, so blurry; use larger images or a lower resolution")
            elif abs(w / h - rw / rh) > ASPECT_TOLERANCE * (rw / rh):
                report.warn(d.where, f"dataset {d.index}: {what} have another aspect ratio than {rw}x{rh}: centre-cropped; crop them yourself or set enable_bucket = true")


def check_dataset(ctx: "Context") -> str | None:
    """Check 3: dataset.toml, its sources, captions, JSONL lines, images."""
    s = scan(ctx)
    if s.path is None:
        return "no dataset_config to read (see above)"
    return None


def check_content(ctx: "Context") -> str | None:
    """Check 4: data that makes a run worthless: a target equal to its own control, duplicates, empty captions."""
    s = scan(ctx)
    if not s.items:
        return "no training items (see above)"
    report = ctx.report
    digest = {p: f.digest for p, f in s.images.items() if f.digest}
    ws = ctx.cfg.ws
    for item in s.items:
        t = digest.get(item.target)
        for n, c in enumerate(item.controls):
            if t and digest.get(c) == t:
                report.error(item.where, f"the target image is identical in content to its control image {n} ({ws.rel(c)}): "
                             f"the model learns to copy it (loss near 0.01 from step 0); the target must be the changed image")
    seen: dict[tuple, Item] = {}
    duplicates = []
    for item in s.items:
        key = (digest.get(item.target, str(item.target)), tuple(digest.get(c, str(c)) for c in item.controls))
        if key in seen:
            duplicates.append((item.where, f"same target and control images as {seen[key].where}: it trains twice as often; remove one"))
        else:
            seen[key] = item
    report.listed(WARNING, duplicates, "{n} more duplicate items", s.shown)
    empty = [(item.where, "empty caption: the item trains without any text; write the caption") for item in s.items if item.caption == ""]
    report.listed(ERROR, empty, "{n} more items with an empty caption", s.shown)
    long_captions(ctx, s.items, s.shown)
    return None


def long_captions(ctx: "Context", items: list[Item], shown: str) -> None:
    """Captions with more words than the LLaMA text encoder reads tokens: their end is cut when caching."""
    long = [(item.where, f"caption of {n} words: at least {n} tokens, but FramePack's LLaMA text encoder reads the first "
             f"{CAPTION_TOKENS} and cuts the rest; shorten it to what matters")
            for item in items if item.caption and (n := len(item.caption.split())) > CAPTION_TOKENS]
    ctx.report.listed(WARNING, long, "{n} more captions longer than the text encoder reads", shown)
