"""Check 7: the machine and the credentials a run needs, and secrets where they must not be.

A run that cannot write its checkpoints, or whose first wandb log or Hugging Face upload fails, dies hours in; a
token pasted into a config file ends up in git and in every run's copy of the config.
"""

from __future__ import annotations

import math
import netrc
import os
import re
import shutil
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from musubi_workspace.checks.findings import MACHINE

if TYPE_CHECKING:
    from musubi_workspace.checks.findings import Context

# LoRA parameters per unit of network_dim for networks.lora_framepack: the Linear layers of the 20 double and 40
# single transformer blocks, norms excluded (sum of in + out features over 440 layers, counted from musubi-tuner's
# FramePack model class at the pinned commit).
LORA_PARAMS_PER_DIM = 4_300_800
# Bytes per LoRA weight as saved (save_precision) and optimiser-state bytes per weight in a training state.
SAVE_BYTES = {"fp16": 2, "bf16": 2, "float": 4, "fp32": 4, None: 4}
OPTIMIZER_STATE_BYTES = {"adamw8bit": 2, "pagedadamw8bit": 2, "adafactor": 1, "sgdnesterov": 4, "sgd": 0}
DEFAULT_OPTIMIZER_STATE_BYTES = 8  # AdamW: two fp32 moments
# Samples, logs and accelerate's extras on top of the files counted.
HEADROOM = 10**9

# What tokens look like. Hugging Face and RunPod tokens anywhere in a line (comments too: a pasted token in a
# comment is in git all the same); a wandb key (40 hex digits) as a quoted value, so a commit hash in a comment
# is not taken for one.
TOKENS = (
    ("a Hugging Face token", "HF_TOKEN", re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")),
    ("a RunPod API key", "RUNPOD_API_KEY", re.compile(r"\b(?:rpa|rps)_[A-Za-z0-9]{30,}\b")),
    ("a wandb API key", "WANDB_API_KEY", re.compile(r"""["'][0-9a-f]{40}["']""")),
)
SECRET_OPTIONS = {"wandb_api_key": "WANDB_API_KEY", "huggingface_token": "HF_TOKEN"}


def gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def _int(value, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def estimate_output_bytes(opt: dict, steps_per_epoch: int | None = None) -> tuple[int, str]:
    """Bytes a training run leaves in output_dir at most (LoRA files, states), and how that was counted."""
    params = LORA_PARAMS_PER_DIM * (_int(opt.get("network_dim"), 4) or 4)
    lora = params * SAVE_BYTES.get(opt.get("save_precision"), 4)
    opt_type = str(opt.get("optimizer_type") or "").lower()
    state = params * (4 + OPTIMIZER_STATE_BYTES.get(opt_type, DEFAULT_OPTIMIZER_STATE_BYTES))
    steps = _int(opt.get("max_train_steps"), 1600)
    if _int(opt.get("max_train_epochs")) and steps_per_epoch:
        steps = _int(opt.get("max_train_epochs")) * steps_per_epoch
    saves = 0
    every = _int(opt.get("save_every_n_steps"))
    if every:
        saves += steps // every
    every_epochs = _int(opt.get("save_every_n_epochs"))
    if every_epochs and steps_per_epoch:
        saves += steps // (steps_per_epoch * every_epochs)

    def kept(window_key: str, fallback: str | None = None) -> int:
        window = _int(opt.get(window_key)) or (_int(opt.get(fallback)) if fallback else 0)
        if window and every:
            return min(saves, window // every + 1)
        return saves

    loras = kept("save_last_n_steps") + 1  # + the final file
    states = 0
    if opt.get("save_state") is True:
        states = kept("save_last_n_steps_state", "save_last_n_steps") + 1
    elif opt.get("save_state_on_train_end") is True:
        states = 1
    total = loras * lora + states * state + HEADROOM
    how = f"{loras} LoRA file(s) of {gb(lora)}" + (f" + {states} state(s) of {gb(state)}" if states else "")
    return total, how


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(ctx: Context) -> str | None:
    """Free space where output_dir lies against what the run will write."""
    if not ctx.for_training():
        return f"only needed for training, not for make {ctx.target}"
    cfg = ctx.cfg
    out = cfg.path_of("output_dir") if isinstance(cfg.get("output_dir"), str) else None
    if out is None:
        return "no output_dir (see above)"
    from musubi_workspace.checks.data import scan

    items = len(scan(ctx).items)
    batches = [d.batch_size for d in scan(ctx).datasets] or [1]
    per_epoch = math.ceil(items / max(batches)) if items else None
    need, how = estimate_output_bytes(cfg.options, per_epoch)
    free = shutil.disk_usage(_existing_parent(out)).free
    if free < need:
        ctx.report.error(
            cfg.where("output_dir"),
            f"{gb(free)} free on the disk of {cfg.ws.rel(out)}, the run writes about {gb(need)} ({how}); "
            "free space, or keep fewer files (save_last_n_steps, save_last_n_steps_state)",
            kind=MACHINE,
        )
    return None


def _has_netrc_login(env: dict, url: str) -> bool:
    """Whether the .netrc file wandb reads (NETRC, else ~/.netrc, else ~/_netrc) holds a password for the host of
    `url`, read with the standard library's netrc as wandb reads it; an unreadable file holds none."""
    home = env.get("HOME") or str(Path.home())
    if env.get("NETRC"):
        path = Path(os.path.expanduser(env["NETRC"]))
    else:
        path = next((p for p in (Path(home, ".netrc"), Path(home, "_netrc")) if p.exists()), Path(home, ".netrc"))
    host = urlsplit(url).netloc  # wandb's machine name: host[:port]
    try:
        entry = netrc.netrc(str(path)).authenticators(host) if host else None
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def _has_hf_login(env: dict) -> bool:
    hf_home = env.get("HF_HOME") or os.path.join(env.get("HOME", str(Path.home())), ".cache", "huggingface")
    return Path(env.get("HF_TOKEN_PATH") or Path(hf_home) / "token").is_file()


def check_credentials(ctx: Context) -> str | None:
    """wandb and Hugging Face need their keys before the first log or upload; tokens never in config files."""
    cfg, report = ctx.cfg, ctx.report
    check_tokens_in_files(ctx)
    for key, var in SECRET_OPTIONS.items():
        if cfg.get(key):
            report.error(
                cfg.where(key),
                f"`{key}` puts a secret in the config (it would land in git and in run records); remove it and set {var} in .env",
            )
    if not ctx.for_training():
        return None
    env = ctx.env
    log_with = cfg.get("log_with")
    if (
        log_with in ("wandb", "all")
        and not env.get("WANDB_API_KEY")
        and env.get("WANDB_MODE") not in ("offline", "disabled")
    ):
        if not _has_netrc_login(env, env.get("WANDB_BASE_URL") or "https://api.wandb.ai"):
            report.error(
                cfg.where("log_with"),
                f"log_with = {log_with!r} logs to wandb, but WANDB_API_KEY is not set: the run fails when wandb starts; "
                "add WANDB_API_KEY=... to .env (or set WANDB_MODE=offline)",
                kind=MACHINE,
            )
    if log_with in ("wandb", "all") and find_spec("musubi_tuner") is not None and find_spec("wandb") is None:
        # Where the trainer is installed, so must wandb be: musubi-tuner stops when it prepares the accelerator.
        report.error(
            cfg.where("log_with"),
            f"log_with = {log_with!r} logs to wandb, but the wandb package is not installed beside musubi-tuner: "
            "the run stops before its first step; install it (`uv sync --extra train`, or pip install wandb) "
            'or set log_with = "tensorboard"',
        )
    if cfg.get("huggingface_repo_id"):
        if not (env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN")) and not _has_hf_login(env):
            report.error(
                cfg.where("huggingface_repo_id"),
                "huggingface_repo_id uploads every saved LoRA, but HF_TOKEN is not set: every upload fails; "
                "add HF_TOKEN=... (a write token) to .env",
                kind=MACHINE,
            )
        if not cfg.get("huggingface_path_in_repo"):
            report.error(
                cfg.where("huggingface_repo_id"),
                "huggingface_repo_id without huggingface_path_in_repo: musubi-tuner's single-file uploads fail; "
                'add `huggingface_path_in_repo = "vN"`',
            )
    return None


def check_tokens_in_files(ctx: Context) -> None:
    """A token pasted into config.toml, dataset.toml or prompts.txt."""
    cfg = ctx.cfg
    files = [cfg.path]
    for key in ("dataset_config", "sample_prompts"):
        value = cfg.get(key)
        if isinstance(value, str) and value:
            files.append(cfg.ws.resolve(value))
    for path in dict.fromkeys(files):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            for what, var, shape in TOKENS:
                if shape.search(line):
                    ctx.report.error(
                        f"{cfg.ws.rel(path)}:{n}",
                        f"looks like {what}: secrets do not belong in a config file (git, run records); "
                        f"remove it, put it in .env as {var} and revoke the token if it was committed",
                    )
