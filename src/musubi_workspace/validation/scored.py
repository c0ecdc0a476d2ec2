"""A version's validation numbers, read back for `make generate LORA=best`, `make report` and `make validate`:
the LoRAs with a validation JSON beside them and the series of its runs, at the version's true steps.

A run of `make resume` counts its steps from 0 again and names its files `<output_name>-resume<S>…` (S: the
steps of the state it resumed): its records' steps plus S are the version's steps, as the report's loss curves
draw them. Its step 0 is the base model's number (the LoRA off), which is the version's step 0.

Numbers compare only on one validation set (each Record names the set's hash): where a version's records are on
several sets, the newest record's set is the one used, and the others are counted so callers can say so.
Nothing here imports torch or musubi-tuner.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from musubi_workspace.commands import lora_files
from musubi_workspace.config import Config
from musubi_workspace.validation import records
from musubi_workspace.validation.records import Record

RESUMED = re.compile(r"-resume(\d+)(?=(-step\d{8}|-\d{6})?(\.safetensors|\.validation\.jsonl)$)")


def offset_of(name: str) -> int:
    """The steps before a resumed run's step 0, from one of its file names (0 for a first run's)."""
    m = RESUMED.search(name)
    return int(m.group(1)) if m else 0


def true_step(record: Record, offset: int) -> int:
    return 0 if record.step == 0 and record.lora is None else record.step + offset


@dataclass(frozen=True)
class Scored:
    """One LoRA file and the Record beside it."""

    path: Path
    record: Record

    @property
    def step(self) -> int:
        return true_step(self.record, offset_of(self.path.name))


def scored_loras(cfg: Config) -> list[Scored]:
    """The version's LoRA files (oldest first) that have a validation JSON beside them."""
    found = []
    for path in lora_files(cfg):
        r = records.read_beside(path)
        if r is not None:
            found.append(Scored(path, r))
    return found


def newest_set(recs: list[Record]) -> str | None:
    """The set of the newest Record (by its time): the one a version's numbers are compared on."""
    return max(recs, key=lambda r: r.time).set if recs else None


@dataclass
class Best:
    """The lowest loss among the version's scored LoRAs on one set; `others`: LoRAs scored on other sets only."""

    chosen: Scored
    scored: int
    set: str
    others: int = 0


def best(cfg: Config) -> Best | None:
    """The version's LoRA with the lowest validation loss (the earlier step on a tie), on the newest set."""
    found = scored_loras(cfg)
    if not found:
        return None
    on = newest_set([s.record for s in found])
    same = [s for s in found if s.record.set == on]
    chosen = min(same, key=lambda s: (s.record.loss, s.step))
    return Best(chosen, len(same), on, len(found) - len(same))


@dataclass
class Points:
    """A version's validation numbers by true step: its series lines and the JSON beside each of its LoRAs (the
    latter where both have a step: it names the LoRA and may be a later `make validate`)."""

    by_step: dict[int, Record] = field(default_factory=dict)
    lora_steps: set[int] = field(default_factory=set)  # steps whose LoRA file is still on disk
    set: str | None = None
    other_sets: Counter = field(default_factory=Counter)  # set -> records left out

    def best(self) -> tuple[int, Record] | None:
        """The lowest loss among the steps with a LoRA on disk, else among all (the earlier step on a tie)."""
        steps = self.lora_steps or set(self.by_step)
        if not steps:
            return None
        step = min(steps, key=lambda s: (self.by_step[s].loss, s))
        return step, self.by_step[step]


def series_names(output_dir: Path, output_name: str) -> list[str]:
    """The output names of a version's runs with a series: `<output_name>` and its `-resume<S>` runs."""
    if not output_dir.is_dir():
        return []
    own = re.compile(rf"^{re.escape(output_name)}(-resume\d+)?{re.escape(records.SERIES_SUFFIX)}$")
    return sorted(p.name[: -len(records.SERIES_SUFFIX)] for p in output_dir.iterdir() if own.match(p.name))


def points(cfg: Config) -> Points:
    out_dir, name = cfg.path_of("output_dir"), cfg.get("output_name")
    if out_dir is None or not isinstance(name, str) or not name:
        return Points()
    found: list[tuple[int, Record, bool]] = []  # (true step, record, beside a LoRA on disk)
    for run in series_names(out_dir, name):
        offset = offset_of(run + records.SERIES_SUFFIX)
        found += [(true_step(r, offset), r, False) for r in records.read_series(out_dir, run)]
    found += [(s.step, s.record, True) for s in scored_loras(cfg)]
    p = Points(set=newest_set([r for _, r, _ in found]))
    for step, r, beside in found:
        if r.set != p.set:
            p.other_sets[r.set] += 1
            continue
        if beside or step not in p.by_step:
            p.by_step[step] = r
        if beside:
            p.lora_steps.add(step)
    p.by_step = dict(sorted(p.by_step.items()))
    return p
