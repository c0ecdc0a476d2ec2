"""Re-create uv.lock, optionally from a local musubi-tuner snapshot (used by `make lock`).

musubi-tuner is a git source pinned to one commit in pyproject's [tool.uv.sources]. Locking needs that commit's
metadata. Given a local clone (`snapshot`), git is told through a throw-away global config
(`url.<file URL>.insteadOf = <upstream URL>`) to fetch from it instead of GitHub; uv still records the upstream URL,
so the lock is the same as one made online. Afterwards the lock is checked for leaked local paths.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import tomlkit

from musubi_workspace.errors import WorkspaceError

UPSTREAM = "https://github.com/kohya-ss/musubi-tuner.git"
COMMIT = re.compile(r"[0-9a-f]{40}")


def set_rev(pyproject: Path, rev: str) -> None:
    """Point [tool.uv.sources] musubi-tuner at commit `rev`, keeping the file's comments and layout."""
    if not COMMIT.fullmatch(rev):
        raise WorkspaceError(f"MUSUBI_REV must be a full 40-hex commit, got {rev!r}")
    doc = tomlkit.parse(pyproject.read_text())
    try:
        source = doc["tool"]["uv"]["sources"]["musubi-tuner"]
    except KeyError:
        raise WorkspaceError(f"{pyproject}: no [tool.uv.sources] musubi-tuner entry to move") from None
    source["rev"] = rev
    pyproject.write_text(tomlkit.dumps(doc))


def pinned_rev(pyproject: Path) -> str | None:
    doc = tomlkit.parse(pyproject.read_text())
    return doc.get("tool", {}).get("uv", {}).get("sources", {}).get("musubi-tuner", {}).get("rev")


def relock(root, snapshot=None, rev=None) -> None:
    """Run `uv lock` in `root` (fetching musubi-tuner from `snapshot` if given, after moving the pin to `rev`)."""
    root = Path(root).resolve()
    pyproject = root / "pyproject.toml"
    before = pyproject.read_text()
    if rev:
        set_rev(pyproject, rev)
    env = dict(os.environ)
    leaks = ["file://"]
    with tempfile.TemporaryDirectory(prefix="ws-lock-") as tmp:
        if snapshot:
            src = Path(snapshot).resolve()
            if not src.is_dir():
                pyproject.write_text(before)
                raise WorkspaceError(f"musubi-tuner snapshot {src} is not a directory")
            gitconfig = Path(tmp) / "gitconfig"
            gitconfig.write_text(f'[url "{src.as_uri()}"]\n\tinsteadOf = {UPSTREAM}\n')
            env["GIT_CONFIG_GLOBAL"] = str(gitconfig)
            leaks += [str(src), tmp]
        result = subprocess.run(["uv", "lock"], cwd=root, env=env, check=False)
    if result.returncode != 0:
        pyproject.write_text(before)
        raise WorkspaceError(f"uv lock failed (exit {result.returncode}); pyproject.toml left as it was")
    lock = (root / "uv.lock").read_text()
    for needle in leaks:
        if needle in lock:
            raise WorkspaceError(f"uv.lock records a local path ({needle!r}); do not commit it, relock without it")
    want = pinned_rev(pyproject)
    if want and COMMIT.fullmatch(want) and f"{UPSTREAM}?rev={want}#{want}" not in lock:
        raise WorkspaceError(f"uv.lock does not pin musubi-tuner to {UPSTREAM}@{want}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m musubi_workspace.relock", description=__doc__.splitlines()[0])
    p.add_argument("--root", default=".", help="workspace root (default: .)")
    p.add_argument("--snapshot", help="local git clone of musubi-tuner to fetch from instead of GitHub")
    p.add_argument("--rev", help="move the musubi-tuner pin to this 40-hex commit first")
    args = p.parse_args(argv)
    try:
        relock(args.root, snapshot=args.snapshot or None, rev=args.rev or None)
    except WorkspaceError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code if hasattr(e, "code") else 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
