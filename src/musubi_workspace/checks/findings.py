"""What `make check` reports: findings (one line each), the report that collects them, and the context a check
reads. Kept apart from checks.py so the modules that hold the checks import it without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from musubi_workspace.config import Config

ERROR, WARNING, NOTE = "error", "warning", "note"
# Findings about the machine rather than the version (model files present, credentials, GPU, disk): a dry run
# needs none of them, so DRY_RUN reports them as warnings.
MACHINE = "machine"
# At most this many findings of one kind per dataset (missing captions, unreadable images ...), then one line
# with the count of the rest: a folder of 1,000 uncaptioned images should not print 1,000 lines.
LISTED = 5


@dataclass
class Finding:
    severity: str
    where: str  # file:line, file:key or file
    message: str  # what is wrong and what to do
    kind: str = "version"

    def line(self) -> str:
        return f"{self.severity}: {self.where}: {self.message}"


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)

    def error(self, where: str, message: str, kind: str = "version") -> None:
        self.findings.append(Finding(ERROR, where, message, kind))

    def warn(self, where: str, message: str, kind: str = "version") -> None:
        self.findings.append(Finding(WARNING, where, message, kind))

    def note(self, where: str, message: str, kind: str = "version") -> None:
        """Something to know that is not wrong (STRICT leaves notes alone)."""
        self.findings.append(Finding(NOTE, where, message, kind))

    def listed(self, severity: str, items: list[tuple[str, str]], rest: str, where: str) -> None:
        """One finding per (where, message) up to LISTED, then one line `rest` (formatted with the count)."""
        add = self.error if severity == ERROR else self.warn
        items = list(dict.fromkeys(items))
        for w, m in items[:LISTED]:
            add(w, m)
        if len(items) > LISTED:
            add(where, rest.format(n=len(items) - LISTED))

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == WARNING]

    @property
    def notes(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == NOTE]


@dataclass
class Context:
    """What every check reads: the version, the report, the mode, and results shared between checks."""

    cfg: Config
    report: Report
    dry_run: bool = False
    # The target the checks run for: "check", or "cache", "train", "generate" (their preflight).
    target: str = "check"
    _memo: dict = field(default_factory=dict)

    def memo(self, key: str, make: Callable[[], Any]) -> Any:
        """`make()` once per run (the dataset scan is read by several checks)."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    @property
    def env(self) -> dict[str, str]:
        """The environment the programs get: os.environ plus .env."""
        from musubi_workspace.environment import child_env

        return self.memo("env", lambda: child_env(self.cfg.ws))

    def for_training(self) -> bool:
        return self.target in ("check", "train")
