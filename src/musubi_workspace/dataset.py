"""dataset.toml, read once into typed data, and the training items musubi-tuner's datasources find in it.

The one reader of dataset.toml. `load(cfg)` (or `read(ws, path)`) parses the file once and gives a `DatasetFile`:
each `[[datasets]]` entry as a `Dataset` with `[general]` merged in and musubi-tuner's defaults applied
(`BlueprintGenerator.generate_params_by_fallbacks` at the pinned commit: the entry's value, then [general]'s,
then the default of ImageDatasetParams / VideoDatasetParams), and the file and line of every value.

`items(ws, dataset)` lists the dataset's items (target, control images, caption) the way the datasources of
`musubi_tuner/dataset/datasources.py` do: the same extensions (`media_utils.IMAGE_EXTENSIONS`), the same glob (no
hidden files, dangling links and folders with a media name included), the same caption filter, the same control
matching (longest image names first, `x.<ext>` before `x_<n>.<ext>`, a control used once) and the same JSONL
normalisation (`control_path` -> `control_path_0`, renumbered in order). Where musubi-tuner would stop (or drop
an item without a word) the listing carries a `Problem` instead of raising, so the check can report every one
and the cache can stop at the first. tests/musubi/test_dataset_real.py holds this against the real datasources.

Nothing else in the workspace parses dataset.toml: the checks, the cache plan, the option combinations, the
batch check, tune and the run records all read it through this module.
"""

from __future__ import annotations

import errno
import json
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from musubi_workspace.config import load_toml, not_a_file
from musubi_workspace.errors import WorkspaceError

if TYPE_CHECKING:
    from musubi_workspace.config import Config
    from musubi_workspace.paths import Workspace

# musubi_tuner/dataset/media_utils.py at the pinned commit, in its order (.jxl only with a Pillow plugin, which the
# workspace does not install).
IMAGE_EXTENSIONS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".webp",
    ".bmp",
    ".PNG",
    ".JPG",
    ".JPEG",
    ".WEBP",
    ".BMP",
    ".avif",
    ".AVIF",
)
_VIDEO = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".flv", ".wmv", ".m4v", ".mpg", ".mpeg")
VIDEO_EXTENSIONS = _VIDEO + tuple(e.upper() for e in _VIDEO)
SOURCE_KEYS = ("image_directory", "image_jsonl_file", "video_directory", "video_jsonl_file")
# config_utils.BaseDatasetParams / ImageDatasetParams / VideoDatasetParams (architecture and debug_dataset come
# from the command line, not the file).
BASE_DEFAULTS: dict[str, Any] = {
    "resolution": (960, 544),
    "enable_bucket": False,
    "bucket_no_upscale": False,
    "caption_extension": None,
    "batch_size": 1,
    "num_repeats": 1,
    "cache_directory": None,
}
IMAGE_DEFAULTS: dict[str, Any] = {
    **BASE_DEFAULTS,
    "image_directory": None,
    "image_jsonl_file": None,
    "control_directory": None,
    "multiple_target": False,
    "fp_latent_window_size": 9,
    "fp_1f_clean_indices": None,
    "fp_1f_target_index": None,
    "fp_1f_no_post": False,
    "no_resize_control": False,
    "control_resolution": None,
}
VIDEO_DEFAULTS: dict[str, Any] = {
    **BASE_DEFAULTS,
    "video_directory": None,
    "video_jsonl_file": None,
    "control_directory": None,
    "target_frames": (1,),
    "frame_extraction": "head",
    "frame_stride": 1,
    "frame_sample": 1,
    "max_frames": 129,
    "source_fps": None,
    "fp_latent_window_size": 9,
}
ERROR, WARNING = "error", "warning"


def dataset_schema() -> dict:
    """{"general": {key: type}, "image": ..., "video": ...}: the voluptuous schema of the pinned musubi-tuner."""
    from musubi_workspace.schema import load_schema

    return load_schema()["dataset"]


def value_problem(value: Any, t: str) -> str | None:
    """Why a dataset value fails musubi-tuner's voluptuous schema, or None."""
    is_int = isinstance(value, int)  # voluptuous's int accepts TOML booleans too
    if t == "int":
        return None if is_int else f"must be a whole number, got {value!r}"
    if t == "float":
        return (
            None
            if isinstance(value, float)
            else f"must be a decimal number such as 30.0 (musubi-tuner rejects {value!r})"
        )
    if t == "str":
        return None if isinstance(value, str) else f"must be a string in quotes, got {value!r}"
    if t == "bool":
        return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
    if t == "int_or_pair":
        ok = (is_int and not isinstance(value, bool)) or (
            isinstance(value, list)
            and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        )
        return None if ok else f"must be a whole number or [width, height], got {value!r}"
    if t.startswith("list["):
        inner = {"list[int]": int, "list[str]": str}.get(t, object)
        ok = isinstance(value, list) and all(isinstance(v, inner) for v in value)
        return None if ok else f"must be a list ({t}), got {value!r}"
    return None


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


def key_problem(key: str, value: Any, t: str) -> str | None:
    """Why musubi-tuner cannot use `key = value` (t: its schema type): the wrong type, or a value out of range."""
    return value_problem(value, t) or range_problem(key, value)


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


def _pair(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return (int(value[0]), int(value[1]))
    return None


@dataclass
class Dataset:
    """One [[datasets]] entry as musubi-tuner's blueprint sees it."""

    file: DatasetFile
    index: int  # 1-based, in the order of [[datasets]]
    entry: dict  # the entry as written
    kind: str  # "image" or "video"

    @property
    def table(self) -> tuple[str, int]:
        return ("datasets", self.index)

    @property
    def where(self) -> str:
        """dataset.toml:line of its [[datasets]] header."""
        return self.file.at(self.table)

    @property
    def defaults(self) -> dict:
        return VIDEO_DEFAULTS if self.kind == "video" else IMAGE_DEFAULTS

    def _valid(self, table: dict, key: str, types: dict) -> bool:
        return key in table and key in types and key_problem(key, table[key], types[key]) is None

    def origin(self, key: str) -> str | None:
        """ "entry", "general" or None (musubi-tuner's default): where the value musubi-tuner uses comes from. Values
        of the wrong type or out of range count as unset (the check reports them)."""
        schema = self.file.schema
        if self._valid(self.entry, key, schema[self.kind]):
            return "entry"
        if self._valid(self.file.general, key, schema["general"]):
            return "general"
        return None

    def get(self, key: str) -> Any:
        """The value musubi-tuner uses: the entry's, else [general]'s, else its default."""
        origin = self.origin(key)
        if origin == "entry":
            return self.entry[key]
        if origin == "general":
            return self.file.general[key]
        return self.defaults.get(key)

    def is_set(self, key: str) -> bool:
        return self.origin(key) is not None

    def rejected(self, key: str) -> bool:
        """The file sets the key (here or in [general]) to a value musubi-tuner cannot use (the check reports it;
        what depends on the key is not checked further)."""
        schema = self.file.schema
        return any(
            key in table and key in types and not self._valid(table, key, types)
            for table, types in ((self.entry, schema[self.kind]), (self.file.general, schema["general"]))
        )

    def at(self, key: str) -> str:
        """dataset.toml:line where the value is written; the entry's header when it is musubi-tuner's default."""
        origin = self.origin(key)
        if origin == "entry":
            return self.file.at(self.table, key)
        if origin == "general":
            return self.file.at("general", key)
        return self.where

    @property
    def values(self) -> dict:
        """Every key the file sets for this dataset with a valid value ([general]'s, then the entry's)."""
        keys = [*self.file.general, *self.entry]
        return {k: self.get(k) for k in dict.fromkeys(keys) if self.is_set(k)}

    @property
    def sources(self) -> list[str]:
        return [k for k in SOURCE_KEYS if k in self.entry]

    @property
    def source(self) -> tuple[str, str] | None:
        """(key, path as written) of the source musubi-tuner reads: a directory before a JSONL file."""
        for key in (
            ("video_directory", "video_jsonl_file") if self.kind == "video" else ("image_directory", "image_jsonl_file")
        ):
            value = self.get(key)
            if isinstance(value, str):
                return key, value
        return None

    @property
    def resolution(self) -> tuple[int, int]:
        return _pair(self.get("resolution")) or BASE_DEFAULTS["resolution"]

    @property
    def batch_size(self) -> int:
        b = self.get("batch_size")
        return int(b) if isinstance(b, int) else 1

    @property
    def control_count(self) -> int:
        """Control images per item FramePack reads: len(fp_1f_clean_indices), else 1 (ImageDataset.__init__)."""
        indices = self.get("fp_1f_clean_indices")
        return len(indices) if isinstance(indices, list) and indices else 1

    @property
    def cache_directory(self) -> str | None:
        """As written: cache_directory, else the image or video directory (None for a JSONL dataset without one)."""
        return self.get("cache_directory") or self.get("video_directory" if self.kind == "video" else "image_directory")


@dataclass
class DatasetFile:
    """One dataset.toml, parsed once."""

    path: Path
    shown: str  # the path as the workspace shows it
    text: str
    data: dict
    schema: dict = field(default_factory=dataset_schema)
    lines: dict = field(default_factory=dict)
    datasets: list[Dataset] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lines = toml_lines(self.text)
        entries = self.data.get("datasets")
        if isinstance(entries, list):
            for i, entry in enumerate(entries, 1):
                if isinstance(entry, dict):
                    kind = "video" if any(k.startswith("video") for k in SOURCE_KEYS if k in entry) else "image"
                    self.datasets.append(Dataset(self, i, entry, kind))

    @property
    def general(self) -> dict:
        g = self.data.get("general")
        return g if isinstance(g, dict) else {}

    @property
    def entries(self) -> Any:
        """`datasets` as written (a list of tables when the file is right)."""
        return self.data.get("datasets", [])

    def at(self, table: Any, key: str | None = None) -> str:
        """dataset.toml:line of a key (or of a table's header when key is None)."""
        line = self.lines.get((table, key))
        return f"{self.shown}:{line}" if line else self.shown


def read(ws: Workspace, path: Path, schema: dict | None = None) -> DatasetFile:
    """Parse one dataset.toml; a file that is missing or not TOML is a WorkspaceError naming it."""
    data, text = load_toml(path, ws)
    return DatasetFile(path, ws.rel(path), text, data, **({"schema": schema} if schema else {}))


def load(cfg: Config, schema: dict | None = None) -> DatasetFile:
    """The version's dataset.toml (dataset_config of config.toml)."""
    path = cfg.dataset_path
    if path.is_dir():
        fix = "create it (copy configs/v1/dataset.toml) or fix the path"
        raise WorkspaceError(
            f"{cfg.where('dataset_config')}: dataset_config {cfg.ws.rel(path)} "
            f"{not_a_file(cfg.ws, path, 'dataset_config', fix)}"
        )
    if not path.exists():
        raise WorkspaceError(
            f"{cfg.where('dataset_config')}: dataset_config {cfg.ws.rel(path)} not found; "
            f"create it (copy configs/v1/dataset.toml) or fix the path"
        )
    return read(cfg.ws, path, schema)


# ---------------------------------------------------------------------------------------------------------------
# The items, as musubi-tuner's datasources find them
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Item:
    """One training item. Paths are as musubi-tuner sees them (relative to the workspace root, where it runs)."""

    where: str  # datasets/x/train.jsonl:3 or datasets/x/img.png
    path: str  # the target
    controls: list[str]
    caption: str  # as musubi-tuner reads it: a caption file stripped, a JSONL caption as written
    dataset: int
    root: Path
    extra_targets: list[str] = field(default_factory=list)  # multiple_target
    caption_error: str = ""  # why the caption file does not read as UTF-8 (musubi-tuner stops on it)

    def resolve(self, written: str) -> Path:
        return Path(written) if os.path.isabs(written) else self.root / written

    @cached_property
    def target(self) -> Path:
        return self.resolve(self.path)

    @cached_property
    def control_paths(self) -> list[Path]:
        return [self.resolve(c) for c in self.controls]

    @property
    def stem(self) -> str:
        return os.path.splitext(os.path.basename(self.path))[0]


@dataclass
class Problem:
    """Something musubi-tuner stops on (ERROR) or silently drops (WARNING), in one line."""

    severity: str
    where: str
    message: str
    kind: str  # groups problems of one sort for the report ("caption", "controls", "line", "source", ...)


@dataclass
class Listing:
    """The items of one dataset and what is wrong with its source."""

    dataset: Dataset
    items: list[Item] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    has_controls: bool = False
    folder: str = ""  # the media folder or JSONL file, as shown
    control_folder: str = ""  # the control_directory, as shown

    def error(self, where: str, message: str, kind: str) -> None:
        self.problems.append(Problem(ERROR, where, message, kind))

    def warn(self, where: str, message: str, kind: str) -> None:
        self.problems.append(Problem(WARNING, where, message, kind))

    def first_error(self) -> Problem | None:
        return next((p for p in self.problems if p.severity == ERROR), None)


def _abs(root: Path, written: str) -> Path:
    return Path(written) if os.path.isabs(written) else root / written


def glob_media(root: Path, directory: str, extensions) -> list[str]:
    """`media_utils.glob_images`/`glob_videos` without a caption filter: `directory/*<ext>` for each extension,
    no hidden names, anything with such a name (links to nowhere and folders too), sorted."""
    found = {
        os.path.join(directory, e.name)
        for e in os.scandir(_abs(root, directory))
        if not e.name.startswith(".") and e.name.endswith(tuple(extensions))
    }
    return sorted(found)


def caption_bases(root: Path, directory: str, caption_extension: str) -> set[str]:
    """The names glob_images keeps images by: splitext of every `*<caption_extension>` file of the folder."""
    return {
        os.path.splitext(e.name)[0]
        for e in os.scandir(_abs(root, directory))
        if not e.name.startswith(".") and e.name.endswith(caption_extension)
    }


def utf8_problem(path: Path) -> str | None:
    """musubi-tuner opens captions (and JSONL files) with encoding="utf-8": other bytes fail caching
    (UnicodeDecodeError). None when the file is UTF-8."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        return (
            f"is not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}): musubi-tuner fails on it "
            f"(UnicodeDecodeError) while caching; save it as UTF-8"
        )
    return None


def missing_file(path: Path) -> str:
    """What to say of a path that should be an image file and is not one."""
    if path.is_dir():
        return "is a folder, not an image file; name the image in it"
    return "not found; fix the path (relative to the workspace root)"


def link_problem(path: Path) -> str | None:
    """A symlink whose target is gone or that loops: musubi-tuner's glob lists it (glob does not look behind a
    name), then fails on it when caching opens it. None for anything else."""
    if not path.is_symlink() or path.exists():
        return None
    try:
        path.resolve(strict=True)
    except RuntimeError:  # a loop, before Python 3.13
        return "is a symlink loop"
    except OSError as e:
        return (
            "is a symlink loop"
            if e.errno == errno.ELOOP
            else f"is a symlink to {os.readlink(path)}, which does not exist"
        )
    return None  # pragma: no cover - exists() said it does not


def _link_shown(ws: Workspace, path: Path) -> str:
    """The path as shown, a link itself rather than its target (ws.rel follows links, and fails on a loop)."""
    return f"{ws.rel(path.parent)}/{path.name}"


def _broken_links(ws: Workspace, listing: Listing, written: list[str]) -> bool:
    """Report the files of one item that are broken links (each link once per listing); True when there is one."""
    found = False
    for w in written:
        path = _abs(ws.root, w)
        if what := link_problem(path):
            found = True
            shown = _link_shown(ws, path)
            if not any(p.where == shown and p.kind == "link" for p in listing.problems):
                listing.error(
                    shown,
                    f"{what}: musubi-tuner lists it and fails on it while caching; fix or remove the link",
                    "link",
                )
    return found


def _read_caption(root: Path, written: str) -> tuple[str, str]:
    """(caption, error): musubi-tuner reads it as UTF-8 and strips it; a file that is not UTF-8 stops it."""
    data = _abs(root, written).read_bytes()
    try:
        return data.decode("utf-8").strip(), ""
    except UnicodeDecodeError as e:
        return data.decode("utf-8", errors="replace").strip(), f"not UTF-8 (byte {e.start})"


def match_controls(images: list[str], candidates: list[str]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """ImageDirectoryDatasource's control matching: for x.png, the files named x.<ext> or x_<anything>.<ext>, longest
    image names first (a control is used once), sorted unsuffixed first, then by the number after the last `_`.

    Returns ({image: controls in order}, {image: a control name musubi-tuner stops on (suffix not a number)}).
    """
    pool = set(candidates)
    out: dict[str, list[str]] = {}
    bad: dict[str, str] = {}
    for image in sorted(images, key=lambda p: len(os.path.basename(p)), reverse=True):
        stem = os.path.splitext(os.path.basename(image))[0]
        found = [p for p in pool if os.path.basename(p).startswith((stem + ".", stem + "_"))]
        pool.difference_update(found)
        if not found:
            continue

        def order(p: str, stem: str = stem) -> tuple[int, str]:
            base = os.path.splitext(os.path.basename(p))[0]
            if base == stem:
                return (0, "")
            suffix = base.rsplit("_", 1)[-1]
            return (int(suffix) + 1, "") if suffix.isdigit() else (-1, p)

        keys = {p: order(p) for p in found}
        wrong = sorted(p for p, k in keys.items() if k[0] < 0)
        if wrong:
            bad[image] = wrong[0]
            continue
        out[image] = sorted(found, key=lambda p: keys[p][0])
    return out, bad


def _multiple_targets(root: Path, directory: str, captioned: list[str], listing: Listing) -> dict[str, list[str]]:
    """ImageDirectoryDatasource's multiple_target: x_0.png, x_1.png ... (without a caption) are more targets of x."""
    candidates = set(glob_media(root, directory, IMAGE_EXTENSIONS)) - set(captioned)
    out: dict[str, list[str]] = {}
    if not candidates:
        return out
    for image in sorted(captioned, key=lambda p: len(os.path.basename(p)), reverse=True):
        prefix = os.path.splitext(image)[0] + "_"
        found = [p for p in candidates if p.startswith(prefix)]
        if not found:
            continue
        suffixes = {p: os.path.splitext(p)[0].rsplit("_", 1)[-1] for p in found}
        wrong = sorted(p for p, s in suffixes.items() if not s.isdigit())
        if wrong:
            listing.error(
                wrong[0],
                f"target {os.path.basename(wrong[0])} of {os.path.basename(image)} must end in _<number> "
                f"(multiple_target; musubi-tuner stops on it); rename it",
                "targets",
            )
            found = [p for p in found if p not in wrong]
        out[image] = sorted(found, key=lambda p: int(suffixes[p]))
        candidates.difference_update(found)
    counts = {len(v) for v in out.values()}
    d = listing.dataset
    if not out:
        listing.error(
            d.where,
            f"dataset {d.index}: multiple_target = true, but no image has more targets "
            f"(named x_0.png, x_1.png ... beside x.png); musubi-tuner stops",
            "targets",
        )
    elif len(counts) > 1:
        listing.error(
            d.where,
            f"dataset {d.index}: multiple_target images have {sorted(counts)} targets; "
            "musubi-tuner needs the same number for every image",
            "targets",
        )
    return out


def _folder_ok(ws: Workspace, listing: Listing, key: str, written: str) -> bool:
    folder = ws.resolve(written)
    if not folder.is_dir():
        d = listing.dataset
        what = "is not a folder" if folder.exists() else "not found"
        listing.error(d.where, f"dataset {d.index}: {key} {ws.rel(folder)} {what}; fix the path", "source")
        return False
    return True


def _source_folder(ws: Workspace, listing: Listing, key: str, directory: str) -> str | None:
    """The caption extension of an image or video folder that exists, or None (the problem is recorded)."""
    d = listing.dataset
    if not _folder_ok(ws, listing, key, directory):
        return None
    listing.folder = ws.rel(ws.resolve(directory))
    ext = d.get("caption_extension")
    if not ext:
        listing.error(
            d.where,
            f"dataset {d.index}: caption_extension is not set, so caching fails (FileNotFoundError); "
            'add `caption_extension = ".txt"`',
            "caption",
        )
        return None
    return ext


def _image_directory(ws: Workspace, listing: Listing, directory: str) -> None:
    d, root = listing.dataset, ws.root
    ext = _source_folder(ws, listing, "image_directory", directory)
    if ext is None:
        return
    images = glob_media(root, directory, IMAGE_EXTENSIONS)
    bases = caption_bases(root, directory, ext)
    captioned = []
    for image in images:
        if os.path.splitext(os.path.basename(image))[0] in bases:
            captioned.append(image)
        else:
            cap = os.path.splitext(os.path.basename(image))[0] + ext
            if _abs(root, os.path.join(directory, cap)).exists():
                why = (
                    f"musubi-tuner does not see its caption file {cap} (it matches captions only for a caption_extension "
                    'like ".txt": one dot, first) and skips the image without a word; rename the captions'
                )
            else:
                why = (
                    f"no caption file {cap}: musubi-tuner skips the image without a word; write one or remove the image"
                )
            listing.warn(_link_shown(ws, ws.resolve(image)), why, "caption")
    extra = _multiple_targets(root, directory, captioned, listing) if d.get("multiple_target") is True else {}
    controls: dict[str, list[str]] = {}
    control_dir = d.get("control_directory")
    need = d.control_count
    if isinstance(control_dir, str) and _folder_ok(ws, listing, "control_directory", control_dir):
        listing.has_controls = True
        controls, bad = match_controls(captioned, glob_media(root, control_dir, IMAGE_EXTENSIONS))
        cdir = listing.control_folder = ws.rel(ws.resolve(control_dir))
        for image in captioned:
            stem = os.path.splitext(os.path.basename(image))[0]
            shown = _link_shown(ws, ws.resolve(image))
            if image in bad:
                name = os.path.basename(bad[image])
                listing.error(
                    f"{cdir}/{name}",
                    f"control image {name} of {os.path.basename(image)} must be named {stem}.<ext> or "
                    f"{stem}_<number>.<ext>: musubi-tuner stops on it (Invalid digits suffix); rename it",
                    "control-name",
                )
            elif len(controls.get(image, [])) < need:
                listing.error(
                    shown,
                    f"{len(controls.get(image, []))} control image(s) in {cdir}, {need} needed "
                    f"(named {stem}.png or {stem}_0.png, {stem}_1.png ...); caching fails on it",
                    "controls",
                )
    for image in captioned:
        cap = os.path.splitext(image)[0] + ext
        if _broken_links(ws, listing, [image, cap, *controls.get(image, [])[:need], *extra.get(image, [])]):
            continue
        caption, error = _read_caption(root, cap)
        if error:
            listing.error(ws.rel(_abs(root, cap)), utf8_problem(_abs(root, cap)) or error, "caption-utf8")
        listing.items.append(
            Item(
                _link_shown(ws, ws.resolve(image)),
                image,
                controls.get(image, [])[:need],
                caption,
                d.index,
                root,
                extra.get(image, []),
                error,
            )
        )


def _jsonl_lines(ws: Workspace, listing: Listing, written: str) -> list[tuple[int, Any]]:
    """(line number, object) of each line musubi-tuner parses; blank and broken lines are problems (it stops)."""
    d = listing.dataset
    path = ws.resolve(written)
    shown = ws.rel(path)
    listing.folder = shown
    if not path.is_file():
        listing.error(d.where, f"dataset {d.index}: {shown} not found; fix the path", "source")
        return []
    out = []
    if problem := utf8_problem(path):
        listing.error(shown, problem, "source")
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                listing.error(
                    f"{shown}:{n}", "empty line: musubi-tuner fails on it (JSONDecodeError); remove it", "line"
                )
                continue
            try:
                obj = json.loads(line.strip())
            except json.JSONDecodeError as e:
                listing.error(f"{shown}:{n}", f"not valid JSON ({e.msg} at column {e.colno}); fix the line", "line")
                continue
            out.append((n, obj))
    return out


def normalise_controls(obj: dict) -> tuple[dict, dict[str, str]] | str:
    """ImageJsonlDatasource's normalisation: `control_path` becomes `control_path_0`, then every `control_path_*` key
    is renumbered 0, 1, 2 ... in the order of its number. Returns (the new object, {new key: key as written}), or
    the key musubi-tuner stops on (a suffix that is not a number)."""
    obj = dict(obj)
    names = {k: k for k in obj}
    if "control_path" in obj:
        obj["control_path_0"] = obj.pop("control_path")
        names["control_path_0"] = names.pop("control_path")
    keys = [k for k in obj if k.startswith("control_path_")]
    wrong = [k for k in keys if not re.fullmatch(r"[+-]?\d+", k.split("_")[-1].strip())]
    if wrong:
        return names[wrong[0]]
    keys.sort(key=lambda k: int(k.split("_")[-1]))
    for i, key in enumerate(keys):
        if key != f"control_path_{i}":
            obj[f"control_path_{i}"] = obj.pop(key)
            names[f"control_path_{i}"] = names.pop(key)
    return obj, names


def _image_jsonl(ws: Workspace, listing: Listing, written: str) -> None:
    d, root = listing.dataset, ws.root
    need = d.control_count
    lines = []
    for n, obj in _jsonl_lines(ws, listing, written):
        where = f"{listing.folder}:{n}"
        if not isinstance(obj, dict):
            listing.error(where, 'expected a JSON object {"image_path": ..., "caption": ...}', "line")
            continue
        norm = normalise_controls(obj)
        if isinstance(norm, str):
            listing.error(
                where,
                f"`{norm}`: control keys are control_path or control_path_<number> (musubi-tuner stops on "
                "the line, ValueError); rename it",
                "line",
            )
            continue
        lines.append((n, *norm))
    listing.has_controls = any("control_path_0" in norm for _, norm, _ in lines)
    for n, norm, names in lines:
        where = f"{listing.folder}:{n}"
        target = norm.get("image_path", norm.get("image_path_0"))
        if not isinstance(target, str) or not target:
            listing.error(where, 'no "image_path"; every line needs the target image', "line")
            continue
        if not isinstance(norm.get("caption"), str):
            listing.error(where, 'no "caption"; musubi-tuner fails on the line (KeyError): add one', "line")
            continue
        have = [f"control_path_{i}" for i in range(len(norm)) if f"control_path_{i}" in norm]
        if listing.has_controls and len(have) < need:
            listing.error(
                where,
                f"{len(have)} control image(s), {need} needed (len(fp_1f_clean_indices)); caching fails on it",
                "line",
            )
        elif len(have) > need:
            listing.warn(
                where,
                f"{len(have)} control images, but fp_1f_clean_indices uses {need}: "
                f"{', '.join(names[k] for k in have[need:])} ignored",
                "extra-controls",
            )
        extra = []
        if d.get("multiple_target") is True:
            i = 1
            while f"image_path_{i}" in norm:
                extra.append(norm[f"image_path_{i}"])
                i += 1
        paths = [
            ("image_path", target),
            *((k, norm[k]) for k in have[:need]),
            *((f"image_path_{i}", v) for i, v in enumerate(extra, 1)),
        ]
        bad = [(k, v) for k, v in paths if not isinstance(v, str) or not os.path.isfile(os.path.join(root, v))]
        for k, v in bad:
            listing.error(
                where,
                f"{names.get(k, k)} {v} {missing_file(_abs(root, v)) if isinstance(v, str) else 'is not a path'}",
                "line",
            )
        if not bad:
            listing.items.append(
                Item(where, target, [norm[k] for k in have[:need]], norm["caption"], d.index, root, extra)
            )


def video_control(root: Path, control_dir: str, video: str) -> str | None:
    """VideoDirectoryDatasource's control of a video: control/<name>, else the folder control/<stem>, else
    control/<stem><ext> for the first video extension that exists."""
    name = os.path.basename(video)
    path = os.path.join(control_dir, name)
    if _abs(root, path).exists():
        return path
    stem = os.path.splitext(name)[0]
    folder = os.path.join(control_dir, stem)
    if _abs(root, folder).is_dir():
        return folder
    for ext in VIDEO_EXTENSIONS:
        path = os.path.join(control_dir, stem + ext)
        if _abs(root, path).exists():
            return path
    return None


def _video_directory(ws: Workspace, listing: Listing, directory: str) -> None:
    d, root = listing.dataset, ws.root
    ext = _source_folder(ws, listing, "video_directory", directory)
    if ext is None:
        return
    control_dir = d.get("control_directory")
    has_controls = isinstance(control_dir, str) and _folder_ok(ws, listing, "control_directory", control_dir)
    listing.has_controls = has_controls
    for video in glob_media(root, directory, VIDEO_EXTENSIONS):
        shown = _link_shown(ws, ws.resolve(video))
        cap = os.path.splitext(video)[0] + ext
        if _broken_links(ws, listing, [video, cap]):
            continue
        if not _abs(root, cap).is_file():
            listing.error(
                shown,
                f"no caption file {os.path.basename(cap)}: caching fails on it; write one or remove the video",
                "caption",
            )
            continue
        controls = []
        if has_controls:
            control = video_control(root, control_dir, video)
            if control is None:
                listing.error(
                    shown,
                    f"no control video or folder for it in {ws.rel(ws.resolve(control_dir))} (named "
                    f"{os.path.basename(video)}, {os.path.splitext(os.path.basename(video))[0]}/ or another video "
                    "extension); caching fails",
                    "controls",
                )
                continue
            controls = [control]
        caption, error = _read_caption(root, cap)
        if error:
            listing.error(ws.rel(_abs(root, cap)), utf8_problem(_abs(root, cap)) or error, "caption-utf8")
        listing.items.append(Item(shown, video, controls, caption, d.index, root, caption_error=error))


def _video_jsonl(ws: Workspace, listing: Listing, written: str) -> None:
    d, root = listing.dataset, ws.root
    lines = _jsonl_lines(ws, listing, written)
    listing.has_controls = any(isinstance(o, dict) and "control_path" in o for _, o in lines)
    for n, obj in lines:
        where = f"{listing.folder}:{n}"
        video = obj.get("video_path") if isinstance(obj, dict) else None
        if not isinstance(video, str) or not video:
            listing.error(where, 'no "video_path"; every line needs one', "line")
        elif not isinstance(obj.get("caption"), str):
            listing.error(where, 'no "caption"; musubi-tuner fails on the line (KeyError): add one', "line")
        elif not _abs(root, video).exists():
            listing.error(where, f"video_path {video} not found; fix the path (relative to the workspace root)", "line")
        elif listing.has_controls and not isinstance(obj.get("control_path"), str):
            listing.error(
                where, 'no "control_path", but other lines have one: musubi-tuner stops; add one to every line', "line"
            )
        else:
            controls = [obj["control_path"]] if listing.has_controls else []
            listing.items.append(Item(where, video, controls, obj["caption"], d.index, root))


def items(ws: Workspace, d: Dataset) -> Listing:
    """The dataset's items as musubi-tuner's datasource finds them, and the problems it would stop on."""
    listing = Listing(d)
    source = d.source
    if source is None:
        return listing
    key, written = source
    {
        "image_directory": _image_directory,
        "image_jsonl_file": _image_jsonl,
        "video_directory": _video_directory,
        "video_jsonl_file": _video_jsonl,
    }[key](ws, listing, written)
    return listing
