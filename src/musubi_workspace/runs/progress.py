"""Training progress from musubi-tuner's output: step, loss, seconds per step, time left.

musubi-tuner draws its progress with tqdm (`training/trainer_base.py`: `tqdm(range(max_train_steps),
smoothing=0, desc="steps")`, postfix `avr_loss=...`), on stderr, redrawn with carriage returns:

    steps:  12%|█▏        | 120/1000 [06:24<46:58,  3.20s/it, avr_loss=0.0832]

tqdm writes `it/s` instead of `s/it` when a step takes less than a second, and `?it/s` before the first step.
smoothing=0 makes the rate the average since the bar was reset (after the first step), so it is a fair basis
for the time left. The step counter starts at 0 on resume: `offset` adds the steps the resumed state holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

STEP_RE = re.compile(
    r"steps:\s*\d+%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)\s*\["
    r"(?P<elapsed>[^<\]]*)<(?P<left>[^,\]]*)"
    r"(?:,\s*(?P<rate>[\d.]+|\?)(?P<unit>s/it|it/s))?"
    r"(?P<post>[^\]]*)\]"
)
POSTFIX_RE = re.compile(r"(\w+)=([-+\d.eE]+|nan|inf)")
# musubi-tuner's log lines when it saves a state (`utils/train_utils.py`).
STATE_STEP_RE = re.compile(r"saving state at step (\d+)")
STATE_EPOCH_RE = re.compile(r"saving state at epoch (\d+)")
STATE_LAST = "saving last state"


@dataclass
class Progress:
    """What the run has shown so far. Steps are absolute: `offset` + musubi-tuner's own counter."""

    offset: int = 0
    step: int | None = None
    total: int | None = None
    loss: float | None = None
    seconds_per_step: float | None = None
    # State folders seen saved, by kind: ("step", N) / ("epoch", N) / ("last", 0), with the absolute step.
    states: list[tuple[str, int, int]] = field(default_factory=list)

    def feed(self, piece: str) -> bool:
        """Read one line (or carriage-return piece) of output; True when it was a progress line with a new step."""
        matches = list(STEP_RE.finditer(piece))
        m = matches[-1] if matches else None
        if m is None:
            self._states(piece)
            return False
        n, total = int(m.group("n")), int(m.group("total"))
        new = self.step != self.offset + n
        self.step, self.total = self.offset + n, self.offset + total
        rate, unit = m.group("rate"), m.group("unit")
        if rate and rate != "?" and float(rate) > 0:
            self.seconds_per_step = float(rate) if unit == "s/it" else 1.0 / float(rate)
        for key, value in POSTFIX_RE.findall(m.group("post") or ""):
            if key in ("avr_loss", "loss"):
                self.loss = float(value)
        return new

    def _states(self, line: str) -> None:
        step = self.step if self.step is not None else self.offset
        if m := STATE_STEP_RE.search(line):
            self.states.append(("step", int(m.group(1)), self.offset + int(m.group(1))))
        elif m := STATE_EPOCH_RE.search(line):
            self.states.append(("epoch", int(m.group(1)), step))
        elif STATE_LAST in line:
            self.states.append(("last", 0, step))

    @property
    def seconds_left(self) -> float | None:
        if self.step is None or self.total is None or self.seconds_per_step is None:
            return None
        return max(0, self.total - self.step) * self.seconds_per_step

    def status(self) -> str:
        """`step 120/1000 · loss 0.0832 · 3.20 s/step · 46m58s left` (parts not yet known are left out)."""
        if self.step is None:
            return ""
        parts = [f"step {self.step}/{self.total}"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4g}")
        if self.seconds_per_step is not None:
            parts.append(f"{self.seconds_per_step:.2f} s/step")
        if self.seconds_left is not None:
            parts.append(f"{duration(self.seconds_left)} left")
        return " · ".join(parts)


def duration(seconds: float | None) -> str:
    """`3h04m`, `46m58s`, `12s`."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"
