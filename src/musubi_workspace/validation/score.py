"""The validation pass: the loss of the current model on the cached validation set at fixed raw timesteps.

`ValidationSet.build` makes the set's dataset group with musubi-tuner's own `config_utils` (the blueprint of the
validation dataset.toml, `prepare_for_training` on its caches) and lists its items, each with its content hash
(`items.item_hashes`; where a cache file matches no listed item, the hash of its cache files stands in).

`score` computes, for each item and each raw timestep t (never passed through timestep_sampling or
discrete_flow_shift): noise from the item's private generator, the noisy input `(1 - t) x + t noise`, the
timestep `t * 1000 + 1` as `get_noisy_model_input_and_timesteps` makes it, then the trainer's own `call_dit`
(FramePack: guidance `guidance_scale * 1000`, target `noise - latents`) and the unweighted MSE in fp32 of that
item. An item's number is its own: the same at any batch size, batch order or process count. Each timestep's
number is the mean over the items; the loss is the mean over the timesteps.

Around the pass, as musubi-tuner's `sample_images` does: no_grad, the unwrapped DiT's block swap switched to
forward-only and back; the LoRA and the DiT in eval mode (no dropout) and each module's mode restored after; the
global random states (torch, CUDA, Python's random, numpy) saved and restored, so training draws exactly what it
would have drawn without the pass. Several processes: process r scores the items with index % world == r, one
`accelerator.reduce` (sum) of the per-item table joins them, the same single collective on every process.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import time
from dataclasses import dataclass, field
from multiprocessing import Value
from pathlib import Path

import numpy as np
import torch

from musubi_workspace.validation import items as vitems
from musubi_workspace.validation.records import BY_TRAINING, Record, t_key

# musubi-tuner trains the LoRA in fp32 (`_prepare_with_accelerator` turns full_fp16/full_bf16 off at 30c658c).
NETWORK_DTYPE = torch.float32


@dataclass
class Item:
    index: int  # in the set's order, the same on every process
    hash: str
    key: str  # musubi-tuner's item_key
    info: object  # musubi-tuner's ItemInfo (its cache files)
    bucket: tuple
    batch_size: int


@dataclass
class ValidationSet:
    dataset_config: str  # as shown (relative to the workspace root)
    hash: str
    items: list[Item] = field(default_factory=list)

    @classmethod
    def build(cls, args, architecture: str, path: str, set_hash: str | None = None, ws=None) -> ValidationSet:
        """The set from the validation dataset.toml and its caches (made by `make cache`), musubi-tuner's way."""
        from musubi_tuner.dataset import config_utils

        from musubi_workspace.paths import Workspace

        ws = ws or Workspace.find()
        p = ws.resolve(path)
        hashes = vitems.item_hashes(ws, p)
        with global_rng_kept():  # building a dataset group draws from Python's random
            user = config_utils.load_user_config(str(p))
            blueprint = config_utils.BlueprintGenerator(config_utils.ConfigSanitizer()).generate(
                user, args, architecture=architecture
            )
            group = config_utils.generate_dataset_group_by_blueprint(
                blueprint.dataset_group, training=True, shared_epoch=Value("i", 0)
            )
            found = []
            for n, dataset in enumerate(group.datasets):
                dataset.prepare_for_training()
                own = hashes[n] if n < len(hashes) else {}
                seen = set()
                for bucket, infos in dataset.batch_manager.buckets.items():
                    for info in infos:  # num_repeats lists an item more than once: score it once
                        if info.latent_cache_path in seen:
                            continue
                        seen.add(info.latent_cache_path)
                        stem = os.path.basename(info.item_key)
                        digest = own.get(stem) or _cache_hash(info)
                        found.append((n, info.item_key, digest, info, bucket, dataset.batch_size))
        found.sort(key=lambda f: (f[0], f[1]))
        shown = ws.rel(p)
        s = cls(shown, set_hash or vitems.set_hash(ws, p))
        s.items = [Item(i, d, k, info, b, bs) for i, (_, k, d, info, b, bs) in enumerate(found)]
        if not s.items:
            raise RuntimeError(
                f"validation set {shown} has no cached items: run `make cache` (its latents and text-encoder outputs "
                "are cached like the training data's)"
            )
        return s

    def batches(self, rank: int = 0, world: int = 1) -> list[list[Item]]:
        """This process's items (index % world == rank) as batches of one bucket, at each dataset's batch size."""
        groups: dict[tuple, list[Item]] = {}
        for it in self.items:
            if it.index % world == rank:
                groups.setdefault((it.bucket, it.batch_size), []).append(it)
        out = []
        for group in groups.values():
            bs = max(1, group[0].batch_size)
            out += [group[i : i + bs] for i in range(0, len(group), bs)]
        return out


def _cache_hash(info) -> str:
    """Where a cache file matches no listed item: the hash of its latent and text-encoder cache files."""
    h = hashlib.sha256()
    for path in (info.latent_cache_path, info.text_encoder_output_cache_path):
        h.update(Path(path).read_bytes())
    return h.hexdigest()


@contextlib.contextmanager
def global_rng_kept():
    """Save the global random states (torch, every CUDA device, Python's random, numpy); restore them on exit."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    py = random.getstate()
    npy = np.random.get_state()
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        random.setstate(py)
        np.random.set_state(npy)


@contextlib.contextmanager
def modes_kept(*modules):
    """Every submodule's training flag restored on exit (the modules are put in eval mode inside)."""
    saved = [(m, m.training) for module in modules if module is not None for m in module.modules()]
    try:
        for module in modules:
            if module is not None:
                module.eval()
        yield
    finally:
        for m, mode in saved:
            m.training = mode


@contextlib.contextmanager
def multiplier(network, value: float | None):
    """The LoRA's multiplier set to `value` inside (None: left as it is)."""
    old = getattr(network, "multiplier", None)
    if value is None or not hasattr(network, "set_multiplier"):
        yield
        return
    network.set_multiplier(value)
    try:
        yield
    finally:
        network.set_multiplier(1.0 if old is None else old)


@contextlib.contextmanager
def inference(accelerator, transformer, network, lora_multiplier: float | None = None):
    """The state of the pass, as `sample_images` makes it, and the training's state back after it."""
    dit = accelerator.unwrap_model(transformer)
    net = accelerator.unwrap_model(network) if network is not None else None
    with global_rng_kept(), modes_kept(dit, network), multiplier(net, lora_multiplier), torch.no_grad():
        if hasattr(dit, "switch_block_swap_for_inference"):
            dit.switch_block_swap_for_inference()
        try:
            yield dit
        finally:
            if hasattr(dit, "switch_block_swap_for_training"):
                dit.switch_block_swap_for_training()


def load_batch(items: list[Item], device) -> dict:
    """One batch of cached items, loaded and collated by musubi-tuner's own BucketBatchManager."""
    from musubi_tuner.dataset.bucket import BucketBatchManager

    batch = BucketBatchManager({items[0].bucket: [it.info for it in items]}, len(items))[0]

    def to(v):
        if torch.is_tensor(v):
            return v.to(device)
        if isinstance(v, list):
            return [to(x) for x in v]
        return v

    return {k: to(v) for k, v in batch.items()}


def item_losses(trainer, args, accelerator, dit, batch: dict, hashes: list[str], timesteps: list[float]):
    """[items, timesteps] fp32 MSE of each item of one batch at each raw timestep."""
    device = accelerator.device
    latents = trainer.scale_shift_latents(batch["latents"])
    out = torch.empty((len(hashes), len(timesteps)), dtype=torch.float32)
    for j, t in enumerate(timesteps):
        noise = torch.stack([vitems.noise(h, t, tuple(latents.shape[1:])) for h in hashes])
        noise = noise.to(device=device, dtype=latents.dtype)
        tt = torch.full((len(hashes),), float(t), device=device, dtype=torch.float32)
        timestep = tt * 1000.0 + 1  # as get_noisy_model_input_and_timesteps: t * 1000, then + 1
        shaped = tt.view(-1, *([1] * (latents.ndim - 1)))
        noisy = (1 - shaped) * latents + shaped * noise
        output = trainer.call_dit(args, accelerator, dit, latents, batch, noise, noisy, timestep, NETWORK_DTYPE)
        err = (output.pred.float() - output.target.float()) ** 2
        out[:, j] = err.flatten(1).mean(1).cpu()
    return out


def score(
    trainer,
    args,
    accelerator,
    transformer,
    network,
    vset: ValidationSet,
    timesteps: list[float],
    step: int,
    distributed: bool = True,
    lora_multiplier: float | None = None,
    base_loss: float | None = None,
    by: str = BY_TRAINING,
    lora: str | None = None,
) -> Record:
    """One validation pass; a Record of the whole set. `distributed`: every process calls this at the same point
    and scores its share; else this process scores every item alone (no collective)."""
    start = time.perf_counter()
    world = accelerator.num_processes if distributed else 1
    rank = accelerator.process_index if distributed else 0
    n, k = len(vset.items), len(timesteps)
    # One table for all: the items' losses and, in the last column, how many processes scored each item.
    table = torch.zeros((n, k + 1), dtype=torch.float64)
    with inference(accelerator, transformer, network, lora_multiplier) as dit:
        for chunk in vset.batches(rank, world):
            batch = load_batch(chunk, accelerator.device)
            losses = item_losses(trainer, args, accelerator, dit, batch, [it.hash for it in chunk], timesteps)
            for row, it in enumerate(chunk):
                table[it.index, :k] = losses[row].double()
                table[it.index, k] = 1
    if world > 1:
        table = accelerator.reduce(table.to(accelerator.device), reduction="sum").cpu()
    if not torch.equal(table[:, k], torch.ones(n, dtype=torch.float64)):
        raise RuntimeError(f"validation: items scored {table[:, k].tolist()} times, not once each")
    by_t = {t_key(t): float(table[:, j].mean()) for j, t in enumerate(timesteps)}
    loss = float(np.mean(list(by_t.values())))
    return Record(
        step=int(step),
        loss=loss,
        by_timestep=by_t,
        items=n,
        set=vset.hash,
        dataset_config=vset.dataset_config,
        timesteps=[float(t) for t in timesteps],
        by=by,
        lora=lora,
        ratio=(loss / base_loss) if base_loss else None,
        seconds=round(time.perf_counter() - start, 3),
    )
