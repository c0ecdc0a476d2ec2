"""Option combinations that fail only after the model has loaded, GPU memory against the settings, and torch's
compile cache keyed by the settings.

The combinations and the memory table are data (`data/known_issues.toml`, documented at its top); this module
reads them, evaluates their conditions against a version's config.toml and dataset.toml, and reports findings
through `checks.Report`. `compile_env` gives each set of compile-relevant settings its own inductor cache, so a
compiled run never picks up kernels compiled for other shapes or settings (which crashed at the first step).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from musubi_workspace import dataset as dataset_model
from musubi_workspace.config import Config, tomllib
from musubi_workspace.environment import child_env
from musubi_workspace.errors import WorkspaceError
from musubi_workspace.gpus import gpu_memory

DATA = Path(__file__).resolve().parents[1] / "data" / "known_issues.toml"

# The attention options in the order musubi-tuner picks them (trainer_base._load_dit_and_swap).
ATTENTION_FLAGS = ("sdpa", "flash_attn", "sage_attn", "xformers", "flash3")
# checks.MACHINE: a finding about this machine, not the version (checks imports this module, not the reverse).
MACHINE = "machine"
OPS = ("==", "!=", ">=", "<=", ">", "<", "in")
COND_RE = re.compile(r"^\s*([a-z_][a-z0-9_]*)\s+(==|!=|>=|<=|>|<|in)\s+(.+?)\s*$")


# --------------------------------------------------------------------------------------------------------------
# The data
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Condition:
    name: str
    op: str
    value: Any

    def holds(self, actual: Any) -> bool:
        """`actual` is None when the option is unset: false for flags, 0 for numbers (musubi-tuner's defaults)."""
        if self.op == "in":
            return actual in self.value
        if isinstance(self.value, bool):
            got = bool(actual)
            return got == self.value if self.op == "==" else got != self.value if self.op == "!=" else False
        if isinstance(self.value, (int, float)):
            got = 0 if actual is None or isinstance(actual, bool) else actual
            if not isinstance(got, (int, float)):
                return False
            return {
                "==": got == self.value,
                "!=": got != self.value,
                ">": got > self.value,
                ">=": got >= self.value,
                "<": got < self.value,
                "<=": got <= self.value,
            }[self.op]
        return (actual == self.value) if self.op == "==" else (actual != self.value) if self.op == "!=" else False


@dataclass(frozen=True)
class KnownIssue:
    id: str
    severity: str
    when: tuple[Condition, ...]
    reason: str
    fix: str
    seen_at: str
    verified: str
    upstream: int | None = None


@dataclass(frozen=True)
class MemoryRun:
    gpu: str
    gpu_mib: int
    batch: int
    resolution: tuple[int, int]
    weights: str
    blocks_to_swap: int
    gradient_checkpointing: bool
    compile: bool
    fits: bool
    seen_at: str
    verified: str
    peak_gib: float | None = None

    @property
    def pixels(self) -> int:
        return self.batch * self.resolution[0] * self.resolution[1]

    def describe(self) -> str:
        w, h = self.resolution
        weights = "fp8_base + fp8_scaled" if self.weights == "fp8" else "bf16 weights"
        swap = f"blocks_to_swap = {self.blocks_to_swap}" if self.blocks_to_swap else "no block swap"
        extra = " + compile" if self.compile else ""
        peak = f", ~{self.peak_gib:g} GiB" if self.peak_gib else ""
        return f"batch {self.batch} at {w}x{h}, {weights}, {swap}{extra}{peak}"


def _word(s: str) -> Any:
    s = s.strip()
    if s in ("true", "false"):
        return s == "true"
    if re.fullmatch(r"-?\d+", s):
        return int(s)
    if re.fullmatch(r"-?\d+\.\d*", s):
        return float(s)
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", s):
        return s
    raise ValueError(f"not a value: {s!r}")


def parse_condition(text: str) -> Condition:
    m = COND_RE.match(text)
    if not m:
        raise ValueError(f"expected `<name> <op> <value>` with op one of {' '.join(OPS)}, got {text!r}")
    name, op, raw = m.groups()
    if op == "in":
        if not (raw.startswith("[") and raw.endswith("]")):
            raise ValueError(f"`in` takes a list such as [sdpa, xformers], got {raw!r}")
        value: Any = tuple(_word(w) for w in raw[1:-1].split(",") if w.strip())
    else:
        value = _word(raw)
    return Condition(name, op, value)


@cache
def load_known(path: Path = DATA) -> tuple[tuple[KnownIssue, ...], tuple[MemoryRun, ...]]:
    """The combinations and memory runs of known_issues.toml; a malformed entry fails with its id and why."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    issues = []
    for n, e in enumerate(data.get("issue", []), 1):
        ident = e.get("id", f"#{n}")
        try:
            if e["severity"] not in ("error", "warning"):
                raise ValueError(f"severity must be error or warning, got {e['severity']!r}")
            issues.append(
                KnownIssue(
                    id=e["id"],
                    severity=e["severity"],
                    when=tuple(parse_condition(c) for c in e["when"]),
                    reason=e["reason"],
                    fix=e["fix"],
                    seen_at=e["seen_at"],
                    verified=e["verified"],
                    upstream=e.get("upstream"),
                )
            )
        except (KeyError, ValueError) as err:
            raise WorkspaceError(f"{path.name}: [[issue]] {ident}: {err.__class__.__name__}: {err}") from None
    runs = []
    for n, e in enumerate(data.get("memory", []), 1):
        try:
            runs.append(
                MemoryRun(
                    gpu=e["gpu"],
                    gpu_mib=int(e["gpu_mib"]),
                    batch=int(e["batch"]),
                    resolution=tuple(e["resolution"]),
                    weights=e["weights"],
                    blocks_to_swap=int(e["blocks_to_swap"]),
                    gradient_checkpointing=bool(e["gradient_checkpointing"]),
                    compile=bool(e["compile"]),
                    fits=bool(e["fits"]),
                    seen_at=e["seen_at"],
                    verified=e["verified"],
                    peak_gib=e.get("peak_gib"),
                )
            )
        except (KeyError, TypeError, ValueError) as err:
            raise WorkspaceError(f"{path.name}: [[memory]] #{n}: {err.__class__.__name__}: {err}") from None
    return tuple(issues), tuple(runs)


# --------------------------------------------------------------------------------------------------------------
# What a version sets
# --------------------------------------------------------------------------------------------------------------
@dataclass
class Dataset:
    """One [[datasets]] entry with [general] and musubi-tuner's defaults applied."""

    index: int
    batch_size: int
    batch_where: str
    resolution: tuple[int, int]
    resolution_where: str
    raw: dict = field(default_factory=dict)


def datasets(cfg: Config) -> list[Dataset] | None:
    """The datasets of dataset.toml with effective batch size and resolution; None when it does not load (the
    dataset.toml check reports why)."""
    try:
        f = dataset_model.load(cfg)
    except WorkspaceError:
        return None
    out = []
    for d in f.datasets:

        def where(key: str, d=d) -> str:
            return d.at(key) if d.is_set(key) else f"{f.shown} (musubi-tuner's default)"

        out.append(
            Dataset(
                d.index - 1,
                d.batch_size,
                where("batch_size"),
                d.resolution,
                where("resolution"),
                {**f.general, **d.entry},
            )
        )
    return out


def attention(cfg: Config) -> str:
    for flag in ATTENTION_FLAGS:
        if cfg.get(flag) is True:
            return flag
    return "none"


@dataclass
class Facts:
    """The values conditions are evaluated on, and where each one comes from."""

    values: dict[str, Any]
    where: dict[str, str]
    shown: dict[str, str]


def facts(cfg: Config) -> Facts:
    values = dict(cfg.options)
    where = {k: cfg.where(k) for k in cfg.options}
    shown = {k: f"`{k} = {_toml(v)}`" for k, v in cfg.options.items()}
    att = attention(cfg)
    values["attention"] = att
    if att == "none":
        where["attention"] = cfg.shown
        shown["attention"] = f"no attention option ({', '.join(f for f in ATTENTION_FLAGS if f != 'sage_attn')})"
    else:
        where["attention"] = cfg.where(att)
        shown["attention"] = f"`{att} = true`"
    found = datasets(cfg)
    if found:
        biggest = max(found, key=lambda d: d.batch_size)
        values["batch_size"] = biggest.batch_size
        where["batch_size"] = biggest.batch_where
        shown["batch_size"] = f"`batch_size = {biggest.batch_size}`" + (
            f" ([[datasets]] #{biggest.index + 1})" if len(found) > 1 else ""
        )
    return Facts(values, where, shown)


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    return str(v)


# --------------------------------------------------------------------------------------------------------------
# The checks (registered in checks.CHECKS)
# --------------------------------------------------------------------------------------------------------------
def matches(issue: KnownIssue, f: Facts) -> bool:
    """All conditions hold; a condition on a value that is unknown (batch_size of a dataset.toml that does not
    load) does not."""
    for c in issue.when:
        if c.name == "batch_size" and c.name not in f.values:
            return False
        if not c.holds(f.values.get(c.name)):
            return False
    return True


def finding_text(issue: KnownIssue, f: Facts) -> tuple[str, str]:
    """(where, message): where is the first involved key that a file sets; the message names every key (with
    its place when that is elsewhere), the reason and the fix."""
    names = [c.name for c in issue.when]
    where = next((f.where[n] for n in names if ":" in f.where.get(n, "")), "")
    where = where or next((f.where[n] for n in names if n in f.where), "")
    parts = []
    for n in names:
        if n in f.shown:
            place = f.where.get(n, "")
            parts.append(f.shown[n] + (f" ({place})" if place and place != where else ""))
        else:
            parts.append(f"`{n}` not set")
    combo = (
        parts[0]
        if len(parts) == 1
        else f"{parts[0]} with " + (parts[1] if len(parts) == 2 else ", ".join(parts[1:-1]) + " and " + parts[-1])
    )
    upstream = f", upstream issue #{issue.upstream}" if issue.upstream else ""
    msg = f"{combo}: {issue.reason}; fix: {issue.fix} [{issue.id}, seen at musubi-tuner {issue.seen_at}{upstream}]"
    return where, msg


def check_combinations(ctx) -> None:
    """Option combinations known to fail after the model has loaded (data/known_issues.toml)."""
    issues, _ = load_known()
    f = facts(ctx.cfg)
    for issue in issues:
        if matches(issue, f):
            where, msg = finding_text(issue, f)
            (ctx.report.error if issue.severity == "error" else ctx.report.warn)(where or ctx.cfg.shown, msg)
    check_unchecked_blocks(ctx)
    check_one_graph(ctx)


def check_unchecked_blocks(ctx) -> None:
    """`[workspace] blocks_without_checkpointing` (launch.py): with gradient checkpointing and without block swap."""
    cfg = ctx.cfg
    n = cfg.settings.blocks_without_checkpointing
    if not n:
        return
    at, setting = cfg.where("blocks_without_checkpointing"), f"[workspace] blocks_without_checkpointing = {n}"
    if cfg.get("gradient_checkpointing") is not True:
        ctx.report.error(
            at,
            f"{setting} does nothing without gradient checkpointing (every block keeps its activations then); set "
            f"`gradient_checkpointing = true`, or remove the line",
        )
    elif cfg.get("blocks_to_swap"):
        ctx.report.error(
            at,
            f"{setting} with blocks_to_swap = {cfg.get('blocks_to_swap')}: not verified with block swap (swapped "
            f"blocks' weights move between the forward and the backward pass), and it is only worth its memory "
            f"where there is memory to spare; set `blocks_to_swap = 0`, or remove the line",
        )


def check_one_graph(ctx) -> None:
    """`[workspace] split_attn_one_graph` (launch.py): it replaces split_attn's sdpa loop, so it needs both."""
    cfg = ctx.cfg
    if not cfg.settings.split_attn_one_graph:
        return
    at, setting = cfg.where("split_attn_one_graph"), "[workspace] split_attn_one_graph = true"
    if cfg.get("split_attn") is not True:
        ctx.report.error(at, f"{setting} does nothing without `split_attn = true`; set it, or remove the line")
    elif cfg.get("sdpa") is not True:  # musubi-tuner trains with sdpa whenever `sdpa = true`, whatever else is set
        other = next((k for k in ("flash_attn", "flash3", "sage_attn", "xformers") if cfg.get(k) is True), None)
        ctx.report.error(
            at,
            f"{setting} replaces split_attn's sdpa loop, but this version trains with "
            f"{'`' + other + ' = true`' if other else 'no attention option'}; set `sdpa = true`, or remove the line",
        )


def weights_of(cfg: Config) -> str:
    return "fp8" if cfg.get("fp8_base") is True else "bf16"


# Host RAM of one training process at its peak (the probe's resident set, bench/nvidia-h200_v1_1-and-2-gpus.md):
# with block swap the DiT is loaded on the CPU first (25.1 GiB a process for the 25.7 GB bf16 DiT: the file and
# HOST_EXTRA), without it 8.3 GiB. A DiT file under 1 GB is a placeholder: the bf16 file's size counts.
HOST_NO_SWAP = int(8.3 * 2**30)
HOST_EXTRA = int(1.25e9)
DIT_BF16_BYTES = 25_700_000_000
MEMINFO = "/proc/meminfo"


def host_ram_total(env: dict[str, str]) -> int | None:
    """MemTotal in bytes (WS_MEMINFO: another meminfo file, for tests); None where it cannot be read."""
    try:
        text = Path(env.get("WS_MEMINFO") or MEMINFO).read_text()
    except OSError:
        return None
    m = re.search(r"^MemTotal:\s+(\d+)\s*kB", text, re.M)
    return int(m.group(1)) * 1024 if m else None


def check_host_memory(ctx, processes: int) -> None:
    """Warn when the training processes' host RAM (block swap: a DiT each) is more than the machine has."""
    cfg = ctx.cfg
    total = host_ram_total(ctx.env)
    if total is None:
        return
    swap = cfg.get("blocks_to_swap") or 0
    if isinstance(swap, int) and not isinstance(swap, bool) and swap > 0:
        dit = cfg.path_of("dit") if isinstance(cfg.get("dit"), str) else None
        size = dit.stat().st_size if dit is not None and dit.is_file() else 0
        per = (size if size >= 10**9 else DIT_BF16_BYTES) + HOST_EXTRA
        why = "with block swap each holds the DiT on the CPU"
    else:
        per, why = HOST_NO_SWAP, "without block swap"
    need = per * processes
    if need <= total:
        return
    where = cfg.where("blocks_to_swap") if "blocks_to_swap" in cfg.options else cfg.shown
    ctx.report.warn(
        where,
        f"{processes} training process{'es' if processes > 1 else ''} need about {need / 1e9:.0f} GB of host RAM "
        f"({why}: about {per / 1e9:.0f} GB a process, measured in bench/nvidia-h200_v1_1-and-2-gpus.md) and this "
        f"machine has {total / 1e9:.0f} GB: the system may kill the run; train on fewer GPUs (`num_processes` in "
        f"[workspace]), or rent a pod with more RAM",
        kind=MACHINE,
    )


def check_gpu_memory(ctx) -> str | None:
    """Where nvidia-smi shows a GPU: warn when a run no easier than this one ran out of memory on a GPU as big,
    and when the training processes need more host RAM than the machine has. Without a visible GPU, or in a dry
    run (which needs no GPU and asks none), nothing is checked and the step says so (⊘) rather than claim a ✓."""
    from musubi_workspace.commands import process_count
    from musubi_workspace.gpus import visible_gpu_count

    cfg = ctx.cfg
    if ctx.dry_run:
        return "dry run: no GPU needed, not checked"
    gpus = gpu_memory(child_env(cfg.ws))
    if not gpus:
        return "no GPU visible: not checked"
    if ctx.for_training() and not cfg.settings.accelerate_config:
        check_host_memory(ctx, process_count(cfg, visible_gpu_count(ctx.env)))
    found = datasets(cfg)
    if not found:
        return None
    _, runs = load_known()
    ds = max(found, key=lambda d: d.batch_size * d.resolution[0] * d.resolution[1])
    pixels = ds.batch_size * ds.resolution[0] * ds.resolution[1]
    weights = weights_of(cfg)
    swap = cfg.get("blocks_to_swap") or 0
    swap = swap if isinstance(swap, int) and not isinstance(swap, bool) else 0
    checkpointing = cfg.get("gradient_checkpointing") is True

    def no_easier(r: MemoryRun, mib: int) -> bool:
        """This config needs at least what run r needed, on a GPU with mib MiB, no bigger than r's."""
        return (
            r.gpu_mib >= mib
            and pixels >= r.pixels
            and swap <= r.blocks_to_swap
            and (r.weights == weights or r.weights == "fp8")
            and (r.gradient_checkpointing or not checkpointing)
        )

    if not any(not r.fits and no_easier(r, 0) for r in runs):
        return None
    name, mib = min(gpus, key=lambda g: g[1])
    oom = [r for r in runs if not r.fits and no_easier(r, mib)]
    if not oom:
        return
    worst = max(oom, key=lambda r: (r.blocks_to_swap, -r.pixels))
    # Runs of at least this batch x pixels that fitted: on a GPU no bigger than this one, else on any.
    bigger = [r for r in runs if r.fits and r.pixels >= pixels]
    here = [r for r in bigger if r.gpu_mib <= mib]
    w, h = ds.resolution
    setting = (
        ("fp8_base" if weights == "fp8" else "bf16 weights")
        + ", "
        + (f"`blocks_to_swap = {swap}`" if swap else "no `blocks_to_swap`")
        + ("" if checkpointing else ", no `gradient_checkpointing`")
    )
    if here:
        fix = "these fitted: " + "; ".join(f"{r.describe()} ({r.gpu})" for r in here) + ": use one of them"
    elif bigger:
        fix = (
            "on a bigger GPU these fitted: "
            + "; ".join(f"{r.describe()} ({r.gpu})" for r in bigger)
            + "; on this one lower `batch_size` or the resolution, or raise `blocks_to_swap`"
        )
    else:
        fix = "no known setting fits this batch and resolution: lower `batch_size` or the resolution"
    msg = (
        f"{name} ({mib / 1024:.0f} GiB): `batch_size = {ds.batch_size}` ({ds.batch_where}) at {w}x{h} with "
        f"{setting} will likely run out of GPU memory after the DiT has loaded: {worst.describe()} ran out on "
        f"one {worst.gpu} (musubi-tuner {worst.seen_at}); {fix}"
    )
    where = cfg.where("blocks_to_swap") if "blocks_to_swap" in cfg.options else cfg.shown
    ctx.report.warn(where, msg, kind=MACHINE)


# --------------------------------------------------------------------------------------------------------------
# torch's compile cache
# --------------------------------------------------------------------------------------------------------------
# Options whose values change what torch.compile builds for the transformer blocks: shapes (dataset, one-frame
# layout, latent window), dtypes (fp8, precision), graphs (attention, split_attn, checkpointing, block swap,
# LoRA shape) and how it compiles.
COMPILE_OPTIONS = (
    "compile",
    "compile_backend",
    "compile_mode",
    "compile_dynamic",
    "compile_fullgraph",
    "compile_cache_size_limit",
    "fp8_base",
    "fp8_scaled",
    "mixed_precision",
    "blocks_to_swap",
    "block_swap_h2d_only",
    "block_swap_ring_size",
    "use_pinned_memory_for_block_swap",
    "gradient_checkpointing",
    "gradient_checkpointing_cpu_offload",
    "split_attn",
    *ATTENTION_FLAGS,
    "one_frame",
    "f1",
    "latent_window_size",
    "network_module",
    "network_dim",
    "network_args",
)
# dataset.toml keys that change the shapes the blocks see.
COMPILE_DATASET_KEYS = (
    "batch_size",
    "resolution",
    "enable_bucket",
    "bucket_no_upscale",
    "target_frames",
    "frame_extraction",
    "frame_stride",
    "frame_sample",
    "max_frames",
    "fp_latent_window_size",
    "fp_1f_clean_indices",
    "fp_1f_target_index",
    "fp_1f_no_post",
    "control_resolution",
    "no_resize_control",
    "multiple_target",
)
ENV_VAR = "TORCHINDUCTOR_CACHE_DIR"


def torch_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def compile_settings(cfg: Config) -> dict[str, Any]:
    """The settings the compile cache is keyed by (learning rate, output paths and the like are not among them)."""
    opts = {k: cfg.options[k] for k in COMPILE_OPTIONS if k in cfg.options}
    found = datasets(cfg) or []
    opts["datasets"] = [
        {
            "batch_size": d.batch_size,
            "resolution": list(d.resolution),
            **{k: d.raw[k] for k in COMPILE_DATASET_KEYS if k in d.raw and k not in ("batch_size", "resolution")},
        }
        for d in found
    ]
    opts["one_frame_no_2x"] = cfg.settings.one_frame_no_2x
    opts["one_frame_no_4x"] = cfg.settings.one_frame_no_4x
    if cfg.settings.blocks_without_checkpointing:  # which blocks run inside torch.utils.checkpoint (launch.py)
        opts["blocks_without_checkpointing"] = cfg.settings.blocks_without_checkpointing
    if cfg.settings.split_attn_one_graph:  # the blocks' graphs differ (launch.py)
        opts["split_attn_one_graph"] = True
    opts["torch"] = torch_version()
    return opts


def compile_cache_dir(cfg: Config) -> Path:
    """<root>/cache/torch_compile/<first 12 hex of the sha256 of the compile-relevant settings>."""
    key = json.dumps(compile_settings(cfg), sort_keys=True, default=str)
    return cfg.ws.root / "cache" / "torch_compile" / hashlib.sha256(key.encode()).hexdigest()[:12]


def compile_env(cfg: Config, env: dict[str, str], out=None) -> dict[str, str]:
    """TORCHINDUCTOR_CACHE_DIR for the trainer: its own folder per set of compile-relevant settings, unless the
    user set one (environment or .env), which is kept. Says which, on one line."""
    out = out or sys.stderr
    if env.get(ENV_VAR):
        print(f"{ENV_VAR}={env[ENV_VAR]} (yours, kept): runs of other settings must not share it", file=out)
        return {}
    folder = compile_cache_dir(cfg)
    if cfg.get("compile") is True:
        print(f"torch compile cache: {cfg.ws.rel(folder)} (this version's compile settings)", file=out)
    return {ENV_VAR: str(folder)}
