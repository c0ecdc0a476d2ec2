"""Shared fixtures: an isolated copy of the workspace, recording stand-ins on PATH, and a make runner.

Every test that runs the tool or the Makefile gets its own workspace copy under tmp_path (configs, Makefile,
project files), a `.venv` that borrows the test run's own environment, `HOME` and caches inside tmp_path, no
secrets from the developer's environment, and tests/bin first on PATH: stand-ins for the programs that only
exist on a GPU pod. What the stand-ins saw is in `ws.calls()`.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
STANDINS = REPO / "tests" / "bin"
MAKEFILE = REPO / "Makefile"
VENV = Path(sys.prefix)
COPIED = ("Makefile", "pyproject.toml", "uv.lock", ".python-version", ".env.example", ".gitignore", "configs")
# uv's folder: the Makefile's guard looks for uv, as on a user's machine.
UV_DIR = [os.path.dirname(shutil.which("uv"))] if shutil.which("uv") else []
SECRET_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY", "RUNPOD_API_KEY", "RUNPOD_POD_ID")


def pytest_xdist_auto_num_workers(config) -> int | None:
    """`-n auto` (make test): one worker more than cores. Many tests wait on the clock (grace periods, hang
    timeouts, uploads that outlast the trainer, polls); a spare worker keeps the cores busy meanwhile (on 2 cores
    the suite took 75-80 s with 3 workers, 88-99 s with 2). PYTEST_XDIST_AUTO_NUM_WORKERS still sets the number."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # xdist's own hook reads it
    return (os.cpu_count() or 1) + 1


def recipe_argv(target: str, make_vars: tuple[str, ...] = ()) -> list[str]:
    """The `ws` arguments of the Makefile's recipe for `target` (`@$(WS) ...`), with its variables' defaults and
    `make_vars` (VAR=value) expanded as make would."""
    text = MAKEFILE.read_text()
    values = dict(re.findall(r"^([A-Z_]+) \?= ?(.*)$", text, re.M))
    values.update(v.split("=", 1) for v in make_vars)
    recipe = re.search(rf"^{re.escape(target)}:.*\n\t@\$\(WS\) (.*)$", text, re.M)
    assert recipe, f"no `@$(WS) ...` recipe for {target} in the Makefile"
    line = recipe.group(1).replace("$(CFG)", re.search(r"^CFG := (.*)$", text, re.M).group(1))
    return shlex.split(re.sub(r"\$\(([A-Z_]+)\)", lambda m: values.get(m.group(1), ""), line))


@dataclass
class TmpWorkspace:
    root: Path
    env: dict

    @property
    def record(self) -> Path:
        return Path(self.env["WS_RECORD"])

    def calls(self, prog: str | None = None) -> list[dict]:
        """What the stand-ins saw; without `prog`, every program but nvidia-smi (each run record asks it for the
        GPU model: `calls("nvidia-smi")` shows those)."""
        if not self.record.exists():
            return []
        entries = [json.loads(line) for line in self.record.read_text().splitlines() if line.strip()]
        return [e for e in entries if e["prog"] == prog or (prog is None and e["prog"] != "nvidia-smi")]

    def make(self, *args: str, env: dict | None = None, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["make", "--no-print-directory", *args],
            cwd=self.root,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            **kw,
        )

    def tool(self, target: str, *make_vars: str, env: dict | None = None) -> subprocess.CompletedProcess:
        """`make <target> VAR=value ...` run as its recipe runs the tool, but in this process (no make, no new
        Python: the logic tests' fast path). The arguments come from the Makefile's own recipe line; the result is
        the tool's: its exit code (2 bad input, 3 check errors, 4 a program failed), stdout and stderr. For targets
        whose output is the tool's own (check, new, diff, report); programs it starts write elsewhere."""
        from musubi_workspace import cli

        argv = recipe_argv(target, make_vars)
        out, err = io.StringIO(), io.StringIO()
        saved_env, saved_cwd = dict(os.environ), os.getcwd()
        os.environ.clear()
        os.environ.update({**self.env, **(env or {})})
        os.chdir(self.root)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    code = cli.main(argv)
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else 1
        finally:
            os.chdir(saved_cwd)
            os.environ.clear()
            os.environ.update(saved_env)
        return subprocess.CompletedProcess(["ws", *argv], code or 0, out.getvalue(), err.getvalue())

    def ws(self, *args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(VENV / "bin" / "ws"), *args],
            cwd=self.root,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def write(self, rel: str, text: str) -> Path:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        return p

    def read(self, rel: str) -> str:
        return (self.root / rel).read_text()

    def seed_setting(self) -> None:
        """configs/v1 at the memory/speed setting the workspace first shipped (blocks_to_swap 20, no compile, split_attn
        as musubi-tuner runs it), from which the tests of tune, bench and the estimate start, as the committed bench
        tables' `current` rows do."""
        path = self.root / "configs" / "v1" / "config.toml"
        text = path.read_text()
        seeded = re.sub(r"(?m)^blocks_to_swap = \d+$", "blocks_to_swap = 20", text).replace("\ncompile = true\n", "\n")
        seeded = seeded.replace("\nsplit_attn_one_graph = true\n", "\n")
        assert "\nblocks_to_swap = 20\n" in seeded and "\ncompile = " not in seeded, "update seed_setting"
        assert "split_attn_one_graph = " not in seeded, "update seed_setting"
        path.write_text(seeded)

    def touch_models(self) -> None:
        """Tiny safetensors files where configs/v1 expects the model files, with the tensors each loader needs
        (one number each): enough for every check but loading them."""
        import tomllib

        from musubi_workspace.model_files import write_placeholders

        write_placeholders(self.root, tomllib.loads((self.root / "configs" / "v1" / "config.toml").read_text()))


def write_safetensors(path: Path, names, metadata: dict | None = None) -> Path:
    """A real safetensors file with one float16 number per tensor name (the package's placeholder writer)."""
    from musubi_workspace.model_files import write_placeholder

    return write_placeholder(path, names, metadata)


def split_env(line: str) -> tuple[dict[str, str], list[str]]:
    """A printed (pasteable) command line as a shell reads it: the `VAR=value` words in front, and the argv."""
    words = shlex.split(line)
    n = 0
    while n < len(words) and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[n]):
        n += 1
    return dict(w.split("=", 1) for w in words[:n]), words[n:]


def error_line(r) -> str:
    """The tool's one error line (make adds its own `make: *** ...` line after it)."""
    lines = [l for l in r.stderr.splitlines() if l.startswith("error: ")]
    assert lines, f"no error line in stderr:\n{r.stderr}"
    assert len(lines) == 1, f"more than one error line:\n{r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    return lines[0]


def make_workspace(root: Path, tmp_path: Path) -> TmpWorkspace:
    root.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name)
        elif src.exists():
            shutil.copy2(src, root / name)
    # A .venv that is this test run's environment, with fresh stamps so make never re-syncs.
    venv = root / ".venv"
    venv.mkdir()
    (venv / "bin").symlink_to(VENV / "bin")
    for stamp in (".stamp-base", ".stamp-train"):
        (venv / stamp).touch()
    return TmpWorkspace(root=root, env=isolated_env(tmp_path))


def isolated_env(tmp_path: Path) -> dict:
    """The environment of a test's make and ws calls: stand-ins first on PATH, HOME and caches in tmp_path, no
    secrets or switches from the developer's environment."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       250000000 kB\n")
    env = {
        k: v for k, v in os.environ.items() if k not in SECRET_VARS and not k.startswith(("STANDIN_", "WS_", "MAKE"))
    }
    env.update(
        PATH=os.pathsep.join([str(STANDINS), str(VENV / "bin"), *UV_DIR, "/usr/local/bin", "/usr/bin", "/bin"]),
        HOME=str(home),
        HF_HOME=str(home / "hf"),
        UV_CACHE_DIR=str(home / "uv"),
        WS_RECORD=str(tmp_path / "record.jsonl"),
        STANDIN_GPUS="1",
        # Never this machine's RunPod file: tests that want a pod write their own.
        WS_RP_ENVIRONMENT=str(tmp_path / "rp_environment"),
        WS_STOP_RETRY_SECONDS="0",
        # A pod's host RAM (256 GB), not this machine's: tests that want a small machine write their own.
        WS_MEMINFO=str(meminfo),
    )
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.pop("VIRTUAL_ENV", None)
    return env


@pytest.fixture(scope="session")
def example_template(tmp_path_factory) -> Path:
    """One workspace with the example datasets written by the real `ws example`, copied by each test."""
    base = tmp_path_factory.mktemp("template")
    w = make_workspace(base / "workspace", base)
    r = w.ws("example")
    assert r.returncode == 0, r.stderr
    return w.root


def copy_workspace(template: Path, tmp_path: Path) -> TmpWorkspace:
    """A copy of `template` at tmp_path/workspace (file times kept), without the video example's 116 frames."""
    root = tmp_path / "workspace"
    video = template / "datasets" / "example-video"
    shutil.copytree(
        template,
        root,
        symlinks=True,
        ignore=lambda d, names: ["example-video"] if Path(d) == video.parent else [],
    )
    return TmpWorkspace(root=root, env=isolated_env(tmp_path))


@pytest.fixture
def ws(tmp_path, example_template) -> TmpWorkspace:
    """A fresh workspace copy with the one-frame example dataset (datasets/example-1f) written; the video example's
    116 frames only where a test asks for them (`video_ws`): copying them took most of each test's set-up."""
    return copy_workspace(example_template, tmp_path)


@pytest.fixture
def video_ws(ws, example_template) -> TmpWorkspace:
    """`ws` with the video example's dataset too (datasets/example-video)."""
    shutil.copytree(example_template / "datasets" / "example-video", ws.root / "datasets" / "example-video")
    return ws


@pytest.fixture
def ready(ws) -> TmpWorkspace:
    """A workspace copy with the example dataset and (empty) model files in place, ready to train: wandb offline,
    since the example logs to wandb and a run without WANDB_API_KEY would fail (`make check` says so)."""
    ws.touch_models()
    ws.env["WANDB_MODE"] = "offline"
    return ws


# What `make cache` leaves in a `ready` workspace (and the model files it fingerprints), copied by `cached`.
CACHE_PRODUCTS = ("models", "cache", "runs", ".cache")
# The tool's caches that name files by their absolute path (the image facts, the dataset hashes).
ABSOLUTE_PATH_CACHES = (".cache/ws/images.json", "runs/.hash-cache.json")


@pytest.fixture(scope="session")
def cached_template(tmp_path_factory, example_template) -> Path:
    """`ready` after one real `make cache` with the stand-ins (in-process, as `TmpWorkspace.tool` runs it), made
    once per test process: each `cached` test copies what it left instead of running the two cache scripts."""
    w = copy_workspace(example_template, tmp_path_factory.mktemp("cached"))
    w.touch_models()
    w.env["WANDB_MODE"] = "offline"
    r = w.tool("cache")
    assert r.returncode == 0, r.stderr
    return w.root


def relocate_caches(root: Path, old_root: Path) -> None:
    """Point the tool's path-keyed caches in `root`, a copy of `old_root`, at `root`'s own files."""
    for rel in ABSOLUTE_PATH_CACHES:
        p = root / rel
        if p.exists():
            p.write_text(p.read_text().replace(json.dumps(str(old_root))[:-1], json.dumps(str(root))[:-1]))


def add_cache(w: TmpWorkspace, cached_template: Path) -> TmpWorkspace:
    """`w` (a `ready` copy) as `make cache` leaves it: what it left in `cached_template`, copied with the file
    times, its path-keyed caches moved to this copy; no calls recorded."""
    for name in CACHE_PRODUCTS:
        shutil.copytree(cached_template / name, w.root / name, symlinks=True, dirs_exist_ok=True)
    relocate_caches(w.root, cached_template)
    return w


# What `clone` moves to the copy's tmp_path; the rest of the environment is kept (WANDB_MODE, STANDIN_*).
CLONE_MOVES = ("HOME", "HF_HOME", "UV_CACHE_DIR", "WS_RECORD", "WS_RP_ENVIRONMENT")


def clone(w: TmpWorkspace, tmp_path: Path) -> TmpWorkspace:
    """A copy of the workspace `w` at tmp_path/workspace, with its file times, its environment (the record, HOME
    and caches moved to tmp_path) and its path-keyed caches moved to the copy: a test can start from a state a
    shared fixture made once."""
    root = tmp_path / "workspace"
    shutil.copytree(w.root, root, symlinks=True)
    relocate_caches(root, w.root)
    moved = isolated_env(tmp_path)
    return TmpWorkspace(root=root, env={**w.env, **{k: moved[k] for k in CLONE_MOVES}})


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder `name` that `build(folder)` fills once per test run: the test process (pytest-xdist worker) that
    asks first builds it while the others wait on a lock, then every process reuses it (xdist's recipe for a
    session fixture made once). For states that take a long chain of make calls; tests read it or `clone` it."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the folder all workers of this run share
    folder, done = base / name, base / f"{name}.done"
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a build that failed left
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture
def cached(ready, cached_template) -> TmpWorkspace:
    """`ready` with an up-to-date cache (`make cache` ran with the stand-ins) and no calls recorded yet."""
    return add_cache(ready, cached_template)
