"""The musubi-tuner option schema: what the pinned FramePack scripts accept, as committed JSON.

`build_schema()` imports musubi-tuner, builds the four FramePack parsers exactly as each `main()` does, reads the
dataset TOML schema from `dataset/config_utils.ConfigSanitizer` and the prompt-line options from the parsing code.
`python -m musubi_workspace.schema [--out PATH]` (`make schema`) writes it to `data/musubi_schema.json`, which is
committed; `load_schema()` reads that file and needs no musubi-tuner. Layout:

    musubi_tuner_commit: the pinned commit ([tool.uv.sources] rev in pyproject.toml)
    parsers.<script>.<dest>: flags, kind, type, nargs, choices, default, required, help
        kind: "value" (takes an argument) | "store_true" | "store_false" | "other"
        type: what argparse converts the argument with: "int", "float", "str" (also for no type), "path"
              (pathlib.Path), "int_or_float" (musubi's _int_or_float: "5" -> 5, "0.1" -> 0.1, "10%" -> 0.1);
              null for flags
        default: the parser default as JSON (tuples as lists), or its repr() where JSON has no form for it
        help: whitespace collapsed, the Japanese translation after "/" dropped, first 200 characters
    dataset.general|image|video.<key>: the voluptuous type of each allowed key in [general] and [[datasets]]:
        "int" (TOML booleans pass too), "float" (a float only: 30 fails, 30.0 passes), "str", "bool",
        "int_or_pair" (an int or [int, int]), "list[int]", "list[str]"
    prompt_options.train: `--x` options of a training sample-prompt line (training/sampling_prompts.py), in the
        order the parser tries them; prompt_options.generate: those of fpack_generate_video's --from_file lines;
        prompt_options.one_frame: the comma-separated `--of` items the training sampler acts on (target_index and
        control_index take `=N` / `=N;M`); prompt_options.one_frame_generate: the same for fpack_generate_video.
    names: the values musubi-tuner takes as free strings but resolves only after the DiT has loaded, derived by
        running its own factories (`get_optimizer`, `get_lr_scheduler` of training/trainer_base.py) on CPU with one
        tiny parameter and the parser's defaults:
        optimizer_type.case_insensitive: the names get_optimizer matches after lower() (adamw8bit, adafactor, adamw);
        optimizer_type.torch_optim: other names, looked up case-sensitively in torch.optim, that build and step;
        optimizer_type.fails_at_step: torch.optim names that build but fail at the first step, with the error;
        lr_scheduler.names: names that build a scheduler; lr_scheduler.case_insensitive: those matched after lower();
        lr_scheduler.needs: names that build only with another option set (name -> option);
        lr_scheduler.fails: names the code knows that fail whatever is set, with the error;
        lr_scheduler_type: the classes of torch.optim.lr_scheduler (a name without a dot is looked up there).
        A name with a dot ("module.Class") is imported by musubi-tuner as written; the check resolves it where the
        module is installed.
Unknown validators or argument types make `build_schema()` fail, so a new pin cannot silently produce a wrong schema.
It raises `SchemaError` where the schema cannot be built here, naming the missing package where one is the reason
(musubi-tuner importable without bitsandbytes: its own `adamw8bit` fails); `make check` then says so in one line
(checks/keys.py).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import inspect
import io
import json
import logging
import math
import os
import pathlib
import re
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "musubi_schema.json"
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
HELP_CHARS = 200


class SchemaError(Exception):
    """The live schema cannot be built from the importable musubi-tuner. `package`: the missing package where an
    ImportError is the reason (at import, or in one of musubi-tuner's factories), else None."""

    def __init__(self, message: str, package: str | None = None):
        super().__init__(message)
        self.package = package


def missing_package(e: BaseException | None) -> str | None:
    """The top-level package an ImportError, or one it was raised from, could not import (musubi-tuner re-raises
    the ModuleNotFoundError of bitsandbytes as `ImportError("No bitsandbytes")`, which names no module)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ImportError) and e.name:
            return e.name.split(".")[0]
        e = e.__cause__ or e.__context__
    return None


def pinned_commit(pyproject: Path = PYPROJECT) -> str:
    """The musubi-tuner commit in pyproject's [tool.uv.sources]."""
    import tomlkit

    doc = tomlkit.parse(pyproject.read_text())
    return str(doc["tool"]["uv"]["sources"]["musubi-tuner"]["rev"])


@contextlib.contextmanager
def globals_as_found():
    """os.environ and the root logger as they were before. Importing musubi-tuner sets TORCHINDUCTOR_CACHE_DIR,
    TOKENIZERS_PARALLELISM, LD_LIBRARY_PATH and Qt paths in os.environ and configures logging: a process that
    imported it (the tool building a live schema, a test) must not hand those to the programs it starts (a stale
    TORCHINDUCTOR_CACHE_DIR would pass for the user's own and defeat the per-settings compile cache)."""
    env = dict(os.environ)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        if dict(os.environ) != env:
            os.environ.clear()
            os.environ.update(env)
        root.handlers[:] = handlers
        root.setLevel(level)


def import_musubi():
    """Import musubi_tuner's FramePack modules, leaving os.environ and logging as found; on a host without CUDA,
    first stub the one call made at import."""
    import torch

    if not torch.cuda.is_available():
        # wan/modules/t5.py evaluates torch.cuda.current_device() in a default argument at import time.
        torch.cuda.current_device = lambda: 0
    names = (
        "fpack_train_network",
        "fpack_generate_video",
        "fpack_cache_latents",
        "fpack_cache_text_encoder_outputs",
        "cache_latents",
        "cache_text_encoder_outputs",
        "training.parser_common",
        "training.sampling_prompts",
        "dataset.config_utils",
    )
    # The attention-backend probes print at import.
    with globals_as_found(), contextlib.redirect_stdout(io.StringIO()):
        return {n: importlib.import_module(f"musubi_tuner.{n}") for n in names}


class _Captured(Exception):
    def __init__(self, parser):
        self.parser = parser


def _parser_of(build) -> argparse.ArgumentParser:
    """Run a function that builds a parser and calls parse_args() on it; return the parser instead of parsing."""
    original = argparse.ArgumentParser.parse_args

    def capture(self, *args, **kwargs):
        raise _Captured(self)

    argparse.ArgumentParser.parse_args = capture
    try:
        build()
    except _Captured as c:
        return c.parser
    finally:
        argparse.ArgumentParser.parse_args = original
    raise SchemaError(f"{build.__qualname__} did not call parse_args(): update musubi_workspace.schema")


def build_parsers(m: dict) -> dict[str, argparse.ArgumentParser]:
    """The four FramePack parsers, built as each script's main() builds them."""
    fpt, fcl, fct = m["fpack_train_network"], m["fpack_cache_latents"], m["fpack_cache_text_encoder_outputs"]
    return {
        "fpack_train_network": fpt.framepack_setup_parser(m["training.parser_common"].setup_parser_common()),
        "fpack_cache_latents": fcl.framepack_setup_parser(
            m["cache_latents"].hv_setup_parser(m["cache_latents"].setup_parser_common())
        ),
        "fpack_cache_text_encoder_outputs": fct.framepack_setup_parser(
            m["cache_text_encoder_outputs"].setup_parser_common()
        ),
        "fpack_generate_video": _parser_of(m["fpack_generate_video"].parse_args),
    }


_TYPES = {None: "str", str: "str", int: "int", float: "float", pathlib.Path: "path"}


def _type_name(t) -> str:
    if t in _TYPES:
        return _TYPES[t]
    if getattr(t, "__name__", "") == "_int_or_float":
        return "int_or_float"
    raise SchemaError(f"unknown argparse type {t!r}: give it a name in musubi_workspace.schema")


def _json_value(v):
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    return repr(v)


def _help(text) -> str:
    text = " ".join(str(text or "").split())
    # "English / 日本語": keep the English, up to the last "/" before the first CJK character.
    first = next((i for i, ch in enumerate(text) if ord(ch) >= 0x3000), None)
    if first is not None and "/" in text[:first]:
        text = text[: text.rindex("/", 0, first)].rstrip()
    return text[:HELP_CHARS]


def describe_action(a: argparse.Action) -> dict:
    if isinstance(a, argparse._StoreTrueAction):
        kind = "store_true"
    elif isinstance(a, argparse._StoreFalseAction):
        kind = "store_false"
    elif type(a) is argparse._StoreAction:
        kind = "value"
    else:
        kind = "other"
    takes_value = kind in ("value", "other") and a.nargs != 0
    return {
        "flags": list(a.option_strings),
        "kind": kind,
        "type": _type_name(a.type) if takes_value else None,
        "nargs": a.nargs if takes_value else None,
        "choices": _json_value(list(a.choices)) if a.choices is not None else None,
        "default": _json_value(a.default),
        "required": bool(a.required),
        "help": _help(a.help),
    }


def describe_parser(p: argparse.ArgumentParser) -> dict:
    return {a.dest: describe_action(a) for a in p._actions if not isinstance(a, argparse._HelpAction)}


def _validator_name(v) -> str:
    simple = {int: "int", float: "float", str: "str", bool: "bool"}
    if isinstance(v, type) and v in simple:
        return simple[v]
    if isinstance(v, list) and len(v) == 1 and isinstance(v[0], type) and v[0] in simple:
        return f"list[{simple[v[0]]}]"
    if isinstance(v, functools.partial) and v.args == (int,) and "scalar_or_twodim" in v.func.__name__:
        return "int_or_pair"
    raise SchemaError(f"unknown dataset validator {v!r}: give it a name in musubi_workspace.schema")


def describe_dataset(config_utils) -> dict:
    """The merged schemas a ConfigSanitizer validates [general] and image / video [[datasets]] entries with."""
    s = config_utils.ConfigSanitizer()
    schemas = {"general": s.general_schema, "image": s.image_dataset_schema, "video": s.video_dataset_schema}
    return {part: {k: _validator_name(v) for k, v in schema.items()} for part, schema in schemas.items()}


def _unique(items) -> list:
    return list(dict.fromkeys(items))


def _code_lines(obj) -> str:
    """Source of obj without comment-only lines (commented-out options are not accepted)."""
    return "\n".join(line for line in inspect.getsource(obj).splitlines() if not line.lstrip().startswith("#"))


def describe_prompt_options(m: dict) -> dict:
    train_src = _code_lines(m["training.sampling_prompts"].line_to_prompt_dict)
    gen_src = _code_lines(m["fpack_generate_video"].parse_prompt_line)
    one_frame = re.compile(r'"(\w+)"\s+(?:not\s+)?in\s+one_frame_inference|startswith\("(\w+)="\)')

    def one_frame_items(obj) -> list[str]:
        return sorted({a or b for a, b in one_frame.findall(_code_lines(obj))})

    return {
        "train": _unique(re.findall(r're\.match\(r"(\w+) ', train_src)),
        "generate": _unique(re.findall(r'option == "(\w+)"', gen_src)),
        "one_frame": one_frame_items(m["fpack_train_network"].FramePackNetworkTrainer),
        "one_frame_generate": one_frame_items(m["fpack_generate_video"].generate_with_one_frame_inference),
    }


# lr_scheduler names that fail with the parser's defaults are built again with each of these settings; a name
# that builds with one needs that option.
SCHEDULER_NEEDS = {"lr_scheduler_min_lr_ratio": 0.1, "lr_scheduler_args": ["step_rules='1:10,0.1'"]}


def _error(e: Exception) -> str:
    """`TypeError: ...`, English only (musubi-tuner appends a Japanese translation after " / "), one line."""
    return f"{type(e).__name__}: {_help(str(e))}"[:HELP_CHARS]


class _Factories:
    """musubi-tuner's own get_optimizer and get_lr_scheduler, called as its trainer calls them, on CPU: the
    options are the parser's defaults plus what a probe sets, the parameters one 4x4 tensor."""

    def __init__(self, m: dict):
        import torch

        self.torch = torch
        self.cls = m["fpack_train_network"].FramePackNetworkTrainer
        self.base = sys.modules[self.cls.get_lr_scheduler.__module__]  # training/trainer_base.py, as imported
        self.trainer = self.cls.__new__(self.cls)  # the factories read only their arguments
        self.parser = build_parsers(m)["fpack_train_network"]
        self.failure: Exception | None = None  # the exception behind the last error returned

    def args(self, **values) -> argparse.Namespace:
        a = self.parser.parse_args([])
        for k, v in values.items():
            setattr(a, k, v)
        return a

    def params(self) -> list:
        return [{"params": [self.torch.nn.Parameter(self.torch.zeros(4, 4))], "lr": 1e-4}]

    def optimizer_error(self, name: str) -> str | None:
        """None when the optimizer builds and takes a step; else "build: ..." or "step: ..."."""
        try:
            optimizer = self.trainer.get_optimizer(self.args(optimizer_type=name, learning_rate=1e-4), self.params())[2]
        except Exception as e:  # noqa: BLE001 - any failure of musubi-tuner's factory is the answer
            self.failure = e
            return "build: " + _error(e)
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = self.torch.ones_like(p)
        try:
            optimizer.step()
        except Exception as e:  # noqa: BLE001
            return "step: " + _error(e)
        return None

    def scheduler_error(self, name: str, **extra) -> str | None:
        optimizer = self.torch.optim.AdamW(self.params())
        try:
            self.trainer.get_lr_scheduler(self.args(lr_scheduler=name, learning_rate=1e-4, **extra), optimizer, 1)
        except Exception as e:  # noqa: BLE001
            return _error(e)
        return None


def describe_names(m: dict) -> dict:
    """Accepted optimizer_type / lr_scheduler / lr_scheduler_type names (see the module docstring): candidates read
    off the factories' source and the libraries they use, kept where the factory builds them."""
    import logging

    f = _Factories(m)
    logging.disable(logging.WARNING)  # the factories log every name they build
    try:
        opt_src = _code_lines(f.cls.get_optimizer)
        builtin = sorted({n.lower() for n in re.findall(r'optimizer_type == "(\w+)"\.lower\(\)', opt_src)})
        for name in builtin:
            if (err := f.optimizer_error(name)) is not None:
                package = missing_package(f.failure) if err.startswith("build: ") else None
                fix = "" if package else ": update musubi_workspace.schema"
                raise SchemaError(f"get_optimizer's own name {name!r} fails here: {err}{fix}", package)
        torch_optim, fails_at_step = [], {}
        optim = f.torch.optim
        for name in sorted(n for n in dir(optim) if isinstance(getattr(optim, n), type)):
            if name.lower() in builtin:
                continue  # get_optimizer catches these first, whatever the case
            err = f.optimizer_error(name)
            if err is None:
                torch_optim.append(name)
            elif err.startswith("step: "):
                fails_at_step[name] = err[len("step: ") :]

        sched_src = _code_lines(f.cls.get_lr_scheduler)
        case_insensitive = sorted(set(re.findall(r'name\.lower\(\) == "(\w+)"', sched_src)))
        diffusers = f.base.DiffusersSchedulerType
        candidates = _unique(
            [t.value for t in f.base.SchedulerType]
            + case_insensitive
            + [diffusers[n].value for n in re.findall(r"DiffusersSchedulerType\.(\w+)\.value", sched_src)]
            + re.findall(r'name\.startswith\("(\w+)"\)', sched_src)
        )
        names, needs, fails = [], {}, {}
        for name in candidates:
            err = f.scheduler_error(name)
            if err is None:
                names.append(name)
            elif option := next(
                (k for k, v in SCHEDULER_NEEDS.items() if f.scheduler_error(name, **{k: v}) is None), None
            ):
                needs[name] = option
            else:
                fails[name] = err
    finally:
        logging.disable(logging.NOTSET)
    lr = optim.lr_scheduler
    lr_classes = sorted(
        n
        for n in dir(lr)
        if not n.startswith("_")
        and n != "LRScheduler"
        and isinstance(getattr(lr, n), type)
        and (issubclass(getattr(lr, n), lr.LRScheduler) or n == "ReduceLROnPlateau")
    )
    return {
        "optimizer_type": {"case_insensitive": builtin, "torch_optim": torch_optim, "fails_at_step": fails_at_step},
        "lr_scheduler": {"names": sorted(names), "case_insensitive": case_insensitive, "needs": needs, "fails": fails},
        "lr_scheduler_type": lr_classes,
    }


def installed_commit() -> str | None:
    """The commit of the installed musubi-tuner, where its install records one (git install or local git clone)."""
    from importlib import metadata

    try:
        info = json.loads(metadata.distribution("musubi-tuner").read_text("direct_url.json") or "{}")
    except metadata.PackageNotFoundError:
        return None
    if "vcs_info" in info:
        return info["vcs_info"].get("commit_id")
    url = info.get("url", "")
    if url.startswith("file://"):
        git = subprocess.run(
            ["git", "-C", url[len("file://") :], "rev-parse", "HEAD"], capture_output=True, text=True, check=False
        )
        return git.stdout.strip() if git.returncode == 0 else None
    return None


def build_schema(commit: str | None = None) -> dict:
    """The schema of the importable musubi-tuner, recorded under `commit` (default: pyproject's pin, which must
    match the installed musubi-tuner's commit where that is known; without a pyproject, the installed commit)."""
    try:
        m = import_musubi()
    except ImportError as e:
        package = missing_package(e)
        raise SchemaError(f"importing musubi_tuner fails: {_error(e)}", package) from e
    if commit is None:
        installed = installed_commit()
        commit = pinned_commit() if PYPROJECT.is_file() else installed
        if installed and installed != commit:
            from musubi_workspace.errors import WorkspaceError

            raise WorkspaceError(f"musubi-tuner installed here is {installed}, pyproject pins {commit}: sync first")
    return {
        "musubi_tuner_commit": commit,
        "parsers": {name: describe_parser(p) for name, p in build_parsers(m).items()},
        "dataset": describe_dataset(m["dataset.config_utils"]),
        "prompt_options": describe_prompt_options(m),
        "names": describe_names(m),
    }


def dumps(schema: dict) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_schema(path=DATA, commit: str | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(build_schema(commit)), encoding="utf-8")
    return path


def load_schema(path=DATA) -> dict:
    """The committed schema; needs no musubi-tuner."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m musubi_workspace.schema", description="write the musubi-tuner schema")
    p.add_argument("--out", default=str(DATA), help=f"where to write it (default: {DATA})")
    p.add_argument("--commit", default=None, help="commit to record (default: pyproject's [tool.uv.sources] rev)")
    args = p.parse_args(argv)
    try:
        out = write_schema(args.out, args.commit)
    except SchemaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
