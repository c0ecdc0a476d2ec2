"""The last check: the validation set (`[workspace] validation`), checked as training data is.

The set's dataset.toml goes through the same scan as the version's (data.py: musubi-tuner's dataset schema,
captions, controls by musubi-tuner's naming, decodable images, the one-frame layout) and the same content checks;
then what only a validation set can get wrong: it must exist and hold items, must not be the version's own
dataset.toml, must cache into a folder of its own, and should share no item with the training data (by decoded
pixels, as check 4 compares a target with its controls): the loss would then measure recall.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from musubi_workspace.checks.data import content, scan, scan_file
from musubi_workspace.config import load_toml
from musubi_workspace.errors import WorkspaceError

if TYPE_CHECKING:
    from musubi_workspace.checks.findings import Context

EXAMPLE = "`make example` writes the example's"


def check_validation(ctx: Context) -> str | None:
    cfg, report = ctx.cfg, ctx.report
    written = cfg.settings.validation
    if not written:
        return "no [workspace] validation set"
    at, shown = cfg.where("validation"), f'[workspace] validation = "{written}"'
    path = cfg.ws.resolve(written)
    if not path.exists():
        report.error(at, f"{shown}: file not found; write the validation set's dataset.toml there ({EXAMPLE})")
        return None
    if path.is_dir():
        report.error(at, f"{shown} is a folder; name the validation set's dataset.toml in it")
        return None
    if path.suffix.lower() != ".toml":
        report.error(at, f"{shown} is not a .toml file; name the validation set's dataset.toml ({EXAMPLE})")
        return None
    own = cfg.path_of("dataset_config") if isinstance(cfg.get("dataset_config"), str) else None
    if own is not None and own.exists() and own.resolve() == path.resolve():
        report.error(
            at, f"{shown} is the version's own dataset_config: a validation set is held out; give it items of its own"
        )
        return None
    try:
        data, _ = load_toml(path, cfg.ws)
    except WorkspaceError as e:
        where, _, message = e.message.partition(": ")
        report.error(where, message)
        return None
    if not data.get("datasets"):
        others = sorted(k for k in data if k not in ("general", "datasets"))
        if others:
            report.error(
                at,
                f"{shown} is not a dataset.toml: no [[datasets]], but {', '.join(others)}; name the validation "
                f"set's dataset.toml ({EXAMPLE})",
            )
        else:
            report.error(
                at,
                f"{shown} is empty: no [[datasets]] entry; add one with its own items and cache_directory ({EXAMPLE})",
            )
        return None
    s = ctx.memo("validation-scan", lambda: scan_file(ctx, path))
    if not s.items:
        return None  # the scan said why
    content(ctx, s)
    training = scan(ctx)
    _cache_directories(ctx, s, training)
    _overlap(ctx, s, training)
    return None


def _cache_directories(ctx: Context, s, training) -> None:
    """The set caches apart from the training data: musubi-tuner's scripts delete the files no item of theirs makes."""
    ws = ctx.cfg.ws
    theirs = {}
    for d in training.datasets:
        if isinstance(d.cache_directory, str):
            theirs.setdefault(str(ws.resolve(d.cache_directory).resolve()), d)
    for d in s.datasets:
        if isinstance(d.cache_directory, str) and (other := theirs.get(str(ws.resolve(d.cache_directory).resolve()))):
            ctx.report.error(
                d.where,
                f"the validation set caches into {d.cache_directory} like dataset {other.index} of "
                f"{training.shown}: each `make cache` would delete the other's files; give it its own cache_directory",
            )


def _overlap(ctx: Context, s, training) -> None:
    """A validation item whose target image is a training item's, pixel for pixel."""
    digests = {f.digest: p for p, f in training.images.items() if f.digest}
    by_target = {item.target: item for item in training.items}
    found = []
    for item in s.items:
        facts = s.images.get(item.target)
        twin = by_target.get(digests.get(facts.digest)) if facts and facts.digest else None
        if twin is not None:
            found.append(
                (
                    item.where,
                    f"its target image is the training item {twin.where}'s (the same decoded pixels): the validation "
                    "loss would measure recall, not what the LoRA learnt; hold the item out of the training data",
                )
            )
    ctx.report.listed("warning", found, "{n} more validation items that are training items", s.shown)
