"""Check 1, values: options of the right type that musubi-tuner still fails on after the DiT has loaded, or trains
something else with.

musubi-tuner takes `optimizer_type` and `lr_scheduler` as free strings and resolves them only after minutes of
loading; the names it accepts come from its own factories (`names` in the committed schema, schema.py). Numbers
out of range (steps, learning rate, LoRA shape) and `mixed_precision` are judged by what musubi-tuner does with
them: an error where it fails or trains nothing, a warning where it trains, but not what was meant.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from musubi_workspace.checks.findings import MACHINE

if TYPE_CHECKING:
    from musubi_workspace.checks.findings import Context

# A LoRA learning rate above this is far outside what AdamW-type optimisers train with (1e-4 to 1e-3); the adaptive
# optimisers (D-Adaptation, Prodigy) take about 1.0 and are left alone.
HIGH_LEARNING_RATE = 1e-2
# Above this no optimiser trains a LoRA: a typo for a negative exponent (2e4 for 2e-4), an error.
ABSURD_LEARNING_RATE = 1.0
# musubi-tuner's LoRA defaults when the keys are unset (networks/lora.py create_network).
DEFAULT_DIM, DEFAULT_ALPHA = 4, 1.0


def check_values(ctx: Context, valid: dict[str, Any], names: dict | None) -> None:
    """`valid`: the options that passed the type check, with the values musubi-tuner will train with; `names`: the
    optimizer and scheduler names its factories accept (the schema's "names")."""
    if names:
        _optimizer(ctx, valid, names["optimizer_type"])
        _scheduler(ctx, valid, names)
    _steps(ctx, valid)
    _learning_rate(ctx, valid)
    _network(ctx, valid)
    _precision(ctx, valid)
    _key_value_lists(ctx, valid)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _closest(name: str, known: list[str]) -> str:
    lower = {k.lower(): k for k in known}
    close = difflib.get_close_matches(name.lower(), list(lower), n=1, cutoff=0.6)
    return f" (did you mean {lower[close[0]]!r}?)" if close else ""


def _musubi_here() -> bool:
    return importlib.util.find_spec("musubi_tuner") is not None


def dotted_problem(value: str) -> tuple[str, str] | None:
    """A "module.Class" value as musubi-tuner resolves it (import_module, getattr): (kind, what is wrong), or None.
    Where the module is not installed and musubi-tuner is not either (off the pod), nothing can be known: None."""
    module, _, name = value.rpartition(".")
    top = module.split(".")[0]
    try:
        found = importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        if _musubi_here():
            return MACHINE, (
                f"module {top} is not installed here: musubi-tuner fails with ModuleNotFoundError after the "
                f"DiT has loaded; install it into .venv (`uv pip install ...`) or choose another"
            )
        return None
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - whatever the import raises, musubi-tuner's would too
        return "version", f"module {module} does not import ({type(e).__name__}: {e}); fix the module path"
    if not hasattr(mod, name):
        public = [n for n in dir(mod) if not n.startswith("_")]
        return (
            "version",
            f"module {module} has no {name}{_closest(name, public)}: musubi-tuner fails after the DiT has loaded",
        )
    return None


def _optimizer(ctx: Context, valid: dict, names: dict) -> None:
    value = valid.get("optimizer_type")
    if not isinstance(value, str) or not value:
        return  # unset: options.REQUIRED
    where = ctx.cfg.where("optimizer_type")
    if value.lower() in names["case_insensitive"] or value in names["torch_optim"]:
        return
    if "." in value:
        if found := dotted_problem(value):
            kind, what = found
            ctx.report.error(where, f"optimizer_type = {value!r}: {what}", kind=kind)
        return
    if value in names["fails_at_step"]:
        ctx.report.error(
            where,
            f"optimizer_type = {value!r} builds, then fails at the first step "
            f'({names["fails_at_step"][value]}); use another, e.g. "adamw8bit"',
        )
        return
    known = names["case_insensitive"] + names["torch_optim"]
    squashed = "".join(c for c in value.lower() if c.isalnum())
    if (
        squashed.endswith("8bit") and squashed != "adamw8bit"
    ):  # another bitsandbytes optimiser (PagedAdamW8bit, Lion8bit)
        hint = f' (8-bit optimisers other than adamw8bit need their module path, e.g. "bitsandbytes.optim.{value}")'
    else:
        hint = _closest(value, known)
    ctx.report.error(
        where,
        f"optimizer_type = {value!r} is not an optimiser musubi-tuner knows{hint}: it fails after the "
        f"DiT has loaded (torch.optim has no {value}); use {', '.join(names['case_insensitive'])} (any case), "
        f'a torch.optim class ({", ".join(names["torch_optim"])}) or a module path ("module.Class")',
    )


def _optimizer_args(valid: dict) -> dict[str, str]:
    out = {}
    for item in valid.get("optimizer_args") or []:
        key, sep, value = str(item).partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _scheduler(ctx: Context, valid: dict, names: dict) -> None:
    cfg = ctx.cfg
    custom = valid.get("lr_scheduler_type")
    if isinstance(custom, str) and custom:  # lr_scheduler is then ignored
        where = cfg.where("lr_scheduler_type")
        if "." in custom:
            if found := dotted_problem(custom):
                ctx.report.error(where, f"lr_scheduler_type = {custom!r}: {found[1]}", kind=found[0])
        elif custom not in names["lr_scheduler_type"]:
            ctx.report.error(
                where,
                f"lr_scheduler_type = {custom!r} is not a class of torch.optim.lr_scheduler"
                f"{_closest(custom, names['lr_scheduler_type'])}: musubi-tuner fails after the DiT has loaded; "
                f'use one of {", ".join(names["lr_scheduler_type"])}, or a module path ("module.Class")',
            )
        return
    optimizer = str(valid.get("optimizer_type") or "").lower()
    if optimizer.endswith("schedulefree"):
        return  # schedule-free optimisers get a dummy scheduler
    if optimizer == "adafactor" and _optimizer_args(valid).get("relative_step") != "False":
        return  # Adafactor's relative step: musubi-tuner replaces lr_scheduler with its own
    value = valid.get("lr_scheduler", "constant")
    if not isinstance(value, str):
        return
    s = names["lr_scheduler"]
    where = cfg.where("lr_scheduler")
    if value in s["names"] or value.lower() in s["case_insensitive"]:
        return
    if value in s["needs"]:
        option = s["needs"][value]
        if not valid.get(option):
            ctx.report.error(
                where,
                f"lr_scheduler = {value!r} needs `{option}` (musubi-tuner fails without it after the "
                f"DiT has loaded); set it, or choose another scheduler",
            )
        return
    usable = ", ".join(sorted(s["names"] + list(s["needs"])))
    if value in s["fails"]:
        ctx.report.error(
            where,
            f"lr_scheduler = {value!r} fails in musubi-tuner after the DiT has loaded "
            f"({s['fails'][value]}); use one of {usable}",
        )
        return
    ctx.report.error(
        where,
        f"lr_scheduler = {value!r} is not a scheduler musubi-tuner knows"
        f"{_closest(value, s['names'] + list(s['needs']))}: it fails after the DiT has loaded; use one of {usable}",
    )


def _steps(ctx: Context, valid: dict) -> None:
    cfg = ctx.cfg
    for key in ("max_train_steps", "max_train_epochs"):
        value = valid.get(key)
        if _number(value) and value <= 0:
            ctx.report.error(
                cfg.where(key),
                f"{key} = {value}: training needs at least 1; musubi-tuner would load everything and train nothing",
            )
    steps, epochs = valid.get("max_train_steps"), valid.get("max_train_epochs")
    if _number(steps) and _number(epochs) and steps > 0 and epochs > 0:
        ctx.report.warn(
            cfg.where("max_train_epochs"),
            f"max_train_epochs = {epochs} and max_train_steps = {steps} are both "
            f"set: musubi-tuner trains {epochs} epoch(s) and ignores max_train_steps; remove one",
        )


def _adaptive(optimizer: str) -> bool:
    """Optimisers that set their own step size and take a learning rate near 1.0 (musubi-tuner's own test for
    logging their d*lr: a name starting with dadapt, or containing prodigy)."""
    o = optimizer.lower()
    return o.startswith("dadapt") or "prodigy" in o


def _learning_rate(ctx: Context, valid: dict) -> None:
    value = valid.get("learning_rate")
    if not _number(value):
        return
    optimizer = str(valid.get("optimizer_type") or "")
    if optimizer.lower() == "adafactor" and _optimizer_args(valid).get("relative_step") != "False":
        return  # Adafactor with relative_step ignores learning_rate (musubi-tuner sets it to None)
    where = ctx.cfg.where("learning_rate")
    if value <= 0:
        ctx.report.error(
            where,
            f"learning_rate = {value}: it must be above 0 (0 trains nothing; torch's optimisers "
            f"refuse a negative rate after the DiT has loaded); LoRA rates are about 1e-4",
        )
    elif value > ABSURD_LEARNING_RATE:
        mantissa, _, exponent = f"{value:e}".partition("e")
        guess = f" (did you mean {float(mantissa):g}e-{int(exponent)}?)" if int(exponent) > 0 else ""
        ctx.report.error(
            where,
            f"learning_rate = {value:g} is far above any LoRA learning rate{guess}: the loss diverges "
            f"at once; AdamW-type rates are about 1e-4, adaptive optimisers (Prodigy, D-Adaptation) take 1.0",
        )
    elif value > HIGH_LEARNING_RATE and not _adaptive(optimizer):
        ctx.report.warn(
            where,
            f"learning_rate = {value:g} is high for {optimizer or 'this optimiser'}: LoRA rates are about "
            f"1e-4 to 1e-3, and the loss may diverge; lower it, or keep it on purpose",
        )


def _network(ctx: Context, valid: dict) -> None:
    cfg = ctx.cfg
    dim = valid.get("network_dim", DEFAULT_DIM)
    alpha = valid.get("network_alpha", DEFAULT_ALPHA)
    if _number(dim) and dim <= 0:
        ctx.report.error(
            cfg.where("network_dim"),
            f"network_dim = {dim}: the LoRA rank must be 1 or more (16-32 for poses and edits, 64+ for styles)",
        )
        return
    if not (_number(dim) and _number(alpha)) or "network_alpha" not in valid:
        return
    if alpha < 0:
        ctx.report.warn(
            cfg.where("network_alpha"),
            f"network_alpha = {alpha:g} is negative: it flips the sign of the "
            f"LoRA's output (scale alpha/dim = {alpha / dim:g}); use a value between 1 and network_dim",
        )
    elif alpha > dim:
        ctx.report.warn(
            cfg.where("network_alpha"),
            f"network_alpha = {alpha:g} is above network_dim = {dim}: the LoRA's "
            f"output is scaled by alpha/dim = {alpha / dim:g}, which multiplies its effective learning rate; "
            f"usual is alpha <= dim (dim/2 halves it)",
        )


def _precision(ctx: Context, valid: dict) -> None:
    """fpack_train_network.py fixes the DiT to bf16 (`args.dit_dtype = "bfloat16"`) whatever mixed_precision says.
    "no" then feeds float32 latents (network_dtype) to the bf16 DiT without autocast: "Input type (float) and bias
    type (c10::BFloat16) should be the same" at the first step. "fp16" autocasts the bf16 DiT to fp16: it trains
    (seen on an H200 with musubi-tuner's own packed model class), outside the documented bf16 and with fp16's
    narrower range."""
    value = valid.get("mixed_precision")
    where = ctx.cfg.where("mixed_precision")
    if value == "no":
        ctx.report.error(
            where,
            'mixed_precision = "no": FramePack\'s DiT is fixed to bf16 and fails at the first step '
            'without autocast ("Input type (float) and bias type (c10::BFloat16) should be the same"), '
            'after it has loaded; use "bf16"',
        )
    elif value == "fp16":
        ctx.report.warn(
            where,
            'mixed_precision = "fp16": FramePack\'s DiT is fixed to bf16; fp16 autocasts its '
            "computation to fp16, which trains, but outside the documented bf16 and with fp16's narrower "
            'range (risk of inf/NaN losses); use "bf16"',
        )


def _key_value_lists(ctx: Context, valid: dict) -> None:
    """optimizer_args and lr_scheduler_args: musubi-tuner reads each item as `key, value = item.split("=")` and
    `ast.literal_eval(value)`; network_args with the split only. A malformed item fails after the DiT has loaded."""
    for key, literal in (("optimizer_args", True), ("lr_scheduler_args", True), ("network_args", False)):
        items = valid.get(key)
        if not isinstance(items, list):
            continue
        for item in items:
            parts = str(item).split("=")
            problem = None
            if len(parts) != 2:
                problem = f"has {len(parts) - 1} `=`, musubi-tuner splits it into exactly key=value"
            elif literal:
                try:
                    ast.literal_eval(parts[1])
                except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                    problem = (
                        f"value {parts[1]!r} is not a Python literal (musubi-tuner evaluates it: numbers as "
                        f"they are, strings in quotes, e.g. {parts[0]}='{parts[1]}')"
                    )
            if problem:
                ctx.report.error(
                    ctx.cfg.where(key), f"`{key}` item {item!r} {problem}; it fails after the DiT has loaded"
                )
