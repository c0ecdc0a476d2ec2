"""`make tune` and `make bench`: measure the memory and speed settings of a version and pick the fastest that fits.

Each candidate setting runs musubi-tuner's real trainer for a few steps (`accelerate launch -m
musubi_workspace.tune.probe`, see probe.py) from a derived config: the version's options with the candidate's
values, a small `max_train_steps`, and no sampling, saving, upload or logging, into a temporary folder. The
probe reports the time of every optimiser step (GPU synchronised) and the peak GPU memory. `make tune` runs on
the version's real models and caches; `make bench` on a random-weight DiT of the exact shapes and random caches
of the version's resolution (synthetic.py), so it needs no downloads.

Candidates (not a cross product): the current setting, then one axis at a time from it (block swap, pinned
memory for it, fp8 weights, attention backend where installed, compile, gradient checkpointing and its offload,
batch size), then combinations known to work (no swap with compile, also with split_attn in one graph (launch.py)
and with the autotuning compile mode; fp8 without swap with compile; half the batch without swap with compile),
then the combination of every axis' improvement, measured before it can be picked (not when a measured setting
trains the same). Block swap is searched downwards from the current value in steps of 4 and stops at the first
value that does not fit (less swap is never slower); when the current setting does not fit, upwards until one
fits.

Selection rule: a run fits when it finished every step and its peak allocated GPU memory is at most
(1 - MARGIN) of the GPU's memory. Allocated, not reserved: PyTorch's allocator keeps freed blocks reserved
and releases them before it gives up, so reserved memory near the GPU's size is normal (seen on an H100: the
shipped setting reserved 72 of 79 GiB and trains for hours) while allocated memory is what runs out. Among the runs that fit and keep the numbers (same weight precision and batch
size as the version; ALLOW_CHANGES=1 admits the others), the fastest per training sample wins; within
TIE of it, the one with the least peak memory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from importlib.util import find_spec
from pathlib import Path

from musubi_workspace import dataset as dataset_model
from musubi_workspace.commands import Command, train_command
from musubi_workspace.config import WORKSPACE_TABLE, Config, WorkspaceSettings
from musubi_workspace.environment import child_env, redact, secret_values
from musubi_workspace.errors import EXIT_CHILD, WorkspaceError
from musubi_workspace.launch import DIT_BLOCKS
from musubi_workspace.paths import Workspace
from musubi_workspace.tune.bench_tables import (
    append_session,
    describe_shape,
    locked,
    merge_session,
    read_sessions,
    table_path,
    workload_of,
)
from musubi_workspace.tune.probe import MEMORY_ENV, rank_paths

PROBE_MODULE = "musubi_workspace.tune.probe"
# Steps run before the measured ones (CUDA kernels, compile, allocator warm-up); excluded from the timing.
WARMUP_STEPS = 1
# Share of the GPU memory kept free when deciding "fits": other buckets, longer captions, fragmentation.
MARGIN = 0.10
# Runs within this share of the fastest count as equally fast (measurement spread); the least memory wins.
TIE = 0.02
# A candidate that runs longer than this is stopped and reported as "timeout".
CANDIDATE_TIMEOUT_S = 1800
# accelerate's default port; runs side by side on several GPUs each use the next ones.
MAIN_PORT = 29500
# Block swap: musubi-tuner accepts up to 36 in training; searched in steps of this size.
SWAP_MAX, SWAP_STEP = 36, 4
ATTENTION_KEYS = ("sdpa", "flash_attn", "xformers", "flash3", "sage_attn")
# Training attention backends and the package each needs (sage_attn is inference-only: never a candidate).
TRAIN_ATTENTION = {"sdpa": None, "flash_attn": "flash_attn", "xformers": "xformers"}
# musubi-tuner options a candidate sets (batch size lives in dataset.toml).
TUNED_KEYS = (
    *ATTENTION_KEYS,
    "split_attn",
    "blocks_to_swap",
    "use_pinned_memory_for_block_swap",
    "fp8_base",
    "fp8_scaled",
    "gradient_checkpointing",
    "gradient_checkpointing_cpu_offload",
    "compile",
    "compile_mode",
)
# Options dropped from a measuring run: no sampling, saving, upload, logging, resume.
DROPPED_PREFIXES = ("sample_", "save_", "huggingface_", "log_", "wandb_", "resume")
DROPPED_KEYS = {"async_upload", "logging_dir", "max_train_epochs", "output_dir", "output_name", "network_weights"}


@dataclass(frozen=True)
class Setting:
    """The values a candidate varies. `weights`: bf16, fp8 (fp8_base) or fp8_scaled (fp8_base + fp8_scaled)."""

    batch_size: int
    blocks_to_swap: int = 0
    pinned: bool = False
    weights: str = "bf16"
    attention: str = "sdpa"
    split_attn: bool = False
    checkpointing: bool = False
    offload: bool = False
    compile: bool = False
    compile_mode: str = ""  # musubi-tuner's --compile_mode; "": its default ("default")
    # [workspace] blocks_without_checkpointing (launch.py): the first N blocks keep their activations.
    blocks_without_checkpointing: int = 0
    # [workspace] split_attn_one_graph (launch.py): split_attn's sdpa loop without graph breaks.
    one_graph: bool = False

    @classmethod
    def of(cls, cfg: Config, batch_size: int) -> Setting:
        o = cfg.options
        attention = next((k for k in ATTENTION_KEYS if o.get(k) is True), "sdpa")
        weights = "bf16"
        if o.get("fp8_base") is True:
            weights = "fp8_scaled" if o.get("fp8_scaled") is True else "fp8"
        swap = o.get("blocks_to_swap") or 0
        return cls(
            batch_size=batch_size,
            blocks_to_swap=int(swap),
            pinned=o.get("use_pinned_memory_for_block_swap") is True,
            weights=weights,
            attention=attention,
            split_attn=o.get("split_attn") is True,
            checkpointing=o.get("gradient_checkpointing") is True,
            offload=o.get("gradient_checkpointing_cpu_offload") is True,
            compile=o.get("compile") is True,
            compile_mode="" if o.get("compile_mode") in (None, "default") else str(o.get("compile_mode")),
            blocks_without_checkpointing=cfg.settings.blocks_without_checkpointing,
            one_graph=cfg.settings.split_attn_one_graph,
        )

    def options(self) -> dict:
        """musubi-tuner option values of this setting (False means: not set)."""
        return {
            **{k: k == self.attention for k in ATTENTION_KEYS},
            "split_attn": self.split_attn,
            "blocks_to_swap": self.blocks_to_swap,
            "use_pinned_memory_for_block_swap": self.pinned and self.blocks_to_swap > 0,
            "fp8_base": self.weights != "bf16",
            "fp8_scaled": self.weights == "fp8_scaled",
            "gradient_checkpointing": self.checkpointing,
            "gradient_checkpointing_cpu_offload": self.checkpointing and self.offload,
            "compile": self.compile,
            "compile_mode": self.compile_mode if self.compile and self.compile_mode else False,
        }

    def effective(self) -> tuple:
        """What the trainer runs with: the batch size, musubi-tuner's option values and the `[workspace]` values (so
        pinned memory without block swap, say, is the same run as without it)."""
        return self.batch_size, tuple(sorted(self.options().items())), tuple(sorted(self.workspace().items()))

    @classmethod
    def from_json(cls, d: dict) -> Setting:
        """A setting as a record keeps it; a field it lacks (a record older than the field) takes its default."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def workspace(self) -> dict:
        """`[workspace]` values of this setting (launch.py): none at their defaults."""
        n = self.blocks_without_checkpointing if self.checkpointing else 0
        out = {"blocks_without_checkpointing": n} if n else {}
        if self.one_graph and self.split_attn and self.attention == "sdpa":
            out["split_attn_one_graph"] = True
        return out

    def tokens(self, base: Setting) -> list[str]:
        t = []
        if self.batch_size != base.batch_size:
            t.append(f"batch{self.batch_size}")
        if self.blocks_to_swap != base.blocks_to_swap:
            t.append(f"swap{self.blocks_to_swap}")
        if self.pinned != base.pinned:
            t.append("pinned" if self.pinned else "nopinned")
        if self.weights != base.weights:
            t.append({"bf16": "bf16", "fp8": "fp8base", "fp8_scaled": "fp8"}[self.weights])
        if self.attention != base.attention:
            t.append(self.attention)
        if self.split_attn != base.split_attn:
            t.append("split" if self.split_attn else "nosplit")
        if self.checkpointing != base.checkpointing:
            t.append("ckpt" if self.checkpointing else "nockpt")
        if self.offload != base.offload:
            t.append("offload" if self.offload else "nooffload")
        if self.compile != base.compile:
            t.append("compile" if self.compile else "nocompile")
        if self.compile_mode != base.compile_mode:
            t.append(COMPILE_MODE_TOKENS.get(self.compile_mode, "defaultmode"))
        if self.blocks_without_checkpointing != base.blocks_without_checkpointing and self.checkpointing:
            t.append(f"nockpt{self.blocks_without_checkpointing}")
        if self.one_graph != base.one_graph:
            t.append("onegraph" if self.one_graph else "noonegraph")
        return t

    def name(self, base: Setting) -> str:
        return "+".join(self.tokens(base)) or "current"

    def changes_numbers(self, base: Setting) -> list[str]:
        """What makes this setting train differently from `base` (not only faster or slower)."""
        out = []
        if self.weights != base.weights:
            out.append(f"{self.weights.replace('_', ' ')} weights")
        if self.batch_size != base.batch_size:
            out.append(f"batch {self.batch_size}")
        return out

    def describe(self) -> str:
        o = self.options()
        parts = [f"batch {self.batch_size}", f"blocks_to_swap {self.blocks_to_swap}"]
        parts += ["pinned" if o["use_pinned_memory_for_block_swap"] else ""]
        one = self.workspace().get("split_attn_one_graph")
        parts += [
            self.weights,
            self.attention,
            ("split_attn" + (" (one graph)" if one else "")) if self.split_attn else "",
        ]
        unchecked = self.workspace().get("blocks_without_checkpointing")
        parts += [
            "checkpointing"
            + (" + CPU offload" if o["gradient_checkpointing_cpu_offload"] else "")
            + (f" but the first {unchecked} blocks" if unchecked else "")
            if self.checkpointing
            else "no checkpointing"
        ]
        parts += [("compile" + (f" ({self.compile_mode})" if self.compile_mode else "")) if self.compile else ""]
        return ", ".join(p for p in parts if p)


TOKENS_HELP = (
    "current, batchN, swapN, pinned, nopinned, fp8, fp8base, bf16, sdpa, flash_attn, xformers, split, nosplit, "
    "ckpt, nockpt, nockptN (the first N blocks), offload, nooffload, compile, nocompile, autotune, autotunecg, "
    "overhead, defaultmode, onegraph, noonegraph"
)
# musubi-tuner's --compile_mode values and their names in a setting (`swap0+compile+autotune`).
COMPILE_MODE_TOKENS = {
    "max-autotune-no-cudagraphs": "autotune",
    "max-autotune": "autotunecg",
    "reduce-overhead": "overhead",
}


def parse_name(name: str, base: Setting) -> Setting:
    """`batch8+swap0+compile` -> the base setting with those changes (the names the report prints)."""
    s = base
    if name.strip() == "current":
        return s
    flags = {
        "pinned": ("pinned", True),
        "nopinned": ("pinned", False),
        "split": ("split_attn", True),
        "nosplit": ("split_attn", False),
        "ckpt": ("checkpointing", True),
        "nockpt": ("checkpointing", False),
        "offload": ("offload", True),
        "nooffload": ("offload", False),
        "compile": ("compile", True),
        "nocompile": ("compile", False),
        "fp8": ("weights", "fp8_scaled"),
        "fp8base": ("weights", "fp8"),
        "bf16": ("weights", "bf16"),
        **{a: ("attention", a) for a in TRAIN_ATTENTION},
        "defaultmode": ("compile_mode", ""),
        "onegraph": ("one_graph", True),
        "noonegraph": ("one_graph", False),
        **{t: ("compile_mode", m) for m, t in COMPILE_MODE_TOKENS.items()},
    }
    for token in name.strip().split("+"):
        token = token.strip()
        if m := re.fullmatch(r"batch(\d+)", token):
            s = replace(s, batch_size=max(1, int(m.group(1))))
        elif m := re.fullmatch(r"swap(\d+)", token):
            if int(m.group(1)) > SWAP_MAX:
                raise WorkspaceError(
                    f"ONLY={name}: swap{m.group(1)}: musubi-tuner trains with at most {SWAP_MAX} swapped blocks"
                )
            s = replace(s, blocks_to_swap=int(m.group(1)))
        elif m := re.fullmatch(r"nockpt(\d+)", token):
            if int(m.group(1)) > DIT_BLOCKS:
                raise WorkspaceError(f"ONLY={name}: {token}: the FramePack DiT has {DIT_BLOCKS} blocks")
            s = replace(s, checkpointing=True, blocks_without_checkpointing=int(m.group(1)))
        elif token in flags:
            s = replace(s, **{flags[token][0]: flags[token][1]})
        else:
            raise WorkspaceError(f"ONLY={name}: unknown setting `{token}`; join these with +: {TOKENS_HELP}")
    if s.workspace().get("blocks_without_checkpointing") and s.blocks_to_swap:
        raise WorkspaceError(
            f"ONLY={name}: blocks without checkpointing (nockpt{s.blocks_without_checkpointing}) with block swap "
            f"{s.blocks_to_swap} is not verified (make check refuses it); add swap0"
        )
    if s.one_graph and not s.workspace().get("split_attn_one_graph"):
        raise WorkspaceError(
            f"ONLY={name}: onegraph changes split_attn's sdpa loop; this setting has "
            f"{'sdpa' if s.attention == 'sdpa' else s.attention} {'with' if s.split_attn else 'without'} split_attn "
            f"(make check refuses it); use it with split and sdpa"
        )
    return s


@dataclass
class Axis:
    """Candidates of one axis, in order. stop="misfit": skip the rest after one does not fit; "fit": after one fits."""

    name: str
    settings: list[Setting]
    stop: str | None = None


def available_attention() -> list[str]:
    """Training attention backends whose package imports here."""
    return [a for a, pkg in TRAIN_ATTENTION.items() if pkg is None or find_spec(pkg) is not None]


def axes(base: Setting, attention: list[str], current_fits: bool = True) -> list[Axis]:
    """The candidates after `current`: one axis at a time, the known-good combinations, then the axes that rarely
    win on a big GPU (no checkpointing runs out of memory, CPU offload is slower, another batch
    size changes the numbers), so a session cut short (a pod's time limit) has measured the likely picks."""
    out: list[Axis] = []
    if current_fits:
        down = list(range(base.blocks_to_swap - SWAP_STEP, -1, -SWAP_STEP))
        if down and down[-1] != 0:
            down.append(0)
        out.append(Axis("blocks_to_swap", [replace(base, blocks_to_swap=v) for v in down], stop="misfit"))
    else:
        up = list(range(base.blocks_to_swap + SWAP_STEP, SWAP_MAX + 1, SWAP_STEP))
        # With block swap every block is checkpointed again (blocks_without_checkpointing is for no swap only).
        swapped = replace(base, blocks_without_checkpointing=0)
        out.append(Axis("blocks_to_swap", [replace(swapped, blocks_to_swap=v) for v in up], stop="fit"))
    if base.blocks_to_swap > 0:
        out.append(Axis("pinned memory", [replace(base, pinned=not base.pinned)]))
    if base.weights == "bf16":
        out.append(
            Axis(
                "weights", [replace(base, weights="fp8_scaled"), replace(base, weights="fp8_scaled", blocks_to_swap=0)]
            )
        )
    else:
        out.append(Axis("weights", [replace(base, weights="bf16")]))
    # batch > 1 needs split_attn except with flash attention's varlen path.
    att = [
        replace(
            base,
            attention=a,
            split_attn=(a != "flash_attn" and base.batch_size > 1) or (a != "flash_attn" and base.split_attn),
        )
        for a in attention
        if a != base.attention
    ]
    if base.attention == "flash_attn" and base.split_attn:
        att.append(replace(base, split_attn=False))
    if att:
        out.append(Axis("attention", att))
    compiled = replace(base, compile=True)
    modes = [replace(compiled, compile_mode="max-autotune-no-cudagraphs")] if not base.compile_mode else []
    out.append(Axis("compile", [replace(base, compile=not base.compile, compile_mode=""), *modes]))
    known = []
    fast = replace(base, blocks_to_swap=0, compile=True)
    if base.blocks_to_swap > 0 or not base.compile:
        # No swap with compile: 1.50x the shipped setting on an H200 (issue 13), with the compile environment.
        known.append(fast)
    if base.split_attn and base.attention == "sdpa" and not base.one_graph:
        # ... and split_attn in one graph (launch.py): 3% less a compiled block on an H200.
        known.append(replace(fast, one_graph=True))
    if base.blocks_to_swap > 0 or not base.compile:
        if not base.compile_mode:
            known.append(replace(base, blocks_to_swap=0, compile=True, compile_mode="max-autotune-no-cudagraphs"))
    if base.weights == "bf16":
        known.append(replace(base, weights="fp8_scaled", blocks_to_swap=0, compile=True))
    if base.batch_size > 1:
        known.append(replace(base, batch_size=base.batch_size // 2, blocks_to_swap=0, compile=True))
    out.append(Axis("known good", known))
    if base.checkpointing:
        out.append(
            Axis(
                "gradient checkpointing",
                [replace(base, checkpointing=False, offload=False), replace(base, offload=not base.offload)],
            )
        )
    else:
        out.append(Axis("gradient checkpointing", [replace(base, checkpointing=True)]))
    batches = [b for b in (base.batch_size * 2, base.batch_size // 2) if b >= 1 and b != base.batch_size]
    out.append(Axis("batch size", [replace(base, batch_size=b) for b in batches]))
    return out


@dataclass
class Result:
    setting: Setting
    name: str
    status: str  # ok | oom | error | timeout
    step_times: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    peak_reserved: int = 0
    peak_allocated: int = 0
    total_memory: int = 0
    device_name: str = ""
    message: str = ""
    wall_s: float = 0.0
    changes: list[str] = field(default_factory=list)
    # MEMORY=: the most memory the run could use (bytes); 0: the whole GPU. "fits" is decided against it.
    memory_cap: int = 0
    # Processes (one per GPU) the run trained with; peak_* are the most of any one GPU, host_ram their sum.
    processes: int = 1
    host_ram: int = 0  # bytes: the peak resident set of every process together (block swap keeps blocks there)

    @property
    def s_per_step(self) -> float | None:
        return statistics.median(self.step_times) if self.status == "ok" and self.step_times else None

    @property
    def s_per_sample(self) -> float | None:
        """Seconds per training sample: each of the processes trains a batch per step."""
        s = self.s_per_step
        return s / (self.setting.batch_size * self.processes) if s is not None else None

    @property
    def samples_per_s(self) -> float | None:
        s = self.s_per_sample
        return 1 / s if s else None

    @property
    def mean_loss(self) -> float | None:
        return statistics.fmean(self.losses) if self.losses else None

    @property
    def usable_memory(self) -> int:
        return (
            min(self.total_memory, self.memory_cap)
            if self.memory_cap and self.total_memory
            else (self.memory_cap or self.total_memory)
        )

    def fits(self, margin: float = MARGIN) -> bool:
        return (
            self.status == "ok" and self.usable_memory > 0 and self.peak_allocated <= (1 - margin) * self.usable_memory
        )

    @classmethod
    def from_probe(
        cls, setting: Setting, name: str, record: dict, warmup: int, changes: list[str], others: list[dict] = ()
    ) -> Result:
        """From the probe's record of rank 0 (the times, the losses) and those of the other ranks (`others`)."""
        steps = record.get("steps", [])
        every = [s for r in (record, *others) for s in r.get("steps", [])]
        times = [steps[i]["t"] - steps[i - 1]["t"] for i in range(max(1, warmup), len(steps))]
        losses = [s["loss"] for s in steps[warmup:] if "loss" in s]
        status = record.get("status", "error")
        if status == "ok" and len(times) == 0:
            status, record["message"] = "error", f"only {len(steps)} step(s) recorded; nothing after the warm-up"
        return cls(
            setting=setting,
            name=name,
            status=status,
            step_times=times,
            losses=losses,
            peak_reserved=max((s.get("max_reserved", 0) for s in every), default=0),
            peak_allocated=max((s.get("max_allocated", 0) for s in every), default=0),
            processes=1 + len(others),
            host_ram=sum(max((s.get("max_rss", 0) for s in r.get("steps", [])), default=0) for r in (record, *others)),
            total_memory=int(record.get("total_memory", 0)),
            device_name=record.get("device_name", ""),
            message=record.get("message", ""),
            changes=changes,
            memory_cap=int(record.get("memory_cap") or 0),
        )

    @classmethod
    def from_json(cls, d: dict) -> Result:
        """A result as `to_json` wrote it (bench/*.runs.json): derived fields are recomputed, unknown ones ignored."""
        setting = Setting.from_json(d["setting"])
        keep = {f.name for f in fields(cls)} - {"setting"}
        return cls(setting=setting, **{k: v for k, v in d.items() if k in keep})

    def to_json(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "setting"}
        d["setting"] = {f.name: getattr(self.setting, f.name) for f in fields(self.setting)}
        d.update(
            s_per_step=self.s_per_step,
            s_per_sample=self.s_per_sample,
            samples_per_s=self.samples_per_s,
            fits=self.fits(),
        )
        return d


def select(
    results: list[Result], allow_changes: bool = False, margin: float = MARGIN, tie: float = TIE
) -> Result | None:
    """The fastest per sample among runs that fit with `margin` (and keep the numbers unless allowed);
    within `tie` of it, the one with the least peak memory."""
    ok = [r for r in results if r.fits(margin) and (allow_changes or not r.changes)]
    if not ok:
        return None
    best = min(r.s_per_sample for r in ok)
    close = [r for r in ok if r.s_per_sample <= best * (1 + tie)]
    return min(close, key=lambda r: (r.peak_allocated, r.s_per_sample))


def combined(base: Setting, results: list[Result], allow_changes: bool) -> Setting | None:
    """Every axis' improvement merged: the changes of each faster fitting run, fastest first, no field twice."""
    cur = next((r for r in results if r.setting == base and r.fits()), None)
    if cur is None:
        return None
    better = sorted(
        (
            r
            for r in results
            if r.fits() and r.s_per_sample < cur.s_per_sample * (1 - TIE) and (allow_changes or not r.changes)
        ),
        key=lambda r: r.s_per_sample,
    )
    merged, taken = base, set()
    for r in better:
        diff = {f.name for f in fields(Setting) if getattr(r.setting, f.name) != getattr(base, f.name)}
        if diff & taken:
            continue
        merged = replace(merged, **{k: getattr(r.setting, k) for k in diff})
        taken |= diff
    if merged.attention != "flash_attn" and merged.batch_size > 1:
        merged = replace(merged, split_attn=True)
    if merged.blocks_to_swap == 0:  # pinned memory is for swapped blocks: without swap it changes nothing
        merged = replace(merged, pinned=base.pinned)
    return merged if merged.effective() not in {r.setting.effective() for r in results} else None


# ---------------------------------------------------------------------------------------------------------
# The version's dataset: batch size and resolution
# ---------------------------------------------------------------------------------------------------------


def dataset_values(cfg: Config) -> tuple[dict, int, tuple[int, int]]:
    """(dataset.toml as a dict, batch size per GPU, resolution (W, H)) of its first dataset, as musubi-tuner
    resolves them."""
    f = dataset_model.load(cfg)
    first = f.datasets[0] if f.datasets else None
    if first is None:
        return f.data, 1, dataset_model.BASE_DEFAULTS["resolution"]
    return f.data, first.batch_size, first.resolution


def with_batch_size(data: dict, batch: int) -> dict:
    out = json.loads(json.dumps(data))
    out.setdefault("general", {})["batch_size"] = batch
    for d in out.get("datasets", []):
        if "batch_size" in d:
            d["batch_size"] = batch
    return out


# ---------------------------------------------------------------------------------------------------------
# Running one candidate
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Session:
    """One `make tune` / `make bench`: where it writes, how it runs each candidate."""

    ws: Workspace
    cfg: Config
    base: Setting
    dataset: dict
    steps: int
    folder: Path  # logs and reports of this session
    scratch: Path  # derived configs and trainer outputs (deleted at the end)
    dit: str | None = None  # bench: the synthetic DiT instead of the version's
    env: dict = field(default_factory=dict)
    results: list[Result] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    gpu: str = ""  # the GPU's name as nvidia-smi reports it before the candidates run ("" without nvidia-smi)
    gpu_memory: int = 0  # its memory in bytes (nvidia-smi)
    memory_cap: int = 0  # MEMORY= in bytes; 0: the whole GPU
    memory: str = ""  # MEMORY= as given
    processes: int = 1  # processes of each run: as `make train` would start them here (num_processes, the GPUs)
    workload: dict | None = None  # bench_tables.workload_of: the shape the results were measured on
    kind: str = "tune"  # tune | bench: the record's name in `folder`
    command: str = ""  # the make command, as the record shows it
    allow_changes: bool = False
    # GPUS_PER_RUN: the CUDA_VISIBLE_DEVICES of each slot that runs a candidate; several run side by side.
    # [None]: one run at a time, on the GPUs the environment shows.
    slots: list = field(default_factory=lambda: [None])
    # CONTINUE=1: the results of the unfinished session continued (its settings are not run again).
    earlier: dict = field(default_factory=dict)
    # CONTINUE=1: the record of the session continued (its command stays the record's; this one is added to it).
    continued: dict = field(default_factory=dict)
    synthetic_items: int = 0  # make bench: the synthetic batches' item count (a continued session keeps its own)
    run_timeout: int = CANDIDATE_TIMEOUT_S  # RUN_TIMEOUT: a run still going after this long is stopped, the next starts
    order: dict = field(default_factory=dict)  # Setting -> the number it started as: the rows' order
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def options_for(self, s: Setting, out_dir: Path, dataset_path: Path) -> dict:
        opts = {
            k: v
            for k, v in self.cfg.options.items()
            if k not in DROPPED_KEYS and not k.startswith(DROPPED_PREFIXES) and k not in TUNED_KEYS
        }
        opts.update({k: v for k, v in s.options().items() if v is not False})
        if not opts.get("blocks_to_swap"):
            opts.pop("blocks_to_swap", None)
        opts.update(
            dataset_config=str(dataset_path),
            output_dir=str(out_dir),
            output_name="probe",
            max_train_steps=WARMUP_STEPS + self.steps,
        )
        opts.setdefault("seed", 42)
        if self.dit:
            opts["dit"] = self.dit
        if s.workspace():
            opts[WORKSPACE_TABLE] = s.workspace()
        return opts

    @property
    def side_by_side(self) -> bool:
        return len(self.slots) > 1

    def save(self, finished: bool) -> Path:
        """The session's record, rewritten after every run: a session cut short (a pod stopped, a time limit)
        keeps what it measured, and CONTINUE=1 goes on from it."""
        record = session_record(self, self.command, self.allow_changes)
        record["finished"] = finished
        record = json.loads(redact(json.dumps(record), secret_values(self.env)))
        path = self.folder / f"{self.kind}.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
        tmp.replace(path)
        return path

    def prepare(self, s: Setting, slot: str | None = None) -> tuple[Path, Path, Command, dict]:
        """A candidate's scratch folder with its derived config.toml and dataset.toml, its command and the whole
        environment it runs in (the dry run shows these too)."""
        import tomlkit  # the measuring runs and APPLY=1 write TOML; `make check` imports this package

        work = self.scratch / re.sub(r"[^A-Za-z0-9_.+-]", "_", s.name(self.base))
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        dataset_path = work / "dataset.toml"
        dataset_path.write_text(tomlkit.dumps(with_batch_size(self.dataset, s.batch_size)), encoding="utf-8")
        config_path = work / "config.toml"
        config_path.write_text(tomlkit.dumps(self.options_for(s, work / "output", dataset_path)), encoding="utf-8")
        cfg = Config.load(self.ws, config_path)
        run_env = dict(self.env)
        if slot is not None:
            run_env["CUDA_VISIBLE_DEVICES"] = slot
            if self.processes > 1:  # side by side, each run's processes meet on a port of their own
                run_env["MAIN_PROCESS_PORT"] = str(MAIN_PORT + 1 + self.slots.index(slot))
        cmd = train_command(cfg, self.processes, module=PROBE_MODULE, env=run_env)
        env = {**run_env, **cmd.env, "WS_PROBE_OUT": str(work / "probe.json")}
        env["TORCHINDUCTOR_CACHE_DIR"] = str(work / "inductor")
        if self.memory_cap:
            env[MEMORY_ENV] = str(self.memory_cap)
        return work, config_path, cmd, env

    def run(self, s: Setting, index: int, total: int, slot: str | None = None) -> Result:
        name = s.name(self.base)
        work, config_path, cmd, env = self.prepare(s, slot)
        probe_out = Path(env["WS_PROBE_OUT"])
        log = self.folder / f"{name}.log"
        # The scratch folder is temporary and machine-local: the record names it <scratch>.
        self.commands.append(f"{name}: {cmd.shell().replace(str(self.scratch), '<scratch>')}")
        if self.side_by_side:
            where = f"GPU {slot}" if "," not in slot else f"GPUs {slot}"
            with self.lock:  # whole lines: runs side by side print from their own threads
                print(f"[{index}/{total}] {name} started on {where}: {s.describe()}", flush=True)
        else:
            print(f"[{index}/{total}] {name}: {s.describe()} ...", end="", flush=True)
        t0 = time.time()
        status = None
        with open(log, "w", encoding="utf-8") as f:
            f.write(f"$ {cmd.shell()}\n# config: {config_path}\n{config_path.read_text()}\n")
            f.flush()
            try:
                proc = subprocess.Popen(cmd.argv, cwd=self.ws.root, env=env, stdout=f, stderr=subprocess.STDOUT)
                try:
                    code = proc.wait(timeout=self.run_timeout)
                except subprocess.TimeoutExpired:
                    kill_tree(proc.pid)  # accelerate and the trainer processes it started
                    proc.wait()
                    raise
            except FileNotFoundError:
                print(flush=True)
                raise WorkspaceError(
                    f"{cmd.argv[0]}: not found; `make tune` needs the GPU stack (make setup-train)", EXIT_CHILD
                ) from None
            except subprocess.TimeoutExpired:
                code, status = None, "timeout"
        first, *rest = [Path(p) for p in rank_paths(str(probe_out), self.processes)]
        record = json.loads(first.read_text()) if first.exists() else {}
        others = [json.loads(p.read_text()) for p in rest if p.exists()]
        if status == "timeout":
            record["status"], record["message"] = "timeout", f"stopped after {self.run_timeout} s (RUN_TIMEOUT)"
        elif record.get("status") in ("running", None):
            record["status"] = "error"
            record.setdefault("message", f"trainer exited with code {code}: {last_line(log)}")
        r = Result.from_probe(s, name, record, WARMUP_STEPS, s.changes_numbers(self.base), others)
        r.wall_s = time.time() - t0
        if r.status == "error" and not r.message.strip():
            r.message = f"exit code {code}"
        with self.lock:
            self.results.append(r)
            self.save(finished=False)
            if self.side_by_side:
                print(f"[{index}/{total}] {name}: {summary(r)}", flush=True)
            else:
                print(" " + summary(r), flush=True)
            if r.status in ("error", "timeout"):
                print(f"      {r.message} (log: {self.ws.rel(log)})", flush=True)
        return r


def kill_tree(pid: int) -> None:
    """SIGKILL `pid` and every process below it (Linux /proc): a stopped run must not keep holding its GPU."""
    import signal

    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields_ = stat.read_text().rsplit(")", 1)[1].split()
            parents.setdefault(int(fields_[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    tree, i = [pid], 0
    while i < len(tree):
        tree += parents.get(tree[i], [])
        i += 1
    for p in reversed(tree):
        try:
            os.kill(p, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def last_line(log: Path) -> str:
    """The last line of a trainer log that says something (e.g. "... died with <Signals.SIGSEGV: 11>.")."""
    lines = [l.strip() for l in log.read_text(encoding="utf-8", errors="replace").splitlines() if l.strip()]
    return lines[-1][-200:] if lines else "no output"


def summary(r: Result) -> str:
    mem = f"{r.peak_allocated / 2**30:.1f} GiB peak" if r.peak_allocated else "no memory figure"
    if r.status == "ok":
        return f"{r.s_per_step:.2f} s/step, {mem}, {'fits' if r.fits() else 'over the margin'} ({r.wall_s:.0f} s)"
    if r.status == "oom":
        return f"does not fit (out of memory), {mem} ({r.wall_s:.0f} s)"
    return f"{r.status} ({r.wall_s:.0f} s)"


def run_all(sess: Session, only: list[str], attention: list[str], allow_changes: bool) -> None:
    """Run ONLY's settings in order, or the candidates: current, each axis (with its stop rule), combined.
    With several slots (GPUS_PER_RUN) the next candidates start as slots free up; an axis' stop rule then skips
    what has not started yet. A setting the continued session measured (CONTINUE=1) is not run again."""
    if only:
        settings = []
        for n in only:
            s = parse_name(n, sess.base)
            if s not in settings:
                settings.append(s)
        execute(sess, [("ONLY", s) for s in settings], {})
        return

    def plan(current_fits: bool) -> tuple[list[tuple[str, Setting]], dict[str, str | None]]:
        p = axes(sess.base, attention, current_fits=current_fits)
        return [(a.name, s) for a in p for s in a.settings], {a.name: a.stop for a in p}

    # Side by side, the first candidates start with `current`, on the plan for a current setting that fits;
    # when it does not, the rest of the queue becomes the plan for one that does not.
    rest, stops = plan(True)
    queue = [("current", sess.base)] + (rest if sess.side_by_side else [])

    def on_result(axis: str, r: Result) -> tuple[list[tuple[str, Setting]], int] | None:
        """After `current`: the queue of the plan that its fit calls for, and the new total (combined last)."""
        if axis != "current" or (r.fits() and sess.side_by_side):
            return None
        new, new_stops = plan(r.fits())
        stops.update(new_stops)
        return new, 1 + len(new) + 1

    total = 1 + len(rest) + 1
    n = execute(sess, queue, stops, on_result, total)
    merged = combined(sess.base, sess.results, allow_changes)
    if merged is not None and merged not in {r.setting for r in sess.results}:
        execute(sess, [("combined", merged)], {}, first=n + 1, total=n + 1)


def execute(
    sess: Session,
    queue: list[tuple[str, Setting]],
    stops: dict[str, str | None],
    on_result=None,
    total: int | None = None,
    first: int = 1,
) -> int:
    """Run the queue's (axis, setting) pairs, one per free slot, in order. After a run, the axis' stop rule
    ("misfit": the rest of the axis is skipped after one does not fit; "fit": after one fits) and `on_result`
    (which may replace what is still queued, and the total shown) apply. Returns the index of the last run."""
    queue = list(queue)
    shown = [total or len(queue)]
    stopped: set[str] = set()
    started = {r.setting for r in sess.results}
    free = list(sess.slots)
    running: list[threading.Thread] = []
    failure: list[BaseException] = []
    cond = threading.Condition()
    n = first - 1

    def finish(axis: str, r: Result) -> None:
        stop = stops.get(axis)
        if (stop == "misfit" and not r.fits()) or (stop == "fit" and r.fits()):
            stopped.add(axis)
        new = on_result(axis, r) if on_result else None
        if new is not None:
            queue[:], shown[0] = new

    def work(axis: str, s: Setting, index: int, slot: str | None) -> None:
        try:
            r = sess.run(s, index, shown[0], slot)
        except BaseException as e:  # noqa: BLE001 - shown by the main thread
            r, failure[:] = None, [e]
        with cond:
            if r is not None:
                finish(axis, r)
            free.append(slot)
            cond.notify_all()

    with cond:
        while True:
            while free and queue and not failure:
                axis, s = queue.pop(0)
                if axis in stopped or s in started:
                    continue
                started.add(s)
                n += 1
                sess.order[s] = n
                if s in sess.earlier:
                    r = sess.earlier[s]
                    with sess.lock:
                        sess.results.append(r)
                        sess.save(finished=False)
                    print(f"[{n}/{shown[0]}] {r.name}: measured before (CONTINUE=1): {summary(r)}", flush=True)
                    finish(axis, r)
                    continue
                slot = free.pop(0)
                if not sess.side_by_side:
                    cond.release()
                    try:
                        work(axis, s, n, slot)
                    finally:
                        cond.acquire()
                    continue
                t = threading.Thread(target=work, args=(axis, s, n, slot), daemon=True)
                running.append(t)
                t.start()
            if len(free) == len(sess.slots) and (not queue or failure):
                break
            cond.wait()
    for t in running:
        t.join()
    if failure:
        raise failure[0]
    return n


# ---------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------


def _gib(b: int) -> str:
    return f"{b / 2**30:.1f}" if b else "–"


def session_record(sess: Session, command: str, allow_changes: bool) -> dict:
    """One session as bench/*.runs.json and runs/vN/tune-*/tune.json keep it. A continued session (CONTINUE=1) keeps
    its first command and every result, also those this run did not come to (ONLY=, or cut short again)."""
    new = [r for r in sorted(sess.results, key=lambda r: sess.order.get(r.setting, 0)) if r.setting not in sess.earlier]
    results = [*sess.earlier.values(), *new]  # the continued session's runs in their order, then this run's
    first = sess.continued.get("command")
    continued = list(sess.continued.get("continued") or [])
    if first and command and command != first:
        continued.append(command)
    return {
        "session": sess.folder.name,
        "config": sess.cfg.shown,
        "command": first or command,
        **({"continued": continued} if continued else {}),
        "steps": sess.steps,
        "warmup": WARMUP_STEPS,
        "margin": MARGIN,
        "gpu": next((r.device_name for r in sess.results if r.device_name), sess.gpu),
        "gpu_memory": next((r.total_memory for r in sess.results if r.total_memory), sess.gpu_memory),
        "memory_cap": sess.memory_cap,
        "memory": sess.memory,
        "processes": sess.processes,
        "side_by_side": max(len(sess.slots), int(sess.continued.get("side_by_side") or 1)),
        "workload": sess.workload,
        "base": {f.name: getattr(sess.base, f.name) for f in fields(Setting)},
        "price_per_hour": sess.cfg.settings.price_per_hour,
        "allow_changes": allow_changes,
        "measured": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commands": sess.commands,
        **({"synthetic_items": sess.synthetic_items} if sess.synthetic_items else {}),
        "results": [r.to_json() for r in results],
    }


def _flops_of(workload: dict | None, s: Setting) -> float | None:
    """FLOPs of one step of setting `s` on `workload` (flops.py); None for a workload it cannot count (video)."""
    from musubi_workspace.tune.flops import one_frame_tokens, step_flops

    if not workload or not workload.get("one_frame"):
        return None
    w, h = workload["resolution"]
    tokens = one_frame_tokens(
        w,
        h,
        len(workload.get("clean_indices") or [0]),
        bool(workload.get("no_post")),
        bool(workload.get("no_2x")),
        bool(workload.get("no_4x")),
        int(workload.get("caption_tokens") or 77),
    )
    recomputed = 1.0 - s.workspace().get("blocks_without_checkpointing", 0) / DIT_BLOCKS if s.checkpointing else 0.0
    return step_flops(tokens, s.batch_size, recomputed, int(workload.get("network_dim") or 0)).total


def share_of_peak(r: Result, workload: dict | None, gpu: str) -> float | None:
    from musubi_workspace.tune.flops import share_of_peak as share

    flops = _flops_of(workload, r.setting)
    if flops is None or not r.s_per_step:
        return None
    return share(flops, r.s_per_step, gpu)


def report(sessions: list[dict], title: str, price: float, allow_changes: bool) -> tuple[str, Result | None]:
    """The markdown report of one or more sessions (merged: one row per run, in order): header, rows, pick, rule."""
    rows = [(s, Result.from_json(d)) for s in sessions for d in s.get("results", [])]
    rs = [r for _, r in rows]
    last = sessions[-1] if sessions else {}
    gpu = next((g for g in (s.get("gpu") for s in reversed(sessions)) if g), "") or next(
        (r.device_name for r in rs if r.device_name), "unknown GPU"
    )
    total = next((s.get("gpu_memory") for s in reversed(sessions) if s.get("gpu_memory")), 0) or next(
        (r.total_memory for r in rs if r.total_memory), 0
    )
    base = (
        Setting.from_json(last["base"])
        if last.get("base")
        else next((r.setting for r in rs if r.name == "current"), rs[0].setting if rs else None)
    )
    current = next((r for r in rs if r.setting == base), None)
    caps = sorted({s.get("memory") or "" for s in sessions} - {""})
    workload = last.get("workload")
    steps = sorted({s.get("steps") for s in sessions if s.get("steps")})
    lines = [
        f"# {title}",
        "",
        f"- GPU: {gpu}" + (f" ({total / 2**30:.1f} GiB)" if total else ""),
    ]
    if caps:
        cap = max(s.get("memory_cap") or 0 for s in sessions)
        lines.append(
            f"- memory capped at MEMORY={', '.join(caps)} ({cap / 2**30:.1f} GiB, torch's per-process memory "
            f'fraction): "fits" is decided as on a card of that size; the speeds are those of the {gpu}'
        )
    lines += [
        f"- version: {last.get('config', '?')}; current setting: {base.describe() if base else '?'}",
        f"- workload: {describe_shape(workload) if workload else 'not recorded'}",
        f"- each run: {WARMUP_STEPS} warm-up step(s), then {'/'.join(str(x) for x in steps) or '?'} measured step(s); s/step is their median "
        f"(GPU synchronised at every optimiser step); peak = most GPU memory allocated by tensors (reserved: "
        f"held by PyTorch's allocator, cache included); % of peak: the step's FLOPs (README, \"How the FLOPs are "
        f"counted\") per second over the GPU's dense bf16 peak",
        f"- price: ${price:g}/h per GPU ([workspace] price_per_hour; a row on N GPUs costs N times it); measured {', '.join(dict.fromkeys(s.get('measured', '?') for s in sessions))}",
    ]
    lines += [f"- command: `{s.get('command', '?')}`" for s in sessions]
    lines += [
        f"- runs side by side: {s['side_by_side']} at a time, each on its own GPU(s) of one machine "
        f"(`{s.get('command', '?')}`); they share its CPUs, RAM and disk"
        for s in sessions
        if (s.get("side_by_side") or 1) > 1
    ]
    for s in sessions:
        again = s.get("continued") or []
        for i, c in enumerate(again):  # the same command in calls one after another: one line
            if i and again[i - 1] == c:
                continue
            n = next((j for j in range(i, len(again)) if again[j] != c), len(again)) - i
            lines.append(f"- continued with: `{c}`" + (f" ({n} times)" if n > 1 else ""))
    lines += [
        f"- unfinished: `{s.get('command', '?')}` has not run all its candidates (cut short, or continued with ONLY=)"
        for s in sessions
        if s.get("finished") is False
    ]
    lines += [
        "",
        "| setting | changes numbers | GPUs | s/step | samples/s | peak GiB per GPU (reserved) | host RAM GiB | fits | steps/h | $ per 1,000 steps | % of dense bf16 peak | loss (measured steps) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for sess, r in rows:
        s = r.s_per_step
        if r.status == "ok":
            fits = "yes" if r.fits() else f"no (over {1 - MARGIN:.0%})"
        else:
            fits = {"oom": "**no: out of memory**", "timeout": "timeout"}.get(r.status, f"error: {r.message[:80]}")
        loss = " / ".join(f"{x:.4f}" for x in r.losses) or "–"
        # Losses compare within a session (its synthetic batches): that session's current row, else the first.
        own = next((x for s2, x in rows if s2 is sess and x.setting == base and x.losses), current)
        if r.changes and own is not None and own.losses and r.losses:
            loss += f" (current: {' / '.join(f'{x:.4f}' for x in own.losses)})"
        share = share_of_peak(r, sess.get("workload"), gpu)
        lines.append(
            f"| `{r.name}` ({r.setting.describe()}) | {'**changes numbers**: ' + ', '.join(r.changes) if r.changes else 'no'} | "
            f"{r.processes} | {f'{s:.2f}' if s else '–'} | {f'{r.samples_per_s:.3f}' if s else '–'} | "
            f"{_gib(r.peak_allocated)} ({_gib(r.peak_reserved)}) | {_gib(r.host_ram)} | {fits} | "
            f"{f'{3600 / s:.0f}' if s else '–'} | {f'{s * 1000 / 3600 * price * r.processes:.2f}' if s else '–'} | "
            f"{f'{share:.0%}' if share is not None else '–'} | {loss} |"
        )
    lines += scaling_lines(rs)
    # The pick is among runs of the current row's process count (a table may hold one and two GPUs side by side).
    n = current.processes if current is not None else 1
    pick = select([r for r in rs if r.processes == n], allow_changes)
    lines.append("")
    if pick is None:
        lines.append(
            f"No run fitted with a {MARGIN:.0%} memory margin"
            + ("" if allow_changes else " and kept the numbers")
            + "."
        )
    else:
        speed = ""
        if current is not None and current.s_per_sample and pick is not current:
            speed = f", {current.s_per_sample / pick.s_per_sample:.2f}x the speed of the current setting"
        lines.append(
            f"**Pick: `{pick.name}`** ({pick.setting.describe()}): {pick.s_per_step:.2f} s/step, "
            f"{_gib(pick.peak_allocated)} GiB peak{speed}."
        )
        if not allow_changes:
            fastest = select([r for r in rs if r.processes == n], allow_changes=True)
            if fastest is not None and fastest is not pick and fastest.changes:
                lines.append(
                    f"Faster but **changes numbers** ({', '.join(fastest.changes)}): `{fastest.name}`, "
                    f"{fastest.s_per_sample:.3f} s/sample; ALLOW_CHANGES=1 lets tune pick it."
                )
    lines += [
        "",
        f"Rule: a run fits when it finished every step with at most {1 - MARGIN:.0%} of the GPU's memory allocated; "
        f"among those that keep the numbers (same weight precision and batch size; ALLOW_CHANGES=1 admits the others) "
        f"the fastest per sample wins, and within {TIE:.0%} of it the one with the least memory.",
    ]
    return "\n".join(lines) + "\n", pick


def scaling_lines(results: list[Result]) -> list[str]:
    """For each setting measured with one process and with several: samples/s against one GPU's (the median of
    each), and the scaling efficiency (that ratio over the number of GPUs)."""
    by: dict[tuple[Setting, int], list[float]] = {}
    for r in results:
        if r.samples_per_s:
            by.setdefault((r.setting, r.processes), []).append(r.samples_per_s)
    out = []
    for (setting, n), rates in by.items():
        one = by.get((setting, 1))
        if n == 1 or not one:
            continue
        name = next(r.name for r in results if r.setting == setting)
        ratio = statistics.median(rates) / statistics.median(one)
        out.append(
            f"- `{name}` on {n} GPUs: {statistics.median(rates):.3f} samples/s, {ratio:.2f}x one GPU's "
            f"{statistics.median(one):.3f} ({ratio / n:.0%} scaling efficiency)"
        )
    return ["", "Scaling (samples/s against the same setting on one GPU):", *out] if out else []


# ---------------------------------------------------------------------------------------------------------
# APPLY=1
# ---------------------------------------------------------------------------------------------------------


def apply(ws: Workspace, cfg: Config, base: Setting, pick: Setting) -> str:
    """Create the next version through `make new`'s code and write the picked values into it (comments kept)."""
    import tomlkit  # the measuring runs and APPLY=1 write TOML; `make check` imports this package

    from musubi_workspace.versions import new_version

    if cfg.version is None:
        raise WorkspaceError(f"APPLY=1: {cfg.shown} is not a version under configs/; tune a configs/vN/config.toml")
    target = new_version(ws, cfg.version)
    path = ws.configs / target / "config.toml"
    doc = tomlkit.parse(path.read_text(encoding="utf-8"))
    tables = [v for k, v in doc.items() if isinstance(v, dict) and k != WORKSPACE_TABLE]
    changed = []
    old, new = base.options(), pick.options()
    for key in TUNED_KEYS:
        if old[key] == new[key] and key in (doc.keys() | {k for t in tables for k in t}):
            continue
        value = new[key]
        holder = next((t for t in [doc, *tables] if key in t), None)
        if holder is None:
            if value is False or value == 0:
                continue
            holder = doc
        holder[key] = value
        changed.append(f"{key} = {tomlkit.item(value).as_string()}")
    for key, value in workspace_changes(base, pick).items():
        table = doc.get(WORKSPACE_TABLE)
        if table is None:
            table = tomlkit.table()
            doc[WORKSPACE_TABLE] = table
        table[key] = value
        changed.append(f"[workspace] {key} = {tomlkit.item(value).as_string()}")
    path.write_text(tomlkit.dumps(doc), encoding="utf-8")
    if pick.batch_size != base.batch_size:
        new_cfg = Config.load(ws, path)
        dpath = new_cfg.dataset_path
        ddoc = tomlkit.parse(dpath.read_text(encoding="utf-8"))
        ddoc.setdefault("general", tomlkit.table())["batch_size"] = pick.batch_size
        for d in ddoc.get("datasets", []):
            if "batch_size" in d:
                d["batch_size"] = pick.batch_size
        dpath.write_text(tomlkit.dumps(ddoc), encoding="utf-8")
        changed.append(f"{ws.rel(dpath)}: batch_size = {pick.batch_size}")
    print(f"Wrote the picked setting into configs/{target}/config.toml: " + ("; ".join(changed) or "nothing to change"))
    return target


# ---------------------------------------------------------------------------------------------------------
# The two targets
# ---------------------------------------------------------------------------------------------------------


def _steps(value: str) -> int:
    try:
        n = int(value or 3)
    except ValueError:
        raise WorkspaceError(f"STEPS={value}: expected a whole number of measured steps such as 3") from None
    if n < 1:
        raise WorkspaceError(f"STEPS={value}: at least 1 measured step is needed")
    return n


def workspace_changes(old: Setting, new: Setting) -> dict:
    """The `[workspace]` keys whose value differs from `old` to `new`, with `new`'s value (a key `new` lacks: its
    default, 0 or false), in a stable order."""
    a, b = old.workspace(), new.workspace()
    defaults = {f.name: f.default for f in fields(WorkspaceSettings)}
    return {k: b.get(k, defaults[k]) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


def ran_only(command) -> bool:
    """Whether a session's make command ran an ONLY= list (not the full search)."""
    return "ONLY=" in str(command or "")


def _run_timeout(value: str) -> int:
    """RUN_TIMEOUT= in seconds; empty: CANDIDATE_TIMEOUT_S."""
    from musubi_workspace.config import parse_duration

    if not str(value).strip():
        return CANDIDATE_TIMEOUT_S
    seconds = parse_duration(value, "RUN_TIMEOUT")
    if seconds <= 0:
        raise WorkspaceError(f'RUN_TIMEOUT={value}: give the most one run may take, e.g. "6m"; empty: 30m')
    return seconds


def _only(value: str) -> list[str]:
    return [n.strip() for n in re.split(r"[,\s]+", value or "") if n.strip()]


MEMORY_UNITS = {"gb": 10**9, "gib": 2**30, "mb": 10**6, "mib": 2**20, "tb": 10**12, "tib": 2**40}


def parse_memory(value: str) -> int:
    """MEMORY=80GB -> bytes (GB, MB, TB: powers of 10; GiB, MiB, TiB: powers of 2); empty -> 0 (no cap)."""
    text = (value or "").strip()
    if not text:
        return 0
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([A-Za-z]+)", text)
    if not m or m.group(2).lower() not in MEMORY_UNITS or float(m.group(1)) <= 0:
        raise WorkspaceError(
            f"MEMORY={value}: expected an amount of GPU memory with its unit, such as 80GB or 79.2GiB "
            f"(units: GB, GiB, MB, MiB, TB, TiB)"
        )
    return int(float(m.group(1)) * MEMORY_UNITS[m.group(2).lower()])


def gpu_slots(env: dict[str, str], per_run: str) -> list[str | None]:
    """GPUS_PER_RUN=k: the visible GPUs in groups of k (CUDA_VISIBLE_DEVICES values), one group per run side by
    side; empty: [None] (every run on the GPUs the environment shows, one at a time)."""
    from musubi_workspace.gpus import visible_gpu_count

    text = (per_run or "").strip()
    if not text:
        return [None]
    if not text.isdigit() or int(text) < 1:
        raise WorkspaceError(
            f"GPUS_PER_RUN={per_run}: expected the number of GPUs each run trains on, such as 1 (runs go side by "
            f"side on the other GPUs)"
        )
    k = int(text)
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        ids = [d.strip() for d in cvd.split(",") if d.strip() and d.strip() != "-1"]
    else:
        ids = [str(i) for i in range(visible_gpu_count(env))]
    if len(ids) < k:
        raise WorkspaceError(
            f"GPUS_PER_RUN={per_run}: {len(ids)} GPU(s) visible here"
            + (f" (CUDA_VISIBLE_DEVICES={cvd})" if cvd is not None else "")
            + f"; give at most {len(ids)}"
            if ids
            else f"GPUS_PER_RUN={per_run}: no GPU visible here (nvidia-smi lists none)"
        )
    return [",".join(ids[i : i + k]) for i in range(0, len(ids) - k + 1, k)]


def _session(
    ws: Workspace, cfg: Config, steps: int, kind: str, memory: str = "", gpus_per_run: str = "", continue_: bool = False
) -> Session:
    from musubi_workspace.commands import process_count
    from musubi_workspace.gpus import visible_gpu, visible_gpu_count

    cap = parse_memory(memory)
    data, batch, _ = dataset_values(cfg)
    env = child_env(ws)
    env.update(WANDB_MODE="disabled", HF_HUB_OFFLINE="1")
    slots = gpu_slots(env, gpus_per_run)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):  # two sessions started in one second (two GPUs) get a folder each
        folder = ws.runs / cfg.name / (f"{kind}-{stamp}" if n == 1 else f"{kind}-{stamp}-{n}")
        try:
            folder.mkdir(parents=True)
            break
        except FileExistsError:
            continue
    scratch = Path(tempfile.mkdtemp(prefix=f"ws-{kind}-"))
    # The GPU's name before any candidate runs: a session in which every candidate fails still names it.
    gpu = visible_gpu(env if slots[0] is None else {**env, "CUDA_VISIBLE_DEVICES": slots[0]})
    sess = Session(
        ws=ws,
        cfg=cfg,
        base=Setting.of(cfg, batch),
        dataset=data,
        steps=steps,
        folder=folder,
        scratch=scratch,
        env=env,
        gpu=gpu[0] if gpu else "",
        gpu_memory=gpu[1] * 2**20 if gpu else 0,
        memory_cap=cap,
        memory=memory.strip() if cap else "",
        workload=workload_of(cfg),
        processes=process_count(cfg, visible_gpu_count(env)) if slots[0] is None else slots[0].count(",") + 1,
        kind=kind,
        slots=slots,
    )
    if sess.side_by_side:
        print(
            f"GPUS_PER_RUN={gpus_per_run.strip()}: {len(slots)} runs side by side, on GPUs "
            + " | ".join(slots)
            + "; the machine's CPUs, RAM and disk are shared by them",
            flush=True,
        )
    if continue_:
        continue_session(sess)
    if sess.processes > 1:
        print(
            f"{sess.processes} processes (one per GPU, as `make train` starts them here): s/step is per step of every "
            f"process together, samples/s counts the {sess.processes} batches of a step; CUDA_VISIBLE_DEVICES=0 "
            f"measures one GPU",
            flush=True,
        )
    if cap:
        shown = sess.gpu or "this GPU"
        print(
            f"MEMORY={sess.memory}: each run may use at most {cap / 2**30:.1f} GiB of {shown}'s memory: whether a "
            f"setting fits is decided as on a card of that size; the speeds are {shown}'s",
            flush=True,
        )
    return sess


# What must match for CONTINUE=1 to take an unfinished session's results as this session's.
CONTINUE_KEYS = ("config", "steps", "warmup", "memory_cap", "processes", "workload", "base", "gpu")


def continue_session(sess: Session) -> None:
    """CONTINUE=1: the newest unfinished session of this kind and version with the same GPU, steps, memory cap,
    processes, workload and current setting, from this machine's runs/vN/<kind>-*/ or else (make bench) from a
    committed bench/*.runs.json (another machine's, merged there); its results are this session's, its settings
    are not run again, and this session writes into its folder (the fresh one is removed) and, at the end, takes
    its place in the table."""
    mine = session_record(sess, "", False)

    near: list[str] = []  # unfinished sessions that differ: what differs, to say why none is continued

    def same(key: str, a, b) -> bool:
        if key == "base" and isinstance(a, dict) and isinstance(b, dict):  # a record written before a new field
            return Setting.from_json(a) == Setting.from_json(b)
        return a == b

    def matches(old: dict, where: str = "") -> bool:
        if old.get("finished") is not False:
            return False
        differ = [
            k
            for k in CONTINUE_KEYS
            if not same(k, old.get(k), mine.get(k)) and (k != "gpu" or (old.get(k) and mine.get(k)))
        ]
        if differ and where:
            shown = ["current setting" if k == "base" else k for k in differ]
            near.append(f"{where} ({old.get('session') or '?'}) has another {', '.join(shown)}")
        return not differ

    found: tuple[dict, Path, str] | None = None
    for record_path in sorted(sess.folder.parent.glob(f"{sess.kind}-*/{sess.kind}.json"), reverse=True):
        if record_path.parent == sess.folder:
            continue
        try:
            old = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if matches(old):
            found = (old, record_path.parent, sess.ws.rel(record_path.parent))
            break
    if found is None and sess.kind == "bench":
        for table in sorted((sess.ws.root / "bench").glob("*.runs.json")):
            try:
                sessions = read_sessions(table)
            except WorkspaceError:
                continue
            for old in reversed(sessions):
                if matches(old, sess.ws.rel(table)) and old.get("session"):
                    where = f"the unfinished session {old['session']} of {sess.ws.rel(table)}"
                    found = (old, sess.folder.parent / old["session"], where)
                    break
            if found:
                break
    if found is None:
        print(
            f"CONTINUE=1: no unfinished {sess.kind} of {sess.cfg.shown} here with this GPU, STEPS, MEMORY, GPU "
            f"count and current setting" + "".join(f"; {n}" for n in near) + "; starting afresh",
            flush=True,
        )
        return
    old, folder, where = found
    results = [Result.from_json(d) for d in old.get("results", [])]
    sess.earlier = {r.setting: r for r in results}
    sess.continued = old
    sess.commands = list(old.get("commands") or [])
    sess.folder.rmdir()
    folder.mkdir(parents=True, exist_ok=True)
    sess.folder = folder
    print(f"CONTINUE=1: going on with {where}: {len(results)} run(s) measured there are not run again", flush=True)


def _finish(sess: Session, name: str, title: str, table: Path | None = None) -> Result | None:
    """Write the session's report and record (runs/vN/<kind>-*/); with `table`, add the session to that
    bench/*.runs.json and rewrite its .md from every session in it (notes after a `Notes:` line are kept)."""
    # ONLY= going on with a full search ran a part of it: the session stays unfinished for CONTINUE=1 to finish.
    partial = bool(sess.continued) and ran_only(sess.command) and not ran_only(sess.continued.get("command"))
    record = json.loads(sess.save(finished=not partial).read_text(encoding="utf-8"))
    if partial:
        print(
            f"The session {record['session']} stays unfinished: ONLY= ran a part of its search; "
            f"`{record['command']} CONTINUE=1` goes on with the rest",
            flush=True,
        )
    price = sess.cfg.settings.price_per_hour
    text, pick = report([record], title, price, sess.allow_changes)
    (sess.folder / f"{name}.md").write_text(text, encoding="utf-8")
    shutil.rmtree(sess.scratch, ignore_errors=True)
    print()
    print(text)
    where = sess.ws.rel(sess.folder / (name + ".md"))
    if table is not None:
        with locked(table):
            sessions = append_session(table, record)
            write_table(table, sessions, title, price, sess.allow_changes)
        md = table.with_name(table.name.replace(".runs.json", ".md"))
        where += f" and {sess.ws.rel(md)}" + (
            f" (every session of {sess.ws.rel(table)}: {len(sessions)})" if len(sessions) > 1 else ""
        )
    print(f"Report: {where}")
    return pick


def write_table(table: Path, sessions: list[dict], title: str, price: float, allow_changes: bool) -> Path:
    """bench/<name>.md from the sessions of bench/<name>.runs.json; the notes of the old .md are kept."""
    md = table.with_name(table.name.replace(".runs.json", ".md"))
    text, _ = report(sessions, title, price, allow_changes)
    if md.exists():
        old = md.read_text(encoding="utf-8")
        if "\nNotes:\n" in old:
            text += "\nNotes:\n" + old.split("\nNotes:\n", 1)[1]
    md.write_text(text, encoding="utf-8")
    return md


def bench_report(ws: Workspace, files: list[str], out: str = "", allow_changes: bool = False) -> None:
    """`ws bench-report A.runs.json [B.json ...] [--out bench/x.runs.json]`: the sessions of several bench
    records (e.g. of two GPUs, or of several device calls) as one table; with --out, also their merged record
    and its .md beside it (an existing --out file's sessions come first; nothing is lost)."""
    if not files:
        raise WorkspaceError(
            "bench-report: name the bench records to merge, e.g. bench/nvidia-h200_v1.runs.json runs/v1/bench-*/bench.json"
        )
    sessions: list[dict] = []
    for f in files:
        path = ws.resolve(f)
        if not path.exists():
            raise WorkspaceError(f"bench-report: {f}: file not found")
        for s in read_sessions(path):
            if s not in sessions:
                sessions.append(s)
    gpu = next((s.get("gpu") for s in sessions if s.get("gpu")), "") or "unknown GPU"
    config = sessions[-1].get("config", "?")
    price = sessions[-1].get("price_per_hour") or 2.5
    title = f"make bench: {config} on {gpu} (random weights, synthetic caches)"
    if not out:
        print(report(sessions, title, price, allow_changes)[0])
        return
    target = ws.resolve(out)
    if not target.name.endswith(".runs.json"):
        raise WorkspaceError(f"bench-report: --out {out}: name a .runs.json file (its .md is written beside it)")
    with locked(target):
        merged = read_sessions(target) if target.exists() else []
        for s in sessions:
            merge_session(merged, s)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(json.dumps(merged, indent=1) + "\n", encoding="utf-8")
        tmp.replace(target)
        md = write_table(target, merged, title, price, allow_changes)
    print(f"{ws.rel(target)}: {len(merged)} session(s); table: {ws.rel(md)}")


def tune(
    ws: Workspace,
    cfg: Config,
    apply_: bool,
    only: str = "",
    steps: str = "",
    allow_changes: bool = False,
    memory: str = "",
    gpus_per_run: str = "",
    continue_: bool = False,
    run_timeout: str = "",
) -> None:
    """`make tune`: the candidates on the version's real models and caches."""
    from musubi_workspace.checks import preflight
    from musubi_workspace.runs import lock

    lock.take(cfg, "tune", lock.cache_locks(cfg, lock.SHARED))
    parse_memory(memory)
    preflight(cfg, target="tune")
    timeout = _run_timeout(run_timeout)
    sess = _session(ws, cfg, _steps(steps), "tune", memory, gpus_per_run, continue_)
    lock.note_log(ws, sess.folder)
    sess.run_timeout = timeout
    data = sess.dataset
    for d in data.get("datasets", []):
        folder = d.get("cache_directory") or d.get("image_directory") or d.get("video_directory")
        if folder and not list(ws.resolve(folder).glob("*_fp.safetensors")):
            raise WorkspaceError(
                f"{ws.rel(cfg.dataset_path)}: no caches in {folder}; `make tune` trains on them: run `make cache` first"
            )
    command = _command("tune", cfg, only, steps, sess, gpus_per_run, run_timeout)
    sess.command, sess.allow_changes = command, allow_changes
    run_all(sess, _only(only), available_attention(), allow_changes)
    pick = _finish(sess, "tune", f"make tune: {cfg.shown}")
    if apply_:
        if pick is None:
            raise WorkspaceError("APPLY=1: no setting fitted; nothing written")
        if pick.setting == sess.base:
            print("APPLY=1: the current setting is already the pick; no new version made")
            return
        apply(ws, cfg, sess.base, pick.setting)


def _command(kind: str, cfg: Config, only: str, steps: str, sess: Session, gpus_per_run: str, timeout: str) -> str:
    """The make command as the record keeps it: with every make variable that shapes the results."""
    return (
        f"make {kind} CONFIG_FILE={cfg.shown}"
        + (f" ONLY={only}" if only else "")
        + (f" STEPS={steps}" if steps else "")
        + (f" MEMORY={sess.memory}" if sess.memory else "")
        + (f" GPUS_PER_RUN={gpus_per_run.strip()}" if gpus_per_run.strip() else "")
        + (f" RUN_TIMEOUT={timeout.strip()}" if timeout.strip() else "")
    )


def bench(
    ws: Workspace,
    cfg: Config,
    only: str = "",
    steps: str = "",
    allow_changes: bool = False,
    memory: str = "",
    gpus_per_run: str = "",
    continue_: bool = False,
    run_timeout: str = "",
) -> None:
    """`make bench`: the candidates on a random DiT and random caches of the version's resolution."""
    from musubi_workspace.runs import lock

    # Shared: benches of one version on two GPUs go side by side (their synthetic caches have a lock of their
    # own); a cache, train or generate of the version waits for them.
    lock.take(cfg, "bench", version_mode=lock.SHARED)
    require_one_frame(cfg)
    parse_memory(memory)
    timeout = _run_timeout(run_timeout)
    sess = _session(ws, cfg, _steps(steps), "bench", memory, gpus_per_run, continue_)
    lock.note_log(ws, sess.folder)
    sess.run_timeout = timeout
    names = _only(only)
    plan = synthetic_inputs(sess, names)
    synth = plan.argv()
    print(f"==> synthetic inputs: {' '.join(synth)}", flush=True)
    code = subprocess.call(synth, cwd=ws.root, env=sess.env)
    if code != 0:
        raise WorkspaceError(f"making the synthetic DiT and caches failed with exit code {code}", EXIT_CHILD)
    command = _command("bench", cfg, only, steps, sess, gpus_per_run, run_timeout)
    sess.command, sess.allow_changes = command, allow_changes
    run_all(sess, names, available_attention(), allow_changes)
    gpu = next((r.device_name for r in sess.results if r.device_name), "") or sess.gpu or "unknown GPU"
    _finish(
        sess,
        "bench",
        f"make bench: {cfg.shown} on {gpu} (random weights, synthetic caches)",
        table=table_path(ws.root, gpu, cfg.name, sess.memory, sess.processes),
    )


def require_one_frame(cfg: Config) -> None:
    if cfg.get("one_frame") is not True:
        raise WorkspaceError(
            f"{cfg.shown}: `make bench` makes one-frame caches only (one_frame = true); for video "
            f"sections run `make tune` on your real caches"
        )


def synthetic_inputs(sess: Session, names: list[str]):
    """`make bench`'s synthetic.Plan for this session (cache/bench/: the random DiT, enough random caches for
    the largest batch of every step of every process), and the session's dataset and DiT pointed at it."""
    from musubi_workspace.tune.synthetic import CacheLayout, Plan

    data, batch, (width, height) = dataset_values(sess.cfg)
    first = (data.get("datasets") or [{}])[0]
    s = sess.cfg.settings
    layout = CacheLayout(
        width=width,
        height=height,
        clean_indices=tuple(first.get("fp_1f_clean_indices") or [0]),
        target_index=int(first.get("fp_1f_target_index", 1)),
        no_post=bool(first.get("fp_1f_no_post", False)),
        no_2x=s.one_frame_no_2x,
        no_4x=s.one_frame_no_4x,
        window=int(first.get("fp_latent_window_size", 9)),
    )

    def items_for(batches: list[int]) -> int:  # every process a new batch at every step
        return max(batches) * sess.processes * (WARMUP_STEPS + sess.steps)

    full = [batch, batch * 2]  # the full search's batch sizes
    items = items_for([parse_name(n, sess.base).batch_size for n in names] or full)
    if sess.continued:  # the same synthetic batches as the session continued, so its losses compare
        old = sess.continued
        items = int(old.get("synthetic_items") or 0) or (items if ran_only(old.get("command")) else items_for(full))
    sess.synthetic_items = items
    plan = Plan(folder=sess.ws.root / "cache" / "bench", layout=layout, items=items)
    general = {k: v for k, v in (data.get("general") or {}).items() if k in ("resolution", "batch_size")}
    general.update(resolution=[width, height], batch_size=batch, enable_bucket=False, caption_extension=".txt")
    entry = {k: v for k, v in first.items() if k.startswith("fp_")}
    entry.update(image_directory=str(plan.image_dir), cache_directory=str(plan.cache_dir))
    sess.dataset = {"general": general, "datasets": [entry]}
    sess.dit = str(plan.dit)
    return plan
