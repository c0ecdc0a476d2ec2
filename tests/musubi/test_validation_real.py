"""The validation loss against the real musubi-tuner: everything of musubi-tuner it uses still has the signature it
was written for, and the pass on a tiny FramePack DiT on the CPU gives the same numbers twice, at any batch size
and batch order, leaves the training's random state and the modules' modes as it found them, and two processes
each scoring their share give one process's number."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
TIMESTEPS = [0.2, 0.8]


def _tiny():
    spec = importlib.util.spec_from_file_location("tiny_validation", HERE / "tiny_validation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tiny = _tiny()


def resolve(name: str):
    """musubi_tuner.<module>.<attr>...: the longest importable module, then attributes."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module("musubi_tuner." + ".".join(parts[:i]))
        except ImportError:
            continue
        for part in parts[i:]:
            obj = getattr(obj, part)
        return obj
    raise ImportError(name)


def test_everything_the_validation_uses_has_the_signature_it_was_written_for(musubi):
    from musubi_workspace.validation.trainer import MUSUBI_API, MUSUBI_ARGS

    moved = []
    for name, expected in MUSUBI_API:
        if expected == "attribute":
            owner, attr = name.rsplit(".", 1)
            cls = resolve(owner)
            # An instance attribute is set in __init__ (or, for the datasets, in prepare_for_training): read the
            # class's source for `self.<attr>`.
            src = inspect.getsource(cls) if inspect.isclass(cls) else ""
            if not (hasattr(cls, attr) or f"self.{attr} =" in src or f"self.{attr}:" in src):
                moved.append(f"{name}: no such attribute")
            continue
        try:
            obj = resolve(name)
        except (ImportError, AttributeError) as e:
            moved.append(f"{name}: gone ({e})")
            continue
        if expected is None:
            if not inspect.isclass(obj):
                moved.append(f"{name}: not a class")
            continue
        got = tuple(inspect.signature(obj).parameters)
        if got != tuple(expected):
            moved.append(f"{name}: parameters {got}, written for {tuple(expected)}")
    fp = musubi["fpack_train_network"]
    parser = fp.framepack_setup_parser(musubi["training.parser_common"].setup_parser_common())
    dests = {a.dest for a in parser._actions}
    moved += [f"--{a}: no such training option" for a in MUSUBI_ARGS if a not in dests]
    # main() looks the trainer class up in its module when it runs (so the launcher's subclass is the one used).
    if "FramePackNetworkTrainer()" not in inspect.getsource(fp.main):
        moved.append("fpack_train_network.main: no longer builds FramePackNetworkTrainer() by name")
    assert moved == []


@pytest.fixture
def setup(musubi, tmp_path):
    from accelerate import Accelerator

    from musubi_workspace.paths import Workspace
    from musubi_workspace.validation.score import ValidationSet

    path = tiny.make_set(tmp_path)
    trainer = musubi["fpack_train_network"].FramePackNetworkTrainer()
    args = tiny.trainer_args()
    model, network = tiny.build_model()
    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    ws = Workspace(tmp_path)
    vset = ValidationSet.build(args, trainer.architecture, str(path), ws=ws)

    def run(vs=vset, **kw):
        from musubi_workspace.validation.score import score

        return score(trainer, args, accelerator, model, network, vs, TIMESTEPS, step=3, **kw)

    return dict(
        path=path, trainer=trainer, args=args, model=model, network=network, acc=accelerator, ws=ws, vset=vset, run=run
    )


def test_the_set_lists_each_cached_item_once_with_its_content_hash(setup):
    from musubi_workspace.validation import items

    vset = setup["vset"]
    assert len(vset.items) == tiny.ITEMS
    by_stem = items.item_hashes(setup["ws"], setup["path"])[0]
    assert [it.hash for it in vset.items] == [by_stem[f"synthetic{i:05d}"] for i in range(tiny.ITEMS)]
    assert vset.hash == items.set_hash(setup["ws"], setup["path"]) and len(vset.hash) == 16
    assert [len(b) for b in vset.batches()] == [2, 2, 1]
    assert [[it.index for it in b] for b in vset.batches(1, 2)] == [[1, 3]]


def test_the_same_numbers_twice_and_at_any_batch_size_and_order(setup):
    from musubi_workspace.validation.score import Item, ValidationSet

    first, second = setup["run"](), setup["run"]()
    assert first.by_timestep == second.by_timestep and first.loss == second.loss
    assert list(first.by_timestep) == ["0.2", "0.8"] and first.items == tiny.ITEMS
    assert first.loss == pytest.approx(sum(first.by_timestep.values()) / 2, rel=1e-12)
    assert first.by_timestep["0.2"] != first.by_timestep["0.8"]
    # batch size 1 and 5, from musubi-tuner's own dataset code
    for bs in (1, 5):
        path = tiny.write_toml(setup["path"].parents[1], bs)
        vs = ValidationSet.build(setup["args"], setup["trainer"].architecture, str(path), ws=setup["ws"])
        assert {len(b) for b in vs.batches()} == {bs}
        other = setup["run"](vs)
        for k, v in first.by_timestep.items():
            assert other.by_timestep[k] == pytest.approx(v, rel=1e-5)
    # the items in the reverse order (other batches, other positions in them)
    vset = setup["vset"]
    rev = ValidationSet(vset.dataset_config, vset.hash)
    rev.items = [Item(i, it.hash, it.key, it.info, it.bucket, 2) for i, it in enumerate(reversed(vset.items))]
    reversed_r = setup["run"](rev)
    for k, v in first.by_timestep.items():
        assert reversed_r.by_timestep[k] == pytest.approx(v, rel=1e-5)


def test_the_base_model_is_the_lora_at_multiplier_zero_and_the_multiplier_comes_back(setup):
    base = setup["run"](lora_multiplier=0.0)
    with_lora = setup["run"](base_loss=base.loss)
    assert base.loss != with_lora.loss
    assert with_lora.ratio == pytest.approx(with_lora.loss / base.loss)
    assert setup["network"].multiplier == 1.0
    assert all(lora.multiplier == 1.0 for lora in setup["network"].unet_loras)
    setup["network"].set_multiplier(0.0)
    assert setup["run"]().loss == base.loss


def test_the_training_random_state_and_modes_are_untouched_by_a_pass(setup):
    import numpy as np
    import torch

    network, model = setup["network"], setup["model"]
    network.train()
    model.train()
    modes = [m.training for m in [*network.modules(), *model.modules()]]

    def states():
        return torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()

    def train_step(with_pass: bool):
        """A training step as musubi-tuner's loop makes it: noise from the global generator, process_batch."""
        from musubi_tuner.modules.scheduling_flow_match_discrete import FlowMatchDiscreteScheduler

        from musubi_workspace.validation.score import load_batch

        torch.manual_seed(5)
        random.seed(5)
        np.random.seed(5)
        if with_pass:
            setup["run"]()
        batch = load_batch(setup["vset"].items[:2], "cpu")
        noise = torch.randn_like(batch["latents"])
        sched = FlowMatchDiscreteScheduler(shift=setup["args"].discrete_flow_shift, reverse=True, solver="euler")
        loss, _ = setup["trainer"].process_batch(
            setup["args"],
            setup["acc"],
            model,
            network,
            batch,
            batch["latents"],
            noise,
            sched,
            torch.float32,
            torch.float32,
            None,
            0,
        )
        return float(loss), random.random(), float(np.random.rand())

    before = states()
    setup["run"]()
    after = states()
    assert torch.equal(before[0], after[0]) and before[1] == after[1] and (before[2] == after[2]).all()
    assert [m.training for m in [*network.modules(), *model.modules()]] == modes
    # LoRA dropout (0.1) and the timestep sampling draw from the global generator: equal losses mean equal draws
    assert train_step(with_pass=True) == train_step(with_pass=False)


def test_two_processes_each_score_their_share_and_give_one_process_number(setup, tmp_path):
    folder = setup["path"].parents[1]
    tiny.save_model(folder, setup["model"], setup["network"])
    single = setup["run"]()
    out = tmp_path / "two.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parents[1] / "src"), os.environ.get("PYTHONPATH", "")]))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        + [str(HERE / "tiny_validation.py"), str(folder), str(out)],
        env={**env, "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=300,  # a process left waiting on the collective would hang here, not pass
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["world"] == 2
    assert got["shares"] == [[0, 2, 4], [1, 3]]  # uneven shares: each process still calls the collective once
    two = got["record"]
    assert two["items"] == tiny.ITEMS and two["set"] == single.set
    for k, v in single.by_timestep.items():
        assert two["by_timestep"][k] == pytest.approx(v, rel=1e-5)


def test_the_hooks_score_step_0_the_saves_and_the_end_and_write_the_series_and_the_json(setup, monkeypatch, tmp_path):
    """The validating trainer's hooks called as musubi-tuner's loop calls them (3 steps, a save every 2)."""
    from musubi_workspace.validation import records
    from musubi_workspace.validation.trainer import trainer_class

    monkeypatch.setenv("WS_ROOT", str(tmp_path))
    monkeypatch.setenv("WS_VALIDATION", str(setup["path"]))
    monkeypatch.setenv("WS_VALIDATION_EVERY", "0")
    monkeypatch.setenv("WS_VALIDATION_TIMESTEPS", "0.2,0.8")
    cls = trainer_class(type(setup["trainer"]))
    assert cls.__name__ == "ValidatingFramePackNetworkTrainer" and issubclass(cls, type(setup["trainer"]))
    trainer, acc, net, dit = cls(), setup["acc"], setup["network"], setup["model"]
    args = setup["args"]
    out = tmp_path / "out"
    args.output_dir, args.output_name, args.save_every_n_steps, args.max_train_steps = str(out), "x", 2, 3
    trainer.on_train_start(args, acc, net, dit, None)
    base = records.read_series(out, "x")
    assert [(r.step, r.lora, r.ratio) for r in base] == [(0, None, 1.0)]
    assert base[0].loss == setup["run"](lora_multiplier=0.0).loss  # the base model, not the LoRA
    logs = []
    for global_step in range(3):
        trainer.on_post_optimizer_step(args, acc, net, dit, False, global_step)  # an accumulation micro-step
        trainer.on_post_optimizer_step(args, acc, net, dit, True, global_step)
        step = global_step + 1
        if step == 2:
            out.mkdir(exist_ok=True)
            (out / "x-step00000002.safetensors").write_bytes(b"lora")
            trainer.on_post_save(args, acc, net, dit, "x-step00000002.safetensors", None, {}, False)
        logs.append(trainer.extra_step_logs(args, {"loss/current": 1.0}))
    (out / "x.safetensors").write_bytes(b"lora")
    trainer.on_post_save(args, acc, net, dit, "x.safetensors", None, {}, True)  # after end_training
    assert [(r.step, r.lora) for r in records.read_series(out, "x")] == [
        (0, None),
        (2, "x-step00000002.safetensors"),
        (3, "x.safetensors"),
    ]
    at2 = records.read_beside(out / "x-step00000002.safetensors")
    assert (
        at2.step == 2
        and at2.ratio == pytest.approx(at2.loss / base[0].loss)
        and at2.set == trainer.workspace_validation.set.hash
    )
    assert at2.loss == setup["run"]().loss  # the weights did not move in this test: the LoRA's number
    assert records.read_beside(out / "x.safetensors").step == 3
    assert [sorted(k for k in d if k.startswith("loss/validation")) for d in logs] == [
        [],
        ["loss/validation", "loss/validation_ratio", "loss/validation_t0.2", "loss/validation_t0.8"],
        ["loss/validation", "loss/validation_ratio", "loss/validation_t0.2", "loss/validation_t0.8"],
    ]
    assert records.best(out, "x").lora in ("x-step00000002.safetensors", "x.safetensors")


def test_make_validates_module_reads_the_shipped_config_with_the_trainers_own_parser(musubi, workspace):
    from musubi_workspace.validation import offline

    args = offline.trainer_args(["--config_file", "configs/v1/config.toml"])
    assert args.dit and args.output_dir and args.output_name and args.network_module == "networks.lora_framepack"
    assert (args.dit_dtype, args.vae_dtype) == ("bfloat16", "float16")
    assert any(getattr(args, flag, False) for flag, _ in offline.ATTN)


def test_make_validate_scores_saved_loras_and_writes_the_same_json(setup, monkeypatch, tmp_path):
    """offline.main end to end on the tiny DiT: the trainer's load_transformer is the one stand-in (musubi-tuner's
    loader builds the full 13B shape), everything else is musubi-tuner's own (parser, accelerator, LoRA
    building from the weights)."""
    import torch

    from musubi_workspace.validation import offline, records

    fp = setup["trainer"].__class__
    monkeypatch.setattr(fp, "load_transformer", lambda self, *a, **k: setup["model"])
    monkeypatch.setenv("WS_ROOT", str(tmp_path))
    out = tmp_path / "out"
    out.mkdir()
    lora_a, lora_b = out / "x-step00000004.safetensors", out / "x.safetensors"
    setup["network"].save_weights(str(lora_a), torch.float32, {"ss_steps": "4"})
    in_training = setup["run"]()  # what the training's pass gave for this LoRA
    with torch.no_grad():
        for lora in setup["network"].unet_loras:
            lora.lora_up.weight.mul_(2)
    setup["network"].save_weights(str(lora_b), torch.float32, {"ss_steps": "8"})
    setup["network"].set_multiplier(0.0)  # the tiny DiT's own LoRA adds nothing from here on: the base model
    config = tmp_path / "config.toml"
    config.write_text(
        f'dit = "tiny.safetensors"\nsdpa = true\nsplit_attn = true\nmixed_precision = "bf16"\n'
        f'network_module = "networks.lora_framepack"\noutput_dir = "{out}"\noutput_name = "x"\n'
    )
    argv = ["--lora", str(lora_a), "--lora", str(lora_b), "--validation", str(setup["path"]), "--timesteps", "0.2,0.8"]
    assert offline.main([*argv, "--config_file", str(config)], {}) == 0
    assert not records.series_path(out, "x").exists()  # the training's series is left alone
    a, b = records.read_beside(lora_a), records.read_beside(lora_b)
    assert (a.step, a.lora, a.by) == (4, "x-step00000004.safetensors", "make validate")
    assert (b.step, b.lora, b.by) == (8, "x.safetensors", "make validate")  # ss_steps of the metadata
    assert a.loss != b.loss and a.ratio == pytest.approx(a.loss / setup["run"]().loss, rel=1e-5)  # to the base
    assert a.loss == pytest.approx(in_training.loss, rel=1e-5) and a.set == in_training.set
    assert records.best(out, "x").lora in (a.lora, b.lora)
