"""`make smoke`: the user's whole loop on this machine's GPU, with the real musubi-tuner and no downloads.

It makes (or reuses) random-weight models of the exact shapes and stand-in tokenizers (random_models.py; the DiT
is `make bench`'s), writes a throw-away workspace `.cache/smoke/ws/` beside the real one (the same Makefile and
environment, the tiny one-frame example, a version v1 made from this workspace's configs/v1 with a few steps
and the smoke's models), and runs the real make targets there, one after another:

  models      the random models and the tokenizers (made on the GPU, reused when present)
  workspace   the throw-away workspace and `make example`
  cache       `make cache`: both caching scripts, on the training data and on the held-out validation set
              (`make example` writes it); the cache files by musubi-tuner's names and keys
  cache again `make cache`: "up to date", nothing run, no file touched
  caption     one caption edited, `make cache`: only the text-encoder script, only that item's file
  train       `make train` (2 steps: one LoRA save, one state save, one sample; wandb offline; the pod stop), with
              the validation on: the numbers at step 0, at the save and at the end (the series
              `<output_name>.validation.jsonl`) and the JSON beside each LoRA
  resume      max_train_steps raised to 4, `make resume`: the 2 steps left; `make cancel-stop` during it:
              no stop; the JSON beside each resumed LoRA
  validate    `make validate` on the resumed LoRA: its JSON, by "make validate"
  generate    `make generate`: the prompt with the newest LoRA
  report      `make report`: the page and its PNGs, the validation plot (validation.png) among them
  runs        `make runs`: every run record complete

After each step it checks the files a user relies on, prints one line with the step's time, and stops at the
first failure naming the step and its log. The user's configs/, datasets/, outputs/ and runs/ are never touched.
The pod stop is a recording stand-in `runpodctl` first on PATH with RUNPOD_POD_ID=smoke-pod: nothing is stopped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

import tomlkit

from musubi_workspace.errors import EXIT_CHECK, EXIT_CHILD, WorkspaceError
from musubi_workspace.paths import Workspace
from musubi_workspace.smoke.random_models import FILES as MODEL_FILES

POD = "smoke-pod"
# Steps of the training run, then the total after the edit that `make resume` trains up to.
TRAIN_STEPS, RESUME_TOTAL = 2, 4
# Sampling steps of the sample prompt (the shipped prompt has 25: fewer keep the smoke short).
SAMPLE_STEPS = 4
# Files copied from the workspace into the throw-away one (the Makefile and what its stamps depend on).
COPIED = ("Makefile", "pyproject.toml", "uv.lock", ".python-version", ".gitignore")
DATASET_TOML = """\
# The smoke's dataset: the tiny one-frame example (`make example`), as configs/v1 ships it.
[general]
resolution = [512, 768]
batch_size = 4
enable_bucket = false

[[datasets]]
image_jsonl_file = "datasets/example-1f/train.jsonl"
cache_directory = "cache/v1/example-1f"
fp_1f_clean_indices = [0, 10]
fp_1f_target_index = 1
fp_1f_no_post = true
"""
PROMPTS = (
    "The figure now wears the purple shirt from the reference image. --i datasets/example-1f/samples/sample01_start.png "
    "--ci datasets/example-1f/samples/sample01_start.png --ci datasets/example-1f/samples/sample01_ref.png "
    f"--of no_post,no_2x,no_4x,target_index=1,control_index=0;10 --w 512 --h 768 --f 1 --s {SAMPLE_STEPS} --d 1234\n"
)
CACHE_DIR = "cache/v1/example-1f"
ITEMS = 4
# The held-out validation set as `make example` writes it and configs/v1 names it ([workspace] validation).
VALIDATION = "validation/dataset.toml"
VALIDATION_JSONL = "validation/example-1f/validation.jsonl"
VALIDATION_CACHE = "cache/validation/example-1f"
# A runpodctl that records each call (argv, time) and answers as a real one does; nothing is stopped.
RUNPODCTL = """#!{python}
import json, sys, time
with open({record!r}, "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "time": time.time()}}) + "\\n")
if sys.argv[1:3] == ["pod", "stop"] and len(sys.argv) > 3:
    print(f'pod "{{sys.argv[3]}}" stopped (smoke stand-in: nothing was stopped)')
    sys.exit(0)
print(f'Error: unknown command "{{sys.argv[1] if len(sys.argv) > 1 else ""}}" for "runpodctl"')
sys.exit(1)
"""


class StepFailed(Exception):
    def __init__(self, message: str, code: int = EXIT_CHECK):
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass
class Smoke:
    ws: Workspace
    base: Path  # .cache/smoke
    notes: list[str] = field(default_factory=list)

    @property
    def scratch(self) -> Path:
        return self.base / "ws"

    @property
    def models(self) -> Path:
        return self.base / "models"

    @property
    def hub_cache(self) -> Path:
        return self.base / "hf" / "hub"

    @property
    def dit_folder(self) -> Path:
        return self.ws.root / "cache" / "bench"

    @property
    def logs(self) -> Path:
        return self.base / "logs"

    @property
    def pod_record(self) -> Path:
        return self.base / "runpodctl.jsonl"

    @property
    def out(self) -> Path:
        return self.scratch / "outputs" / "v1"

    def write_pod_standin(self) -> None:
        """The recording runpodctl, written by every smoke (also one that starts at a later step): it names this
        Python and this workspace's record by their paths."""
        bin_dir = self.base / "bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        (bin_dir / "runpodctl").write_text(RUNPODCTL.format(python=sys.executable, record=str(self.pod_record)))
        (bin_dir / "runpodctl").chmod(0o755)

    def env(self) -> dict[str, str]:
        """The environment of every step: the workspace's (its python and accelerate first on PATH), offline, the
        stand-in runpodctl first on PATH, no secrets."""
        from musubi_workspace.environment import child_env

        env = {
            k: v
            for k, v in child_env(self.ws).items()
            if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY", "RUNPOD_API_KEY", "RUNPOD_POD_ID")
            and not k.startswith(("MAKEFLAGS", "MFLAGS", "MAKELEVEL"))
        }
        env.update(
            PATH=os.pathsep.join([str(self.base / "bin"), env.get("PATH", "")]),
            HF_HUB_CACHE=str(self.hub_cache),
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            HF_DATASETS_OFFLINE="1",
            WANDB_MODE="offline",
            RUNPOD_POD_ID=POD,
            WS_RP_ENVIRONMENT=str(self.base / "no-rp_environment"),
            WS_STOP_RETRY_SECONDS="0",
            WS_ROOT=str(self.scratch),
        )
        return env

    # -----------------------------------------------------------------------------------------------------
    # Running things
    # -----------------------------------------------------------------------------------------------------

    def log_of(self, index: int, name: str) -> Path:
        return self.logs / f"{index:02d}-{name.replace(' ', '-')}.log"

    def run(self, argv: list[str], log: Path, cwd: Path | None = None, extra_env: dict | None = None) -> str:
        """Run argv with its output appended to `log`; StepFailed (exit code 4) when it fails. Returns its output."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as f:
            f.write(f"$ {' '.join(argv)}\n")
            f.flush()
            r = subprocess.run(
                argv,
                cwd=cwd or self.scratch,
                env={**self.env(), **(extra_env or {})},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
            )
            f.write(r.stdout)
        if r.returncode != 0:
            shown = " ".join(a for a in argv if a != "--no-print-directory")
            raise StepFailed(f"`{shown}` failed with exit code {r.returncode}", EXIT_CHILD)
        return r.stdout

    def make(self, log: Path, *args: str) -> str:
        return self.run(["make", "--no-print-directory", *args], log)

    # -----------------------------------------------------------------------------------------------------
    # The steps
    # -----------------------------------------------------------------------------------------------------

    def step_models(self, log: Path) -> str:
        argv = [
            "python",
            "-m",
            "musubi_workspace.smoke.random_models",
            "--folder",
            str(self.models),
            "--hub-cache",
            str(self.hub_cache),
            "--dit-folder",
            str(self.dit_folder),
        ]
        self.run(argv, log, cwd=self.ws.root)
        missing = [p for p in self.model_paths().values() if not p.is_file()]
        if missing:
            raise StepFailed(f"model file missing after making the models: {missing[0]}")
        sizes = sum(p.stat().st_size for p in self.model_paths().values())
        return f"{sizes / 1e9:.1f} GB in {self.rel(self.models)} and {self.rel(self.dit_folder)}"

    def model_paths(self) -> dict[str, Path]:
        from musubi_workspace.tune.synthetic import CacheLayout, Plan

        dit = Plan(folder=self.dit_folder, layout=CacheLayout(width=512, height=512), items=0).dit
        return {"dit": dit, **{k: self.models / f for k, f in MODEL_FILES.items()}}

    def step_workspace(self, log: Path) -> str:
        src = self.ws.configs / "v1"
        if not (src / "config.toml").is_file():
            raise StepFailed(
                f"{self.ws.rel(src / 'config.toml')}: not found; the smoke's version is made from "
                f"configs/v1: restore it from git",
                2,
            )
        if self.scratch.exists():
            shutil.rmtree(self.scratch)
        self.scratch.mkdir(parents=True)
        for name in COPIED:
            if (self.ws.root / name).exists():
                shutil.copy2(self.ws.root / name, self.scratch / name)
        (self.scratch / ".venv").symlink_to(self.ws.root / ".venv")
        models = self.scratch / "models"
        models.mkdir()
        for path in self.model_paths().values():
            (models / path.name).symlink_to(path)
        version = self.scratch / "configs" / "v1"
        version.mkdir(parents=True)
        (version / "config.toml").write_text(self.config_text((src / "config.toml").read_text(encoding="utf-8")))
        (version / "dataset.toml").write_text(DATASET_TOML)
        (version / "prompts.txt").write_text(PROMPTS)
        self.pod_record.unlink(missing_ok=True)
        self.make(log, "example")
        jsonl = self.scratch / "datasets" / "example-1f" / "train.jsonl"
        if not jsonl.is_file():
            raise StepFailed(f"`make example` wrote no {jsonl}")
        for path in (VALIDATION, VALIDATION_JSONL):
            if not (self.scratch / path).is_file():
                raise StepFailed(f"`make example` wrote no validation set {self.rel(self.scratch / path)}")
        notes = "".join(f"; {n}" for n in self.notes)
        return f"{self.rel(self.scratch)} (configs/v1 from {self.ws.rel(src)} with the smoke's models and steps{notes})"

    def config_text(self, text: str) -> str:
        """configs/v1's config.toml with the smoke's models, a few steps, one save, one sample and no upload."""
        doc = tomlkit.parse(text)
        for key, path in self.model_paths().items():
            doc[key] = f"models/{path.name}"
        for key in [
            k
            for k in doc
            if k.startswith("huggingface_")
            or k
            in (
                "save_state_to_huggingface",
                "async_upload",
                "resume",
                "network_weights",
                "max_train_epochs",
                "save_every_n_epochs",
                "sample_every_n_epochs",
                "sample_every_n_steps",
            )
        ]:
            del doc[key]
        doc.update(
            dataset_config="configs/v1/dataset.toml",
            sample_prompts="configs/v1/prompts.txt",
            output_dir="outputs/v1",
            logging_dir="outputs/v1/logs",
            max_train_steps=TRAIN_STEPS,
            save_every_n_steps=TRAIN_STEPS,
            sample_every_n_epochs=TRAIN_STEPS,
            sample_at_first=False,
            save_state=True,
            one_frame=True,
        )
        doc.setdefault("output_name", "smoke")
        table = doc.setdefault("workspace", tomlkit.table())
        # The validation on, with the held-out set `make example` writes (as configs/v1 ships it), at its default
        # cadence (save_every_n_steps) and timesteps.
        table["validation"] = VALIDATION
        for key in ("validation_every_n_steps", "validation_timesteps"):
            table.pop(key, None)
        if str(table.get("generate_attn_mode", "sdpa")).startswith("sage") and find_spec("sageattention") is None:
            table["generate_attn_mode"] = "sdpa"
            self.notes.append("generate_attn_mode sdpa: sageattention is not installed")
        if doc.get("log_with") in ("wandb", "all") and find_spec("wandb") is None:
            doc["log_with"] = "tensorboard"
            self.notes.append("log_with tensorboard: wandb is not installed")
        return tomlkit.dumps(doc)

    def config(self) -> dict:
        return tomlkit.parse((self.scratch / "configs" / "v1" / "config.toml").read_text()).unwrap()

    def cache_files(self) -> tuple[list[Path], list[Path]]:
        d = self.scratch / CACHE_DIR
        return sorted(d.glob("*_fp.safetensors")), sorted(d.glob("*_fp_te.safetensors"))

    def step_cache(self, log: Path) -> str:
        self.make(log, "cache")
        latents, te = self.cache_files()
        stems = sorted(
            Path(json.loads(l)["image_path"]).stem for l in self.jsonl().read_text().splitlines() if l.strip()
        )
        if len(latents) != ITEMS or len(te) != ITEMS:
            raise StepFailed(
                f"{self.rel(self.scratch / CACHE_DIR)}: {len(latents)} latent and {len(te)} text-encoder "
                f"cache files, expected {ITEMS} of each"
            )
        for files, suffix in ((latents, "_0512x0768_fp.safetensors"), (te, "_fp_te.safetensors")):
            names = sorted(p.name for p in files)
            if names != sorted(s + suffix for s in stems):
                raise StepFailed(f"cache file names {names} are not musubi-tuner's for the items {stems}")
        self.check_cache_keys(latents, te)
        n = self.check_validation_cache()
        extra = self.load_with_musubi(log)
        return (
            f"{ITEMS} latent + {ITEMS} text-encoder caches, keys as musubi-tuner writes them; the validation set's "
            f"{n} + {n} in {VALIDATION_CACHE}{extra}"
        )

    def check_validation_cache(self) -> int:
        """The held-out set cached by the same `make cache`, one latent and one text-encoder file per item."""
        path = self.scratch / VALIDATION_JSONL
        stems = sorted(Path(json.loads(l)["image_path"]).stem for l in path.read_text().splitlines() if l.strip())
        d = self.scratch / VALIDATION_CACHE
        for suffix in ("_0512x0768_fp.safetensors", "_fp_te.safetensors"):
            names = sorted(p.name for p in d.glob(f"*{suffix}"))
            want = sorted(s + suffix for s in stems)
            if not stems or names != want:
                raise StepFailed(
                    f"{self.rel(d)}: the validation set's cache files {names}, expected {want} (one per item of "
                    f"{VALIDATION_JSONL}): `make cache` did not cache the validation set"
                )
        return len(stems)

    def check_cache_keys(self, latents: list[Path], te: list[Path]) -> None:
        from musubi_workspace.tune.synthetic import CacheLayout

        s = self.config().get("workspace", {})
        layout = CacheLayout(
            width=512,
            height=768,
            clean_indices=(0, 10),
            target_index=1,
            no_post=True,
            no_2x=bool(s.get("one_frame_no_2x")),
            no_4x=bool(s.get("one_frame_no_4x")),
        )
        want = {k: shape for k, (shape, _) in layout.latent_tensors().items()}
        for p in latents:
            got = {k: tuple(v["shape"]) for k, v in safetensors_header(p).items()}
            if got != want:
                raise StepFailed(f"{self.rel(p)}: keys/shapes {got} differ from the one-frame layout {want}")
        for p in te:
            got = safetensors_header(p)
            # musubi-tuner names each tensor with its dtype (llama_vec_float16, clip_l_pooler_float32).
            for prefix, dim in (("llama_vec_", 4096), ("clip_l_pooler_", 768)):
                key = next((k for k in got if k.startswith(prefix)), None)
                if key is None or got[key]["shape"][-1] != dim:
                    raise StepFailed(f"{self.rel(p)}: no `{prefix}<dtype>` of width {dim} (keys: {sorted(got)})")
            if "llama_attention_mask" not in got:
                raise StepFailed(f"{self.rel(p)}: no `llama_attention_mask` (keys: {sorted(got)})")

    def load_with_musubi(self, log: Path) -> str:
        """The caches through musubi-tuner's own dataset, where it is importable in this environment."""
        if find_spec("musubi_tuner") is None:
            return " (musubi-tuner's dataset not importable here: not loaded through it)"
        out = self.run(["python", "-m", "musubi_workspace.smoke.loop", "load-caches", "configs/v1/dataset.toml"], log)
        return "; " + out.strip().splitlines()[-1] if out.strip() else ""

    def step_cache_again(self, log: Path) -> str:
        before = self.snapshot()
        records = self.records()
        out = self.make(log, "cache")
        if "up to date" not in out:
            raise StepFailed('the second `make cache` did not say "up to date"')
        if self.records() != records:
            raise StepFailed("the second `make cache` ran a script (a new run record)")
        if self.snapshot() != before:
            raise StepFailed("the second `make cache` changed cache files")
        return "up to date, nothing run"

    def snapshot(self) -> dict[str, float]:
        latents, te = self.cache_files()
        return {p.name: p.stat().st_mtime_ns for p in latents + te}

    def jsonl(self) -> Path:
        return self.scratch / "datasets" / "example-1f" / "train.jsonl"

    def step_caption(self, log: Path) -> str:
        lines = [json.loads(l) for l in self.jsonl().read_text().splitlines() if l.strip()]
        lines[0]["caption"] += " The smoke test edited this caption."
        self.jsonl().write_text("".join(json.dumps(l) + "\n" for l in lines))
        edited = Path(lines[0]["image_path"]).stem + "_fp_te.safetensors"
        before, records = self.snapshot(), self.records()
        self.make(log, "cache")
        new = [r for r in self.records() if r not in records]
        if len(new) != 1:
            raise StepFailed(f"the cache after a caption edit left {len(new)} new run records, expected 1")
        labels = [c.get("label") for c in read_json(new[0]).get("commands", [])]
        if labels != ["cache text encoder outputs"]:
            raise StepFailed(f"after a caption edit `make cache` ran {labels}, expected only the text-encoder script")
        after = self.snapshot()
        changed = sorted(n for n in after if after[n] != before.get(n))
        if changed != [edited]:
            raise StepFailed(f"after editing one caption these cache files changed: {changed}, expected [{edited}]")
        return f"only the text-encoder script ran, only {edited} changed"

    def records(self, target: str = "") -> list[Path]:
        """Run records, oldest first; of one target: `<time>-<target>`, or `<time>-<target>-<n>` for a second run
        that started in the same second."""
        base = self.scratch / "runs" / "v1"
        found = sorted(base.glob("*/run.json")) if base.is_dir() else []
        return [p for p in found if not target or re.search(rf"-{re.escape(target)}(-\d+)?$", p.parent.name)]

    def pod_calls(self) -> list[dict]:
        if not self.pod_record.exists():
            return []
        return [json.loads(l) for l in self.pod_record.read_text().splitlines() if l.strip()]

    def step_train(self, log: Path) -> str:
        name = self.config()["output_name"]
        self.make(log, "train", "AUTO_STOP=1s")
        run = self.check_run(self.records("train")[-1], TRAIN_STEPS)
        loras = [self.out / f"{name}-step{TRAIN_STEPS:08d}.safetensors", self.out / f"{name}.safetensors"]
        for p in loras:
            self.check_lora(p)
        self.check_saved_once(run, len(loras))
        for state in (f"{name}-step{TRAIN_STEPS:08d}-state", f"{name}-state"):
            self.check_state(self.out / state)
        samples = self.check_images(self.out / "sample", "sample")
        logs = list((self.out / "logs").rglob("events.out.tfevents.*"))
        if not logs:
            raise StepFailed(f"no tensorboard logs under {self.rel(self.out / 'logs')}")
        wandb = self.check_wandb()
        calls = self.pod_calls()
        if len(calls) != 1 or calls[0]["argv"][:3] != ["pod", "stop", POD]:
            raise StepFailed(
                f"the pod stop after training: expected one `runpodctl pod stop {POD}`, got "
                f"{[' '.join(c['argv']) for c in calls]}"
            )
        last = max(p.stat().st_mtime for p in loras)
        if calls[0]["time"] < last:
            raise StepFailed("the pod stop was called before the last LoRA was saved")
        return (
            f"{len(loras)} LoRAs (lora_unet_ keys), 2 states, {samples} sample(s), tensorboard logs, {wandb}, "
            f"pod stopped once after training ({self.processes()})"
        )

    def check_beside(self, loras: list[Path], by: str) -> list:
        """The validation JSON beside each LoRA, written by `by`, naming that LoRA."""
        from musubi_workspace.validation import records

        found = []
        for lora in loras:
            r = records.read_beside(lora)
            path = self.rel(records.json_path(lora))
            if r is None:
                raise StepFailed(f"no validation JSON beside {lora.name}: {path} is missing or does not read")
            if r.by != by or r.lora != lora.name or not r.loss > 0:
                raise StepFailed(
                    f"{path}: by {r.by!r}, lora {r.lora!r}, loss {r.loss}; expected by {by!r}, lora {lora.name!r}, "
                    f"a loss > 0"
                )
            found.append(r)
        return found

    def processes(self) -> str:
        from musubi_workspace.commands import process_count
        from musubi_workspace.config import Config
        from musubi_workspace.gpus import visible_gpu_count

        cfg = Config.load(Workspace(self.scratch), self.scratch / "configs" / "v1" / "config.toml")
        n = process_count(cfg, visible_gpu_count(self.env()))
        return f"{n} process{'es' if n > 1 else ''}"

    def check_run(self, path: Path, steps: int | None) -> dict:
        data = read_json(path)
        missing = [
            k
            for k in ("status", "exit_code", "start", "end", "duration_s", "commands", "files", "gpus")
            if data.get(k) in (None, [], {})
        ]
        if data.get("exit_code") == 0:
            missing = [k for k in missing if k != "exit_code"]
        if missing or data.get("status") != "succeeded":
            raise StepFailed(f"{self.rel(path)}: status {data.get('status')!r}, missing or empty: {missing}")
        if steps is not None:
            p = data.get("progress") or {}
            if p.get("last_step") != steps or p.get("total_steps") != steps or p.get("last_loss") is None:
                raise StepFailed(f"{self.rel(path)}: progress {p}, expected step {steps} of {steps} with a loss")
        return data

    def check_lora(self, path: Path) -> None:
        if not path.is_file():
            raise StepFailed(f"no LoRA {self.rel(path)}")
        keys = list(safetensors_header(path))
        bad = [k for k in keys if not k.startswith("lora_unet_")]
        if not keys or bad:
            raise StepFailed(f"{self.rel(path)}: expected only `lora_unet_` keys, got {bad[:3] or 'none'}")
        if not any(k.endswith(".lora_down.weight") for k in keys) or not any(
            k.endswith(".lora_up.weight") for k in keys
        ):
            raise StepFailed(f"{self.rel(path)}: no lora_down/lora_up weights")

    def check_saved_once(self, run: dict, expected: int) -> None:
        """Each LoRA was saved once (by the main process only, whatever the number of processes)."""
        log = self.scratch / "runs" / "v1" / run["id"] / run.get("log", "log.txt")
        saves = len(re.findall(r"saving checkpoint: ", log.read_text(errors="replace"))) if log.exists() else 0
        if saves != expected:
            raise StepFailed(f'{self.rel(log)}: {saves} "saving checkpoint" lines, expected {expected} (one per LoRA)')

    def check_state(self, path: Path) -> None:
        files = [p.name for p in path.iterdir()] if path.is_dir() else []
        if not files:
            raise StepFailed(f"no state folder {self.rel(path)} (or it is empty)")
        if not any(f.startswith("optimizer") for f in files) or not any(f.startswith("model") for f in files):
            raise StepFailed(f"{self.rel(path)}: no optimizer or model file in the state ({sorted(files)})")

    def check_images(self, folder: Path, what: str) -> int:
        from PIL import Image

        found = sorted(folder.rglob("*.png")) if folder.is_dir() else []
        if not found:
            raise StepFailed(f"no {what} image (PNG) under {self.rel(folder)}")
        for p in found:
            try:
                with Image.open(p) as img:
                    img.load()
            except Exception as e:
                raise StepFailed(f"{self.rel(p)}: does not decode ({e.__class__.__name__}: {e})") from None
        return len(found)

    def check_wandb(self) -> str:
        if find_spec("wandb") is None:
            return "wandb not installed (not checked)"
        runs = list(self.scratch.rglob("offline-run-*"))
        if not runs:
            raise StepFailed(f"wandb is installed but left no offline run under {self.scratch}")
        return "wandb offline run written"

    def step_resume(self, log: Path) -> str:
        path = self.scratch / "configs" / "v1" / "config.toml"
        doc = tomlkit.parse(path.read_text())
        doc["max_train_steps"] = RESUME_TOTAL
        path.write_text(tomlkit.dumps(doc))
        name = doc["output_name"]
        left = RESUME_TOTAL - TRAIN_STEPS
        calls = len(self.pod_calls())
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as f:
            f.write("$ make resume AUTO_STOP=10m  (and `make cancel-stop` once its stop is pending)\n")
            f.flush()
            proc = subprocess.Popen(
                ["make", "--no-print-directory", "resume", "AUTO_STOP=10m"],
                cwd=self.scratch,
                env=self.env(),
                stdout=f,
                stderr=subprocess.STDOUT,
            )
            runs = self.scratch / "runs"
            cancelled = False
            while proc.poll() is None:
                if not cancelled and list(runs.glob(".stop-pending-*")):
                    r = subprocess.run(
                        ["make", "--no-print-directory", "cancel-stop"],
                        cwd=self.scratch,
                        env=self.env(),
                        capture_output=True,
                        text=True,
                    )
                    f.write(f"$ make cancel-stop\n{r.stdout}{r.stderr}")
                    f.flush()
                    cancelled = "cancelled" in r.stdout
                time.sleep(0.5)
        if proc.returncode != 0:
            raise StepFailed(f"`make resume` failed with exit code {proc.returncode}", EXIT_CHILD)
        text = log.read_text(errors="replace")
        if not cancelled:
            raise StepFailed("`make cancel-stop` found no pending stop while `make resume` ran")
        if f"trains the {left} steps left" not in text:
            raise StepFailed(f"`make resume` did not say it trains the {left} steps left")
        self.check_run(self.records("resume")[-1], RESUME_TOTAL)  # the record counts from the state's step
        loras = [
            self.out / f"{name}-resume{TRAIN_STEPS}-step{left:08d}.safetensors",
            self.out / f"{name}-resume{TRAIN_STEPS}.safetensors",
        ]
        for p in loras:
            self.check_lora(p)
        self.check_saved_once(read_json(self.records("resume")[-1]), len(loras))
        self.check_state(self.out / f"{name}-resume{TRAIN_STEPS}-state")
        if len(self.pod_calls()) != calls:
            raise StepFailed("runpodctl was called after `make cancel-stop`: the pod would have stopped")
        return f"the {left} steps left from step {TRAIN_STEPS}, files {name}-resume{TRAIN_STEPS}-…; cancelled stop: not called"

    def step_validate(self, log: Path) -> str:
        """`make validate` on the resumed LoRA: the JSON beside it, by "make validate" (training's is replaced)."""
        from musubi_workspace.validation import records

        if not self.has_target("validate"):
            return "skipped: this workspace's Makefile has no `validate` target (not checked)"
        name = self.config()["output_name"]
        lora = self.out / f"{name}-resume{TRAIN_STEPS}.safetensors"
        self.make(log, "validate", f"LORA={self.rel_scratch(lora)}")
        (r,) = self.check_beside([lora], "make validate")
        trained = records.read_beside(self.out / f"{name}.safetensors")
        if trained is not None and r.set != trained.set:
            raise StepFailed(
                f"{self.rel(records.json_path(lora))}: validation set {r.set}, not the training's ({trained.set})"
            )
        ratio = f", ratio {r.ratio:.3g} to step 0" if r.ratio is not None else ""
        return f"{lora.name}: validation loss {r.loss:.4g} at step {r.step}{ratio} ({r.items} item(s))"

    def has_target(self, target: str) -> bool:
        text = (self.scratch / "Makefile").read_text(errors="replace")
        return re.search(rf"^{re.escape(target)}:", text, re.M) is not None

    def rel_scratch(self, path: Path) -> str:
        return str(path.relative_to(self.scratch))

    def step_generate(self, log: Path) -> str:
        self.make(log, "generate")
        run = self.check_run(self.records("generate")[-1], None)
        argv = run["commands"][0]["argv"]
        lora = argv[argv.index("--lora_weight") + 1] if "--lora_weight" in argv else None
        name = self.config()["output_name"]
        if lora is None or Path(lora).name != f"{name}-resume{TRAIN_STEPS}.safetensors":
            raise StepFailed(
                f"`make generate` used LoRA {lora}, expected the newest, {name}-resume{TRAIN_STEPS}.safetensors"
            )
        n = self.check_images(self.out / "generate", "generated")
        return f"{n} image(s) with {Path(lora).name}"

    def step_report(self, log: Path) -> str:
        self.make(log, "report")
        out = self.scratch / "runs" / "report"
        if not (out / "index.html").is_file():
            raise StepFailed(f"no {self.rel(out / 'index.html')}")
        for name in ("loss.png", "lr.png"):
            if not (out / name).is_file():
                raise StepFailed(f"no {self.rel(out / name)}")
        n = self.check_images(out, "report")
        if not list(out.glob("samples_*.png")):
            raise StepFailed(f"no sample grid (samples_NN.png) in {self.rel(out)}")
        if find_spec("musubi_workspace.report.validation") is None:
            return f"index.html and {n} PNGs; validation plot skipped: this `make report` draws none (not checked)"
        if not (out / "validation.png").is_file():
            raise StepFailed(f"no validation plot {self.rel(out / 'validation.png')} (the run has validation numbers)")
        return f"index.html and {n} PNGs (the validation plot validation.png among them, decoded)"

    def step_runs(self, log: Path) -> str:
        out = self.make(log, "runs")
        records = self.records()  # oldest first (named by start time)
        ok = [p for p in records if read_json(p).get("status") == "succeeded"]
        earlier = 0
        for path in records:
            if path.parent.name not in out:
                raise StepFailed(f"`make runs` does not list {path.parent.name}")
            if path in ok:
                self.check_run(path, None)
                continue
            # A run cut short before SMOKE_FROM took over: a later run of the same target must have succeeded.
            target = read_json(path).get("target")
            if not any(q.parent.name > path.parent.name and read_json(q).get("target") == target for q in ok):
                self.check_run(path, None)
            earlier += 1
        targets = sorted(read_json(p).get("target") for p in ok)
        want = sorted(["cache", "cache", "train", "resume", "generate"])
        if "validate" in targets and self.has_target("validate"):  # `make validate` records a run where it does
            want = sorted([*want, "validate"])
        if targets != want:
            raise StepFailed(f"run records for {targets}, expected {want}")
        return f"{len(ok)} run records complete and listed" + (
            f" (and {earlier} earlier run(s) that a later one redid)" if earlier else ""
        )

    def rel(self, path: Path) -> str:
        return self.ws.rel(path)

    def redo_training(self) -> list[str]:
        """Before a smoke that starts at `train` in a workspace that trained already (another number of GPUs,
        say): remove what train, resume, generate and report wrote there, so the steps check this run's files."""
        removed = []
        for path in [self.out, self.scratch / "runs" / "report", self.pod_record]:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
            else:
                continue
            removed.append(self.rel(path))
        for rec in self.records():
            if read_json(rec).get("target") in ("train", "resume", "validate", "generate"):
                shutil.rmtree(rec.parent)
                removed.append(self.rel(rec.parent))
        path = self.scratch / "configs" / "v1" / "config.toml"
        doc = tomlkit.parse(path.read_text())
        if doc.get("max_train_steps") != TRAIN_STEPS:  # `resume` raised it
            doc["max_train_steps"] = TRAIN_STEPS
            path.write_text(tomlkit.dumps(doc))
        return removed


STEPS = (
    ("models", Smoke.step_models),
    ("workspace", Smoke.step_workspace),
    ("cache", Smoke.step_cache),
    ("cache again", Smoke.step_cache_again),
    ("caption", Smoke.step_caption),
    ("train", Smoke.step_train),
    ("resume", Smoke.step_resume),
    ("validate", Smoke.step_validate),
    ("generate", Smoke.step_generate),
    ("report", Smoke.step_report),
    ("runs", Smoke.step_runs),
)


def safetensors_header(path: Path) -> dict[str, dict]:
    """{key: {"dtype", "shape", ...}} of a safetensors file, read from its header (no torch)."""
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100_000_000:
                raise ValueError("header too large")
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error) as e:
        raise StepFailed(f"{path}: not a safetensors file ({e.__class__.__name__}: {e})") from None
    header.pop("__metadata__", None)
    return header


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise StepFailed(f"{path}: cannot be read ({e.__class__.__name__})") from None


def _mmss(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s"


def first_step(value: str, passed: list[str]) -> int:
    """SMOKE_FROM (a step's name or number) as a step number; the steps before it must have passed in the last
    smoke here, whose workspace and models are still in place (a GPU machine's command limit can cut a smoke)."""
    if not value:
        return 1
    names = [n for n, _ in STEPS]
    if value.isdigit() and 1 <= int(value) <= len(STEPS):
        start = int(value)
    elif value in names:
        start = names.index(value) + 1
    else:
        raise WorkspaceError(
            f"SMOKE_FROM={value}: not a step of the smoke; give one of {', '.join(names)} (or 1-{len(STEPS)})"
        )
    missing = [n for n in names[: start - 1] if n not in passed]
    if missing:
        raise WorkspaceError(
            f"SMOKE_FROM={value}: the last smoke here did not pass {', '.join(missing)}; run `make smoke` "
            f"from the start (or from the first of those)"
        )
    return start


def smoke(ws: Workspace, from_: str = "") -> None:
    s = Smoke(ws=ws, base=ws.root / ".cache" / "smoke")
    record = s.base / "passed.json"
    passed = json.loads(record.read_text()) if record.is_file() else []
    start = first_step(from_.strip(), passed)
    if start == 1:
        passed = []
        if s.logs.exists():
            shutil.rmtree(s.logs)
    total = len(STEPS)
    t0 = time.monotonic()
    print(f"smoke: {total} steps in a throw-away workspace, {ws.rel(s.scratch)}; logs in {ws.rel(s.logs)}", flush=True)
    s.write_pod_standin()
    train = [n for n, _ in STEPS].index("train") + 1
    if 1 < start <= train:
        removed = s.redo_training()
        if removed:
            print(f"smoke: from {STEPS[start - 1][0]}: removed what training wrote before: {len(removed)} path(s)")
    for i, (name, func) in enumerate(STEPS, 1):
        if i < start:
            print(f"[{i}/{total}] {name} – passed in the last smoke (SMOKE_FROM={from_})", flush=True)
            continue
        passed = [n for n in passed if n != name]
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(passed))
        log = s.log_of(i, name)
        t = time.monotonic()
        try:
            what = func(s, log)
        except StepFailed as e:
            print(f"[{i}/{total}] {name} ✗ {_mmss(time.monotonic() - t)}: {e.message}", flush=True)
            if log.exists():
                tail = log.read_text(errors="replace").splitlines()[-15:]
                print("\n".join(f"    {line}" for line in tail), flush=True)
            raise WorkspaceError(
                f"smoke: step {i}/{total} ({name}) failed: {e.message}; log: {ws.rel(log)}", e.code
            ) from None
        print(f"[{i}/{total}] {name} ✓ {_mmss(time.monotonic() - t)}: {what}", flush=True)
        passed.append(name)
        record.write_text(json.dumps(passed))
    since = f" (steps {start}-{total} in this run)" if start > 1 else ""
    print(f"smoke: {total}/{total} steps passed in {(time.monotonic() - t0) / 60:.1f} min{since}", flush=True)


def load_caches(dataset_config: str) -> str:
    """Read a dataset's caches through musubi-tuner's own dataset code, as training does (one batch each)."""
    import argparse
    from multiprocessing import Value

    from musubi_tuner.dataset import config_utils

    user = config_utils.load_user_config(dataset_config)
    blueprint = config_utils.BlueprintGenerator(config_utils.ConfigSanitizer()).generate(
        user, argparse.Namespace(debug_dataset=False), architecture="fp"
    )
    group = config_utils.generate_dataset_group_by_blueprint(
        blueprint.dataset_group, training=True, shared_epoch=Value("i", 0)
    )
    parts = []
    for dataset in group.datasets:
        dataset.prepare_for_training()
        batch = dataset[0]
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in batch.items() if hasattr(v, "shape"))
        parts.append(f"{len(dataset)} batch(es), first: {shapes}")
    return "loaded through musubi-tuner's dataset: " + "; ".join(parts)


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:2] == ["load-caches"] and len(sys.argv) == 3:
        print(load_caches(sys.argv[2]), flush=True)
        sys.exit(0)
    sys.exit("usage: python -m musubi_workspace.smoke.loop load-caches <dataset.toml>")
