"""The dataset model finds what musubi-tuner finds: for each small dataset below, musubi-tuner's own blueprint and
datasources (config_utils at the pinned commit, architecture "fp") list the items, their control images and
captions, and the model (musubi_workspace.dataset) must list the same; where musubi-tuner stops, the model must
report an error."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from musubi_workspace import dataset as model
from musubi_workspace.paths import Workspace

# name -> (dataset.toml, {file: content}); "*.png"/"*.jpg"... files become small images, "-> x" a symlink to x,
# the rest text.
CASES = {
    "directory, unsuffixed controls": (
        '[[datasets]]\nimage_directory = "img"\ncontrol_directory = "ctl"\ncaption_extension = ".txt"\ncache_directory = "c"\n',
        {"img/a.png": 0, "img/a.txt": " a cat \n", "img/b.jpg": 0, "img/b.txt": "b", "ctl/a.png": 0, "ctl/b.webp": 0},
    ),
    "directory, suffixed controls, longest names first": (
        '[[datasets]]\nimage_directory = "img"\ncontrol_directory = "ctl"\ncaption_extension = ".txt"\nfp_1f_clean_indices = [0, 10]\n',
        {
            "img/a.png": 0,
            "img/a.txt": "a",
            "img/a_1.png": 0,
            "img/a_1.txt": "a1",
            "img/ab.png": 0,
            "img/ab.txt": "ab",
            "ctl/a_0.png": 0,
            "ctl/a_2.png": 0,
            "ctl/a_1_0.png": 0,
            "ctl/a_1_1.png": 0,
            "ctl/ab_0.png": 0,
            "ctl/ab_10.png": 0,
            "ctl/ab_9.png": 0,
        },
    ),
    "directory, unsuffixed before suffixed, extra controls cut": (
        '[general]\ncaption_extension = ".txt"\n[[datasets]]\nimage_directory = "img"\ncontrol_directory = "ctl"\nfp_1f_clean_indices = [0, 10]\n',
        {"img/x.png": 0, "img/x.txt": "x", "ctl/x_0.png": 0, "ctl/x.png": 0, "ctl/x_1.JPG": 0},
    ),
    "directory, uncaptioned, hidden and unknown files": (
        '[[datasets]]\nimage_directory = "img"\ncontrol_directory = "ctl"\ncaption_extension = ".txt"\n',
        {
            "img/a.PNG": 0,
            "img/a.txt": "a",
            "img/b.png": 0,
            "img/.h.png": 0,
            "img/.h.txt": "h",
            "img/c.gif": 0,
            "img/c.txt": "c",
            "ctl/a.png": 0,
            "ctl/.a_1.png": 0,
        },
    ),
    "directory, an uncaptioned dangling link is skipped unread": (
        '[[datasets]]\nimage_directory = "img"\ncaption_extension = ".txt"\n',
        {"img/a.png": 0, "img/a.txt": "a", "img/b.png": "-> /nowhere/b.png", "img/c.png": "-> c.png"},
    ),
    "directory, control suffix not a number": (
        '[[datasets]]\nimage_directory = "img"\ncontrol_directory = "ctl"\ncaption_extension = ".txt"\n',
        {"img/x.png": 0, "img/x.txt": "x", "ctl/x_a.png": 0},
    ),
    "directory, control suffix not a number beside good ones": (
        '[[datasets]]\nimage_directory = "img"\ncontrol_directory = "ctl"\ncaption_extension = ".txt"\n',
        {"img/x.png": 0, "img/x.txt": "x", "ctl/x.png": 0, "ctl/x_mask.png": 0},
    ),
    "directory, too few controls": (
        '[[datasets]]\nimage_directory = "img"\ncontrol_directory = "ctl"\ncaption_extension = ".txt"\nfp_1f_clean_indices = [0, 10]\n',
        {"img/x.png": 0, "img/x.txt": "x", "ctl/x_0.png": 0},
    ),
    "directory, an image without any control": (
        '[[datasets]]\nimage_directory = "img"\ncontrol_directory = "ctl"\ncaption_extension = ".txt"\n',
        {"img/x.png": 0, "img/x.txt": "x", "img/y.png": 0, "img/y.txt": "y", "ctl/x.png": 0},
    ),
    "directory, caption extension with two dots": (
        '[[datasets]]\nimage_directory = "img"\ncaption_extension = ".caption.txt"\n',
        {"img/x.png": 0, "img/x.caption.txt": "x", "img/y.png": 0, "img/y.txt": "y"},
    ),
    "directory, multiple targets": (
        '[[datasets]]\nimage_directory = "img"\ncontrol_directory = "ctl"\ncaption_extension = ".txt"\nmultiple_target = true\n',
        {"img/x.png": 0, "img/x.txt": "x", "img/x_0.png": 0, "img/x_1.png": 0, "ctl/x.png": 0},
    ),
    "jsonl, control_path and numbered keys": (
        '[[datasets]]\nimage_jsonl_file = "d.jsonl"\ncache_directory = "c"\nfp_1f_clean_indices = [0, 10]\n',
        {
            "t/a.png": 0,
            "t/b.png": 0,
            "k/1.png": 0,
            "k/2.png": 0,
            "k/3.png": 0,
            "d.jsonl": [
                {"image_path": "t/a.png", "control_path": "k/1.png", "control_path_3": "k/2.png", "caption": " a "},
                {
                    "image_path_0": "t/b.png",
                    "control_path_10": "k/3.png",
                    "control_path_2": "k/1.png",
                    "control_path_11": "k/2.png",
                    "caption": "b",
                },
            ],
        },
    ),
    "jsonl, without controls": (
        '[[datasets]]\nimage_jsonl_file = "d.jsonl"\ncache_directory = "c"\n',
        {"t/a.png": 0, "d.jsonl": [{"image_path": "t/a.png", "caption": "a"}]},
    ),
    "jsonl, a line without the controls others have": (
        '[[datasets]]\nimage_jsonl_file = "d.jsonl"\ncache_directory = "c"\n',
        {
            "t/a.png": 0,
            "t/b.png": 0,
            "k/1.png": 0,
            "d.jsonl": [
                {"image_path": "t/a.png", "control_path": "k/1.png", "caption": "a"},
                {"image_path": "t/b.png", "caption": "b"},
            ],
        },
    ),
    "jsonl, control key not numbered": (
        '[[datasets]]\nimage_jsonl_file = "d.jsonl"\ncache_directory = "c"\n',
        {
            "t/a.png": 0,
            "k/1.png": 0,
            "d.jsonl": [{"image_path": "t/a.png", "control_path_a": "k/1.png", "caption": "a"}],
        },
    ),
    "video directory, controls by name, folder and other extension": (
        '[[datasets]]\nvideo_directory = "v"\ncontrol_directory = "vc"\ncaption_extension = ".txt"\n',
        {
            "v/a.mp4": "x",
            "v/a.txt": "a",
            "v/b.mov": "x",
            "v/b.txt": "b",
            "v/c.MP4": "x",
            "v/c.txt": "c",
            "vc/a.mp4": "x",
            "vc/b/0.png": 0,
            "vc/c.webm": "x",
        },
    ),
    "video directory, a video without control": (
        '[[datasets]]\nvideo_directory = "v"\ncontrol_directory = "vc"\ncaption_extension = ".txt"\n',
        {"v/a.mp4": "x", "v/a.txt": "a", "vc/z.mp4": "x"},
    ),
    "video jsonl": (
        '[[datasets]]\nvideo_jsonl_file = "v.jsonl"\ncache_directory = "c"\n',
        {
            "v/a.mp4": "x",
            "v/b.mp4": "x",
            "d/a.mp4": "x",
            "d/b.mp4": "x",
            "v.jsonl": [
                {"video_path": "v/a.mp4", "control_path": "d/a.mp4", "caption": "a"},
                {"video_path": "v/b.mp4", "control_path": "d/b.mp4", "caption": "b"},
            ],
        },
    ),
}


def build(root: Path, files: dict) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, list):
            path.write_text("".join(json.dumps(line) + "\n" for line in content), encoding="utf-8")
        elif isinstance(content, str) and content.startswith("-> "):
            path.symlink_to(content[3:])
        elif content == 0:
            Image.new("RGB", (16, 16), (len(name) * 9 % 256, 0, 0)).save(path, format="PNG")
        else:
            path.write_text(content, encoding="utf-8")


def musubi_view(musubi, dataset_toml: Path) -> list[dict] | str:
    """What musubi-tuner's datasources find, per dataset: paths, controls, captions; or why it stops."""
    cu = musubi["dataset.config_utils"]
    logging.disable(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            blueprint = cu.BlueprintGenerator(cu.ConfigSanitizer()).generate(
                cu.load_user_config(str(dataset_toml)), argparse.Namespace(debug_dataset=False), architecture="fp"
            )
            group = cu.generate_dataset_group_by_blueprint(blueprint.dataset_group)
    except (ValueError, KeyError) as e:
        return f"{type(e).__name__}: {e}"
    finally:
        logging.disable(logging.NOTSET)
    out = []
    for ds in group.datasets:
        src = ds.datasource
        found = []
        for i in range(len(src)):
            path, caption = src.get_caption(i)
            if hasattr(src, "control_paths"):  # directories
                controls = src.control_paths.get(path, [])
                controls = [controls] if isinstance(controls, str) else list(controls)
            elif hasattr(src, "image_jsonl_file"):
                data = src.data[i]
                controls = (
                    [
                        data[f"control_path_{k}"]
                        for k in range(ds.fp_1f_clean_indices and len(ds.fp_1f_clean_indices) or 1)
                        if f"control_path_{k}" in data
                    ]
                    if src.has_control
                    else []
                )
            else:
                controls = [src.data[i]["control_path"]] if src.has_control else []
            extra = list(getattr(src, "target_paths", {}).get(path, []))
            found.append({"path": path, "controls": controls, "caption": caption, "extra": extra})
        out.append(found)
    return out


def model_view(root: Path, dataset_toml: Path) -> tuple[list[list[dict]], list[str]]:
    ws = Workspace(root)
    f = model.read(ws, dataset_toml)
    views, errors = [], []
    for d in f.datasets:
        listing = model.items(ws, d)
        errors += [f"{p.where}: {p.message}" for p in listing.problems if p.severity == model.ERROR]
        views.append(
            [
                {"path": i.path, "controls": i.controls, "caption": i.caption, "extra": i.extra_targets}
                for i in listing.items
            ]
        )
    return views, errors


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_model_lists_what_musubi_tuners_datasources_find(musubi, tmp_path, monkeypatch, case):
    toml, files = CASES[case]
    build(tmp_path, files)
    (tmp_path / "dataset.toml").write_text(toml, encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # musubi-tuner reads dataset paths relative to where it runs
    theirs = musubi_view(musubi, tmp_path / "dataset.toml")
    ours, errors = model_view(tmp_path, tmp_path / "dataset.toml")
    if isinstance(theirs, str):
        assert errors, f"musubi-tuner stops ({theirs}), the model found nothing wrong"
    else:
        assert not errors, errors
        assert ours == theirs


def test_the_cases_cover_both_outcomes(musubi, tmp_path, monkeypatch):
    """Guard against a table whose cases all fail (or all pass) in musubi-tuner for a reason of the harness."""
    monkeypatch.chdir(tmp_path)
    outcomes = set()
    for n, case in enumerate(
        ("directory, suffixed controls, longest names first", "directory, control suffix not a number")
    ):
        root = tmp_path / str(n)
        toml, files = CASES[case]
        build(root, files)
        (root / "dataset.toml").write_text(toml, encoding="utf-8")
        monkeypatch.chdir(root)
        outcomes.add(isinstance(musubi_view(musubi, root / "dataset.toml"), str))
    assert outcomes == {True, False}
