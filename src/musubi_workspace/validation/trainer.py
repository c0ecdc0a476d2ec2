"""The trainer with a validation loss: musubi-tuner's FramePack trainer, four of its hooks overridden.

`install(fpack_train_network)` (called by `musubi_workspace.launch` when `$WS_VALIDATION` is set) replaces
`fpack_train_network.FramePackNetworkTrainer` by a subclass before `main()` looks the class up. The subclass:

- `on_train_start` (every process, models prepared): builds the set and scores the base model (step 0; the
  LoRA's multiplier is 0 for it, so a resumed run measures the base model too);
- `on_post_optimizer_step` (every process, with the step before musubi-tuner increments it): scores step s
  when s is a multiple of `$WS_VALIDATION_EVERY`, a step musubi-tuner saves at (`save_every_n_steps`) or the
  last step. Every process reaches the same steps, so the one collective of the pass pairs up;
- `on_post_save` (the main process only, after each LoRA is written): the JSON beside it, with the number of
  its step (scored above; a save at a step not scored there, such as an epoch's end, is scored here by the main
  process alone, with no collective); the series gets one line per step;
- `extra_step_logs` (the main process, before each tracker log): `loss/validation`, one key per timestep and
  the ratio to step 0 at the step they belong to (step 0's are logged at step 0 on the first call).

The final save runs after `accelerator.end_training()`: its number, scored at the last step, goes to the JSON
and the series only. musubi-tuner calls these "Internal extension points — no API stability guarantees":
`MUSUBI_API` below lists everything of musubi-tuner this package uses, and tests/musubi/test_validation_real.py
checks it against the pinned musubi-tuner, so `make lock MUSUBI_REV=...` then `make test-musubi` says what moved.
"""

from __future__ import annotations

import os
from dataclasses import replace

from musubi_workspace.validation import records

ENV = "WS_VALIDATION"
EVERY_ENV = "WS_VALIDATION_EVERY"
TIMESTEPS_ENV = "WS_VALIDATION_TIMESTEPS"
SET_ENV = "WS_VALIDATION_SET"
DEFAULT_TIMESTEPS = (0.1, 0.3, 0.5, 0.7, 0.9)

# Everything of musubi-tuner (30c658c) the validation uses: (name under musubi_tuner, its parameters), or
# (name, None) for a class, or (name, "attribute") for an attribute of the object named before the last dot.
MUSUBI_API = (
    ("fpack_train_network.main", ()),
    ("fpack_train_network.FramePackNetworkTrainer", None),
    ("fpack_train_network.framepack_setup_parser", ("parser",)),
    (
        "fpack_train_network.FramePackNetworkTrainer.on_train_start",
        ("self", "args", "accelerator", "network", "transformer", "optimizer"),
    ),
    (
        "fpack_train_network.FramePackNetworkTrainer.on_post_optimizer_step",
        ("self", "args", "accelerator", "network", "transformer", "sync_gradients", "global_step"),
    ),
    (
        "fpack_train_network.FramePackNetworkTrainer.on_post_save",
        (
            "self",
            "args",
            "accelerator",
            "network",
            "transformer",
            "ckpt_name",
            "save_dtype",
            "metadata",
            "force_sync_upload",
        ),
    ),
    ("fpack_train_network.FramePackNetworkTrainer.extra_step_logs", ("self", "args", "logs")),
    (
        "fpack_train_network.FramePackNetworkTrainer.call_dit",
        (
            "self",
            "args",
            "accelerator",
            "transformer",
            "latents",
            "batch",
            "noise",
            "noisy_model_input",
            "timesteps",
            "network_dtype",
            "kwargs",
        ),
    ),
    ("fpack_train_network.FramePackNetworkTrainer.scale_shift_latents", ("self", "latents")),
    (
        "fpack_train_network.FramePackNetworkTrainer.load_transformer",
        ("self", "accelerator", "args", "dit_path", "attn_mode", "split_attn", "loading_device", "dit_weight_dtype"),
    ),
    ("fpack_train_network.FramePackNetworkTrainer.handle_model_specific_args", ("self", "args")),
    ("fpack_train_network.FramePackNetworkTrainer.architecture", "attribute"),
    ("training.parser_common.setup_parser_common", ()),
    ("training.parser_common.read_config_from_file", ("args", "parser")),
    ("training.accelerator_setup.prepare_accelerator", ("args",)),
    ("dataset.config_utils.load_user_config", ("file",)),
    ("dataset.config_utils.ConfigSanitizer", None),
    (
        "dataset.config_utils.BlueprintGenerator.generate",
        ("self", "user_config", "argparse_namespace", "runtime_params"),
    ),
    (
        "dataset.config_utils.generate_dataset_group_by_blueprint",
        ("dataset_group_blueprint", "training", "num_timestep_buckets", "shared_epoch"),
    ),
    (
        "dataset.bucket.BucketBatchManager.__init__",
        ("self", "bucketed_item_info", "batch_size", "num_timestep_buckets"),
    ),
    ("dataset.bucket.BucketBatchManager.__getitem__", ("self", "idx")),
    ("dataset.bucket.BucketBatchManager.buckets", "attribute"),
    ("dataset.image_video_dataset.ImageDataset.prepare_for_training", ("self", "num_timestep_buckets")),
    ("dataset.image_video_dataset.ImageDataset.batch_manager", "attribute"),
    ("dataset.image_video_dataset.ImageDataset.batch_size", "attribute"),
    ("dataset.image_video_dataset.ItemInfo.item_key", "attribute"),
    ("dataset.image_video_dataset.ItemInfo.latent_cache_path", "attribute"),
    ("dataset.image_video_dataset.ItemInfo.text_encoder_output_cache_path", "attribute"),
    ("frame_pack.hunyuan_video_packed.HunyuanVideoTransformer3DModelPacked.switch_block_swap_for_inference", ("self",)),
    ("frame_pack.hunyuan_video_packed.HunyuanVideoTransformer3DModelPacked.switch_block_swap_for_training", ("self",)),
    ("networks.lora.LoRANetwork.set_multiplier", ("self", "multiplier")),
    ("networks.lora.LoRANetwork.multiplier", "attribute"),
    ("networks.lora.LoRANetwork.apply_to", ("self", "text_encoders", "unet", "apply_text_encoder", "apply_unet")),
    (
        "networks.lora_framepack.create_arch_network_from_weights",
        ("multiplier", "weights_sd", "text_encoders", "unet", "for_inference", "kwargs"),
    ),
    ("networks.lora.LoRANetwork.load_weights", ("self", "file")),
)
# The training options read (dests of musubi-tuner's parser).
MUSUBI_ARGS = ("output_dir", "output_name", "save_every_n_steps", "max_train_steps", "guidance_scale", "blocks_to_swap")


class Settings:
    """The launcher's environment, read once: the set's path, the cadence, the timesteps, the set's hash."""

    def __init__(self, env: dict | None = None):
        env = os.environ if env is None else env
        self.path = env.get(ENV, "").strip()
        every = env.get(EVERY_ENV, "").strip()
        if every and not every.isdigit():
            raise SystemExit(f"musubi-workspace: {EVERY_ENV}={every!r} is not a whole number >= 0")
        self.every = int(every) if every else None  # None: the save cadence
        raw = env.get(TIMESTEPS_ENV, "").strip()
        try:
            self.timesteps = [float(t) for t in raw.split(",")] if raw else list(DEFAULT_TIMESTEPS)
        except ValueError:
            self.timesteps = []
        if not self.timesteps or not all(0 < t < 1 for t in self.timesteps):
            raise SystemExit(
                f"musubi-workspace: {TIMESTEPS_ENV}={raw!r} is not a comma list of numbers between 0 and 1 "
                '(e.g. "0.1,0.3,0.5,0.7,0.9")'
            )
        self.set_hash = env.get(SET_ENV, "").strip() or None


class Validation:
    """The state of one training run's validation: the set, the numbers so far, what is still to log."""

    def __init__(self, trainer, args, accelerator, settings: Settings):
        from musubi_workspace.validation.score import ValidationSet

        self.trainer, self.args, self.accelerator, self.settings = trainer, args, accelerator, settings
        self.set = ValidationSet.build(args, trainer.architecture, settings.path, settings.set_hash)
        every = settings.every if settings.every is not None else (args.save_every_n_steps or 0)
        self.every = int(every)
        self.step = 0
        self.base: records.Record | None = None
        self.scored: dict[int, records.Record] = {}
        self.in_series: set[int] = set()
        self.to_log: list[records.Record] = []
        self.logged_base = False

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def saves_at(self, step: int) -> bool:
        n = self.args.save_every_n_steps
        return bool(n) and step % n == 0

    def due(self, step: int) -> bool:
        return (self.every > 0 and step % self.every == 0) or self.saves_at(step) or step == self.args.max_train_steps

    def run(self, network, transformer, step: int, distributed: bool, base: bool = False) -> records.Record:
        from musubi_workspace.validation.score import score

        r = score(
            self.trainer,
            self.args,
            self.accelerator,
            transformer,
            network,
            self.set,
            self.settings.timesteps,
            step,
            distributed=distributed,
            lora_multiplier=0.0 if base else None,
            base_loss=None if base else (self.base.loss if self.base else None),
        )
        if base:
            r.ratio = 1.0
        self.accelerator.print(
            f"musubi-workspace: validation loss at step {step}: {r.loss:.6f}"
            + (f" ({r.ratio:.4f} of step 0)" if r.ratio is not None and not base else " (the base model)")
            + f", {r.items} items x {len(r.timesteps)} timesteps, {r.seconds:.1f} s"
        )
        self.scored[step] = r
        return r

    def series(self, r: records.Record) -> None:
        if self.main and r.step not in self.in_series:
            records.append_series(self.args.output_dir, self.args.output_name, r)
            self.in_series.add(r.step)

    # The hooks' bodies.
    def start(self, network, transformer) -> None:
        self.base = self.run(network, transformer, 0, distributed=True, base=True)
        self.series(self.base)

    def after_step(self, network, transformer, sync_gradients: bool, global_step: int) -> None:
        if not sync_gradients:
            return
        self.step = global_step + 1  # musubi-tuner increments it after this hook
        if not self.due(self.step):
            return
        r = self.run(network, transformer, self.step, distributed=True)
        self.to_log.append(r)
        # A step that is saved gets its series line with the LoRA's name, from on_post_save.
        if not self.saves_at(self.step) and self.step != self.args.max_train_steps:
            self.series(r)

    def saved(self, network, transformer, ckpt_name: str) -> None:
        r = self.scored.get(self.step) or self.run(network, transformer, self.step, distributed=False)
        r = replace(r, lora=ckpt_name)
        records.write_beside(os.path.join(self.args.output_dir, ckpt_name), r)
        self.series(r)

    def logs(self) -> dict:
        out = {}
        if not self.logged_base and self.base is not None and self.accelerator.trackers:
            self.accelerator.log(self.base.tracker_logs(), step=0)
            self.logged_base = True
        while self.to_log:
            out.update(self.to_log.pop(0).tracker_logs())
        return out


def trainer_class(base: type) -> type:
    """`base` (musubi-tuner's FramePackNetworkTrainer) with the validation in its hooks."""

    class ValidatingTrainer(base):
        workspace_validation: Validation | None = None

        def on_train_start(self, args, accelerator, network, transformer, optimizer):
            super().on_train_start(args, accelerator, network, transformer, optimizer)
            self.workspace_validation = Validation(self, args, accelerator, Settings())
            self.workspace_validation.start(network, transformer)

        def on_post_optimizer_step(self, args, accelerator, network, transformer, sync_gradients, global_step):
            super().on_post_optimizer_step(args, accelerator, network, transformer, sync_gradients, global_step)
            self.workspace_validation.after_step(network, transformer, sync_gradients, global_step)

        def on_post_save(
            self, args, accelerator, network, transformer, ckpt_name, save_dtype, metadata, force_sync_upload
        ):
            super().on_post_save(
                args, accelerator, network, transformer, ckpt_name, save_dtype, metadata, force_sync_upload
            )
            self.workspace_validation.saved(network, transformer, ckpt_name)

        def extra_step_logs(self, args, logs):
            out = dict(super().extra_step_logs(args, logs))
            if self.workspace_validation is not None:
                out.update(self.workspace_validation.logs())
            return out

    ValidatingTrainer.__name__ = ValidatingTrainer.__qualname__ = f"Validating{base.__name__}"
    ValidatingTrainer.__module__ = __name__
    return ValidatingTrainer


def install(module) -> type:
    """Replace `module.FramePackNetworkTrainer` (fpack_train_network) by the validating subclass; the new class.
    The environment is checked first, so a wrong value stops before the model loads."""
    settings = Settings()
    if not settings.path:
        raise SystemExit(f"musubi-workspace: {ENV} is empty: it names the validation dataset.toml")
    current = module.FramePackNetworkTrainer
    if getattr(current, "workspace_validation", "absent") != "absent":  # installed already
        return current
    module.FramePackNetworkTrainer = trainer_class(current)
    return module.FramePackNetworkTrainer
