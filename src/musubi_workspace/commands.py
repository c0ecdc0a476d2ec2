"""Pure functions from a version's Config to the exact command lines the workspace runs. No I/O.

Every argument comes from config.toml (and its `[workspace]` table): the caching scripts and the generator read
no config file, so the settings they share with training are copied from the same values here.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from musubi_workspace import launch
from musubi_workspace.config import Config
from musubi_workspace.errors import WorkspaceError

TRAIN_MODULE = "musubi_tuner.fpack_train_network"
CACHE_LATENTS_MODULE = "musubi_tuner.fpack_cache_latents"
CACHE_TE_MODULE = "musubi_tuner.fpack_cache_text_encoder_outputs"
GENERATE_MODULE = "musubi_tuner.fpack_generate_video"

# Options of config.toml that the latent cache script takes too (flags are passed when true).
LATENT_VALUE_OPTIONS = ("vae_chunk_size", "vae_spatial_tile_sample_min_size")
LATENT_FLAG_OPTIONS = ("vae_tiling", "f1", "one_frame")
# Options of config.toml that the generator takes too.
GENERATE_VALUE_OPTIONS = ("vae_chunk_size", "vae_spatial_tile_sample_min_size", "latent_window_size")
GENERATE_FLAG_OPTIONS = ("vae_tiling", "f1", "fp8_llm")


@dataclass(frozen=True)
class Command:
    """One program run: its argv and what it is, for the dry run and the run record. `env`: variables this
    command adds to the workspace's environment (the compile fixes), shown in front of it as `VAR=value`."""

    label: str
    argv: list[str]
    env: dict = field(default_factory=dict, hash=False, compare=False)

    def shell(self) -> str:
        prefix = [f"{k}={shlex.quote(v)}" for k, v in self.env.items()]
        return " ".join([*prefix, shlex.join(self.argv)])


def _p(cfg: Config, key: str, purpose: str) -> str:
    """A path option as passed to musubi-tuner: the value as written (relative to the root, where it runs)."""
    value = cfg.get(key)
    if value in (None, ""):
        raise WorkspaceError(f'{cfg.shown}: `{key}` is not set; {purpose} needs it: add `{key} = "..."`')
    if not isinstance(value, str):
        raise WorkspaceError(f"{cfg.where(key)}: `{key}` must be a path string, got {value!r}")
    return value


def _flag(cfg: Config, key: str) -> bool:
    return cfg.get(key) is True


def _value_args(cfg: Config, keys) -> list[str]:
    out: list[str] = []
    for key in keys:
        value = cfg.get(key)
        if value is not None and not isinstance(value, bool):
            out += [f"--{key}", str(value)]
    return out


def _flag_args(cfg: Config, keys) -> list[str]:
    return [f"--{key}" for key in keys if _flag(cfg, key)]


def cache_commands(cfg: Config, skip_existing: bool = False, dataset: str | None = None) -> list[Command]:
    """`fpack_cache_latents` then `fpack_cache_text_encoder_outputs`, both on the version's dataset.toml (or on
    `dataset`, as written: the validation set's, cached with the version's models and options)."""
    dataset = dataset or _p(cfg, "dataset_config", "make cache")
    s = cfg.settings
    common: list[str] = []
    if s.cache_batch_size:
        common += ["--batch_size", str(s.cache_batch_size)]
    if s.cache_num_workers:
        common += ["--num_workers", str(s.cache_num_workers)]
    if skip_existing:
        common += ["--skip_existing"]

    latents = ["python", "-m", CACHE_LATENTS_MODULE, "--dataset_config", dataset]
    latents += ["--vae", _p(cfg, "vae", "make cache"), "--image_encoder", _p(cfg, "image_encoder", "make cache")]
    latents += _value_args(cfg, LATENT_VALUE_OPTIONS) + _flag_args(cfg, LATENT_FLAG_OPTIONS)
    if _flag(cfg, "one_frame"):
        latents += ["--one_frame_no_2x"] if s.one_frame_no_2x else []
        latents += ["--one_frame_no_4x"] if s.one_frame_no_4x else []
    latents += common

    te = ["python", "-m", CACHE_TE_MODULE, "--dataset_config", dataset]
    te += [
        "--text_encoder1",
        _p(cfg, "text_encoder1", "make cache"),
        "--text_encoder2",
        _p(cfg, "text_encoder2", "make cache"),
    ]
    te += ["--fp8_llm"] if _flag(cfg, "fp8_llm") else []
    te += common
    of = " of the validation set" if dataset != cfg.get("dataset_config") else ""
    return [Command(f"cache latents{of}", latents), Command(f"cache text encoder outputs{of}", te)]


def process_count(cfg: Config, visible_gpus: int) -> int:
    n = cfg.settings.num_processes
    if n == "auto":
        return max(1, visible_gpus)
    return int(n)


# Per-machine values of a several-machine run, read from each machine's environment and passed to
# `accelerate launch` under the names of its own options (accelerate itself reads none of these variables).
MACHINE_ENV = (
    ("MACHINE_RANK", "--machine_rank"),
    ("MAIN_PROCESS_IP", "--main_process_ip"),
    ("MAIN_PROCESS_PORT", "--main_process_port"),
)


def validation_every(cfg: Config) -> int:
    """Steps between validation passes: `[workspace] validation_every_n_steps`, else save_every_n_steps, else 0
    (only step 0, the saves and the end)."""
    every = cfg.settings.validation_every_n_steps
    return _save_every(cfg) if every is None else every


def _save_every(cfg: Config) -> int:
    save = cfg.get("save_every_n_steps")
    return save if isinstance(save, int) and not isinstance(save, bool) and save > 0 else 0


def validation_passes(cfg: Config, steps: int) -> int:
    """Validation passes of a run of `steps` steps, as validation/trainer.py scores them: step 0, then every
    validation_every_n_steps, each save and the last step, a step that is several of these scored once."""
    every, save = validation_every(cfg), _save_every(cfg)
    scored = (
        {steps}
        | set(range(every, steps + 1, every) if every else ())
        | set(range(save, steps + 1, save) if save else ())
    )
    return 1 + len(scored - {0})


def validation_env(cfg: Config, set_hash: str | None) -> dict:
    """The launcher's validation variables (launch.py) for `[workspace] validation`; {} without it."""
    s = cfg.settings
    if not s.validation:
        return {}
    env = {
        launch.VALIDATION_ENV: s.validation,
        launch.VALIDATION_EVERY_ENV: str(validation_every(cfg)),
        launch.VALIDATION_TIMESTEPS_ENV: ",".join(repr(float(t)) for t in s.validation_timesteps),
    }
    if set_hash:
        env[launch.VALIDATION_SET_ENV] = set_hash
    return env


def train_command(
    cfg: Config,
    visible_gpus: int,
    extra: list[str] | None = None,
    env: dict | None = None,
    module: str = TRAIN_MODULE,
    compiled: bool | None = None,
    validation_set: str | None = None,
) -> Command:
    """`accelerate launch ... -m musubi_tuner.fpack_train_network --config_file <config.toml> [extra]`.

    `extra` holds what must override the file for one run (resume's remaining steps); it goes last, since
    musubi-tuner gives the command line precedence over the file. `env` supplies the per-machine values of a
    several-machine run (MACHINE_ENV). `module` is the trainer's module, or one that wraps it with the same
    arguments (`make tune`'s probe). A compiled run (`compiled`, default: the config's `compile`) carries the
    compile environment (compile_env.py), less what `env` already sets. `[workspace] blocks_without_checkpointing`
    and `split_attn_one_graph` run the trainer through the workspace's thin launcher (launch.py), their values in
    its environment variables; so does `[workspace] validation` (`validation_env`, `validation_set` the set's
    content hash), except for another `module` (the probe of `make tune` measures training steps only).
    """
    from musubi_workspace.compile_env import compile_run_env

    unchecked = cfg.settings.blocks_without_checkpointing
    one_graph = cfg.settings.split_attn_one_graph
    validating = validation_env(cfg, validation_set) if module == TRAIN_MODULE else {}
    if (unchecked or one_graph or validating) and module == TRAIN_MODULE:
        module = launch.MODULE

    mixed = cfg.get("mixed_precision") or "bf16"
    argv = ["accelerate", "launch", "--num_cpu_threads_per_process", "1", "--mixed_precision", str(mixed)]
    argv += ["--dynamo_backend", "no"]
    accel_cfg = cfg.settings.accelerate_config
    if accel_cfg:
        # Several machines: accelerate's own config file holds machine count and rank layout; the per-machine
        # values (rank, main address, port) come from each machine's environment (see README).
        argv += ["--config_file", accel_cfg]
        if cfg.settings.num_processes != "auto":
            argv += ["--num_processes", str(cfg.settings.num_processes)]
        for var, option in MACHINE_ENV:
            if (env or {}).get(var):
                argv += [option, str(env[var])]
    else:
        n = process_count(cfg, visible_gpus)
        argv += ["--num_processes", str(n), "--num_machines", "1"]
        if n > 1:
            argv += ["--multi_gpu"]
            # Two several-GPU runs on one machine (`make bench GPUS_PER_RUN=2` on 4 GPUs) need a port each.
            if (env or {}).get("MAIN_PROCESS_PORT"):
                argv += ["--main_process_port", str(env["MAIN_PROCESS_PORT"])]
    argv += ["-m", module, "--config_file", cfg.ws.rel(cfg.path)]
    argv += list(extra or [])
    compiled = cfg.get("compile") is True if compiled is None else compiled
    run_env = compile_run_env(compiled, env if env is not None else {})
    if unchecked:
        run_env[launch.ENV] = str(unchecked)
    if one_graph:
        run_env[launch.ONE_GRAPH_ENV] = "1"
    run_env.update(validating)
    return Command("train", argv, env=run_env)


def lora_files(cfg: Config) -> list[Path]:
    """LoRA files the version saved, oldest first (by modification time)."""
    out_dir = cfg.path_of("output_dir")
    name = cfg.get("output_name")
    if out_dir is None or not name or not out_dir.is_dir():
        return []
    found = [p for p in out_dir.glob(f"{name}*.safetensors") if p.is_file()]
    return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))


def newest_lora(cfg: Config) -> Path | None:
    found = lora_files(cfg)
    return found[-1] if found else None


def generate_folder(cfg: Config, lora: str | None, multiplier: float) -> str:
    """Where `make generate` writes: <output_dir>/generate/<lora name>_x<multiplier> (or base_model)."""
    out_dir = cfg.get("output_dir") or "outputs"
    stem = Path(lora).stem if lora else "base_model"
    return str(Path(out_dir) / "generate" / f"{stem}_x{multiplier:g}")


def generate_command(cfg: Config, lora: str | None, multiplier: float, folder: str | None = None) -> Command:
    """`fpack_generate_video --from_file <prompts.txt>` with the version's models and the chosen LoRA, into
    `folder` (default: generate_folder of the LoRA)."""
    s = cfg.settings
    argv = ["python", "-m", GENERATE_MODULE]
    argv += ["--dit", _p(cfg, "dit", "make generate"), "--vae", _p(cfg, "vae", "make generate")]
    argv += ["--text_encoder1", _p(cfg, "text_encoder1", "make generate")]
    argv += ["--text_encoder2", _p(cfg, "text_encoder2", "make generate")]
    argv += ["--image_encoder", _p(cfg, "image_encoder", "make generate")]
    argv += ["--attn_mode", s.generate_attn_mode]
    argv += _value_args(cfg, GENERATE_VALUE_OPTIONS) + _flag_args(cfg, GENERATE_FLAG_OPTIONS)
    if s.generate_fp8:
        argv += ["--fp8", "--fp8_scaled"]
    if cfg.get("blocks_to_swap"):
        argv += ["--blocks_to_swap", str(cfg.get("blocks_to_swap"))]
    if cfg.get("one_frame") is True:
        # One-frame inference writes a one-frame .mp4 by default; an image (and its latent) is what the user wants,
        # as musubi-tuner's one-frame guide runs it (a smoke on the GPU found no PNG).
        argv += ["--output_type", "latent_images"]
    argv += ["--from_file", _p(cfg, "sample_prompts", "make generate")]
    argv += ["--save_path", folder or generate_folder(cfg, lora, multiplier)]
    if lora:
        argv += ["--lora_weight", lora, "--lora_multiplier", f"{multiplier:g}"]
    return Command("generate", argv)
