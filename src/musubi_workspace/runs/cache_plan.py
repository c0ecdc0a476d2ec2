"""Incremental cache: what every cache file was made from, and what `make cache` has to redo.

musubi-tuner's `--skip_existing` only asks whether a cache file exists, and its image latent files are named by
the ORIGINAL image size, so an edited image, caption or option would be trained on stale caches. This module
keeps a manifest per dataset in its cache_directory (`ws_cache_manifest.json`) recording, for every cache file,
a fingerprint of what it was made from:

- latents: the content hash of the image and its control images, and the options that change the output
  (LATENT_CONFIG_KEYS, the dataset keys in LATENT_DATASET_KEYS, the VAE and image encoder files);
- text-encoder outputs: the caption, the two text encoder files and fp8_llm.

`plan` compares the dataset as it is now with the manifest. A side (latents or text encoder) runs only when one
of its files is missing or stale. Stale files are deleted first and the script runs with `--skip_existing`, so
musubi-tuner encodes exactly the deleted and new ones; when nothing of a side can be kept (first run, an option
that changes every entry, FORCE) the script runs without it and rewrites everything. Files that no current item
produces (removed media) are deleted, as musubi-tuner itself would on its next run: training reads every cache
file in the directory.

The manifest only ever claims work that finished: entries of files about to be rewritten are dropped before a
script starts, and a side's entries are written (atomically) only after its script exited 0. An interrupted run
therefore leaves those files unrecorded, and the next plan redoes them.

Content hashes are cached in the manifest by path, size and modification time, so an unchanged dataset of
1,000 images is checked in a fraction of a second without reading an image.

The validation set (`[workspace] validation`, a dataset.toml of its own) has a plan of its own
(`validation_plan`), made the same way with the version's models and options: the two scripts run once more with
`--dataset_config <the set>`. Its cache directory is shared by every version, so a second version with the same
models and options finds it fresh.

Image datasets (image_directory, image_jsonl_file) are tracked per item. Video datasets are tracked as a whole:
musubi-tuner names their latent files per section after bucketing, so any change re-encodes that dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from musubi_workspace import dataset as dataset_model
from musubi_workspace.commands import Command, cache_commands
from musubi_workspace.config import Config
from musubi_workspace.dataset import Dataset, Item
from musubi_workspace.errors import EXIT_CHECK, WorkspaceError

MANIFEST = "ws_cache_manifest.json"
FORMAT = 1
LATENTS, TE = "latents", "te"
SIDE_NAMES = {LATENTS: "latents", TE: "text-encoder outputs"}
# Cache file names musubi-tuner globs (and deletes when no item produces them), architecture `fp`.
LATENT_SUFFIX, TE_SUFFIX = "_fp.safetensors", "_fp_te.safetensors"
# Dataset keys that change latents, with musubi-tuner's defaults (a key written out at its default is no change).
LATENT_DATASET_KEYS = {
    "resolution": [960, 544],
    "enable_bucket": False,
    "bucket_no_upscale": False,
    "fp_latent_window_size": 9,
    "fp_1f_clean_indices": None,
    "fp_1f_target_index": None,
    "fp_1f_no_post": False,
    "no_resize_control": False,
    "control_resolution": None,
    "multiple_target": False,
}
VIDEO_DATASET_KEYS = {
    "target_frames": [1],
    "frame_extraction": "head",
    "frame_stride": 1,
    "frame_sample": 1,
    "max_frames": 129,
    "source_fps": None,
}
# config.toml options the latent script takes that change its output. vae_chunk_size is left out: it only
# splits the causal convolutions into chunks (same result, less memory); tiling blends tiles, so it counts.
LATENT_CONFIG_KEYS = ("f1", "one_frame", "vae_tiling", "vae_spatial_tile_sample_min_size")
LATENT_MODEL_KEYS = ("vae", "image_encoder")
TE_MODEL_KEYS = ("text_encoder1", "text_encoder2")
HASH_CHUNK = 1 << 20


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:32]


def _file_identity(cfg: Config, key: str) -> Any:
    """A model file as the cache saw it: path as written, size and modification time (not its content)."""
    value = cfg.get(key)
    path = cfg.path_of(key) if isinstance(value, str) and value else None
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return [value, "missing"]
    return [value, "folder"] if path.is_dir() else [value, st.st_size, st.st_mtime_ns]


@dataclass
class Hasher:
    """Content hashes (and image sizes) of media files, cached by path, size and modification time."""

    ws_root: Path
    known: dict  # path as written -> [size, mtime_ns, sha256, width, height]
    used: dict = field(default_factory=dict)
    changed: bool = False

    def entry(self, written: str, image: bool) -> list:
        path = Path(written) if os.path.isabs(written) else self.ws_root / written
        try:
            st = path.stat()
        except OSError:
            raise WorkspaceError(
                f"{written}: file not found (named by the dataset); fix the dataset or restore the file"
            ) from None
        old = self.known.get(written)
        if old and old[0] == st.st_size and old[1] == st.st_mtime_ns and (not image or old[3] is not None):
            self.used[written] = old
            return old
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(HASH_CHUNK):
                h.update(chunk)
        w = hgt = None
        if image:
            from PIL import Image

            try:
                with Image.open(path) as img:
                    w, hgt = img.size
            except Exception as e:  # Pillow raises several types for unreadable images
                raise WorkspaceError(
                    f"{written}: not a readable image ({e.__class__.__name__}); fix or remove it"
                ) from None
        new = [st.st_size, st.st_mtime_ns, h.hexdigest()[:32], w, hgt]
        self.used[written] = new
        self.changed = True
        return new

    def sha(self, written: str, image: bool = False) -> str:
        return self.entry(written, image)[2]


@dataclass
class Side:
    """One side (latents or text encoder) of one dataset: what should exist, what does, what to redo."""

    name: str
    options: dict
    expected: dict  # cache file name -> fingerprint; video datasets: {"*": fingerprint}
    present: dict  # cache file name -> size, files of this side now in the cache directory
    recorded: dict  # the manifest's entries
    recorded_options: dict | None
    video: bool = False
    todo: list = field(default_factory=list)  # expected files to encode
    delete: list = field(default_factory=list)  # present files to delete before an incremental run
    removed: list = field(default_factory=list)  # present files no item produces
    reasons: dict = field(default_factory=dict)  # reason -> count
    kept: int = 0  # expected files that are up to date

    def classify(self, force: bool) -> None:
        changed_options = (
            sorted(
                k
                for k in set(self.options) | set(self.recorded_options or {})
                if (self.recorded_options or {}).get(k) != self.options.get(k)
            )
            if self.recorded_options is not None
            else None
        )
        if self.video:
            return self._classify_video(force, changed_options)
        for name, fp in self.expected.items():
            entry = self.recorded.get(name)
            exists = name in self.present
            if force:
                reason = "FORCE=1"
            elif changed_options:
                reason = "options changed: " + ", ".join(changed_options)
            elif entry is None:
                reason = "not recorded (unfinished or made outside `make cache`)" if exists else "new"
            elif entry.get("fp") != fp:
                reason = "changed"
            elif not exists:
                reason = "missing"
            elif entry.get("size") != self.present[name]:
                reason = "file changed on disk"
            else:
                self.kept += 1
                continue
            self.todo.append(name)
            self.reasons[reason] = self.reasons.get(reason, 0) + 1
            if exists:
                self.delete.append(name)
        self.removed = sorted(n for n in self.present if n not in self.expected)

    def _classify_video(self, force: bool, changed_options) -> None:
        fp = self.expected["*"]
        entry = self.recorded.get("*") or {}
        if force:
            reason = "FORCE=1"
        elif changed_options:
            reason = "options changed: " + ", ".join(changed_options)
        elif not entry:
            reason = "new"
        elif entry.get("fp") != fp:
            reason = "changed; video datasets are tracked as a whole"
        elif sorted(self.present) != sorted(entry.get("files", [])) or not self.present:
            reason = "cache files differ from the last run"
        else:
            self.kept = 1
            return
        self.todo = ["*"]
        self.reasons[reason] = 1
        self.delete = sorted(self.present)

    def record(self, present: dict) -> None:
        """The side's script finished: record every expected file it left in place."""
        self.recorded_options = self.options
        if self.video:
            self.recorded = {"*": {"fp": self.expected["*"], "files": sorted(present)}}
        else:
            self.recorded = {n: {"fp": fp, "size": present[n]} for n, fp in self.expected.items() if n in present}

    def manifest_part(self) -> dict:
        return {"options": self.recorded_options, "entries": self.recorded}

    def summary(self) -> str:
        """`latents: 1 of 4 to encode (1 changed)`, `text-encoder outputs up to date`, ..."""
        label = SIDE_NAMES[self.name]
        if not self.todo and not self.removed:
            return f"{label} up to date"
        parts = []
        if self.todo:
            why = ", ".join(
                r if r.startswith(("options", "FORCE")) or self.video else f"{c} {r}" for r, c in self.reasons.items()
            )
            if self.video:
                what = "the whole dataset"
            elif self.kept:
                what = f"{len(self.todo)} of {len(self.todo) + self.kept}"
            else:
                what = f"all {len(self.todo)}"
            parts.append(f"{label}: {what} to encode ({why})")
        if self.removed:
            parts.append(f"{label}: {len(self.removed)} file(s) of removed media to delete")
        return "; ".join(parts)


@dataclass
class DatasetState:
    index: int
    cache_dir: Path
    shown: str  # the cache_directory as written
    hasher: Hasher
    manifest_ok: bool
    sides: dict  # LATENTS/TE -> Side
    items: int

    @property
    def manifest_path(self) -> Path:
        return self.cache_dir / MANIFEST

    def scan(self) -> tuple[dict, dict]:
        return _scan(self.cache_dir)

    def write_manifest(self) -> None:
        data = {
            "format": FORMAT,
            "note": "written by `make cache` (musubi-workspace); delete it to make the next `make cache` redo everything",
            "hashes": self.hasher.used,
            LATENTS: self.sides[LATENTS].manifest_part(),
            TE: self.sides[TE].manifest_part(),
        }
        _write_atomic(self.manifest_path, json.dumps(data, sort_keys=True, indent=1, ensure_ascii=False) + "\n")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".ws_manifest.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _scan(cache_dir: Path) -> tuple[dict, dict]:
    """Latent and text-encoder cache files in the directory (name -> size), as musubi-tuner's globs see them."""
    latents: dict = {}
    te: dict = {}
    try:
        entries = list(os.scandir(cache_dir))
    except (FileNotFoundError, NotADirectoryError):
        return latents, te
    for e in entries:
        if e.name.startswith(".") or not e.is_file():
            continue
        if e.name.endswith(TE_SUFFIX):
            te[e.name] = e.stat().st_size
        elif e.name.endswith(LATENT_SUFFIX):
            latents[e.name] = e.stat().st_size
    return latents, te


def _load_manifest(path: Path) -> tuple[dict, bool]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, True
    except (OSError, ValueError):
        return {}, False
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return {}, False
    return data, True


# ---------------------------------------------------------------------------------------------------------
# The dataset as musubi-tuner reads it (the dataset model: dataset.py)
# ---------------------------------------------------------------------------------------------------------


def _option(d: Dataset, key: str, default: Any) -> Any:
    """A dataset value as the manifest records it: [w, h] for a resolution, lists for tuples."""
    value = d.get(key) if key in d.defaults else default
    if key in ("resolution", "control_resolution") and isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    if isinstance(value, tuple):
        value = list(value)
    return value


def _items(cfg: Config, d: Dataset) -> list[Item]:
    """The dataset's items; the first thing musubi-tuner would stop on is a WorkspaceError."""
    listing = dataset_model.items(cfg.ws, d)
    problem = listing.first_error()
    if problem is not None:
        raise WorkspaceError(f"{problem.where}: {problem.message}")
    for item in listing.items:
        if item.caption_error:
            raise WorkspaceError(
                f"{item.where}: its caption file is {item.caption_error}; musubi-tuner stops on it: save it as UTF-8"
            )
    return listing.items


def _abs(root: Path, written: str) -> Path:
    return Path(written) if os.path.isabs(written) else root / written


def _video_fingerprints(root: Path, items: list[Item], hasher: Hasher) -> tuple[str, str, int]:
    """Whole-dataset fingerprints (latents, captions) of a video dataset, and its item count."""
    media = [p for item in items for p in (item.path, *item.controls)]
    captions = {item.path: item.caption or "" for item in items}
    hashes = []
    for p in sorted(set(media)):
        ap = _abs(root, p)
        if ap.is_dir():
            for dirpath, _, files in sorted(os.walk(ap)):
                for f in sorted(files):
                    q = os.path.join(p, os.path.relpath(os.path.join(dirpath, f), ap))
                    hashes.append([q, hasher.sha(q)])
        else:
            hashes.append([p, hasher.sha(p)])
    return _digest(hashes), _digest(sorted(captions.items())), len(captions)


# ---------------------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------------------


def _options(cfg: Config) -> tuple[dict, dict]:
    latent = {k: cfg.get(k) for k in LATENT_CONFIG_KEYS if cfg.get(k) not in (None, False)}
    if cfg.get("one_frame") is True:
        latent["one_frame_no_2x"] = cfg.settings.one_frame_no_2x
        latent["one_frame_no_4x"] = cfg.settings.one_frame_no_4x
    for key in LATENT_MODEL_KEYS:
        latent[key] = _file_identity(cfg, key)
    te = {key: _file_identity(cfg, key) for key in TE_MODEL_KEYS}
    te["fp8_llm"] = cfg.get("fp8_llm") is True
    return latent, te


def _dataset_state(cfg: Config, d: Dataset, latent_opts: dict, te_opts: dict, force: bool) -> DatasetState:
    root = cfg.ws.root
    where = f"{d.file.shown}: [[datasets]] #{d.index}"
    video = d.kind == "video"
    if d.source is None:
        raise WorkspaceError(f"{where}: needs image_directory, image_jsonl_file, video_directory or video_jsonl_file")
    cache_written = d.cache_directory
    if not cache_written:
        raise WorkspaceError(f'{where}: a JSONL dataset needs cache_directory; add `cache_directory = "cache/..."`')
    cache_dir = _abs(root, cache_written)
    manifest, manifest_ok = _load_manifest(cache_dir / MANIFEST)
    hasher = Hasher(root, manifest.get("hashes") or {})

    keys = dict(LATENT_DATASET_KEYS, **(VIDEO_DATASET_KEYS if video else {}))
    ds_opts = {k: _option(d, k, default) for k, default in keys.items()}
    if not ds_opts["enable_bucket"] and not video:
        ds_opts["bucket_no_upscale"] = False  # musubi-tuner forces it off without bucketing
    lat_options = dict(latent_opts, **ds_opts)

    items = _items(cfg, d)
    if video:
        lat_fp, te_fp, n = _video_fingerprints(root, items, hasher)
        lat_expected, te_expected = {"*": lat_fp}, {"*": te_fp}
    else:
        lat_expected, te_expected = {}, {}
        for item in items:
            _, _, sha, w, h = hasher.entry(item.path, image=True)
            parts = [sha, [hasher.sha(c) for c in item.controls], [hasher.sha(t) for t in item.extra_targets]]
            lat_expected[f"{item.stem}_{w:04d}x{h:04d}{LATENT_SUFFIX}"] = _digest(parts)
            te_expected[f"{item.stem}{TE_SUFFIX}"] = _digest(item.caption)
        n = len(items)

    present_lat, present_te = _scan(cache_dir)
    sides = {}
    for name, options, expected, present in (
        (LATENTS, lat_options, lat_expected, present_lat),
        (TE, te_opts, te_expected, present_te),
    ):
        part = manifest.get(name) or {}
        side = Side(name, options, expected, present, part.get("entries") or {}, part.get("options"), video=video)
        side.classify(force)
        sides[name] = side
    return DatasetState(d.index, cache_dir, cache_written, hasher, manifest_ok, sides, n)


@dataclass
class CachePlan:
    cfg: Config
    datasets: list[DatasetState]
    force: bool
    incomplete: int = 0  # expected files a finished script did not leave in place
    dataset_config: str | None = None  # the validation set's dataset.toml as written; None: the version's own

    @property
    def what(self) -> str:
        """How the lines name this plan's data: the version, or its validation set."""
        return f"{self.cfg.name} validation set {self.dataset_config}" if self.dataset_config else self.cfg.name

    def needs(self, side: str) -> bool:
        return any(d.sides[side].todo for d in self.datasets)

    def full(self, side: str) -> bool:
        """Nothing of this side can be kept: run without --skip_existing (musubi-tuner rewrites everything)."""
        return self.force or all(d.sides[side].kept == 0 for d in self.datasets)

    @property
    def up_to_date(self) -> bool:
        return not any(s.todo or s.removed for d in self.datasets for s in d.sides.values())

    def steps(self) -> list[tuple[str, Command]]:
        """The cache commands to run, in order, each with its side."""
        full = cache_commands(self.cfg, dataset=self.dataset_config)
        incremental = cache_commands(self.cfg, skip_existing=True, dataset=self.dataset_config)
        out = []
        for i, side in enumerate((LATENTS, TE)):
            if self.needs(side):
                out.append((side, (full if self.full(side) else incremental)[i]))
        return out

    def describe(self) -> list[str]:
        lines = []
        label = "validation set " if self.dataset_config else ""
        for d in self.datasets:
            head = f"[cache] {label}{d.shown}: {d.items} item(s)"
            if not d.manifest_ok:
                head += f" ({MANIFEST} unreadable: everything counts as stale)"
            lat, te = d.sides[LATENTS], d.sides[TE]
            if lat.todo or lat.removed or te.todo or te.removed:
                lines.append(f"{head}: {lat.summary()}; {te.summary()}")
            else:
                lines.append(f"{head}: up to date")
        return lines

    def stale_summary(self) -> str:
        """One phrase for `make train`: which datasets are stale and why."""
        parts = []
        for d in self.datasets:
            bad = [s.summary() for s in d.sides.values() if s.todo or s.removed]
            if all(not s.kept and set(s.reasons) == {"new"} for s in d.sides.values()):
                parts.append(f"{d.shown}: not cached yet")
            elif bad:
                parts.append(f"{d.shown}: " + "; ".join(bad))
        return " | ".join(parts)

    def report(self, out=None) -> None:
        """One `[cache]` line per dataset: up to date, or what will be encoded and why."""
        for line in self.describe():
            print(line, file=out or sys.stderr)

    def prepare(self, out=None) -> None:
        """Before any script runs: delete stale and removed files, drop their entries, save the manifests.

        A side that runs in full drops all its entries (its script rewrites every file); an incremental side
        deletes its stale files so `--skip_existing` re-encodes exactly those.
        """
        out = out or sys.stderr
        for d in self.datasets:
            deleted = 0
            for name, side in d.sides.items():
                full = self.full(name)
                for f in list(side.removed) + ([] if full else list(side.delete)):
                    try:
                        (d.cache_dir / f).unlink()
                    except FileNotFoundError:
                        pass
                    side.recorded.pop(f, None)
                    deleted += 1
                if side.todo:
                    if full or side.video:
                        side.recorded = {}
                    for f in side.todo:
                        side.recorded.pop(f, None)
            if deleted:
                print(f"[cache] {d.shown}: deleted {deleted} stale cache file(s)", file=out)
            if deleted or any(s.todo for s in d.sides.values()) or d.hasher.changed or not d.manifest_ok:
                d.write_manifest()

    def commit(self, side: str, out=None) -> None:
        """The side's script exited 0: record what it made (and say what it did not make)."""
        for d in self.datasets:
            s = d.sides[side]
            present = d.scan()[0 if side == LATENTS else 1]
            s.record(present)
            d.write_manifest()
            if s.video:
                lacking = [] if present else [f"any {SIDE_NAMES[side]} file in {d.shown}"]
            else:
                lacking = [str(Path(d.shown) / n) for n in s.expected if n not in present]
            for what in lacking:
                print(
                    f"[cache] warning: musubi-tuner left no {what}; the next `make cache` tries again",
                    file=out or sys.stderr,
                )
            self.incomplete += len(lacking)

    def finish(self, out=None) -> None:
        """The last line of `make cache`; with nothing to run, keep fresh hashes for the next check."""
        out = out or sys.stderr
        if self.up_to_date:
            for d in self.datasets:
                if d.hasher.changed and d.manifest_path.exists():
                    d.write_manifest()
            print(f"[cache] {self.what}: up to date, nothing to run", file=out)
        elif self.incomplete:
            print(
                f"[cache] {self.what}: finished, but {self.incomplete} cache file(s) are missing (warnings above)",
                file=out,
            )
        else:
            print(f"[cache] {self.what}: up to date", file=out)


def _plan(cfg: Config, f: dataset_model.DatasetFile, force: bool, dataset_config: str | None = None) -> CachePlan:
    if not f.datasets:
        raise WorkspaceError(f"{f.shown}: no [[datasets]] entry; add one (see configs/v1/dataset.toml)")
    latent_opts, te_opts = _options(cfg)
    states = [_dataset_state(cfg, d, latent_opts, te_opts, force) for d in f.datasets]
    return CachePlan(cfg, states, force, dataset_config=dataset_config)


def plan(cfg: Config, force: bool = False) -> CachePlan:
    """Compare every dataset of the version's dataset.toml with its manifest. Reads; writes nothing."""
    return _plan(cfg, dataset_model.load(cfg), force)


def validation_plan(cfg: Config, force: bool = False) -> CachePlan | None:
    """The same for the validation set (`[workspace] validation`) with the version's models and options; None
    without one."""
    written = cfg.settings.validation
    if not written:
        return None
    return _plan(cfg, dataset_model.read(cfg.ws, cfg.ws.resolve(written)), force, dataset_config=written)


def plans(cfg: Config, force: bool = False) -> list[CachePlan]:
    """What `make cache` runs: the version's data, then its validation set (when it has one)."""
    return [p for p in (plan(cfg, force), validation_plan(cfg, force)) if p is not None]


def _stale(make) -> str | None:
    try:
        p = make()
        return None if p is None or p.up_to_date else p.stale_summary()
    except WorkspaceError as e:
        return e.message


def require_fresh(cfg: Config, dry_run: bool, target: str = "train") -> None:
    """`make train` on a missing or stale cache (of the training data or of the validation set) stops (a warning
    under DRY_RUN) and names `make cache`."""
    messages = []
    if stale := _stale(lambda: plan(cfg)):
        messages.append(f"{cfg.shown}: the cache is missing or stale ({stale}); run `make cache` first")
    if stale := _stale(lambda: validation_plan(cfg)):
        messages.append(
            f"{cfg.shown}: the cache of the validation set {cfg.settings.validation} ([workspace] validation) is "
            f"missing or stale ({stale}); run `make cache` first"
        )
    if not messages:
        return
    if dry_run:
        for message in messages:
            print(f"warning: {message} (dry run: not needed now)", file=sys.stderr)
        return
    raise WorkspaceError(messages[0], EXIT_CHECK)
