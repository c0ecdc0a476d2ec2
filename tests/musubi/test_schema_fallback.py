"""`make check` where musubi-tuner's live option schema cannot be built (issue 25, item 4).

The real musubi-tuner, torch and every other installed package are put in a fresh virtual environment by links
(nothing copied, nothing stood in for), with musubi-tuner as a source tree on PYTHONPATH, as on a pod, and without
bitsandbytes: musubi-tuner's own `adamw8bit` then fails to build, so its schema cannot be built here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from musubi_workspace.schema import load_schema

REPO = Path(__file__).resolve().parents[2]
PINNED = load_schema()["musubi_tuner_commit"]
# Not installed in the side environment: musubi-tuner (a source tree instead) and bitsandbytes.
LEFT_OUT = ("musubi_tuner", "bitsandbytes")


def side_env(tmp_path: Path, recorded_commit: str | None = None) -> tuple[Path, str]:
    """(python, PYTHONPATH) of a venv that sees this environment's packages but for LEFT_OUT, and musubi-tuner as a
    source tree. With `recorded_commit`, musubi-tuner's own dist-info is there too, its direct_url.json recording
    that commit (what pip writes for `git+...@commit`)."""
    import musubi_tuner

    package = Path(musubi_tuner.__file__).resolve().parent
    site = package.parent
    farm = tmp_path / "site"
    farm.mkdir()
    for entry in site.iterdir():
        if not entry.name.startswith(LEFT_OUT):
            (farm / entry.name).symlink_to(entry)
    if recorded_commit:
        info = next(site.glob("musubi_tuner-*.dist-info"))
        copy = farm / info.name
        shutil.copytree(info, copy)
        (copy / "direct_url.json").write_text(
            json.dumps({"url": "file:///musubi-tuner", "vcs_info": {"vcs": "git", "commit_id": recorded_commit}})
        )
    tree = tmp_path / "src"
    tree.mkdir()
    (tree / "musubi_tuner").symlink_to(package)
    venv = tmp_path / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (next((venv / "lib").glob("python3*")) / "site-packages" / "farm.pth").write_text(f"{farm}\n")
    return venv / "bin" / "python", os.pathsep.join([str(tree), str(REPO / "src")])


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and ".cache" not in p.relative_to(root).parts
    }


def check(workspace, python: Path, pythonpath: str) -> subprocess.CompletedProcess:
    from musubi_workspace.example import make_validation_set

    make_validation_set(workspace)  # as `make example` writes it: configs/v1 names it in [workspace] validation
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WS_", "VIRTUAL_ENV"))}
    env.update(PYTHONPATH=pythonpath, HOME=str(workspace.root / ".home"), WANDB_MODE="offline")
    before = snapshot(workspace.root)
    cmd = [str(python), "-m", "musubi_workspace.cli", "check", "--config", "configs/v1/config.toml", "--dry-run", "1"]
    r = subprocess.run(cmd, cwd=workspace.root, env=env, capture_output=True, text=True, timeout=300)
    assert snapshot(workspace.root) == before, "the check changed files"
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    return r


def test_the_source_tree_without_bitsandbytes_is_checked_against_the_committed_schema(
    musubi, workspace, tmp_path_factory
):
    env = tmp_path_factory.mktemp("side-env")  # outside the workspace (tmp_path)
    python, pythonpath = side_env(env)
    # wandb is not installed beside musubi-tuner here, which check 11 reports: log to tensorboard instead.
    cfg = workspace.root / "configs" / "v1" / "config.toml"
    cfg.write_text(cfg.read_text().replace('log_with = "all"', 'log_with = "tensorboard"'))
    r = check(workspace, python, pythonpath)
    where = env / "src" / "musubi_tuner"
    assert (
        f"  warning: {where}: the option schema of this musubi-tuner (no recorded commit) cannot be built here: "
        "`bitsandbytes` is not installed (get_optimizer's own name 'adamw8bit' fails here: build: ImportError: No "
        f"bitsandbytes); checked against the committed schema (musubi-tuner {PINNED[:7]}) instead: install "
        "bitsandbytes to check against this one"
    ) in r.stdout.splitlines(), r.stdout
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1].startswith("check configs/v1/config.toml: OK: 0 error(s)"), r.stdout


def test_a_known_other_commit_whose_schema_cannot_be_built_stops_in_one_line(musubi, workspace, tmp_path_factory):
    env = tmp_path_factory.mktemp("side-env")
    python, pythonpath = side_env(env, recorded_commit="0" * 40)
    r = check(workspace, python, pythonpath)
    where = env / "src" / "musubi_tuner"
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.splitlines() == [
        f"error: {where}: musubi-tuner 0000000 is installed, the committed schema is of {PINNED[:7]}, and this "
        "one's cannot be built here: `bitsandbytes` is not installed (get_optimizer's own name 'adamw8bit' fails "
        f"here: build: ImportError: No bitsandbytes); install bitsandbytes, or install musubi-tuner {PINNED[:7]}"
    ], r.stderr
