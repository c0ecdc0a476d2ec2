"""The dataset model in-process: [general] merged, musubi-tuner's defaults, the line of every value, and the
control matching and JSONL normalisation of musubi-tuner's datasources (tests/musubi/test_dataset_real.py holds
the listing against the real datasources)."""

from __future__ import annotations

from pathlib import Path

from musubi_workspace import dataset as model
from musubi_workspace.paths import Workspace

TOML = """[general]
resolution = [512, 768]
batch_size = 4
caption_extension = ".txt"

[[datasets]]
image_jsonl_file = "a.jsonl"
cache_directory = "cache/a"
batch_size = 2

[[datasets]]
image_directory = "img"
resolution = "big"

[[datasets]]
video_directory = "vid"
"""


def load(tmp_path: Path) -> model.DatasetFile:
    (tmp_path / "dataset.toml").write_text(TOML)
    return model.read(Workspace(tmp_path), tmp_path / "dataset.toml")


def test_values_merge_general_then_defaults_and_name_their_line(tmp_path):
    f = load(tmp_path)
    a, b, v = f.datasets
    assert (a.kind, b.kind, v.kind) == ("image", "image", "video")
    assert (a.batch_size, a.at("batch_size")) == (2, "dataset.toml:9")
    assert (b.batch_size, b.at("batch_size")) == (4, "dataset.toml:3")
    assert (a.resolution, a.at("resolution")) == ((512, 768), "dataset.toml:2")
    assert (
        a.get("fp_latent_window_size") == 9 and a.at("fp_latent_window_size") == "dataset.toml:6"
    )  # default: the header
    assert v.get("target_frames") == (1,) and v.get("max_frames") == 129
    assert a.cache_directory == "cache/a" and b.cache_directory == "img" and v.cache_directory == "vid"
    assert a.control_count == 1


def test_a_value_of_the_wrong_type_counts_as_unset(tmp_path):
    b = load(tmp_path).datasets[1]
    assert b.resolution == (512, 768)  # "big" is reported by the check; musubi-tuner's value falls back to [general]
    assert b.at("resolution") == "dataset.toml:2"
    assert b.file.at(b.table, "resolution") == "dataset.toml:13"  # where the wrong value is, for the check
    assert "resolution" in b.values and b.values["resolution"] == [512, 768]


def test_control_matching_longest_names_first_unsuffixed_first():
    controls, bad = model.match_controls(
        ["i/a.png", "i/a_1.png", "i/ab.png"],
        ["c/a_1_0.png", "c/a_1.png", "c/a.png", "c/a_2.png", "c/a_10.png", "c/ab_0.png"],
    )
    assert controls == {
        "i/a_1.png": ["c/a_1.png", "c/a_1_0.png"],
        "i/ab.png": ["c/ab_0.png"],
        "i/a.png": ["c/a.png", "c/a_2.png", "c/a_10.png"],
    }
    assert bad == {}


def test_a_control_suffix_that_is_not_a_number_stops_the_image():
    controls, bad = model.match_controls(["i/x.png"], ["c/x.png", "c/x_mask.png"])
    assert controls == {} and bad == {"i/x.png": "c/x_mask.png"}


def test_jsonl_controls_are_renumbered_as_musubi_tuner_does():
    norm, names = model.normalise_controls(
        {"image_path": "t", "control_path": "a", "control_path_7": "b", "control_path_3": "c"}
    )
    assert {k: v for k, v in norm.items() if k.startswith("control")} == {
        "control_path_0": "a",
        "control_path_1": "c",
        "control_path_2": "b",
    }
    assert names["control_path_1"] == "control_path_3"
    assert model.normalise_controls({"control_path_x": "a"}) == "control_path_x"


def test_a_value_out_of_range_counts_as_unset_and_as_rejected(tmp_path):
    (tmp_path / "dataset.toml").write_text(
        '[general]\nbatch_size = 0\n[[datasets]]\nimage_directory = "img"\nresolution = [0, 512]\n'
    )
    d = model.read(Workspace(tmp_path), tmp_path / "dataset.toml").datasets[0]
    assert (d.batch_size, d.resolution) == (1, (960, 544))  # musubi-tuner's defaults; the check reports both lines
    assert d.rejected("batch_size") and d.rejected("resolution") and not d.rejected("num_repeats")
    assert model.range_problem("num_repeats", -1) and model.range_problem("control_resolution", 0)
    assert model.range_problem("resolution", [1, 1]) is None


def test_links_to_nowhere_and_captions_not_utf8_are_problems_of_the_listing(tmp_path):
    """What musubi-tuner lists and then fails on while caching: the check reports it, `make cache` stops on it."""
    img = tmp_path / "img"
    img.mkdir()
    for name in ("a", "b", "c", "d"):
        (img / f"{name}.png").write_bytes(b"png")
        (img / f"{name}.txt").write_text(name)
    (img / "a.png").unlink()
    (img / "a.png").symlink_to("/nowhere/a.png")
    (img / "b.txt").unlink()
    (img / "b.txt").symlink_to("b.txt")
    (img / "c.txt").write_bytes(b"caf\xe9")
    (img / "e.png").symlink_to("gone.png")  # no caption: musubi-tuner skips the name unread
    (tmp_path / "dataset.toml").write_text('[[datasets]]\nimage_directory = "img"\ncaption_extension = ".txt"\n')
    ws = Workspace(tmp_path)
    listing = model.items(ws, model.read(ws, tmp_path / "dataset.toml").datasets[0])
    assert [(p.severity, p.where, p.message.split(":")[0]) for p in listing.problems] == [
        (model.WARNING, "img/e.png", "no caption file e.txt"),
        (model.ERROR, "img/a.png", "is a symlink to /nowhere/a.png, which does not exist"),
        (model.ERROR, "img/b.txt", "is a symlink loop"),
        (model.ERROR, "img/c.txt", "is not UTF-8 text (byte 0xe9 on line 1)"),
    ]
    assert [i.path for i in listing.items] == ["img/c.png", "img/d.png"] and listing.items[0].caption_error
