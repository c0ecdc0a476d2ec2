"""The environment the workspace's programs run in: `.env` secrets, PATH, and redaction.

Secrets reach child programs through their environment only, never their command line. `redact` removes every
secret value from text before it is shown, logged or recorded.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from .errors import WorkspaceError
from .paths import Workspace

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
    """KEY=VALUE lines of a .env file; `#` comments, `export ` prefixes and quotes allowed."""
    values: dict[str, str] = {}
    if not path.exists():
        return values
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].strip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise WorkspaceError(f".env:{n}: expected KEY=VALUE; fix or remove the line")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


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


def redact(text: str, secrets: list[str]) -> str:
    for value in secrets:
        text = text.replace(value, "***")
    for shape in TOKEN_SHAPES[:2]:
        text = shape.sub("***", text)
    return text
