"""The environment every compiled run gets (`compile = true`): the variables of `data/compile_env.toml`.

One place decides the set; `make train`, `make resume` (and `make train-bg`, which runs `make train`) and each
compiled candidate of `make tune` and `make bench` take it from `compile_run_env`. A variable the user already set
(environment or `.env`) is kept as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

from musubi_workspace.config import tomllib
from musubi_workspace.errors import WorkspaceError

DATA = Path(__file__).resolve().parent / "data" / "compile_env.toml"


@dataclass(frozen=True)
class CompileVar:
    name: str
    value: str
    why: str
    verified: str


@cache
def compile_vars(path: Path = DATA) -> tuple[CompileVar, ...]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        return tuple(
            CompileVar(name=str(v["name"]), value=str(v["value"]), why=str(v["why"]), verified=str(v["verified"]))
            for v in data.get("variable", [])
        )
    except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError) as e:
        raise WorkspaceError(
            f"{path.name}: cannot read the compile environment ({e.__class__.__name__}: {e})"
        ) from None


def compile_run_env(compiled: bool, env: dict[str, str]) -> dict[str, str]:
    """The variables to add for a run: none unless `compiled`; none that `env` already sets (the user's own)."""
    if not compiled:
        return {}
    return {v.name: v.value for v in compile_vars() if v.name not in env}
