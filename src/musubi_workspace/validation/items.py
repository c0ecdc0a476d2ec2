"""What the validation set is made of: each item's content hash, the set's hash, and each item's noise.

An item's hash is the sha256 of its target image's bytes, its caption (as musubi-tuner reads it) and its control
images' bytes, in that order, each after its length (so that no two splits of the same bytes hash alike). The
set's hash (`WS_VALIDATION_SET`, the `set` of every Record) is the first 16 hex characters of the sha256 of the
validation dataset.toml's bytes followed by the item hashes in the sorted order of their target paths: a changed
caption, image, control or dataset setting (resolution, indices) gives another set, whose numbers do not compare.

The noise of an item at a timestep comes from a private CPU `torch.Generator` seeded with
`int(sha256(f"{item_hash}:{t}")[:8], 16)` (the rule named `item-content+timestep` in the Records): the same on
every GPU, batch size, batch order and process count, and the training's own random state is never drawn from.
The items are listed by the workspace's one reader of dataset.toml (`musubi_workspace.dataset`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from musubi_workspace import dataset as ds
from musubi_workspace.errors import WorkspaceError
from musubi_workspace.paths import Workspace


def _chunk(h, data: bytes) -> None:
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)


def item_hash(item: ds.Item) -> str:
    """sha256 hex of the item's target bytes, caption and control bytes."""
    h = hashlib.sha256()
    _chunk(h, item.target.read_bytes())
    _chunk(h, item.caption.encode("utf-8"))
    for control in item.control_paths:
        _chunk(h, control.read_bytes())
    return h.hexdigest()


def listed(ws: Workspace, path: Path) -> ds.DatasetFile:
    """The validation dataset.toml, parsed; a missing or unreadable file is one WorkspaceError."""
    if not path.is_file():
        raise WorkspaceError(f"validation set {ws.rel(path)} not found: write it or fix [workspace] validation")
    return ds.read(ws, path)


def item_hashes(ws: Workspace, path: Path) -> list[dict[str, str]]:
    """`{stem: item hash}` for each [[datasets]] entry of the validation dataset.toml, in its order (musubi-tuner's
    cache files are named by the stem of the item's target)."""
    out = []
    for d in listed(ws, path).datasets:
        out.append({item.stem: item_hash(item) for item in ds.items(ws, d).items})
    return out


def set_hash(ws: Workspace, path: Path) -> str:
    """The set's hash: dataset.toml's bytes and every item's hash, in sorted target-path order (16 hex)."""
    f = listed(ws, path)
    h = hashlib.sha256()
    _chunk(h, f.text.encode("utf-8"))
    found = [(str(item.target), item_hash(item)) for d in f.datasets for item in ds.items(ws, d).items]
    for _, digest in sorted(found):
        _chunk(h, digest.encode())
    return h.hexdigest()[:16]


def noise_seed(item: str, t: float) -> int:
    """The seed of an item's noise at raw timestep t (t written as records.t_key writes it)."""
    from musubi_workspace.validation.records import t_key

    return int(hashlib.sha256(f"{item}:{t_key(t)}".encode()).hexdigest()[:8], 16)


def noise(item: str, t: float, shape: tuple[int, ...]):
    """The item's noise at t: float32 standard normal of `shape`, drawn on the CPU from a private generator."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(noise_seed(item, t))
    return torch.randn(tuple(shape), generator=gen, dtype=torch.float32)
