"""Check 1: config.toml's keys and values against the options of musubi-tuner's training script.

musubi-tuner reads config.toml into its argparse namespace without looking: unknown keys are kept silently, values
are not converted and choices are not checked. So every key must be an option's exact name (argparse's
abbreviations do not apply to a file), and every value must have the option's type.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from musubi_workspace.checks.findings import MACHINE
from musubi_workspace.checks.values import check_values
from musubi_workspace.config import WORKSPACE_TABLE, key_line, suggest
from musubi_workspace.errors import WorkspaceError

if TYPE_CHECKING:
    from musubi_workspace.checks.findings import Context
    from musubi_workspace.paths import Workspace

TRAIN = "fpack_train_network"
# Options training cannot run without (musubi-tuner checks them only when it gets there, some at the very end).
REQUIRED = {
    "dataset_config": "training stops at once without it",
    "dit": "training stops at once without it",
    "network_module": 'training crashes without it; FramePack needs "networks.lora_framepack"',
    "output_dir": "training crashes at the first save without it",
    "output_name": "training crashes at the final save without it, after the whole run",
    "optimizer_type": 'musubi-tuner has no default optimizer: training fails after the DiT has loaded (e.g. "adamw8bit")',
}


def musubi_schema(ws: Workspace, warn: Callable[[str, str], None] | None = None) -> dict:
    """The committed schema, or, where another musubi-tuner than the pinned one is installed, its live parsers
    (built once per installed commit and kept under .cache/ws, since building imports torch).

    Where the live schema cannot be built (a package musubi-tuner needs is missing, schema.SchemaError): for a
    musubi-tuner that records no commit (a source tree on PYTHONPATH, as on a pod), `warn(where, line)` says so and
    the committed schema is used; for one whose commit is known and differs, the committed schema would describe
    another musubi-tuner, so it stops in one line.
    """
    from musubi_workspace import schema

    committed = schema.load_schema()
    spec = importlib.util.find_spec("musubi_tuner")
    if spec is None:
        return committed
    installed = schema.installed_commit()
    pinned = str(committed.get("musubi_tuner_commit", "?"))
    if installed == pinned:
        return committed
    kept = ws.root / ".cache" / "ws" / f"musubi-schema-{installed}.json" if installed else None
    if kept is not None and kept.exists():
        return json.loads(kept.read_text(encoding="utf-8"))
    try:
        live = schema.build_schema(commit=installed or "unknown")
    except schema.SchemaError as e:
        where = ws.rel(Path(next(iter(spec.submodule_search_locations or []), spec.origin or "musubi_tuner")))
        why = f"`{e.package}` is not installed ({e})" if e.package else str(e)
        fix = f"install {e.package}" if e.package else "install the pinned musubi-tuner (`uv sync --extra train`)"
        if installed:
            raise WorkspaceError(
                f"{where}: musubi-tuner {installed[:7]} is installed, the committed schema is of {pinned[:7]}, and "
                f"this one's cannot be built here: {why}; {fix}, or install musubi-tuner {pinned[:7]}"
            ) from None
        if warn is not None:
            warn(
                where,
                f"the option schema of this musubi-tuner (no recorded commit) cannot be built here: {why}; "
                f"checked against the committed schema (musubi-tuner {pinned[:7]}) instead: {fix} to check against "
                "this one",
            )
        return committed
    if kept is not None:
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_text(json.dumps(live), encoding="utf-8")
    return live


def schema_of(ctx: Context) -> dict:
    return ctx.memo(
        "schema", lambda: musubi_schema(ctx.cfg.ws, lambda where, line: ctx.report.warn(where, line, kind=MACHINE))
    )


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def type_problem(value: Any, spec: dict) -> str | None:
    """What is wrong with a TOML value for an option, or None."""
    kind = spec["kind"]
    if kind in ("store_true", "store_false"):
        return None if isinstance(value, bool) else f"is a switch: write true or false, not {value!r}"
    if kind != "value":
        return None
    nargs = spec.get("nargs")
    if nargs not in (None, "?"):
        if not isinstance(value, list):
            return f"takes a list: write [{json.dumps(value)}]"
        items = value
    else:
        if isinstance(value, list):
            return f"takes one value, not a list: {value!r}"
        items = [value]
    t = spec.get("type") or "str"
    for item in items:
        if t == "int" and not (isinstance(item, int) and not isinstance(item, bool)):
            return f"must be a whole number, got {item!r}" + (" (no quotes)" if isinstance(item, str) else "")
        if t in ("float", "int_or_float") and not _number(item):
            return f"must be a number, got {item!r}" + (
                " (no quotes; musubi-tuner does not convert it)" if isinstance(item, str) else ""
            )
        if t in ("str", "path") and not isinstance(item, str):
            return f"must be a string in quotes, got {item!r}"
    choices = spec.get("choices")
    if choices:
        for item in items:
            if item not in choices:
                return f"= {item!r} is not one of {', '.join(map(str, choices))}"
    return None


def _entries(cfg) -> list[tuple[str, Any, str | None]]:
    """(key, value, table) for every musubi option in config.toml, as musubi-tuner flattens it."""
    out = []
    for key, value in cfg.data.items():
        if isinstance(value, dict):
            if key == WORKSPACE_TABLE:
                continue
            out += [(k, v, key) for k, v in value.items()]
        else:
            out.append((key, value, None))
    return out


# Suggestions by meaning, before spelling: a word of an unknown key -> the option usually meant (in this order,
# so `lr_warmup` is the warmup, not the learning rate). A near-exact spelling (a typo) still wins.
ALIASES = (
    ("warmup", "lr_warmup_steps"),
    ("epoch", "max_train_epochs"),
    ("epochs", "max_train_epochs"),
    ("steps", "max_train_steps"),
    ("rank", "network_dim"),
    ("dim", "network_dim"),
    ("alpha", "network_alpha"),
    ("lr", "learning_rate"),
)
TYPO = 0.9  # difflib ratio above which a spelling is a typo of the option, whatever the words mean


def suggest_option(key: str, options) -> str:
    """` (did you mean `x`?)` for an unknown key: a typo's option, else the option one of its words means
    (ALIASES), else the closest spelling; "" where nothing is close."""
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=TYPO)
    if close:
        return f" (did you mean `{close[0]}`?)"
    words = set(key.lower().replace("-", "_").split("_"))
    for word, option in ALIASES:
        if word in words and option in options and option != key:
            return f" (did you mean `{option}`?)"
    return suggest(key, options)


def check_options(ctx: Context) -> None:
    """Every key an exact option name, every value of the option's type and among its choices."""
    cfg, report = ctx.cfg, ctx.report
    options = schema_of(ctx)["parsers"][TRAIN]
    entries = _entries(cfg)
    valid = {}
    for key, value, table in entries:
        line = key_line(cfg.text, key, table)
        where = f"{cfg.shown}:{line}" if line else cfg.shown
        if isinstance(value, dict):
            report.error(
                where, f"`{key}` is a table inside [{table}]; musubi-tuner flattens one level only: move its keys up"
            )
            continue
        spec = options.get(key)
        if spec is None:
            hint = suggest_option(key, options) or " (see `python -m musubi_tuner.fpack_train_network --help`)"
            report.error(where, f"unknown option `{key}`{hint}; musubi-tuner would ignore it silently")
            continue
        if table is not None:
            _in_table(ctx, entries, key, value, table, where)
        problem = type_problem(value, spec)
        if problem:
            report.error(where, f"`{key}` {problem}")
        else:
            valid[key] = value
    check_required(ctx)
    check_values(ctx, {k: v for k, v in valid.items() if cfg.options.get(k) is v}, schema_of(ctx).get("names"))


def _in_table(ctx: Context, entries, key: str, value: Any, table: str, where: str) -> None:
    """A training option inside a table other than [workspace]: musubi-tuner flattens every table into its options
    (`read_config_from_file`), the last one read winning, so a second `learning_rate` in [training] silently
    replaces the top-level one. A key set once still trains as written: a warning, to keep options in one place."""
    cfg = ctx.cfg
    others = [(v, t) for k, v, t in entries if k == key and t != table]
    if others:
        v, t = others[0]
        line = key_line(cfg.text, key, t)
        place = "at the top level" if t is None else f"in [{t}]"
        at = f" (line {line})" if line else ""
        winner = cfg.options.get(key)
        ctx.report.error(
            where,
            f"`{key}` is set {place}{at} and again in [{table}]: musubi-tuner flattens every table into "
            f"one set of options, so it trains with {key} = {winner!r} without a word; keep one, at the top level",
        )
    else:
        ctx.report.warn(
            where,
            f"`{key}` is in table [{table}]: musubi-tuner flattens every table into its options, so a "
            f"second `{key}` anywhere would silently replace one of them; keep training options at the top "
            f"level, above the first table header",
        )


def check_required(ctx: Context) -> None:
    """Settings musubi-tuner accepts at start and fails on later (at the first save or log). Attention, fp8 and
    block-swap combinations are combinations.py's (data/known_issues.toml)."""
    cfg, report = ctx.cfg, ctx.report
    opt = cfg.options
    for key, why in REQUIRED.items():
        if opt.get(key) in (None, ""):
            report.error(cfg.shown, f"`{key}` is not set; {why}: add `{key} = ...` (see configs/v1)")
    module = opt.get("network_module")
    if isinstance(module, str) and module and module != "networks.lora_framepack":
        report.error(
            cfg.where("network_module"),
            f'network_module = {module!r} does not target FramePack\'s blocks; use "networks.lora_framepack"',
        )
    if opt.get("log_with") in ("tensorboard", "all") and not opt.get("logging_dir"):
        report.error(
            cfg.where("log_with"),
            f'log_with = {opt["log_with"]!r} needs logging_dir; add `logging_dir = "outputs/..."`',
        )
    if opt.get("vae_dtype") not in (None, "float16"):
        report.error(cfg.where("vae_dtype"), "FramePack's VAE runs in float16 only; remove vae_dtype")
