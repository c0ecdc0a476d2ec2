"""Read a version's config.toml once into typed data.

config.toml is the single source of truth. Its top-level keys (and the keys of any table but `[workspace]`,
which musubi-tuner flattens the same way) are musubi-tuner training options; the `[workspace]` table holds the
settings that belong to this workspace (`WorkspaceSettings`).
"""

from __future__ import annotations

import difflib
import re
import sys
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from musubi_workspace.errors import WorkspaceError
from musubi_workspace.launch import DIT_BLOCKS
from musubi_workspace.paths import Workspace

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

WORKSPACE_TABLE = "workspace"


def load_toml(path: Path, ws: Workspace | None = None) -> tuple[dict, str]:
    """Parse a TOML file; every failure is one line naming the file (and line) and the fix."""
    shown = ws.rel(path) if ws else str(path)
    if not path.exists():
        raise WorkspaceError(f"{shown}: file not found")
    if path.is_dir():
        raise WorkspaceError(f"{shown}: is a folder, expected a TOML file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise WorkspaceError(f"{shown}: cannot read ({e.__class__.__name__}: {e})") from None
    if text.startswith("\ufeff"):
        raise WorkspaceError(
            f"{shown}:1: starts with a UTF-8 byte-order mark (BOM, an invisible character some editors write), which "
            "TOML does not allow (musubi-tuner fails on the file or misreads its first key); save it as UTF-8 without BOM"
        )
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
        where = f"{shown}:{m.group(1)}" if m else shown
        if m and (twice := _declared_twice(text, int(m.group(1)), msg)):
            raise WorkspaceError(f"{where}: {twice}") from None
        what = re.sub(r"\s*\(at line \d+, column \d+\)", "", msg)
        raise WorkspaceError(f"{where}: not valid TOML: {what}; fix the line and run again") from None


# A table header line: `[name]` or `[[name]]`, then nothing but an optional comment (`[workspace]  # ...`).
TABLE_HEADER = re.compile(r"^\s*\[\[?\s*([^\[\]#]+?)\s*\]\]?\s*(?:#.*)?$")


def _declared_twice(text: str, line: int, msg: str) -> str | None:
    """tomllib's "Cannot overwrite a value" / "Cannot declare ('x',) twice", with the key or table named and the
    line that set it first."""
    lines = text.splitlines()
    here = lines[line - 1].strip() if 0 < line <= len(lines) else ""
    table = re.match(r"^\[\[?\s*([^\]]+?)\s*\]\]?", here)
    key = re.match(r"""^("[^"]*"|'[^']*'|[A-Za-z0-9_.-]+)\s*=""", here)
    if msg.startswith("Cannot declare") and table:
        name = table.group(1)
        first = next(
            (n for n, l in enumerate(lines[: line - 1], 1) if re.match(rf"^\s*\[\s*{re.escape(name)}\s*\]", l)), None
        )
        since = f" (first at line {first})" if first else ""
        return f"table [{name}] is declared twice{since}; TOML allows each table once: merge the two"
    if msg.startswith("Cannot overwrite a value") and key:
        name = key.group(1).strip("\"'")
        pattern = re.compile(rf"""^\s*("{re.escape(name)}"|'{re.escape(name)}'|{re.escape(name)})\s*=""")
        first = None
        for n in range(line - 1, 0, -1):  # the same table: back to its header
            if lines[n - 1].strip().startswith("["):
                break
            if pattern.match(lines[n - 1]):
                first = n
        since = f" (first at line {first})" if first else ""
        return f"`{name}` is set twice{since}; TOML allows each key once per table: keep one"
    return None


def key_line(text: str, key: str, table: str | None = None) -> int | None:
    """1-based line of `key = ...` (inside `[table]` when given, else outside any table first)."""
    current: str | None = None
    pattern = re.compile(rf"^\s*(?:\"{re.escape(key)}\"|'{re.escape(key)}'|{re.escape(key)})\s*=")
    fallback = None
    for n, line in enumerate(text.splitlines(), 1):
        header = TABLE_HEADER.match(line)
        if header:
            current = header.group(1)
            continue
        if pattern.match(line):
            if current == table:
                return n
            if fallback is None and table is None:
                fallback = n
    return fallback


def suggest(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


def parse_duration(value: Any, where: str) -> int:
    """Seconds from `600`, "30s", "10m", "1h", "0", "off"; 0 means off."""
    if isinstance(value, bool):
        raise WorkspaceError(f'{where}: expected a duration such as "10m", "30s", "1h" or "off", got {value!r}')
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str):
        s = value.strip().lower()
        if s in ("0", "off", "no", "false", ""):
            return 0
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)?", s)
        if m:
            scale = {"s": 1, "sec": 1, None: 1, "m": 60, "min": 60, "h": 3600}[m.group(2)]
            return int(float(m.group(1)) * scale)
    raise WorkspaceError(f'{where}: expected a duration such as "10m", "30s", "1h" or "off", got {value!r}')


@dataclass
class WorkspaceSettings:
    """The `[workspace]` table of config.toml: settings of this workspace, not of musubi-tuner.

    musubi-tuner flattens every table of config.toml into its options, so none of these names may be a
    musubi-tuner training option or dataset key (a test holds the two lists apart).
    """

    num_processes: int | str = "auto"
    """Processes `accelerate launch` starts (one per GPU). "auto": every visible GPU."""
    accelerate_config: str = ""
    """An accelerate config file for training on several machines (`accelerate config` writes one); empty: none."""
    auto_stop: str = "10m"
    """Grace period after `make train` ends before the RunPod pod is stopped; "off" never stops it."""
    hang_timeout: str = "30m"
    """A run that shows no new training step for this long is ended as failed (then the pod stops)."""
    price_per_hour: float = 2.5
    """What the pod costs in dollars per hour, for the cost column of `make runs`."""
    cache_batch_size: int = 0
    """Batch size of the two caching scripts; 0: musubi-tuner's default (the dataset's batch size)."""
    cache_num_workers: int = 0
    """Reader threads of the caching scripts; 0: musubi-tuner's default (CPU count - 1)."""
    one_frame_no_2x: bool = False
    """One-frame caches without the 2x clean latents (`--one_frame_no_2x`); match the `no_2x` of your prompts."""
    one_frame_no_4x: bool = False
    """One-frame caches without the 4x clean latents (`--one_frame_no_4x`); match the `no_4x` of your prompts."""
    generate_attn_mode: str = "sdpa"
    """Attention of `make generate`: sdpa, sageattn (fastest; inference only), flash, xformers, torch."""
    generate_fp8: bool = False
    """`make generate` with fp8 DiT weights (`--fp8_scaled`): less memory, slightly different images."""
    blocks_without_checkpointing: int = 0
    """With gradient_checkpointing: the first N of the DiT's 60 blocks keep their activations instead of recomputing
    them (faster, more GPU memory; needs blocks_to_swap = 0). Training runs through musubi_workspace.launch."""
    split_attn_one_graph: bool = False
    """With split_attn and sdpa: its per-item attention without a host sync and a branch per item, so compile can
    trace a block as one graph (the same sdpa calls; a 2.5% faster compiled step on an H200). Training runs through
    musubi_workspace.launch."""
    validation: str = ""
    """A held-out musubi-tuner dataset.toml (its own items and cache_directory), relative to the workspace root,
    shared by every version: training scores it at fixed timesteps (`loss/validation`) at step 0, every
    validation_every_n_steps, at each save and at the end, through musubi_workspace.launch. Empty: no validation."""
    validation_every_n_steps: int | None = None
    """Steps between validation passes; unset: the version's save_every_n_steps; 0: only step 0, saves and end."""
    validation_timesteps: list = field(default_factory=lambda: list(VALIDATION_TIMESTEPS))
    """The raw timesteps (each between 0 and 1) the validation loss is the mean over; never passed through
    timestep_sampling or discrete_flow_shift, which differ between versions."""

    @classmethod
    def from_table(cls, table: Any, where: str, text: str = "") -> WorkspaceSettings:
        if not isinstance(table, dict):
            raise WorkspaceError(f"{where}: `workspace` must be a table ([workspace]), got {type(table).__name__}")
        known = {f.name: f for f in fields(cls)}
        values = {}
        for key, value in table.items():
            line = key_line(text, key, WORKSPACE_TABLE)
            at = f"{where}:{line}" if line else where
            if key not in known:
                if key in _training_options():
                    raise WorkspaceError(
                        f"{at}: `{key}` is a training option, but it stands below the [workspace] header: TOML puts "
                        f"every key after a table header into that table; move it above the [workspace] line"
                    )
                raise WorkspaceError(
                    f"{at}: unknown key `{key}` in [workspace]{suggest(key, known)}; known keys: {', '.join(known)} "
                    f"(TOML puts every key after the [workspace] header into it: training options go above it)"
                )
            default = known[key].default
            if default is MISSING:
                default = known[key].default_factory()
            values[key] = _coerce(key, value, default, at)
        s = cls(**values)
        if s.generate_attn_mode not in ("sdpa", "sageattn", "flash", "xformers", "torch"):
            raise WorkspaceError(
                f"{where}: [workspace] generate_attn_mode = {s.generate_attn_mode!r} is not one of sdpa, sageattn, flash, xformers, torch"
            )
        if s.blocks_without_checkpointing > DIT_BLOCKS:
            line = key_line(text, "blocks_without_checkpointing", WORKSPACE_TABLE)
            raise WorkspaceError(
                f"{where}{f':{line}' if line else ''}: [workspace] blocks_without_checkpointing = "
                f"{s.blocks_without_checkpointing}: the FramePack DiT has {DIT_BLOCKS} blocks; set 0 to {DIT_BLOCKS}"
            )
        _validation_values(s, where, text)
        parse_duration(s.auto_stop, f"{where}: [workspace] auto_stop")
        parse_duration(s.hang_timeout, f"{where}: [workspace] hang_timeout")
        return s

    @property
    def hang_timeout_seconds(self) -> int:
        return parse_duration(self.hang_timeout, "[workspace] hang_timeout")


# The default raw timesteps of the validation loss (issue 26): both ends of the schedule and its middle.
VALIDATION_TIMESTEPS = (0.1, 0.3, 0.5, 0.7, 0.9)


def _validation_values(s: WorkspaceSettings, where: str, text: str) -> None:
    """validation_timesteps: a non-empty list of numbers strictly between 0 and 1, each once; validation a path."""

    def at(key: str) -> str:
        line = key_line(text, key, WORKSPACE_TABLE)
        return f"{where}:{line}" if line else where

    ts = s.validation_timesteps
    if not ts:
        raise WorkspaceError(
            f"{at('validation_timesteps')}: [workspace] validation_timesteps is empty; list at least one, e.g. "
            f"[{', '.join(map(str, VALIDATION_TIMESTEPS))}] (the default), or remove the key"
        )
    for t in ts:
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < 1:
            raise WorkspaceError(
                f"{at('validation_timesteps')}: [workspace] validation_timesteps has {t!r}: each timestep must be a "
                f"number between 0 and 1 (0 and 1 excluded), e.g. [{', '.join(map(str, VALIDATION_TIMESTEPS))}]"
            )
    if len(set(ts)) != len(ts):
        raise WorkspaceError(
            f"{at('validation_timesteps')}: [workspace] validation_timesteps lists a timestep twice ({ts!r}); list each once"
        )
    s.validation_timesteps = [float(t) for t in ts]


def _training_options() -> dict:
    """musubi-tuner's training options (the committed schema: no musubi-tuner needed)."""
    from musubi_workspace.schema import load_schema

    return load_schema()["parsers"]["fpack_train_network"]


def _coerce(key: str, value: Any, default: Any, at: str) -> Any:
    if key == "num_processes":
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise WorkspaceError(f'{at}: [workspace] num_processes must be "auto" or a whole number >= 1, got {value!r}')
    if key in ("auto_stop", "hang_timeout") and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if key == "validation_every_n_steps":
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        raise WorkspaceError(
            f"{at}: [workspace] validation_every_n_steps must be a whole number >= 0 (0: only at step 0, each save "
            f"and the end), got {value!r}"
        )
    if key == "validation_timesteps" and not isinstance(value, list):
        raise WorkspaceError(
            f"{at}: [workspace] validation_timesteps must be a list of numbers between 0 and 1, e.g. "
            f"[{', '.join(map(str, VALIDATION_TIMESTEPS))}], got {value!r}"
        )
    expected = type(default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) != (expected is bool) or not isinstance(value, expected):
        raise WorkspaceError(f"{at}: [workspace] {key} must be {expected.__name__}, got {value!r}")
    if expected is int and value < 0:
        raise WorkspaceError(f"{at}: [workspace] {key} must be >= 0, got {value!r}")
    return value


def flatten(data: dict) -> dict:
    """musubi-tuner's view of config.toml: top-level values, then every table's values, `[workspace]` excluded.

    Mirrors `read_config_from_file`: one level; later tables overwrite earlier ones; a nested table stays a dict.
    """
    flat = {k: v for k, v in data.items() if not isinstance(v, dict)}
    for name, table in data.items():
        if isinstance(table, dict) and name != WORKSPACE_TABLE:
            flat.update(table)
    return flat


@dataclass
class Config:
    """One version's config.toml, read once."""

    ws: Workspace
    path: Path
    text: str
    data: dict
    options: dict = field(default_factory=dict)
    settings: WorkspaceSettings = field(default_factory=WorkspaceSettings)

    @classmethod
    def load(cls, ws: Workspace, path: Path) -> Config:
        data, text = load_toml(path, ws)
        where = ws.rel(path)
        if isinstance(data.get("datasets"), list) or isinstance(data.get("general"), dict):
            beside = path.parent / "config.toml"
            use = f"use {ws.rel(beside)} beside it" if beside.is_file() else "pass the version's config.toml"
            raise WorkspaceError(
                f"{where}: is a dataset file ([general]/[[datasets]]), not a training config; {use} "
                f"(CONFIG_FILE={ws.rel(beside) if beside.is_file() else 'configs/vN/config.toml'}), whose "
                "dataset_config names the dataset file"
            )
        settings = WorkspaceSettings.from_table(data.get(WORKSPACE_TABLE, {}), where, text)
        return cls(ws=ws, path=path, text=text, data=data, options=flatten(data), settings=settings)

    @property
    def shown(self) -> str:
        return self.ws.rel(self.path)

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def version(self) -> str | None:
        """`v3` for configs/v3/config.toml; None for a config outside configs/vN."""
        parent = self.path.parent
        if parent.parent.resolve() == self.ws.configs.resolve() and re.fullmatch(r"v\d+", parent.name):
            return parent.name
        return None

    @property
    def name(self) -> str:
        """The version, or the folder name for configs outside configs/vN (used to name run records)."""
        return self.version or self.path.parent.name

    def where(self, key: str) -> str:
        """`configs/v1/config.toml:12` for a musubi option or `[workspace]` key."""
        line = key_line(self.text, key)
        if line is None:
            line = key_line(self.text, key, WORKSPACE_TABLE)
        return f"{self.shown}:{line}" if line else self.shown

    def get(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)

    def path_of(self, key: str) -> Path | None:
        """A path-valued option resolved against the workspace root; None when unset or empty."""
        value = self.options.get(key)
        if value in (None, ""):
            return None
        if not isinstance(value, str):
            raise WorkspaceError(f"{self.where(key)}: `{key}` must be a path string, got {value!r}")
        return self.ws.resolve(value)

    def require_path(self, key: str, purpose: str) -> Path:
        p = self.path_of(key)
        if p is None:
            raise WorkspaceError(f'{self.shown}: `{key}` is not set; {purpose} needs it: add `{key} = "..."`')
        return p

    @property
    def dataset_path(self) -> Path:
        return self.require_path("dataset_config", "every target")


# The file a path key names inside a folder, where the folder itself was given (`dataset_config = "configs/v2"`).
INSIDE = {"dataset_config": "dataset.toml", "sample_prompts": "prompts.txt"}


def not_a_file(ws: Workspace, path: Path, key: str, fix: str) -> str:
    """Why `path` (the value of `key`) is not a file: a folder (naming the file inside it, where there is one) or
    not found."""
    if not path.is_dir():
        return f"not found; {fix}"
    inside = path / INSIDE.get(key, "")
    if key in INSIDE and inside.is_file():
        return f"is a folder, not a file: did you mean {ws.rel(inside)}?"
    return f"is a folder, not a file; name the file inside it, or {fix}"


def resolve_config_file(ws: Workspace, value: str, announce=None) -> Path:
    """CONFIG_FILE as given (a path, or a version name like `v3`); empty: the newest configs/vN/config.toml."""
    announce = announce or (lambda msg: print(msg, file=sys.stderr))
    versions = ws.versions()
    have = ", ".join(versions) if versions else "none"
    if not value:
        if not versions:
            raise WorkspaceError("configs/: no version found (configs/v1/config.toml); restore configs/v1 from git")
        path = ws.configs / versions[-1] / "config.toml"
        announce(f"CONFIG_FILE not set: using {ws.rel(path)} (the newest version)")
        return path
    if re.fullmatch(r"v\d+", value):
        path = ws.configs / value / "config.toml"
    else:
        path = ws.resolve(value)
        if path.is_dir():
            path = path / "config.toml"
    if not path.exists():
        raise WorkspaceError(
            f"CONFIG_FILE={value}: {ws.rel(path)} not found; versions here: {have}; `make new` creates the next one"
        )
    return path


def load_config(ws: Workspace, value: str) -> Config:
    """The version CONFIG_FILE names (a path or just `v3`; empty: the newest, announced), read and validated."""
    return Config.load(ws, resolve_config_file(ws, value))
