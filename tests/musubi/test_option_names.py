"""The committed optimizer_type / lr_scheduler names (schema `names`) agree with musubi-tuner's real factories.

Each accepted name builds (and an optimiser takes a step) in `get_optimizer` / `get_lr_scheduler` of the pinned
trainer, on CPU with one 4x4 parameter; each rejected name fails there; and `make check` (checks/values.py) says
nothing about the first and an error about the second. torch is imported inside the tests: collecting this module
must not need the GPU stack.
"""

from __future__ import annotations

import argparse

import pytest

from musubi_workspace.schema import build_parsers, load_schema

NAMES = load_schema()["names"]


@pytest.fixture(scope="module")
def factories(musubi):
    import torch

    cls = musubi["fpack_train_network"].FramePackNetworkTrainer
    trainer = cls.__new__(cls)
    parser = build_parsers(musubi)["fpack_train_network"]

    def args(**values) -> argparse.Namespace:
        a = parser.parse_args([])
        for k, v in values.items():
            setattr(a, k, v)
        return a

    def params():
        return [{"params": [torch.nn.Parameter(torch.zeros(4, 4))], "lr": 1e-4}]

    def optimizer(name: str, step: bool = True):
        opt = trainer.get_optimizer(args(optimizer_type=name, learning_rate=1e-4), params())[2]
        if step:
            for g in opt.param_groups:
                for p in g["params"]:
                    p.grad = torch.ones_like(p)
            opt.step()
        return opt

    def scheduler(name: str, **extra):
        return trainer.get_lr_scheduler(
            args(lr_scheduler=name, learning_rate=1e-4, **extra), torch.optim.AdamW(params()), 1
        )

    return optimizer, scheduler


def test_every_accepted_optimizer_builds_and_steps_in_musubis_get_optimizer(factories):
    optimizer, _ = factories
    for name in NAMES["optimizer_type"]["case_insensitive"]:
        for spelled in (name, name.upper(), name.capitalize()):
            optimizer(spelled)
    for name in NAMES["optimizer_type"]["torch_optim"]:
        optimizer(name)
    optimizer("bitsandbytes.optim.PagedAdamW8bit")  # a module path is imported as written


def test_rejected_optimizers_fail_in_musubis_get_optimizer(factories):
    optimizer, _ = factories
    for name in ("adamw9bit", "PagedAdamW8bit", "adam", "", "torch.optim.Nope"):
        with pytest.raises((AttributeError, ModuleNotFoundError)):
            optimizer(name)
    for name, error in NAMES["optimizer_type"]["fails_at_step"].items():
        optimizer(name, step=False)  # builds ...
        with pytest.raises(Exception) as e:  # ... and fails at the first step, as recorded
            optimizer(name)
        assert error.startswith(type(e.value).__name__)


def test_every_accepted_scheduler_builds_in_musubis_get_lr_scheduler(factories):
    _, scheduler = factories
    s = NAMES["lr_scheduler"]
    for name in s["names"]:
        scheduler(name)
    for name in s["case_insensitive"]:
        scheduler(name.upper())
    needs = {"lr_scheduler_min_lr_ratio": 0.1, "lr_scheduler_args": ["step_rules='1:10,0.1'"]}
    for name, option in s["needs"].items():
        with pytest.raises(Exception):  # noqa: B017 - musubi-tuner fails on it, whatever it raises
            scheduler(name)
        scheduler(name, **{option: needs[option]})


def test_rejected_schedulers_fail_in_musubis_get_lr_scheduler(factories):
    _, scheduler = factories
    for name in list(NAMES["lr_scheduler"]["fails"]) + ["Cosine", "cosinee", "LINEAR"]:
        with pytest.raises(Exception):  # noqa: B017 - musubi-tuner fails on it, whatever it raises
            scheduler(name)


def test_lr_scheduler_type_names_are_torch_scheduler_classes(musubi):
    import torch

    for name in NAMES["lr_scheduler_type"]:
        assert isinstance(getattr(torch.optim.lr_scheduler, name), type), name


def test_the_check_accepts_exactly_what_the_factories_build(workspace):
    """checks/values.py on a Config: no finding for accepted names, an error for rejected ones."""
    from musubi_workspace.checks.findings import Context, Report
    from musubi_workspace.checks.values import check_values
    from musubi_workspace.config import Config

    cfg = Config.load(workspace, workspace.configs / "v1" / "config.toml")

    def errors(**values) -> list[str]:
        ctx = Context(cfg=cfg, report=Report())
        check_values(ctx, {"optimizer_type": "adamw8bit", "learning_rate": 1e-4, **values}, NAMES)
        return [f.message for f in ctx.report.errors]

    for name in NAMES["optimizer_type"]["case_insensitive"] + NAMES["optimizer_type"]["torch_optim"]:
        assert errors(optimizer_type=name, learning_rate=1.0 if name.lower() == "adafactor" else 1e-4) == [], name
    assert errors(optimizer_type="bitsandbytes.optim.PagedAdamW8bit") == []
    for name in ("adamw9bit", "PagedAdamW8bit", *NAMES["optimizer_type"]["fails_at_step"], "bitsandbytes.optim.Nope"):
        assert len(errors(optimizer_type=name)) == 1, name
    for name in NAMES["lr_scheduler"]["names"]:
        assert errors(lr_scheduler=name) == [], name
    for name in list(NAMES["lr_scheduler"]["fails"]) + ["Cosine"]:
        assert len(errors(lr_scheduler=name)) == 1, name
