"""Loss and learning-rate curves from musubi-tuner's tensorboard files, the flags raised on them, and their plots.

musubi-tuner logs through accelerate to `{logging_dir}/{log_prefix}{YYYYmmddHHMMSS}/{log_tracker_name}/`, one
folder per run, every step: `loss/current` (this step's loss), `loss/average` (its moving average) and `lr/<group>`
(`lr/unet` for a LoRA). A resumed run starts again at step 1 in a new folder, so each folder is its own series.
Files are read with tensorboard's own EventAccumulator; nothing here parses the event format.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

LOSS_TAG = "loss/current"
LR_PREFIX = "lr/"

# EMA weight of the smoothed loss (TensorBoard's slider, debiased like TensorBoard's): about 20 steps of memory.
EMA_WEIGHT = 0.95
# "Starts near 0.01": the median loss of the first LOW_START_STEPS logged steps is below LOW_START_LOSS. A healthy
# FramePack LoRA starts around 0.1; a start near 0.01 means the model is shown its own target as input.
LOW_START_STEPS = 20
LOW_START_LOSS = 0.02
# "Growing": the median loss of the last fifth of the steps is above GROWTH_RATIO x the median of the first fifth.
# Medians of a fifth ride over flow-matching's large step-to-step noise (the loss depends on the sampled timestep).
GROWTH_PART = 5
GROWTH_RATIO = 1.5
# Fewer logged steps than this: too short to judge growth.
GROWTH_MIN_STEPS = 20
# Options that make a low start expected: the run continues from earlier training.
CONTINUES_FROM = ("resume", "network_weights")


@dataclass
class Series:
    """One run's scalars: steps and values per tag, sorted by step."""

    version: str
    run: str  # the run folder under logging_dir, e.g. `20250611093000`
    folder: Path
    scalars: dict[str, tuple[list[int], list[float]]]
    label: str = ""
    continues_from: str = ""  # `resume` or `network_weights` when the config sets it
    flags: list[str] = field(default_factory=list)

    @property
    def loss(self) -> tuple[list[int], list[float]]:
        return self.scalars.get(LOSS_TAG, ([], []))

    @property
    def lr_tags(self) -> list[str]:
        return sorted(t for t in self.scalars if t.startswith(LR_PREFIX))


def read_runs(version: str, logging_dir: Path, log_prefix: str = "") -> list[Series]:
    """Every run of a version that logged `loss/current`, oldest first."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    if not logging_dir.is_dir():
        return []
    folders = sorted({p.parent for p in logging_dir.rglob("events.out.tfevents.*") if p.is_file()})
    runs = []
    for folder in folders:
        run = folder.relative_to(logging_dir).parts[0] if folder != logging_dir else folder.name
        if log_prefix and not run.startswith(log_prefix):
            continue  # another version's run in a shared logging_dir
        acc = EventAccumulator(str(folder), size_guidance={SCALARS: 0})
        acc.Reload()
        tags = acc.Tags().get("scalars", [])
        if LOSS_TAG not in tags:
            continue  # e.g. the hparams folder accelerate writes beside the run
        scalars = {}
        for tag in tags:
            last = {}
            for ev in sorted(acc.Scalars(tag), key=lambda e: (e.step, e.wall_time)):
                last[ev.step] = ev.value  # a step logged twice: the later value
            scalars[tag] = (list(last), list(last.values()))
        runs.append(Series(version=version, run=run[len(log_prefix):] if log_prefix else run, folder=folder, scalars=scalars))
    return sorted(runs, key=lambda s: (s.run, str(s.folder)))


def ema(values: list[float], weight: float = EMA_WEIGHT) -> list[float]:
    """Debiased exponential moving average (TensorBoard's smoothing); a NaN/inf value is skipped, shown as NaN."""
    out, acc, n = [], 0.0, 0
    for v in values:
        if not math.isfinite(v):
            out.append(math.nan)
            continue
        acc = acc * weight + (1 - weight) * v
        n += 1
        out.append(acc / (1 - weight**n))
    return out


def judge(s: Series) -> list[str]:
    """The flags of one run, each a sentence saying what was seen, by which rule, and what it means."""
    steps, values = s.loss
    flags = []
    bad = [(st, v) for st, v in zip(steps, values) if not math.isfinite(v)]
    if bad:
        flags.append(
            f"diverged: loss is {bad[0][1]} from step {bad[0][0]} ({len(bad)} of {len(values)} steps not finite); "
            f"lower learning_rate or check the data"
        )
    finite = [v for v in values if math.isfinite(v)]
    head = finite[:LOW_START_STEPS]
    # Continuing from earlier weights (resume, network_weights), a low start is expected.
    if len(head) >= 5 and statistics.median(head) < LOW_START_LOSS and not s.continues_from:
        start = statistics.median(head)
        flags.append(
                f"starts near 0.01: median loss of the first {len(head)} steps is {start:.4f} (< {LOW_START_LOSS}) "
                f"without resume: the sign of input equal to target; check the dataset's control/target images"
            )
    if len(finite) >= GROWTH_MIN_STEPS:
        part = len(finite) // GROWTH_PART
        early, late = statistics.median(finite[:part]), statistics.median(finite[-part:])
        if late > GROWTH_RATIO * early:
            flags.append(
                f"diverging: median loss of the last fifth is {late:.4f}, {late / early:.1f}x the first fifth's "
                f"{early:.4f} (rule: > {GROWTH_RATIO}x); lower learning_rate"
            )
    return flags


def plot_loss(series: list[Series], path: Path) -> None:
    """Every run's loss by step, raw (faint) and smoothed (bold), on one log-scale plot."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5.5), dpi=100)
    for i, s in enumerate(series):
        color = f"C{i % 10}"
        steps, values = s.loss
        ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
        flagged = ", ".join(f.split(":")[0] for f in s.flags)  # "diverged", "starts near 0.01", ...
        ax.plot(steps, ema(values), color=color, linewidth=2, label=f"{s.label}  ⚠ {flagged}" if flagged else s.label)
        bad = [st for st, v in zip(steps, values) if not math.isfinite(v)]
        if bad:
            ax.axvline(bad[0], color=color, linestyle="--", linewidth=1)
            ax.annotate(f"{s.label}: NaN from step {bad[0]}", (bad[0], 0.97), xycoords=("data", "axes fraction"),
                        color=color, ha="right", va="top", rotation=90, fontsize=8)
    if any(v > 0 for s in series for v in s.loss[1] if math.isfinite(v)):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(f"{LOSS_TAG} (log scale)")
    ax.set_title(f"Loss by step: faint = raw, bold = smoothed (EMA {EMA_WEIGHT})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_lr(series: list[Series], path: Path) -> None:
    """Every run's learning rate(s) by step."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 3.5), dpi=100)
    for i, s in enumerate(series):
        tags = s.lr_tags
        for j, tag in enumerate(tags):
            steps, values = s.scalars[tag]
            label = s.label if len(tags) == 1 else f"{s.label} {tag}"
            ax.plot(steps, values, color=f"C{i % 10}", linestyle=("-", "--", ":", "-.")[j % 4], label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_title("Learning rate by step (" + ", ".join(sorted({t for s in series for t in s.lr_tags})) + ")")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
