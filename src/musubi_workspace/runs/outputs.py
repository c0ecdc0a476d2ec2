"""A version's outputs are never overwritten: `make train` (and `make train-bg`) stop before anything runs when
output_dir already holds files of this output_name from an earlier run, and `RESTART=1` moves those files aside.

musubi-tuner writes, per output_name N (see `resume.py` for the `-resume{S}` names of `make resume`):
LoRAs `N.safetensors`, `N-{epoch:06d}.safetensors`, `N-step{step:08d}.safetensors` in output_dir; state folders
`N-state`, `N-{epoch:06d}-state`, `N-step{step:08d}-state` beside them; samples `sample/N_{tag}_{NN}_{time}…` in
output_dir/sample; with a validation set, `<LoRA stem>.validation.json` beside each LoRA and the series
`N[-resume{S}].validation.jsonl` in output_dir; and `make generate` renders into `generate/<LoRA name>_x<multiplier>/`. A second `make train`
with the same output_name writes the same LoRA and state names: the earlier run's files would be replaced.

`RESTART=1` moves them, keeping their places below output_dir, into `output_dir/earlier-<UTC time>/` (a rename on
the same disk: nothing is copied or deleted) and the new run record lists what moved (`restart`). Tensorboard
logs stay in logging_dir (each run logs to its own folder); `make report` tells the runs apart by their records.

The run record holds the sha256 of config.toml, dataset.toml and prompts.txt (`ledger.version_files`): a
refusal names the ones that changed since the version's last training run, and `make resume` warns about them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from musubi_workspace.config import Config
from musubi_workspace.errors import EXIT_USER, WorkspaceError

# The folder RESTART=1 moves an earlier run's files into, beside them in output_dir: earlier-20261203T102000Z.
EARLIER = "earlier-"
EARLIER_RE = re.compile(r"^earlier-(\d{8}T\d{6}Z)(?:-\d+)?$")
# Names shown in the one-line refusal before "+N more".
SHOWN = 4


def output_patterns(name: str) -> dict[str, re.Pattern]:
    """Kind -> the names musubi-tuner (and `make resume`, `make generate`) give this output_name's outputs."""
    n = re.escape(name)
    own = rf"{n}(?:-resume\d+)?"
    return {
        "LoRA": re.compile(rf"^{own}(?:-step\d{{8}}|-\d{{6}})?\.safetensors$"),
        "state": re.compile(rf"^{own}(?:-step\d{{8}}|-\d{{6}})?-state$"),
        # validation.records: the JSON beside each LoRA and the run's series in output_dir
        "validation": re.compile(rf"^{own}(?:(?:-step\d{{8}}|-\d{{6}})?\.validation\.json|\.validation\.jsonl)$"),
        "sample": re.compile(rf"^{own}_e?\d{{6,}}_\d{{2,}}_\d{{14}}"),
        "generated": re.compile(rf"^{own}(?:-step\d{{8}}|-\d{{6}})?_x[\d.]+$"),
    }


@dataclass(frozen=True)
class Earlier:
    """What output_dir holds of an output_name: paths relative to output_dir, by kind."""

    output_dir: Path
    output_name: str
    found: dict[str, list[str]]

    @property
    def paths(self) -> list[str]:
        return [p for kind in ("LoRA", "state", "validation", "sample", "generated") for p in self.found.get(kind, [])]

    def __bool__(self) -> bool:
        # validation numbers alone (a run that saved no LoRA) are no earlier run to guard; they move with the rest
        return any(self.found.get(k) for k in ("LoRA", "state", "sample", "generated"))

    def summary(self) -> str:
        """`3 LoRA(s), 2 state(s), 9 sample(s): a.safetensors, a-state/, ... +10 more`."""
        counts = ", ".join(f"{len(v)} {k}(s)" for k, v in self.found.items() if v)
        names = [p + ("/" if (self.output_dir / p).is_dir() else "") for p in self.paths]
        more = f", +{len(names) - SHOWN} more" if len(names) > SHOWN else ""
        return f"{counts}: {', '.join(names[:SHOWN])}{more}"


def find_earlier(cfg: Config) -> Earlier | None:
    """This output_name's outputs in output_dir (None without output_dir/output_name: nothing to guard)."""
    out, name = cfg.path_of("output_dir"), cfg.get("output_name")
    if out is None or not isinstance(name, str) or not name:
        return None
    pats = output_patterns(name)
    found: dict[str, list[str]] = {k: [] for k in pats}
    places = {"LoRA": out, "state": out, "validation": out, "sample": out / "sample", "generated": out / "generate"}
    for kind, folder in places.items():
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            wanted = p.is_dir() if kind in ("state", "generated") else p.is_file()
            if wanted and pats[kind].match(p.name):
                found[kind].append(str(p.relative_to(out)))
    return Earlier(out, name, {k: sorted(v) for k, v in found.items()})


# ---------------------------------------------------------------------------------------------------------
# The version's last training run and what changed since
# ---------------------------------------------------------------------------------------------------------
def last_training_run(cfg: Config) -> dict | None:
    """The newest train/resume record of the version (any status)."""
    from musubi_workspace.runs.ledger import load_runs

    runs = [r for r in load_runs(cfg.ws) if r.get("version") == cfg.name and r.get("target") in ("train", "resume")]
    return runs[-1] if runs else None


def changed_files(cfg: Config, last: dict | None) -> list[str]:
    """config.toml, dataset.toml, prompts.txt whose sha256 differs from the last run's record (current paths)."""
    from musubi_workspace.runs.ledger import version_files

    if not last:
        return []
    before = last.get("files") or {}
    changed = []
    for role, now in version_files(cfg).items():
        old = before.get(role) or {}
        if now.get("sha256") != old.get("sha256") or now.get("path") != old.get("path"):
            changed.append(now.get("path") or role)
    for role, old in before.items():  # a file the last run had and this config no longer names
        if role not in version_files(cfg) and isinstance(old, dict):
            changed.append(f"{old.get('path') or role} (no longer named)")
    return changed


def changed_clause(changed: list[str], last: dict | None) -> str:
    if not changed:
        return ""
    verb = "changed" if len(changed) == 1 else "all changed"
    return f"{' and '.join(changed) if len(changed) < 3 else ', '.join(changed)} {verb} since its last run ({last.get('id')})"


# ---------------------------------------------------------------------------------------------------------
# The guard of `make train` / `make train-bg`, and RESTART=1
# ---------------------------------------------------------------------------------------------------------
def refuse_if_taken(cfg: Config, target: str = "train") -> None:
    """Stop with one line when output_dir holds this output_name's outputs (the ways on in it)."""
    earlier = find_earlier(cfg)
    if not earlier:
        return
    last = last_training_run(cfg)
    changed = changed_files(cfg, last)
    rel = cfg.ws.rel(earlier.output_dir)
    why = f"; {changed_clause(changed, last)}" if changed else ""
    raise WorkspaceError(
        f"{rel} already holds {len(earlier.paths)} output(s) of {earlier.output_name} from an earlier run "
        f"({earlier.summary()}){why}: `make {target}` would overwrite them. Ways on: `make new` (a changed config "
        f"is a new version: the normal path), `make resume` (same config, go on from its newest state), or "
        f"`make {target} RESTART=1` (moves them into {rel}/{EARLIER}<UTC time>/, deletes nothing)",
        EXIT_USER,
    )


def restart_cut(cfg: Config) -> tuple[dict, set[str]] | None:
    """The version's newest RESTART=1 run record and the state names its records since saw saved (None: the
    version never restarted). A state on Hugging Face named otherwise is the earlier run's."""
    from musubi_workspace.runs.ledger import load_runs

    runs = [r for r in load_runs(cfg.ws) if r.get("version") == cfg.name and r.get("target") in ("train", "resume")]
    marks = [i for i, r in enumerate(runs) if isinstance(r.get("restart"), dict)]
    if not marks:
        return None
    since = runs[marks[-1] :]
    names = {s["name"] for r in since for s in r.get("states") or [] if isinstance(s, dict) and s.get("name")}
    return runs[marks[-1]], names


def refuse_if_running(cfg: Config) -> None:
    """RESTART=1 while a run of the version is going (its record says running, its process is alive) would move
    the files it is writing: stop."""
    last = last_training_run(cfg)
    if last and last.get("status") == "running":
        raise WorkspaceError(
            f"RESTART=1: {cfg.name} is training now (run {last.get('id')}, pid {last.get('pid')}, since "
            f"{last.get('start')}): moving its outputs would pull them from under it; wait for it to end "
            f"(`make logs` follows it) and restart then"
        )


def earlier_folder(output_dir: Path, now: datetime | None = None) -> Path:
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    for n in range(1, 1000):
        folder = output_dir / (f"{EARLIER}{stamp}" if n == 1 else f"{EARLIER}{stamp}-{n}")
        if not folder.exists():
            return folder
    raise WorkspaceError(f"{output_dir}: cannot name a new {EARLIER}<time> folder")  # pragma: no cover


def restart_plan(cfg: Config) -> tuple[Earlier | None, Path | None]:
    earlier = find_earlier(cfg)
    if not earlier:
        return earlier, None
    return earlier, earlier_folder(earlier.output_dir)


def move_aside(cfg: Config, say=print) -> dict | None:
    """RESTART=1: move this output_name's outputs into output_dir/earlier-<UTC time>/ (same places below it);
    what moved, for the new run record (None: nothing to move). A move that fails stops the run, saying what
    moved already and where."""
    refuse_if_running(cfg)
    earlier, folder = restart_plan(cfg)
    if not earlier or folder is None:
        say("RESTART=1: no earlier outputs of this output_name in output_dir; nothing to move")
        return None
    last = last_training_run(cfg)
    moved: list[str] = []
    folder.mkdir(parents=True)
    for rel in earlier.paths:
        target = folder / rel
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():  # pragma: no cover - a fresh folder
                raise FileExistsError(str(target))
            os.rename(earlier.output_dir / rel, target)
        except OSError as e:
            raise WorkspaceError(
                f"RESTART=1: cannot move {cfg.ws.rel(earlier.output_dir / rel)} into {cfg.ws.rel(folder)} "
                f"({e.__class__.__name__}: {e}); moved so far: {len(moved)} ({', '.join(moved) or 'none'}); "
                f"nothing was deleted and the run did not start"
            ) from None
        moved.append(rel)
    shown = cfg.ws.rel(folder)
    say(
        f"RESTART=1: moved {len(moved)} output(s) of the earlier run into {shown}/ (nothing deleted; "
        f"the run record lists them): {', '.join(moved)}"
    )
    if cfg.get("huggingface_repo_id"):
        say(
            f"RESTART=1: note: {cfg.get('huggingface_repo_id')} gets this run's uploads under the earlier run's "
            f"names (Hugging Face keeps the earlier files in the repository's history); `make resume` takes only "
            f"the states this run saved"
        )
    return {
        "moved_to": shown,
        "moved": moved,
        "earlier_run": last.get("id") if last else None,
        "changed": changed_files(cfg, last),
    }


def show_restart(cfg: Config, say=print) -> None:
    """RESTART=1 in a dry run: what the run would move, and where."""
    earlier, folder = restart_plan(cfg)
    if not earlier or folder is None:
        say("RESTART=1: no earlier outputs of this output_name in output_dir; nothing would move")
        return
    say(
        f"RESTART=1: would move {len(earlier.paths)} output(s) of the earlier run into "
        f"{cfg.ws.rel(earlier.output_dir)}/{EARLIER}<UTC time>/ (dry run: nothing moved): {earlier.summary()}"
    )


def warn_if_changed(cfg: Config, warn) -> None:
    """`make resume` is meant for the config the state was trained with: one line when it changed."""
    last = last_training_run(cfg)
    changed = changed_files(cfg, last)
    if changed:
        warn(
            f"warning: {changed_clause(changed, last)}; `make resume` goes on with the changed files "
            f"(a changed config is a new version: `make new`)"
        )


def earlier_time(name: str) -> float | None:
    """The UTC time in an earlier-<time> folder's name (when its files were moved), as seconds since the epoch."""
    m = EARLIER_RE.match(name)
    if not m:
        return None
    return datetime.strptime(m.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp()
