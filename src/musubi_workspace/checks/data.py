"""Checks 3 and 4: dataset.toml against musubi-tuner's dataset schema, its sources, and the data itself.

`scan(ctx)` reads dataset.toml through the dataset model (dataset.py: the file, [general] merged, defaults, and the
items musubi-tuner's datasources find), reports what musubi-tuner would reject (or, worse, silently drop), and
keeps the training items: target image, control images, caption. The content checks and the prompt check read
the same scan (`ctx.memo`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from musubi_workspace import dataset as model
from musubi_workspace.checks.findings import ERROR, WARNING
from musubi_workspace.checks.images import ImageCache, ImageFacts
from musubi_workspace.checks.keys import schema_of
from musubi_workspace.config import suggest
from musubi_workspace.dataset import SOURCE_KEYS, Dataset, DatasetFile, Item, Listing, key_problem
from musubi_workspace.errors import WorkspaceError

if TYPE_CHECKING:
    from musubi_workspace.checks.findings import Context

# How far an image's aspect ratio may differ from the resolution's before centre-cropping is worth a warning.
ASPECT_TOLERANCE = 0.02
# The line that stands for the rest of a kind of problem once findings.LISTED are shown.
REST = {
    "caption": "{n} more %ss without a caption file",
    "controls": "{n} more images without enough control images",
    "control-name": "{n} more control images named against musubi-tuner's pattern",
    "targets": "{n} more multiple-target problems",
    "link": "{n} more broken links",
    "caption-utf8": "{n} more captions that are not UTF-8",
}
# FramePack's LLaMA text encoder reads this many tokens of a caption (frame_pack/hunyuan.encode_prompt_conds,
# max_length=256); the rest is cut. Every whitespace-separated word is at least one token, so more words than
# this are cut for certain.
CAPTION_TOKENS = 256


@dataclass
class Scan:
    file: DatasetFile | None = None  # set once dataset.toml parsed
    shown: str = ""
    listings: list[Listing] = field(default_factory=list)
    images: dict[Path, ImageFacts] = field(default_factory=dict)

    @property
    def path(self) -> Path | None:
        return self.file.path if self.file else None

    @property
    def datasets(self) -> list[Dataset]:
        return [li.dataset for li in self.listings]

    @property
    def items(self) -> list[Item]:
        return [i for li in self.listings for i in li.items]

    def at(self, table: Any, key: str | None = None) -> str:
        """dataset.toml:line of a key (or of a table's header when key is None)."""
        return self.file.at(table, key) if self.file else self.shown


def scan(ctx: Context) -> Scan:
    """The dataset as musubi-tuner sees it; findings go to ctx.report (check 3). Run once per check run."""
    return ctx.memo("scan", lambda: _scan(ctx))


def _scan(ctx: Context) -> Scan:
    cfg = ctx.cfg
    path = cfg.path_of("dataset_config") if isinstance(cfg.get("dataset_config"), str) else None
    if path is None or not path.is_file():
        return Scan()  # reported by the options and files checks
    return scan_file(ctx, path, lambda schema: model.load(cfg, schema))


def scan_file(ctx: Context, path: Path, load=None) -> Scan:
    """One dataset.toml at `path` as musubi-tuner sees it (the version's, or its validation set's: read with
    `load(schema)`, default the plain reader); findings go to ctx.report."""
    cfg, report = ctx.cfg, ctx.report
    load = load or (lambda schema: model.read(cfg.ws, path, schema))
    s = Scan()
    s.shown = cfg.ws.rel(path)
    if path.suffix.lower() != ".toml":
        report.error(
            s.shown, "the workspace reads dataset configs as TOML; rename it to .toml (musubi-tuner also takes .json)"
        )
        return s
    schema = schema_of(ctx)["dataset"]
    try:
        f = load(schema)
    except WorkspaceError as e:
        where, _, message = e.message.partition(": ")
        report.error(where, message)
        return s
    s.file = f
    data = f.data

    for key in data:
        if key not in ("general", "datasets"):
            report.error(
                s.at(key) if (key, None) in f.lines else s.at(None, key),
                f"unknown top-level key `{key}`{suggest(key, ['general', 'datasets'])}; only [general] and [[datasets]] are allowed",
            )
    general = data.get("general", {})
    if not isinstance(general, dict):
        report.error(s.at(None, "general"), "`general` must be a table ([general])")
        general = {}
    dataset_keys = set(schema["image"]) | set(schema["video"])
    for key, value in general.items():
        where = s.at("general", key)
        if key not in schema["general"]:
            if key in dataset_keys:
                report.error(
                    where,
                    f"`{key}` is not allowed in [general] (musubi-tuner rejects it); move it into each [[datasets]]",
                )
            else:
                report.error(
                    where,
                    f"unknown key `{key}` in [general]{suggest(key, schema['general'])}; musubi-tuner rejects the file",
                )
        elif problem := key_problem(key, value, schema["general"][key]):
            report.error(where, f"`{key}` {problem}")

    entries = f.entries
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        report.error(s.at(None, "datasets"), "`datasets` must be [[datasets]] tables")
        return s
    if not entries:
        report.error(s.shown, "no [[datasets]] entry: the dataset is empty; add one (see configs/v1/dataset.toml)")
        return s

    cache = ctx.memo("images", lambda: ImageCache(cfg.ws))
    for d in f.datasets:
        listing = _dataset(ctx, s, schema, d)
        if listing is not None:
            s.listings.append(listing)
    _cache_directories(ctx, s)
    images = [p for item in s.items for p in (item.target, *item.control_paths) if p.suffix in model.IMAGE_EXTENSIONS]
    s.images = cache.facts(images)
    _images(ctx, s)
    for li in s.listings:
        if not li.items:
            d = li.dataset
            report.error(d.where, f"dataset {d.index} has no training items; add media with captions or fix its source")
    return s


def _dataset(ctx, s: Scan, schema: dict, d: Dataset) -> Listing | None:
    report, ws = ctx.report, ctx.cfg.ws
    i, kind, entry = d.index, d.kind, d.entry
    sources = d.sources
    header = d.where
    if not sources:
        report.error(header, f"dataset {i} has no source; set one of {', '.join(SOURCE_KEYS)}")
        return None
    if len(sources) > 1:
        report.error(
            header,
            f"dataset {i} sets {' and '.join(sources)}; set only one (musubi-tuner would use {sources[0]} alone)",
        )
    other = "image" if kind == "video" else "video"
    for key, value in entry.items():
        where = s.at(d.table, key)
        if key not in schema[kind]:
            if key in schema[other]:
                report.error(
                    where, f"`{key}` is a key of {other} datasets; dataset {i} is an {kind} dataset ({sources[0]})"
                )
            else:
                report.error(where, f"unknown key `{key}`{suggest(key, schema[kind])}; musubi-tuner rejects the file")
        elif problem := key_problem(key, value, schema[kind][key]):
            report.error(where, f"`{key}` {problem}")
    one_frame = ctx.cfg.get("one_frame") is True
    if kind == "image":
        if one_frame and "fp_1f_target_index" not in entry:
            report.error(
                header,
                f"dataset {i}: one_frame needs fp_1f_target_index (caching fails without it); add `fp_1f_target_index = 1`",
            )
        if one_frame and "fp_1f_clean_indices" not in entry:
            report.warn(
                header,
                f"dataset {i}: fp_1f_clean_indices is not set, so musubi-tuner uses [0] (one control image); set it to say so",
            )
        if not one_frame:
            report.error(
                header,
                f"dataset {i} is an image dataset: FramePack trains on images only in one-frame mode; set `one_frame = true` in {ctx.cfg.shown}",
            )
    elif one_frame:
        report.error(
            header,
            f"dataset {i} is a video dataset, but one_frame = true trains on image datasets with control images only",
        )
    listing = model.items(ws, d)
    _report(ctx, listing)
    if kind == "image" and one_frame and not listing.has_controls and listing.items:
        report.error(
            header,
            f"dataset {i}: one_frame needs control images (control_directory, or control_path in the JSONL); none found",
        )
    return listing


def _report(ctx, listing: Listing) -> None:
    """The listing's problems: per-line problems of a JSONL file in line order, the others grouped by kind, the
    first few of each, then a count."""
    report = ctx.report
    noun = "video" if listing.dataset.kind == "video" else "image"
    anchor = listing.folder or listing.dataset.where
    lines = sorted((p for p in listing.problems if p.kind == "line"), key=lambda p: int(p.where.rsplit(":", 1)[1]))
    groups: dict[tuple[str, str], list] = {}
    for p in listing.problems:
        if p.kind in ("source", "extra-controls") or (p.kind == "caption" and p.where == listing.dataset.where):
            (report.error if p.severity == ERROR else report.warn)(p.where, p.message)
        elif p.kind != "line":
            groups.setdefault((p.kind, p.severity), []).append((p.where, p.message))
    for (kind, severity), found in groups.items():
        rest = REST.get(kind, "{n} more problems").replace("%s", noun)
        at = listing.control_folder if kind in ("controls", "control-name") and listing.control_folder else anchor
        report.listed(severity, found, rest, at)
    report.listed(ERROR, [(p.where, p.message) for p in lines], "{n} more problems in " + anchor, anchor)


def _cache_directories(ctx, s: Scan) -> None:
    seen: dict[str, int] = {}
    for d in s.datasets:
        v = d.values
        cache_dir = v.get("cache_directory")
        if cache_dir is None and ("image_jsonl_file" in v or "video_jsonl_file" in v):
            ctx.report.error(
                d.where,
                f'dataset {d.index}: a JSONL dataset needs cache_directory (caching fails without it); add `cache_directory = "cache/..."`',
            )
            continue
        cache_dir = cache_dir or v.get("image_directory") or v.get("video_directory")
        if not isinstance(cache_dir, str):
            continue
        key = str(ctx.cfg.ws.resolve(cache_dir).resolve())
        if key in seen:
            ctx.report.error(
                d.where,
                f"dataset {d.index} caches into {cache_dir} like dataset {seen[key]} (musubi-tuner refuses); give each its own cache_directory",
            )
        seen.setdefault(key, d.index)


def _images(ctx, s: Scan) -> None:
    """Every image decodes; sizes against the dataset's resolution (one line per size, not per image)."""
    ws, report = ctx.cfg.ws, ctx.report
    broken = [
        (
            item.where if p == item.target else ws.rel(p),
            f"{ws.rel(p)} cannot be read as an image ({s.images[p].error}); replace it",
        )
        for item in s.items
        for p in (item.target, *item.control_paths)
        if p in s.images and s.images[p].error
    ]
    report.listed(ERROR, list(dict.fromkeys(broken)), "{n} more unreadable images", s.shown)
    for li in s.listings:
        d = li.dataset
        if d.kind != "image" or d.rejected("resolution"):
            continue
        rw, rh = d.resolution
        bucket = d.get("enable_bucket") is True
        sizes: dict[tuple[int, int], list[Item]] = {}
        for item in li.items:
            f = s.images.get(item.target)
            if f and not f.error:
                sizes.setdefault(f.size, []).append(item)
        for (w, h), items in sorted(sizes.items()):
            what = f"{len(items)} target image(s) of {w}x{h} (e.g. {items[0].where})"
            if bucket:
                if w * h < rw * rh / 2 and d.get("bucket_no_upscale") is not True:
                    report.warn(
                        d.where,
                        f"dataset {d.index}: {what} have less than half the pixels of {rw}x{rh}: upscaled, so blurry; use larger images",
                    )
                continue
            if w < rw or h < rh:
                report.warn(
                    d.where,
                    f"dataset {d.index}: {what} are smaller than the resolution {rw}x{rh}: upscaled, so blurry; use larger images or a lower resolution",
                )
            elif abs(w / h - rw / rh) > ASPECT_TOLERANCE * (rw / rh):
                report.warn(
                    d.where,
                    f"dataset {d.index}: {what} have another aspect ratio than {rw}x{rh}: centre-cropped; crop them yourself or set enable_bucket = true",
                )


def check_dataset(ctx: Context) -> str | None:
    """Check 3: dataset.toml, its sources, captions, JSONL lines, images."""
    s = scan(ctx)
    if s.path is None:
        return "no dataset_config to read (see above)"
    return None


def check_content(ctx: Context) -> str | None:
    """Check 4: data that makes a run worthless: a target equal to its own control, duplicates, empty captions."""
    s = scan(ctx)
    if not s.items:
        return "no training items (see above)"
    content(ctx, s)
    return None


def content(ctx: Context, s: Scan) -> None:
    """Check 4's findings for the items of one scan (the training data, or the validation set)."""
    report = ctx.report
    digest = {p: f.digest for p, f in s.images.items() if f.digest}
    ws = ctx.cfg.ws
    for item in s.items:
        t = digest.get(item.target)
        for n, c in enumerate(item.control_paths):
            if t and digest.get(c) == t:
                report.error(
                    item.where,
                    f"the target image is identical in content to its control image {n} ({ws.rel(c)}): "
                    f"the model learns to copy it (loss near 0.01 from step 0); the target must be the changed image",
                )
    seen: dict[tuple, Item] = {}
    duplicates = []
    for item in s.items:
        key = (digest.get(item.target, str(item.target)), tuple(digest.get(c, str(c)) for c in item.control_paths))
        if key in seen:
            duplicates.append(
                (
                    item.where,
                    f"same target and control images as {seen[key].where}: it trains twice as often; remove one",
                )
            )
        else:
            seen[key] = item
    report.listed(WARNING, duplicates, "{n} more duplicate items", s.shown)
    empty = [
        (item.where, "empty caption: the item trains without any text; write the caption")
        for item in s.items
        if not item.caption.strip()
    ]
    report.listed(ERROR, empty, "{n} more items with an empty caption", s.shown)
    long_captions(ctx, s.items, s.shown)


def long_captions(ctx: Context, items: list[Item], shown: str) -> None:
    """Captions with more words than the LLaMA text encoder reads tokens: their end is cut when caching."""
    long = [
        (
            item.where,
            f"caption of {n} words: at least {n} tokens, but FramePack's LLaMA text encoder reads the first "
            f"{CAPTION_TOKENS} and cuts the rest; shorten it to what matters",
        )
        for item in items
        if item.caption and (n := len(item.caption.split())) > CAPTION_TOKENS
    ]
    ctx.report.listed(WARNING, long, "{n} more captions longer than the text encoder reads", shown)
