"""The validation loss of the stand-in trainer (`_behave_accelerate.py`): what `musubi_workspace.launch` writes
when `$WS_VALIDATION` is set, and what `-m musubi_workspace.validation.offline` (`make validate`) writes, through
the workspace's own `musubi_workspace.validation.records`, with deterministic numbers.

The numbers fall, then rise (a best step exists): at a version's true step s (a resumed run's steps go on from
its state's), the loss at timestep t is `base(t) * (1 - depth + depth * ((s - best) / best) ** 2)`, so step 0 is
the base model's number (the same in every version: the numbers compare), the lowest is at `best` and it climbs
past the base after twice that. `best` = STANDIN_VAL_BEST or 6/10 of the run's max_train_steps (the state's steps
included); `depth` = 0.4 x learning_rate / 2e-4 (at most 0.8): versions with other learning rates differ.

  STANDIN_VAL_BEST=<k>     the step of the lowest loss
  STANDIN_VAL_SECONDS=<s>  the seconds a pass records (default 0.5; it does not sleep)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import tomllib

from musubi_workspace.validation import records

# The launcher's and the offline module's defaults (validation.trainer).
DEFAULT_TIMESTEPS = (0.1, 0.3, 0.5, 0.7, 0.9)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def base(t: float) -> float:
    """The base model's loss at raw timestep t."""
    return 0.04 + 0.12 * t


def numbers(true_step: int, timesteps, best: int, learning_rate: float) -> dict[str, float]:
    depth = min(0.8, 0.4 * float(learning_rate) / 2e-4)
    f = 1 - depth + depth * ((true_step - best) / max(best, 1)) ** 2
    return {records.t_key(t): round(base(t) * f, 6) for t in timesteps}


def items_of(dataset_toml: str) -> int:
    """The items of a musubi-tuner dataset.toml: JSONL lines, or the images of its directories."""
    try:
        cfg = tomllib.loads(Path(dataset_toml).read_text())
    except (OSError, ValueError):
        return 0
    n = 0
    for d in cfg.get("datasets", []):
        if isinstance(d.get("image_jsonl_file"), str) and Path(d["image_jsonl_file"]).is_file():
            n += sum(1 for line in Path(d["image_jsonl_file"]).read_text().splitlines() if line.strip())
        elif isinstance(d.get("image_directory"), str) and Path(d["image_directory"]).is_dir():
            n += sum(1 for p in Path(d["image_directory"]).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return n


class Scorer:
    """One run's validation: the set, the timesteps and the numbers at each step."""

    def __init__(self, cfg: dict, dataset: str, timesteps, set_hash: str, total: int, offset: int = 0):
        self.dataset, self.timesteps, self.set_hash = dataset, list(timesteps), set_hash
        self.offset = offset
        self.best = int(os.environ.get("STANDIN_VAL_BEST") or round(0.6 * (offset + total)))
        self.lr = cfg.get("learning_rate", 2e-4)
        self.items = items_of(dataset)
        self.base_loss = self.record(0, base_model=True).loss

    def record(self, step: int, lora: str | None = None, by: str = records.BY_TRAINING, base_model=False):
        """The Record at the run's step `step` (its true step adds the resumed state's); the base model at 0."""
        by_t = numbers(0 if base_model else self.offset + step, self.timesteps, self.best, self.lr)
        loss = round(sum(by_t.values()) / len(by_t), 6)
        ratio = 1.0 if base_model else round(loss / self.base_loss, 6) if getattr(self, "base_loss", 0) else None
        return records.Record(
            step=step,
            loss=loss,
            by_timestep=by_t,
            items=self.items,
            set=self.set_hash,
            dataset_config=self.dataset,
            timesteps=self.timesteps,
            by=by,
            lora=lora,
            ratio=ratio,
            seconds=float(os.environ.get("STANDIN_VAL_SECONDS", "0.5")),
        )


def timesteps_of(value: str | None) -> list[float]:
    return [float(t) for t in value.split(",")] if value else list(DEFAULT_TIMESTEPS)


class Training:
    """The launcher's validation in a training run (validation.trainer): step 0, every `every` steps, each save
    (the JSON beside the LoRA and a series line naming it) and the end, each step once in the series."""

    def __init__(self, cfg: dict, name: str, out: Path, total: int, offset: int, save_every):
        env = os.environ
        self.out, self.name, self.total, self.save_every = out, name, total, save_every or 0
        every = env.get("WS_VALIDATION_EVERY", "").strip()
        self.every = int(every) if every else self.save_every
        self.scorer = Scorer(
            cfg,
            env["WS_VALIDATION"],
            timesteps_of(env.get("WS_VALIDATION_TIMESTEPS")),
            env.get("WS_VALIDATION_SET") or "0" * 16,
            total,
            offset,
        )
        self.in_series: set[int] = set()
        self.series(self.scorer.record(0, base_model=True))

    def say(self, r) -> None:
        print(
            f"musubi-workspace: validation loss at step {r.step}: {r.loss:.6f}"
            + (" (the base model)" if r.step == 0 else f" ({r.ratio:.4f} of step 0)")
            + f", {r.items} items x {len(r.timesteps)} timesteps, {r.seconds:.1f} s",
            flush=True,
        )

    def series(self, r) -> None:
        if r.step not in self.in_series:
            if r.lora is None or r.step == 0:
                self.say(r)
            records.append_series(self.out, self.name, r)
            self.in_series.add(r.step)

    def after_step(self, n: int) -> None:
        saves = bool(self.save_every) and n % self.save_every == 0
        due = (self.every > 0 and n % self.every == 0) or saves or n == self.total
        if due and not saves and n != self.total:
            self.series(self.scorer.record(n))

    def saved(self, n: int, lora: Path) -> None:
        if not lora.is_file():
            return  # STANDIN_NO_LORA: nothing saved, nothing beside it
        r = self.scorer.record(n, lora=lora.name)
        self.say(r)
        records.write_beside(lora, r)
        self.series(r)


LORA_STEP = re.compile(r"-step(\d{8})\.safetensors$")
RESUMED = re.compile(r"-resume(\d+)(?:-step\d{8})?\.safetensors$")


def offline(args: list[str]) -> int:
    """`-m musubi_workspace.validation.offline --config_file C --validation V --timesteps T --set H --lora F...`:
    the JSON beside each LoRA (by "make validate"), at the LoRA's step (its name's, else the config's
    max_train_steps), numbered as training numbers it."""

    def opt(name: str, alias: str = "") -> str | None:
        for n in (name, alias):
            if n and n in args:
                return args[args.index(n) + 1]
        return None

    cfg = tomllib.loads(Path(opt("--config_file")).read_text())
    total = int(cfg.get("max_train_steps", 1600))
    loras = []  # `--lora F [F ...]`, repeatable
    for i, a in enumerate(args):
        if a == "--lora":
            loras += [x for x in __import__("itertools").takewhile(lambda x: not x.startswith("--"), args[i + 1 :])]
    for lora in loras:
        path = Path(lora)
        m, resumed = LORA_STEP.search(path.name), RESUMED.search(path.name)
        offset = int(resumed.group(1)) if resumed else 0
        step = int(m.group(1)) if m else total - offset
        scorer = Scorer(
            cfg,
            opt("--validation"),
            timesteps_of(opt("--validation_timesteps", "--timesteps")),
            opt("--validation_set", "--set"),
            total - offset,
            offset,
        )
        r = scorer.record(step, lora=path.name, by=records.BY_VALIDATE)
        records.write_beside(path, r)
        print(f"musubi-workspace: {path}: validation loss {r.loss:.6f} at step {step}", flush=True)
    return 0
