"""The validation numbers on disk: the one writer and reader of the series and of the JSON beside each LoRA.

A `Record` is one validation pass: the mean unweighted MSE over the set at each fixed timestep and their mean,
and what it was computed on (the set's hash, the timesteps, the noise rule). Two files hold them:

- the series `<output_dir>/<output_name>.validation.jsonl`, one Record a line, appended line by line (flushed and
  fsynced, so a pod that stops mid-run loses at most the line being written);
- `<stem>.validation.json` beside each saved LoRA `<stem>.safetensors`, one Record, written atomically (a
  temporary file, then os.replace), so a reader never sees half a file and a second write replaces the first.

A reader of the series takes the last Record of each (step, lora, set): `make validate` may score a LoRA again.
Nothing here imports torch or musubi-tuner: `make runs`, `make report` and `LORA=best` read these files on any
machine.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

# The noise rule's name (validation.items.noise_seed): recorded so that a later rule cannot pass for this one.
SEED_RULE = "item-content+timestep"
BY_TRAINING = "training"
BY_VALIDATE = "make validate"
SERIES_SUFFIX = ".validation.jsonl"
JSON_SUFFIX = ".validation.json"
# The tracker keys (tensorboard, wandb), with the per-timestep key's format.
KEY_LOSS = "loss/validation"
KEY_RATIO = "loss/validation_ratio"
KEY_AT = "loss/validation_t{t}"


def t_key(t: float) -> str:
    """A timestep as the key of `by_timestep` and of the trackers: 0.1 -> "0.1" (shortest exact repr)."""
    return repr(float(t))


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Record:
    """One validation pass. `loss` is the mean of `by_timestep`; `ratio` is loss / the base model's loss (step 0)
    on the same set, or None where that is unknown."""

    step: int
    loss: float
    by_timestep: dict[str, float]
    items: int
    set: str
    dataset_config: str
    timesteps: list[float]
    seed: str = SEED_RULE
    by: str = BY_TRAINING
    lora: str | None = None
    ratio: float | None = None
    seconds: float = 0.0
    time: str = field(default_factory=utc_now)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict) -> Record:
        names = {f.name for f in fields(cls)}
        missing = {"step", "loss", "by_timestep", "items", "set", "dataset_config", "timesteps"} - set(d)
        if missing:
            raise ValueError(f"a validation record lacks {', '.join(sorted(missing))}")
        return cls(**{k: v for k, v in d.items() if k in names})

    def tracker_logs(self) -> dict[str, float]:
        """The values the trainer hands to its trackers: `loss/validation`, one key per timestep, the ratio."""
        logs = {KEY_LOSS: self.loss}
        logs.update({KEY_AT.format(t=k): v for k, v in self.by_timestep.items()})
        if self.ratio is not None:
            logs[KEY_RATIO] = self.ratio
        return logs


def series_path(output_dir: str | Path, output_name: str) -> Path:
    return Path(output_dir) / f"{output_name}{SERIES_SUFFIX}"


def json_path(lora: str | Path) -> Path:
    """The JSON beside a LoRA file: x.safetensors -> x.validation.json."""
    p = Path(lora)
    return p.with_name(p.stem + JSON_SUFFIX) if p.suffix == ".safetensors" else p.with_name(p.name + JSON_SUFFIX)


def append_series(output_dir: str | Path, output_name: str, record: Record) -> Path:
    """Append one line to the series; the line is on disk (flushed, fsynced) when this returns."""
    path = series_path(output_dir, output_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(record.to_json() + "\n")
        f.flush()
        os.fsync(f.fileno())
    return path


def write_beside(lora: str | Path, record: Record) -> Path:
    """Write the Record beside the LoRA, atomically (a second write for the same LoRA replaces the first whole)."""
    path = json_path(lora)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(asdict(record), indent=1) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_beside(lora: str | Path) -> Record | None:
    """The Record beside a LoRA, or None where there is none or it does not read (a half-copied file)."""
    path = json_path(lora)
    try:
        return Record.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def read_series(output_dir: str | Path, output_name: str) -> list[Record]:
    """The series in step order, the last Record of each (step, lora, set); lines that do not read (a line cut
    short by a stopped pod) are skipped."""
    path = series_path(output_dir, output_name)
    if not path.exists():
        return []
    last: dict[tuple, Record] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            r = Record.from_dict(json.loads(line))
        except (ValueError, TypeError):
            continue
        key = (r.step, r.lora, r.set)
        last.pop(key, None)  # keep the order of the latest write
        last[key] = r
    return sorted(last.values(), key=lambda r: r.step)


def base_record(output_dir: str | Path, output_name: str, set_hash: str) -> Record | None:
    """The base model's Record on this set (step 0, no LoRA), where the series has one."""
    found = [r for r in read_series(output_dir, output_name) if r.step == 0 and r.lora is None and r.set == set_hash]
    return found[-1] if found else None


def loras(output_dir: str | Path, output_name: str) -> list[Path]:
    """The LoRA files of one run: `<output_name>.safetensors` and musubi-tuner's `<output_name>-<n>` names
    (-step00000500, -000002 for epochs)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    own = re.compile(rf"^{re.escape(output_name)}(-(step)?\d+)?\.safetensors$")
    return sorted(p for p in folder.iterdir() if own.match(p.name) and p.is_file())


def best(output_dir: str | Path, output_name: str, set_hash: str | None = None) -> Record | None:
    """The Record with the lowest loss among the LoRAs of the run still on disk (read from the JSON beside each),
    on `set_hash` where given; the earlier step on a tie. None where no LoRA has one."""
    found = []
    for lora in loras(output_dir, output_name):
        r = read_beside(lora)
        if r is not None and (set_hash is None or r.set == set_hash):
            found.append(r)
    return min(found, key=lambda r: (r.loss, r.step)) if found else None
