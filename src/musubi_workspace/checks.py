"""`make check`: find the mistakes that would waste a GPU run, before it starts.

Each check is a function `(ctx) -> None` that adds findings to a `Report`; `run_checks` runs them all in
order and keeps going, so one pass reports every problem. `preflight` is what cache, train and generate run
first: it stops on errors.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable

from .combos import check_combinations, check_gpu_memory
from .config import Config
from .errors import EXIT_CHECK, WorkspaceError

ERROR, WARNING = "error", "warning"
# Findings about the machine rather than the version (model files present, credentials, GPU, disk): a dry run
# needs none of them, so DRY_RUN reports them as warnings.
MACHINE = "machine"

MODEL_KEYS = ("dit", "vae", "text_encoder1", "text_encoder2", "image_encoder")


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

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == WARNING]


@dataclass
class Context:
    cfg: Config
    report: Report
    dry_run: bool = False


def check_models(ctx: Context) -> None:
    """Model files named by the config exist."""
    cfg = ctx.cfg
    for key in MODEL_KEYS:
        path = cfg.path_of(key)
        if path is None:
            ctx.report.error(cfg.where(key), f"`{key}` is not set; add `{key} = \"models/...\"` (see configs/v1)")
        elif not path.exists():
            ctx.report.error(
                cfg.where(key), f"{key} {cfg.ws.rel(path)} not found; run `make models` to download it", kind=MACHINE
            )


def check_dataset_config(ctx: Context) -> None:
    """dataset.toml exists and parses."""
    cfg = ctx.cfg
    try:
        cfg.load_dataset()
    except WorkspaceError as e:
        ctx.report.error(cfg.where("dataset_config"), e.message.split(": ", 1)[-1] if e.message.startswith(cfg.shown) else e.message)


CHECKS: list[tuple[str, Callable[[Context], None]]] = [
    ("model files", check_models),
    ("dataset.toml", check_dataset_config),
    ("option combinations", check_combinations),
    ("GPU memory", check_gpu_memory),
]


def run_checks(cfg: Config, dry_run: bool = False, strict: bool = False, out=None) -> Report:
    """Run every check; print `[i/N] name ✓/✗` per check and one line per finding; return the report."""
    out = out or sys.stdout
    report = Report()
    ctx = Context(cfg=cfg, report=report, dry_run=dry_run)
    for i, (name, check) in enumerate(CHECKS, 1):
        before = len(report.findings)
        check(ctx)
        new = report.findings[before:]
        if dry_run:
            for f in new:
                if f.kind == MACHINE and f.severity == ERROR:
                    f.severity = WARNING
                    f.message += " (dry run: not needed now)"
        if strict:
            for f in new:
                f.severity = ERROR
        mark = "✗" if any(f.severity == ERROR for f in new) else ("!" if new else "✓")
        print(f"[{i}/{len(CHECKS)}] {name} {mark}", file=out)
        for f in new:
            print(f"  {f.line()}", file=out)
    n_err, n_warn = len(report.errors), len(report.warnings)
    verdict = "FAILED" if n_err else "OK"
    print(f"check {cfg.shown}: {verdict}: {n_err} error(s), {n_warn} warning(s)", file=out)
    return report


def check(cfg: Config, dry_run: bool = False, strict: bool = False) -> None:
    """`make check`: exit non-zero on errors."""
    report = run_checks(cfg, dry_run=dry_run, strict=strict)
    if report.errors:
        raise WorkspaceError(f"{cfg.shown}: {len(report.errors)} error(s) found by `make check`; fix them and run again", EXIT_CHECK)


def preflight(cfg: Config, target: str, dry_run: bool = False, strict: bool = False) -> None:
    """What cache, train and generate run first: the same checks; stop on errors."""
    report = run_checks(cfg, dry_run=dry_run, strict=strict, out=sys.stderr)
    if report.errors:
        raise WorkspaceError(
            f"{cfg.shown}: `make {target}` stopped before starting: {len(report.errors)} error(s) above; fix them (`make check`) and run again",
            EXIT_CHECK,
        )
