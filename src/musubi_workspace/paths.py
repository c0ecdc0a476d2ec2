"""Every location the workspace uses, relative to one root.

The root is the folder holding the Makefile: the current directory when make runs the tool, or `WS_ROOT`
(tests point it at a temporary copy).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

VERSION_RE = re.compile(r"^v(\d+)$")


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def find(cls) -> Workspace:
        return cls(Path(os.environ.get("WS_ROOT") or os.getcwd()).resolve())

    @property
    def configs(self) -> Path:
        return self.root / "configs"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def locks(self) -> Path:
        """The run locks (runs/lock.py), in the workspace tool's git-ignored cache."""
        return self.root / ".cache" / "ws" / "locks"

    @property
    def env_file(self) -> Path:
        return self.root / ".env"

    def rel(self, path: Path | str) -> str:
        """`path` as the user would type it: relative to the root when it lies inside it."""
        p = Path(path)
        try:
            return str(p.resolve().relative_to(self.root))
        except ValueError:
            return str(p)

    def resolve(self, value: str | Path) -> Path:
        """A path from a config value: relative paths are relative to the root (musubi-tuner runs there)."""
        p = Path(os.path.expanduser(str(value)))
        return p if p.is_absolute() else self.root / p

    def versions(self) -> list[str]:
        """`v1`, `v2`, ... present under configs/, in numeric order."""
        if not self.configs.is_dir():
            return []
        found = [
            (int(m.group(1)), d.name) for d in self.configs.iterdir() if d.is_dir() and (m := VERSION_RE.match(d.name))
        ]
        return [name for _, name in sorted(found)]
