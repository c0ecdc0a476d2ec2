"""`make resume`: continue a version from its newest saved state, training only the steps that are left.

musubi-tuner saves states as `{output_name}-step{N:08d}-state`, `{output_name}-{epoch:06d}-state` and
`{output_name}-state` (at the end), in output_dir and, with save_state_to_huggingface, in the Hugging Face
repository under huggingface_path_in_repo. On `--resume` it restores weights, optimiser and scheduler but starts
its step counter, its step budget and its file names at 0 again. So the workspace passes
`--max_train_steps <left>` and names the resumed run's files `{output_name}-resume{S}` (S: the steps the state
holds): they never overwrite the earlier run's files, and the name tells the next resume where it stands.
A state's step count comes from its name (step states), else from the run record that saw it saved. After a
`make train RESTART=1` the repository still holds the earlier run's states: only those the runs since saved count.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from musubi_workspace.config import Config
from musubi_workspace.errors import WorkspaceError
from musubi_workspace.runs.ledger import RUN_FILE
from musubi_workspace.runs.outputs import restart_cut


@dataclass(frozen=True)
class State:
    name: str  # folder name
    step: int | None  # absolute training steps it holds; None: unknown
    source: str  # "local" or "Hugging Face"
    location: str  # local path (relative to the root) or repo_id/path_in_repo/name
    mtime: float = 0.0


def state_re(output_name: str) -> re.Pattern:
    return re.compile(rf"^{re.escape(output_name)}(?:-resume(\d+))?(?:-step(\d{{8}})|-(\d{{6}}))?-state$")


def step_of(name: str, output_name: str, recorded: dict[str, int]) -> int | None:
    m = state_re(output_name).match(name)
    if not m:
        return None
    if m.group(2):
        return int(m.group(1) or 0) + int(m.group(2))
    return recorded.get(name)


def recorded_states(cfg: Config) -> dict[str, int]:
    """State folder name -> absolute step, from the version's run records (newer records win)."""
    found: dict[str, int] = {}
    base = cfg.ws.runs / cfg.name
    if not base.is_dir():
        return found
    for path in sorted(base.glob(f"*/{RUN_FILE}")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for s in data.get("states") or []:
            if isinstance(s, dict) and s.get("name") and isinstance(s.get("step"), int):
                found[s["name"]] = s["step"]
    return found


def local_states(cfg: Config, recorded: dict[str, int]) -> list[State]:
    out_dir, name = cfg.path_of("output_dir"), cfg.get("output_name")
    if out_dir is None or not out_dir.is_dir():
        return []
    pattern = state_re(name)
    return [
        State(d.name, step_of(d.name, name, recorded), "local", cfg.ws.rel(d), d.stat().st_mtime)
        for d in out_dir.iterdir()
        if d.is_dir() and pattern.match(d.name)
    ]


def hub_states(cfg: Config, env: dict[str, str], recorded: dict[str, int], warn) -> list[State]:
    """State folders in the Hugging Face repository, when the config uploads them there."""
    repo = cfg.get("huggingface_repo_id")
    if not repo or cfg.get("save_state_to_huggingface") is not True:
        return []
    from musubi_workspace.runs import hub

    repo_type = cfg.get("huggingface_repo_type") or "model"
    prefix = str(cfg.get("huggingface_path_in_repo") or "").strip("/")
    try:
        files = hub.list_files(repo, repo_type, env.get("HF_TOKEN") or None)
    except Exception as e:  # network, auth, missing repo: the local states still count
        warn(f"resume: cannot list {repo} on Hugging Face ({e.__class__.__name__}: {e}); looking at local states only")
        return []
    name = cfg.get("output_name")
    pattern = state_re(name)
    folders = set()
    for f in files:
        rest = f[len(prefix) + 1 :] if prefix and f.startswith(prefix + "/") else (f if not prefix else None)
        if rest and "/" in rest and pattern.match(rest.split("/", 1)[0]):
            folders.add(rest.split("/", 1)[0])
    where = f"{repo}/{prefix}" if prefix else repo
    return [State(n, step_of(n, name, recorded), "Hugging Face", f"{where}/{n}") for n in sorted(folders)]


@dataclass(frozen=True)
class ResumePoint:
    state: State
    total: int
    output_name: str
    repo_type: str = "model"

    @property
    def left(self) -> int:
        return self.total - (self.state.step or 0)

    @property
    def new_output_name(self) -> str:
        return f"{self.output_name}-resume{self.state.step}"

    def args(self) -> list[str]:
        if self.state.source == "local":
            out = ["--resume", self.state.location]
        else:
            where = self.state.location if self.repo_type == "model" else f"{self.state.location}:main:{self.repo_type}"
            out = ["--resume_from_huggingface", "--resume", where]
        return out + ["--max_train_steps", str(self.left), "--output_name", self.new_output_name]

    def describe(self) -> list[str]:
        s = self.state
        return [
            f"resume: from {s.location} ({s.source}, the newest state: step {s.step} of {self.total})",
            f"resume: musubi-tuner counts steps from 0 again, so this run trains the {self.left} steps left "
            f"(--max_train_steps {self.left}); its files are named {self.new_output_name}-… so the earlier ones stay",
        ]

    def record(self) -> dict:
        return {
            "from": self.state.location,
            "source": self.state.source,
            "step_offset": self.state.step,
            "steps_left": self.left,
            "output_name": self.new_output_name,
        }


def find(cfg: Config, env: dict[str, str], warn=print) -> ResumePoint:
    """The newest state of the version: the newest local one by time, or the Hugging Face copy when that holds
    more steps; errors say what is missing."""
    name = cfg.get("output_name")
    if not name or cfg.path_of("output_dir") is None:
        raise WorkspaceError(f"{cfg.shown}: `make resume` needs output_dir and output_name (where the states are)")
    if cfg.get("max_train_epochs"):
        raise WorkspaceError(
            f"{cfg.where('max_train_epochs')}: `make resume` counts steps: set max_train_steps instead of max_train_epochs"
        )
    total = cfg.get("max_train_steps", 1600)  # musubi-tuner's default
    recorded = recorded_states(cfg)
    local = sorted(local_states(cfg, recorded), key=lambda s: (s.mtime, s.name))
    remote = hub_states(cfg, env, recorded, warn)
    cut = restart_cut(cfg)
    if cut and remote:  # after RESTART=1 the repository still holds the earlier run's states under its own names
        restart, saved = cut
        older = [s for s in remote if s.name not in saved]
        remote = [s for s in remote if s.name in saved]
        if older:
            warn(
                f"resume: {len(older)} state(s) on Hugging Face are from before the RESTART=1 of run "
                f"{restart.get('id')} and not taken: {', '.join(s.name for s in older)}"
            )
    candidates = ([local[-1]] if local else []) + sorted(
        [s for s in remote if s.step is not None], key=lambda s: s.step
    )[-1:]
    if not candidates:
        where = cfg.ws.rel(cfg.path_of("output_dir"))
        hub = " or on Hugging Face" if cfg.get("huggingface_repo_id") and cfg.get("save_state_to_huggingface") else ""
        raise WorkspaceError(
            f"{cfg.shown}: no saved state of `{name}` in {where}{hub}; states are saved with save_state = true; "
            f"`make train` starts from the beginning"
        )
    best = candidates[0]
    for c in candidates[1:]:
        if best.step is None or (c.step is not None and c.step > best.step):
            best = c
    if best.step is None:
        raise WorkspaceError(
            f"{best.location}: cannot tell how many steps this state holds (no run record saw it saved); "
            f"resume it by hand with `--resume` or move it aside"
        )
    point = ResumePoint(best, int(total), name, cfg.get("huggingface_repo_type") or "model")
    if point.left <= 0:
        raise WorkspaceError(
            f"{best.location} already holds {best.step} steps of max_train_steps = {total}: nothing left to train; "
            f"raise max_train_steps ({cfg.where('max_train_steps')}) to train on"
        )
    return point
