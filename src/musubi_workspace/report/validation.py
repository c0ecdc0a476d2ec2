"""The validation loss in `make report`: every version's on one axis (`validation.png`), each version's best step
marked, and the loss at each fixed timestep beside it (`validation_timesteps.png`, one panel a timestep).

Unlike the training loss, these numbers compare across versions: the same held-out items, the same raw
timesteps and the same noise in every version (issue 26). They are read from each version's series
(`<output_name>.validation.jsonl`, written while it trained) and the JSON beside each LoRA (training or
`make validate`), at the version's true steps (validation/scored.py). Versions without any are left out with a
line saying how to score them; versions on different validation sets are labelled with their set's hash.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

from musubi_workspace.report.curves import PLOT_DPI, PLOT_WIDTH_IN, style
from musubi_workspace.validation.scored import Points

LOSS_PNG = "validation.png"
TIMESTEPS_PNG = "validation_timesteps.png"


@dataclass
class Validation:
    """One version's validation numbers as the report shows them."""

    version: str
    points: Points
    label: str = ""

    @property
    def steps(self) -> list[int]:
        return list(self.points.by_step)

    @property
    def losses(self) -> list[float]:
        return [r.loss for r in self.points.by_step.values()]


def label(chosen: list[Validation]) -> None:
    """The legend's names: the version, and its set's hash where the versions are not all on one set."""
    sets = {v.points.set for v in chosen}
    for v in chosen:
        v.label = v.version if len(sets) == 1 else f"{v.version} (set {(v.points.set or '?')[:8]})"


def skipped_line(version: str) -> str:
    return (
        f"validation: {version}: no validation numbers (no series, no .validation.json beside its LoRAs); "
        f"`make validate CONFIG_FILE={version} LORA=all` scores its LoRAs"
    )


def best_line(v: Validation) -> str:
    best = v.points.best()
    assert best is not None
    step, r = best
    lora = f" ({r.lora})" if r.lora else ""
    others = sum(v.points.other_sets.values())
    left = f"; {others} record(s) on another validation set left out" if others else ""
    return f"validation: {v.label}: best {r.loss:.4g} at step {step}{lora}{left}"


def plot_loss(chosen: list[Validation], path: Path) -> None:
    """Every version's validation loss by step on one axis: dots where a LoRA was saved, a star at its best."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(PLOT_WIDTH_IN, 5.5), dpi=PLOT_DPI)
    for i, v in enumerate(chosen):
        color, dash = style(i)
        ax.plot(v.steps, v.losses, color=color, linestyle=dash, linewidth=2, label=v.label)
        saved = sorted(v.points.lora_steps)
        ax.plot(saved, [v.points.by_step[s].loss for s in saved], "o", color=color, markersize=4)
        step, best = v.points.best()
        ax.plot([step], [best.loss], "*", color=color, markersize=16, markeredgecolor="black")
        ax.annotate(
            f"{v.version} best {best.loss:.4g} @ {step}",
            (step, best.loss),
            xytext=(0, -16),
            textcoords="offset points",
            ha="center",
            va="top",
            color=color,
            fontsize=9,
        )
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (mean over the fixed timesteps)")
    ax.set_title("Validation loss by step: comparable across versions; dot = a saved LoRA, star = the best one")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def timesteps_of(chosen: list[Validation]) -> list[str]:
    """The timesteps any version scored, in order (the keys of by_timestep: "0.1", ...)."""
    keys = {k for v in chosen for r in v.points.by_step.values() for k in r.by_timestep}
    return sorted(keys, key=float)


def plot_timesteps(chosen: list[Validation], path: Path) -> None:
    """One panel per fixed timestep, every version's loss at it by step (each panel its own scale)."""
    import matplotlib.pyplot as plt

    keys = timesteps_of(chosen)
    cols = min(len(keys), 3)
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(PLOT_WIDTH_IN, 3.0 * rows + 0.6), dpi=PLOT_DPI, squeeze=False, sharex=True
    )
    for ax, key in zip(axes.flat, keys):
        for i, v in enumerate(chosen):
            color, dash = style(i)
            at = [(s, r.by_timestep[key]) for s, r in v.points.by_step.items() if key in r.by_timestep]
            ax.plot([s for s, _ in at], [x for _, x in at], color=color, linestyle=dash, linewidth=1.5, label=v.label)
        ax.set_title(f"t = {key}", fontsize=10)
        ax.grid(True, alpha=0.3)
    for ax in axes.flat[len(keys) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("step")
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="upper right", fontsize=9)
    fig.suptitle("Validation loss at each fixed (raw) timestep", x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 0.88, 1))
    fig.savefig(path)
    plt.close(fig)


def write(chosen: list[Validation], out: Path) -> list[str]:
    """Both PNGs in `out`; their names (none without numbers)."""
    if not chosen:
        return []
    label(chosen)
    plot_loss(chosen, out / LOSS_PNG)
    plot_timesteps(chosen, out / TIMESTEPS_PNG)
    return [LOSS_PNG, TIMESTEPS_PNG]


def html_section(chosen: list[Validation], skipped: list[str], png_uri) -> list[str]:
    """The page's "Validation loss" section: a table of each version's best, both plots (inline, and linked)."""
    e = html.escape
    parts = ["<h2>Validation loss</h2>"]
    if not chosen:
        parts.append("<p>No version has validation numbers yet.</p>")
    else:
        parts.append(
            "<p>The loss on the held-out validation set, at fixed raw timesteps and fixed noise: it compares across "
            "versions (the training loss does not). Step 0 is the base model.</p>"
        )
        parts.append(
            '<table class="runs"><tr><th>version</th><th>best</th><th>at step</th><th>LoRA</th>'
            "<th>step 0 (base model)</th><th>set</th><th>scored by</th></tr>"
        )
        for v in chosen:
            step, r = v.points.best()
            base = v.points.by_step.get(0)
            parts.append(
                f"<tr><td>{e(v.label)}</td><td>{r.loss:.4g}</td><td>{step}</td><td><code>{e(r.lora or '-')}</code>"
                f"</td><td>{f'{base.loss:.4g}' if base else '&ndash;'}</td><td><code>{e((v.points.set or '')[:16])}"
                f"</code></td><td>{e(r.by)}</td></tr>"
            )
        parts.append("</table>")
        w = PLOT_WIDTH_IN * 100
        for name, alt in ((LOSS_PNG, "validation loss by step"), (TIMESTEPS_PNG, "validation loss per timestep")):
            parts.append(
                f'<p><a href="{name}">{name}</a></p><img class="plot" width="{w}" src="{png_uri(name)}" '
                f'alt="{e(alt)}: {e(", ".join(v.label for v in chosen))}">'
            )
    parts += [f'<p class="sub">{e(line)}</p>' for line in skipped]
    return parts
