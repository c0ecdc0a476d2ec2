"""Loss and learning-rate curves from musubi-tuner's tensorboard files, the flags raised on them, and their plots.

musubi-tuner logs through accelerate to `{logging_dir}/{log_prefix}{YYYYmmddHHMMSS}/{log_tracker_name}/`, one
folder per run, every step: `loss/current` (this step's loss), `loss/average` (its moving average) and `lr/<group>`
(`lr/unet` for a LoRA), and `loss/epoch` at the end of each epoch (logged at "step" = the epoch's number). A
resumed run (`make resume`) starts again at step 1 in a new folder: `Line` joins it to the run it continues, at
its true steps (its step offset comes from the run record, see report.py). Files are read with tensorboard's own
EventAccumulator; nothing here parses the event format.
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


EPOCH_TAG = "loss/epoch"


@dataclass
class Series:
    """One run's scalars (one tensorboard folder): steps and values per tag, sorted by step, as the run counted
    them (a resumed run from 1 again)."""

    version: str
    run: str  # the run folder under logging_dir, e.g. `20250611093000`
    folder: Path
    scalars: dict[str, tuple[list[int], list[float]]]
    start_time: float = 0.0  # wall time of the run's first logged step (seconds since the epoch)
    end_time: float = 0.0  # ... and of its last
    epoch_ends: dict[int, int] = field(default_factory=dict)  # epoch number -> the run's step when it ended
    offset: int = 0  # a resumed run: the steps its state held (its step 1 is step offset + 1)
    resumed_from: str = ""  # a resumed run: the state it continued from, as the run record names it

    @property
    def loss(self) -> tuple[list[int], list[float]]:
        return self.scalars.get(LOSS_TAG, ([], []))

    @property
    def true_steps(self) -> list[int]:
        return [st + self.offset for st in self.loss[0]]


@dataclass
class Line:
    """One curve as drawn and judged: a run and the resumed runs that continue it, oldest first, at their true
    steps. Where a resumed run starts at step S, the earlier run's steps after S (trained past the state it
    resumed from, then lost) are left out of the line."""

    parts: list[Series]
    label: str = ""
    continues_from: str = ""  # `resume` or `network_weights` when the config sets it, or the state resumed from
    flags: list[str] = field(default_factory=list)

    @property
    def version(self) -> str:
        return self.parts[0].version

    @property
    def resumes(self) -> list[int]:
        """The steps at which a resumed part starts."""
        return [p.offset for p in self.parts if p.offset]

    @property
    def scalars(self) -> dict[str, tuple[list[int], list[float]]]:
        joined: dict[str, tuple[list[int], list[float]]] = {}
        for i, part in enumerate(self.parts):
            until = self.parts[i + 1].offset if i + 1 < len(self.parts) else None
            for tag, (steps, values) in part.scalars.items():
                out = joined.setdefault(tag, ([], []))
                for st, v in zip(steps, values):
                    st += part.offset
                    if until is None or st <= until:
                        out[0].append(st)
                        out[1].append(v)
        return joined

    @property
    def loss(self) -> tuple[list[int], list[float]]:
        return self.scalars.get(LOSS_TAG, ([], []))

    @property
    def lr_tags(self) -> list[str]:
        return sorted({t for p in self.parts for t in p.scalars if t.startswith(LR_PREFIX)})


def join(runs: list[Series]) -> list[Line]:
    """The lines of one version's runs (oldest first): a resumed run continues the run before it; a run that
    starts from step 0 starts a new line."""
    lines: list[Line] = []
    for run in sorted(runs, key=lambda r: (r.start_time, r.run, str(r.folder))):
        if run.offset and lines:
            lines[-1].parts.append(run)
        else:
            lines.append(Line([run]))
    return lines


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
            if tag == EPOCH_TAG:
                continue  # logged at "step" = epoch number: not a curve by step
            last = {}
            for ev in sorted(acc.Scalars(tag), key=lambda e: (e.step, e.wall_time)):
                last[ev.step] = ev.value  # a step logged twice: the later value
            scalars[tag] = (list(last), list(last.values()))
        losses = sorted(acc.Scalars(LOSS_TAG), key=lambda e: e.wall_time)
        runs.append(
            Series(
                version=version,
                run=run[len(log_prefix) :] if log_prefix else run,
                folder=folder,
                scalars=scalars,
                start_time=losses[0].wall_time if losses else 0.0,
                end_time=losses[-1].wall_time if losses else 0.0,
                epoch_ends=_epoch_ends(acc.Scalars(EPOCH_TAG) if EPOCH_TAG in tags else [], losses),
            )
        )
    return sorted(runs, key=lambda s: (s.run, str(s.folder)))


def _epoch_ends(epochs, losses) -> dict[int, int]:
    """Epoch number -> the step it ended at: the last step logged before the epoch's own `loss/epoch` entry (both
    carry the wall time of their logging)."""
    out = {}
    for ev in epochs:
        before = [e.step for e in losses if e.wall_time <= ev.wall_time]
        if before:
            out[int(ev.step)] = max(before)
    return out


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


def judge(s: Line) -> list[str]:
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


# Plots: 10 in wide at 200 dpi (2000 px), shown 1000 px wide in the page: sharp on HiDPI screens.
PLOT_WIDTH_IN = 10
PLOT_DPI = 200
# Series beyond the 10 colours of matplotlib's tab10 get the same colours with another line style: 40 distinct.
LINE_STYLES = ("-", "--", "-.", ":")


def style(i: int) -> tuple[str, str]:
    """Colour and line style of the i-th series; no two of the first 40 alike."""
    return f"C{i % 10}", LINE_STYLES[(i // 10) % len(LINE_STYLES)]


def decimal(value: float) -> str:
    """A tick value as a plain decimal (0.05, not 5×10⁻²)."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if text not in ("", "0") or value == 0 else f"{value:.1g}"


def decimal_log_ticks(ax, lo: float, hi: float) -> None:
    """Log-scale y ticks labelled as decimals: 1-2-5 per decade over a wide range, every digit over a narrow one
    (so a range of two decades reads 0.01, 0.02, 0.05, 0.1, ... rather than only 10⁻² and 10⁻¹)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    decades = math.log10(hi / lo) if lo > 0 and hi > lo else 1.0
    subs = (1.0,) if decades > 4 else (1.0, 2.0, 5.0) if decades > 1.2 else tuple(float(d) for d in range(1, 10))
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: decimal(v)))
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=tuple(float(d) for d in range(1, 10))))
    ax.yaxis.set_minor_formatter(NullFormatter())


def loss_figure(lines: list[Line]):
    """Every line's loss by step, raw (faint) and smoothed (bold), on one log-scale plot; a NaN's step is marked by
    a dashed line and labelled above the plot area (never over a curve); a resume by a dotted line."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(PLOT_WIDTH_IN, 5.5), dpi=PLOT_DPI)
    nan_marks = []
    for i, s in enumerate(lines):
        color, dash = style(i)
        steps, values = s.loss
        ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
        flagged = ", ".join(f.split(":")[0] for f in s.flags)  # "diverged", "starts near 0.01", ...
        ax.plot(
            steps,
            ema(values),
            color=color,
            linestyle=dash,
            linewidth=2,
            label=f"{s.label}  ⚠ {flagged}" if flagged else s.label,
        )
        for at in s.resumes:
            ax.axvline(at, color=color, linestyle=":", linewidth=1, alpha=0.7)
        bad = [st for st, v in zip(steps, values) if not math.isfinite(v)]
        if bad:
            ax.axvline(bad[0], color=color, linestyle="--", linewidth=1)
            nan_marks.append((bad[0], color, s.label))
    finite = [v for s in lines for v in s.loss[1] if math.isfinite(v) and v > 0]
    if finite:
        ax.set_yscale("log")
        decimal_log_ticks(ax, min(finite), max(finite))
    for k, (step, color, label) in enumerate(nan_marks):  # above the axes, stacked when several
        ax.annotate(
            f"{label}: NaN from step {step}",
            (step, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(0, 3 + 12 * k),
            textcoords="offset points",
            ha="center",
            va="bottom",
            color=color,
            fontsize=9,
            annotation_clip=False,
        )
    ax.set_xlabel("step")
    ax.set_ylabel(f"{LOSS_TAG} (log scale)")
    ax.set_title(
        f"Loss by step: faint = raw, bold = smoothed (EMA {EMA_WEIGHT})"
        + (", dotted = resumed there" if any(s.resumes for s in lines) else ""),
        pad=8 + 12 * len(nan_marks),
    )
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", alpha=0.1)
    ax.legend(loc="best")
    fig.tight_layout()
    return fig


def plot_loss(lines: list[Line], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = loss_figure(lines)
    fig.savefig(path)
    plt.close(fig)


def plot_lr(lines: list[Line], path: Path) -> None:
    """Every line's learning rate(s) by step, in the colours and styles of the loss plot."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(PLOT_WIDTH_IN, 3.5), dpi=PLOT_DPI)
    for i, s in enumerate(lines):
        color, dash = style(i)
        tags = s.lr_tags
        scalars = s.scalars
        for j, tag in enumerate(tags):
            steps, values = scalars[tag]
            label = s.label if len(tags) == 1 else f"{s.label} {tag}"
            ax.plot(
                steps,
                values,
                color=color,
                linestyle=dash,
                label=label,
                marker=("", "o", "s", "^")[j % 4] or None,
                markevery=max(1, len(steps) // 12),
            )
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_title("Learning rate by step (" + ", ".join(sorted({t for s in lines for t in s.lr_tags})) + ")")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
