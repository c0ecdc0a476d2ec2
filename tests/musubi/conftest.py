"""Tests against the real musubi-tuner at the pinned commit (`make test-musubi`).

Everything in this folder is marked `musubi` and skipped, with the reason, where musubi_tuner does not import
(the default `make test` environment has no train extra). Test modules here import musubi-tuner only through the
`musubi` fixture, so collecting them never needs it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REASON = "musubi_tuner is not importable here: run `make test-musubi` in an environment with the train extra"


def _why_not_importable() -> str | None:
    from musubi_workspace.schema import import_musubi  # stubs torch.cuda.current_device where there is no CUDA

    try:
        import_musubi()
    except ImportError as e:
        return f"{REASON} ({type(e).__name__}: {e})"
    return None


def pytest_collection_modifyitems(config, items):
    ours = [item for item in items if HERE in Path(item.path).resolve().parents]
    if not ours:
        return
    why = _why_not_importable()
    for item in ours:
        item.add_marker(pytest.mark.musubi)
        if why:
            item.add_marker(pytest.mark.skip(reason=why))


@pytest.fixture(autouse=True)
def _environ_as_found():
    """Each test leaves os.environ as it found it (musubi-tuner's modules set variables when they run; the tests of
    tests/ that run after these must not see them). The import itself is undone by `import_musubi`."""
    saved = dict(os.environ)
    yield
    if dict(os.environ) != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def musubi() -> dict:
    """The imported musubi_tuner modules, by name relative to the package (e.g. "dataset.config_utils")."""
    from musubi_workspace.schema import import_musubi

    return import_musubi()


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A copy of configs/ with the example datasets, as the root musubi-tuner runs in (it reads dataset paths
    relative to where it runs)."""
    from musubi_workspace.example import make_example_dataset, make_video_example
    from musubi_workspace.paths import Workspace

    shutil.copytree(HERE.parents[1] / "configs", tmp_path / "configs")
    ws = Workspace(tmp_path)
    make_example_dataset(ws)
    make_video_example(ws)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    return ws
