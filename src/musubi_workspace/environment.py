"""The environment the workspace's programs run in: `.env` secrets, PATH, and redaction.

Secrets reach child programs through their environment only, never their command line. `redact` removes every
secret value from text before it is shown, logged or recorded.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import sys
from pathlib import Path

from musubi_workspace.errors import WorkspaceError
from musubi_workspace.paths import Workspace

# Variables whose values are secrets wherever they come from.
SECRET_NAMES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY", "RUNPOD_API_KEY")
SECRET_NAME_RE = re.compile(r"(TOKEN|API_KEY|SECRET|PASSWORD)", re.I)
# Shapes of tokens, to catch one pasted where it does not belong (a config file, a log).
TOKEN_SHAPES = (
    re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),
    re.compile(r"\b(?:rpa|rps)_[A-Za-z0-9]{30,}\b"),
    re.compile(r"\b[0-9a-f]{40}\b(?=\s*$)"),  # a wandb key on its own
)


def read_dotenv(path: Path) -> dict[str, str]:
    """The variables of a `.env` file, read by python-dotenv itself: its rules for `export `, quotes (escapes,
    values over several lines), `#` comments (after a space, outside quotes) and `${VAR}` expansion are the ones
    users know from every other tool that reads `.env`. A key without `=` (no value) is left out. A line
    python-dotenv cannot read is one error naming the line (python-dotenv would only warn and skip it)."""
    if not path.is_file():
        return {}
    from dotenv import dotenv_values
    from dotenv.parser import parse_stream

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise WorkspaceError(f"{path.name}:{line}: not UTF-8 text; save the file as UTF-8") from None
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            # python-dotenv counts a binding from the blank lines before it; the line meant is the first with text
            text_at = binding.original.string
            blank = text_at[: len(text_at) - len(text_at.lstrip())]
            line = binding.original.line + len(re.findall(r"\r\n|\n|\r", blank))
            raise WorkspaceError(f"{path.name}:{line}: {_unreadable(text_at)}")
    return {k: v for k, v in dotenv_values(stream=io.StringIO(text)).items() if v is not None}


def _unreadable(line: str) -> str:
    """Why python-dotenv cannot read a line, without repeating the line (it may hold a secret)."""
    body = re.sub(r"^\s*export\s+", "", line.strip())
    key, eq, value = body.partition("=")
    value = value.strip()
    if eq and key.strip() and value[:1] in ("'", '"'):
        if value.find(value[0], 1) < 0:
            return f"the value's opening {value[0]} is never closed; close the quote (or remove it)"
        return "text after the closing quote; start a comment with ` #` or put all of the value inside the quotes"
    return "expected KEY=VALUE (`export KEY=VALUE`, a `# comment`, or a blank line); fix or remove the line"


def child_env(ws: Workspace, base: dict[str, str] | None = None) -> dict[str, str]:
    """os.environ, plus `.env` values the environment does not already set, plus the venv's bin on PATH.

    The venv's bin folder goes first on PATH unless PATH already holds it, so `accelerate` and `python` are the
    workspace's own (with musubi-tuner) and not a system copy.
    """
    env = dict(os.environ if base is None else base)
    for key, value in read_dotenv(ws.env_file).items():
        if value and not env.get(key):
            env[key] = value
    venv_bin = str(Path(sys.executable).parent)
    parts = env.get("PATH", "").split(os.pathsep) if env.get("PATH") else []
    if venv_bin not in parts:
        env["PATH"] = os.pathsep.join([venv_bin, *parts])
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def secret_values(env: dict[str, str]) -> list[str]:
    """Values to hide: every variable named like a secret, at least 6 characters long."""
    found = {v for k, v in env.items() if (k in SECRET_NAMES or SECRET_NAME_RE.search(k)) and v and len(v) >= 6}
    return sorted(found, key=len, reverse=True)


def is_secret(name: str) -> bool:
    return name in SECRET_NAMES or bool(SECRET_NAME_RE.search(name))


def pasteable(argv: list[str], env: dict[str, str], base: dict[str, str] | None = None) -> tuple[str, list[str]]:
    """`argv` as one line a shell started from `base` (default: this process's environment, the user's shell)
    reads as the run: every variable `env` sets otherwise (the workspace's additions: PATH, the compile
    environment, the launcher's WS_*, .env values the shell lacks) in front as `VAR=value`, quoted as a shell
    reads it; PATH as `PATH=<added>:"$PATH"` when the run's PATH is the shell's with folders in front. A variable
    `env` drops starts an `env -u VAR` prefix. Secrets are never printed: the second value names the ones the
    run gets that the shell lacks (from .env), so the caller can say where they come from."""
    base = dict(os.environ if base is None else base)
    secrets = set(secret_values(env))
    missing: list[str] = []
    parts = [f"-u {shlex.quote(k)}" for k in base if k not in env]
    parts = ["env", *parts] if parts else []
    for key, value in env.items():
        if base.get(key) == value:
            continue
        if is_secret(key) or any(s in value for s in secrets):
            missing.append(key)
            continue
        old = base.get("PATH") or ""
        if key == "PATH" and old and value.endswith(os.pathsep + old):
            parts.append(f'PATH={shlex.quote(value[: -len(old)])}"$PATH"')
        else:
            parts.append(f"{key}={shlex.quote(value)}")
    return " ".join([*parts, shlex.join(argv)]), missing


def redact(text: str, secrets: list[str]) -> str:
    for value in secrets:
        text = text.replace(value, "***")
    for shape in TOKEN_SHAPES[:2]:
        text = shape.sub("***", text)
    return text
