"""`make validate`: score saved LoRAs on the validation set, offline, as training scores them.

    [accelerate launch ...] -m musubi_workspace.validation.offline --lora A.safetensors [--lora B.safetensors ...] \
        [--validation validation/dataset.toml] [--timesteps 0.1,0.3,0.5,0.7,0.9] [--set HASH] \
        <the trainer's arguments: --config_file configs/vN/config.toml ...>

(`--validation_timesteps`, `--validation_set` are the same options; `--lora` takes one file or more, and again.)
The validation options default to the launcher's variables (`WS_VALIDATION`, `WS_VALIDATION_TIMESTEPS`,
`WS_VALIDATION_SET`); everything else is parsed by musubi-tuner's own FramePack training parser and
`read_config_from_file`, so the same `--config_file` that trained a version scores it. The DiT is loaded by the
trainer's `load_transformer` on the GPU (no block swap: a forward-only pass), each LoRA is built by
`networks.lora_framepack.create_arch_network_from_weights` and applied as training applies it (a LoRA scored
before is kept at multiplier 0, which adds exactly nothing). The pass is `score.score` on one process.

Each LoRA gets `<stem>.validation.json` beside it, `by = "make validate"`; the series (the training's record) is
left as it is. The ratio is to the base model's number on the same set: the step 0 of the run's series
(`<folder>/<run>.validation.jsonl`, the run read from the file name: `x-step00000500` -> `x`) where it has one,
else one more pass without a LoRA.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from musubi_workspace.validation import records
from musubi_workspace.validation.trainer import ENV, SET_ENV, TIMESTEPS_ENV, Settings

RUN_SUFFIX = re.compile(r"-(step)?\d+$")
ATTN = (
    ("sdpa", "torch"),
    ("flash_attn", "flash"),
    ("sage_attn", "sageattn"),
    ("xformers", "xformers"),
    ("flash3", "flash3"),
)


def own_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="musubi_workspace.validation.offline", add_help=False)
    p.add_argument("--lora", nargs="+", action="extend", required=True, help="the LoRA files to score")
    p.add_argument("--validation", default=None, help=f"the validation dataset.toml (default ${ENV})")
    p.add_argument(
        "--timesteps", "--validation_timesteps", dest="validation_timesteps", default=None,
        help=f"comma list (default ${TIMESTEPS_ENV} or 0.1..0.9)",
    )  # fmt: skip
    p.add_argument(
        "--set", "--validation_set", dest="validation_set", default=None,
        help=f"the set's hash (default ${SET_ENV}, else computed)",
    )  # fmt: skip
    return p


def settings(ns: argparse.Namespace, env: dict) -> Settings:
    env = dict(env)
    for value, key in ((ns.validation, ENV), (ns.validation_timesteps, TIMESTEPS_ENV), (ns.validation_set, SET_ENV)):
        if value is not None:
            env[key] = value
    s = Settings(env)
    if not s.path:
        raise SystemExit(f"musubi-workspace: no validation set: pass --validation or set ${ENV}")
    return s


def run_name(lora: Path) -> str:
    """The run's output name of a LoRA file: x-step00000500.safetensors -> x, x-000002 -> x, x -> x."""
    return RUN_SUFFIX.sub("", lora.stem)


STEP_IN_NAME = re.compile(r"-step(\d+)$")


def step_of(lora: Path, args=None) -> int:
    """The step the LoRA was saved at: `-step00000600` in its name, else musubi-tuner's `ss_steps` metadata, else
    the config's max_train_steps for `<output_name>.safetensors`; -1 where none says. A `-resume<S>` run's steps
    count from its own 0, as its training records them."""
    from safetensors import safe_open

    m = STEP_IN_NAME.search(lora.stem)
    if m:
        return int(m.group(1))
    with safe_open(str(lora), framework="pt") as f:
        value = (f.metadata() or {}).get("ss_steps", "")
    if value.isdigit():
        return int(value)
    if args is not None and lora.stem == getattr(args, "output_name", None) and getattr(args, "max_train_steps", None):
        return int(args.max_train_steps)
    return -1


def trainer_args(rest: list[str]):
    from musubi_tuner import fpack_train_network as fp
    from musubi_tuner.training.parser_common import read_config_from_file, setup_parser_common

    parser = fp.framepack_setup_parser(setup_parser_common())
    saved = sys.argv
    sys.argv = [fp.__file__, *rest]  # read_config_from_file parses sys.argv again, over the file's values
    try:
        args = read_config_from_file(parser.parse_args(rest), parser)
    finally:
        sys.argv = saved
    args.vae_dtype, args.dit_dtype = "float16", "bfloat16"  # as fpack_train_network.main fixes them
    return args


def main(argv: list[str] | None = None, env: dict | None = None) -> int:
    import os

    ns, rest = own_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    s = settings(ns, os.environ if env is None else env)
    loras = [Path(p) for p in ns.lora]
    missing = [str(p) for p in loras if not p.is_file()]
    if missing:
        raise SystemExit(f"musubi-workspace: no such LoRA file: {', '.join(missing)}")

    from musubi_tuner import fpack_train_network as fp
    from musubi_tuner.networks import lora_framepack
    from musubi_tuner.training.accelerator_setup import prepare_accelerator

    from musubi_workspace.validation.score import ValidationSet, score

    args = trainer_args(rest)
    trainer = fp.FramePackNetworkTrainer()
    trainer.handle_model_specific_args(args)
    accelerator = prepare_accelerator(args)
    attn = next((mode for flag, mode in ATTN if getattr(args, flag, False)), "torch")
    dit = trainer.load_transformer(accelerator, args, args.dit, attn, args.split_attn, accelerator.device, None)
    dit.eval()
    dit.requires_grad_(False)
    vset = ValidationSet.build(args, trainer.architecture, s.path, s.set_hash)

    def one(network, step: int, lora: str | None, base_loss: float | None) -> records.Record:
        return score(
            trainer, args, accelerator, dit, network, vset, s.timesteps, step, distributed=False,
            base_loss=base_loss, by=records.BY_VALIDATE, lora=lora,
        )  # fmt: skip

    bases: dict[tuple[Path, str], float] = {}
    previous = None
    for lora in loras:
        folder, name = lora.parent, run_name(lora)
        if (folder, name) not in bases:
            base = records.base_record(folder, name, vset.hash)
            if base is None:  # a run from before validation, or on another set: one pass of the base model
                base = one(previous, 0, None, None)
            bases[(folder, name)] = base.loss
        from safetensors.torch import load_file

        network = lora_framepack.create_arch_network_from_weights(1.0, load_file(str(lora)), unet=dit)
        network.apply_to(None, dit, apply_text_encoder=False, apply_unet=True)
        network.load_weights(str(lora))
        network.to(accelerator.device)
        r = one(network, step_of(lora, args), lora.name, bases[(folder, name)])
        network.set_multiplier(0.0)  # stays applied, adding nothing, under the next LoRA
        previous = network
        if not accelerator.is_main_process:  # under accelerate launch with more processes: one writer
            continue
        records.write_beside(lora, r)
        print(
            f"musubi-workspace: {lora}: validation loss {r.loss:.6f} ({r.ratio:.4f} of the base model) at step "
            f"{r.step}, set {r.set}, {r.seconds:.1f} s -> {records.json_path(lora)}",
            flush=True,
        )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
