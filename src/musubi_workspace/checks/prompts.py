"""Check 5: sample prompts, read the way musubi-tuner's training sampler reads a prompts.txt line.

musubi-tuner splits a line on " --", takes the first piece as the prompt and matches each other piece against its
options by a regex at its start; a piece that matches none, or a number that does not parse, is ignored without a
word. Here each of those is a finding, and every image a line names must exist and decode.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from musubi_workspace.checks.data import scan
from musubi_workspace.checks.images import ImageCache
from musubi_workspace.checks.keys import schema_of
from musubi_workspace.config import suggest
from musubi_workspace.dataset import missing_file, utf8_problem

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

if TYPE_CHECKING:
    from musubi_workspace.checks.findings import Context

# What each option's value must look like (the regex musubi-tuner matches it with, whole).
WHOLE = {"w": "width", "h": "height", "f": "frame count", "d": "seed", "s": "steps"}
DECIMAL = {"g": "guidance scale", "fs": "flow shift", "l": "CFG scale"}
IMAGES = ("i", "ci")  # start image, control images: opened by the sampler
FILES = ("ei", "cn")  # parsed, unused by FramePack: only their existence is checked


@dataclass
class PromptLine:
    number: int
    prompt: str
    options: dict[str, list[str]] = field(default_factory=dict)  # name -> values, in order (--ci repeats)
    problems: list[str] = field(default_factory=list)

    def first(self, name: str) -> str | None:
        values = self.options.get(name)
        return values[0] if values else None


def parse_line(number: int, line: str, known: list[str], one_frame_items: list[str]) -> PromptLine:
    """One prompts.txt line as musubi-tuner's `line_to_prompt_dict` reads it, with what it would silently ignore."""
    pieces = line.split(" --")
    p = PromptLine(number, pieces[0].strip())
    if not p.prompt:
        p.problems.append("no prompt text before the first --option; write the prompt first")
    for piece in pieces[1:]:
        name, _, value = piece.strip().partition(" ")
        name, value = name.lower(), value.strip()
        if not name:
            p.problems.append("an empty `--`: remove it")
            continue
        if name not in known:
            p.problems.append(
                f"unknown option `--{name}`{suggest(name, known)}; musubi-tuner ignores it (known: {' '.join('--' + k for k in known)})"
            )
            continue
        if not value:
            p.problems.append(f"`--{name}` has no value")
            continue
        if name in WHOLE and not re.fullmatch(r"\d+", value):
            p.problems.append(
                f"`--{name}` takes a whole number ({WHOLE[name]}), got {value!r}; musubi-tuner would ignore or cut it"
            )
            continue
        if name in DECIMAL and not re.fullmatch(r"\d+(\.\d*)?|\.\d+", value):
            p.problems.append(
                f"`--{name}` takes a number ({DECIMAL[name]}), got {value!r}; musubi-tuner would ignore or cut it"
            )
            continue
        if name == "of":
            p.problems += one_frame_problems(value, one_frame_items)
        p.options.setdefault(name, []).append(value)
    return p


def one_frame_problems(value: str, known: list[str]) -> list[str]:
    """`--of no_2x,no_4x,target_index=1,control_index=0;10`: items the sampler acts on, numbers where they go."""
    out = []
    for item in (i.strip() for i in value.split(",")):
        key, eq, arg = item.partition("=")
        if key not in known:
            out.append(
                f"`--of` item `{item}` is unknown{suggest(key, known)}; musubi-tuner ignores it (known: {', '.join(known)})"
            )
        elif key == "target_index" and not re.fullmatch(r"\d+", arg):
            out.append(f"`--of` target_index takes a whole number, e.g. target_index=1; got `{item}`")
        elif key == "control_index" and not re.fullmatch(r"\d+(;\d+)*", arg):
            out.append(f"`--of` control_index takes numbers separated by `;`, e.g. control_index=0;10; got `{item}`")
        elif key not in ("target_index", "control_index") and eq:
            out.append(f"`--of` item `{key}` takes no value; got `{item}`")
    return out


def read_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the prompt lines: blank lines and lines with # in the first column skipped."""
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip() and line[0] != "#":
            out.append((n, line.strip()))
    return out


def check_prompts(ctx: Context) -> str | None:
    """Check 5: every line parses, names images that exist, and fits one_frame; samples are held out."""
    cfg, report, ws = ctx.cfg, ctx.report, ctx.cfg.ws
    value = cfg.get("sample_prompts")
    if not isinstance(value, str) or not value:
        return "no sample_prompts set"
    path = ws.resolve(value)
    if not path.is_file():
        return "sample_prompts not found (see above)"
    shown = ws.rel(path)
    if path.suffix in (".toml", ".json"):
        try:
            tomllib.loads(path.read_text(encoding="utf-8")) if path.suffix == ".toml" else json.loads(
                path.read_text(encoding="utf-8")
            )
        except (ValueError, tomllib.TOMLDecodeError) as e:
            report.error(shown, f"does not parse ({e}); fix it")
        return f"{path.suffix} prompt files are parsed, their entries not checked; prompts.txt gets every check"
    if path.suffix != ".txt":
        report.error(
            cfg.where("sample_prompts"),
            f"sample_prompts {shown}: musubi-tuner reads .txt, .toml or .json prompt files only (others crash); rename it",
        )
        return None
    if problem := utf8_problem(path):
        report.error(shown, problem.replace("while caching", "when it reads the prompts"))
        return None
    schema = schema_of(ctx)["prompt_options"]
    one_frame = cfg.get("one_frame") is True
    window = cfg.get("latent_window_size", 9) if isinstance(cfg.get("latent_window_size"), int) else 9
    min_frames = window * 4 + 1
    lines = [parse_line(n, text, schema["train"], schema["one_frame"]) for n, text in read_lines(path)]
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if raw.strip().startswith("#") and raw[0] != "#":
            report.warn(f"{shown}:{n}", "an indented comment is read as a prompt; put # in the first column")
    if not lines:
        report.error(shown, "no prompt lines: sampling fails; add a line or remove sample_prompts")
        return None
    images: list[tuple[PromptLine, str, Path]] = []
    for p in lines:
        where = f"{shown}:{p.number}"
        for problem in p.problems:
            report.error(where, problem)
        if p.first("i") is None:
            report.error(
                where, "no start image: FramePack samples need `--i path/to/start.png` (sampling fails without it)"
            )
        if one_frame and p.first("of") is None:
            report.error(
                where,
                "one_frame = true needs `--of` on every prompt (e.g. --of target_index=1,control_index=0); sampling fails without it",
            )
        if not one_frame:
            if p.first("of") is not None:
                report.warn(where, f"`--of` is used only with one_frame = true in {cfg.shown}; it is ignored here")
            frames = int(p.first("f") or 1)
            if frames < min_frames:
                report.warn(
                    where,
                    f"{frames} frame(s): a video sample needs `--f {min_frames}` or more (latent_window_size {window}); musubi-tuner renders nothing",
                )
        for name in (*IMAGES, *FILES):
            for v in p.options.get(name, []):
                file = ws.resolve(v)
                if not file.is_file():
                    report.error(where, f"--{name} {v} {missing_file(file)}")
                elif name in IMAGES:
                    images.append((p, name, file))
    facts = ctx.memo("images", lambda: ImageCache(ws)).facts([f for _, _, f in images])
    training = {}
    for item in scan(ctx).items:
        for role, path_ in [("target", item.target)] + [("control", c) for c in item.control_paths]:
            f = scan(ctx).images.get(path_)
            if f and f.digest:
                training.setdefault(f.digest, (role, item.where))
    for p, name, file in images:
        where = f"{shown}:{p.number}"
        f = facts.get(file)
        if f is None:
            continue
        if f.error:
            report.error(where, f"--{name} {ws.rel(file)} cannot be read as an image ({f.error}); replace it")
        elif f.digest in training:
            role, item_where = training[f.digest]
            report.warn(
                where,
                f"--{name} {ws.rel(file)} is a training {role} image ({item_where}): the sample shows recall, not "
                "generalisation; use a held-out image",
            )
    return None
