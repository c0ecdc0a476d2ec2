"""The validation set's hash (`WS_VALIDATION_SET`, the `set` of every Record) and the launcher's settings: the
hash follows the content of the set (images, captions, dataset.toml), not where its files lie or how they are
listed; bad launcher values are one line each."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image

from musubi_workspace.errors import WorkspaceError
from musubi_workspace.paths import Workspace
from musubi_workspace.validation import items
from musubi_workspace.validation.trainer import Settings

TOML = '[general]\nresolution = [64, 96]\ncaption_extension = ".txt"\n\n[[datasets]]\nimage_directory = "{d}"\ncache_directory = "cache/val"\n'


def make(root, d="validation/images", n=3):
    folder = root / d
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (64, 96), (50 * i, 20, 90)).save(folder / f"item{i}.png")
        (folder / f"item{i}.txt").write_text(f"caption {i}\n")
    path = root / "validation" / "dataset.toml"
    path.write_text(TOML.format(d=d))
    return Workspace(root), path


def test_the_hash_follows_the_content_of_images_captions_and_the_dataset_toml(tmp_path):
    ws, path = make(tmp_path)
    first = items.set_hash(ws, path)
    assert len(first) == 16 and items.set_hash(ws, path) == first
    hashes = items.item_hashes(ws, path)
    assert sorted(hashes[0]) == ["item0", "item1", "item2"] and len(set(hashes[0].values())) == 3
    (tmp_path / "validation/images/item1.txt").write_text("another caption\n")
    second = items.set_hash(ws, path)
    assert second != first
    Image.new("RGB", (64, 96), (1, 2, 3)).save(tmp_path / "validation/images/item2.png")
    third = items.set_hash(ws, path)
    assert third not in (first, second)
    path.write_text(path.read_text().replace("[64, 96]", "[64, 64]"))
    assert items.set_hash(ws, path) not in (first, second, third)


def test_the_same_items_elsewhere_hash_alike_but_the_toml_naming_them_differs(tmp_path):
    ws, path = make(tmp_path / "a")
    ws2, path2 = make(tmp_path / "b")
    assert items.set_hash(ws, path) == items.set_hash(ws2, path2)  # another workspace root, the same set
    shutil.rmtree(tmp_path / "b/validation/images")
    make(tmp_path / "b", d="validation/other")
    assert items.item_hashes(ws2, path2)[0] == items.item_hashes(ws, path)[0]  # same items: same noise seeds
    assert items.set_hash(ws2, path2) != items.set_hash(ws, path)  # the dataset.toml differs


def test_a_missing_set_is_one_error_naming_it(tmp_path):
    with pytest.raises(WorkspaceError, match=r"^validation set validation/dataset.toml not found: write it or fix"):
        items.set_hash(Workspace(tmp_path), tmp_path / "validation" / "dataset.toml")


def test_the_noise_seed_is_the_contracts_rule():
    import hashlib

    assert items.noise_seed("ab" * 32, 0.3) == int(hashlib.sha256(f"{'ab' * 32}:0.3".encode()).hexdigest()[:8], 16)
    assert items.noise_seed("ab" * 32, 0.3) != items.noise_seed("ab" * 32, 0.5)


def test_the_launchers_settings_and_their_one_line_errors():
    s = Settings({"WS_VALIDATION": "validation/dataset.toml", "WS_VALIDATION_EVERY": "250"})
    assert (s.path, s.every, s.timesteps, s.set_hash) == (
        "validation/dataset.toml",
        250,
        [0.1, 0.3, 0.5, 0.7, 0.9],
        None,
    )
    assert Settings({"WS_VALIDATION": "v", "WS_VALIDATION_EVERY": ""}).every is None  # the save cadence
    with pytest.raises(SystemExit, match=r"^musubi-workspace: WS_VALIDATION_EVERY='-1' is not a whole number >= 0$"):
        Settings({"WS_VALIDATION": "v", "WS_VALIDATION_EVERY": "-1"})
    with pytest.raises(SystemExit, match="WS_VALIDATION_TIMESTEPS='0.5,x' is not a comma list of numbers between 0"):
        Settings({"WS_VALIDATION": "v", "WS_VALIDATION_TIMESTEPS": "0.5,x"})
