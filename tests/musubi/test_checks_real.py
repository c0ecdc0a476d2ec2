"""`make check` agrees with musubi-tuner: what the check rejects in a dataset.toml, musubi-tuner's own
ConfigSanitizer rejects, and what it accepts (the shipped examples), the sanitizer accepts; a prompt line reads
the same through the check's parser and musubi-tuner's `line_to_prompt_dict`."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from musubi_workspace.checks import run_checks
from musubi_workspace.checks.prompts import parse_line, read_lines
from musubi_workspace.config import Config
from musubi_workspace.paths import Workspace
from musubi_workspace.schema import load_schema

REPO = Path(__file__).resolve().parents[2]
SHIPPED = {"v1": "configs/v1", "example-video": "configs/example-video"}


def dataset_findings(ws: Workspace, version: str) -> list[str]:
    """The check's findings about the version's dataset.toml."""
    cfg = Config.load(ws, ws.root / SHIPPED[version] / "config.toml")
    report = run_checks(cfg, dry_run=True, out=io.StringIO())
    return [f.line() for f in report.findings if f.where.startswith(f"{SHIPPED[version]}/dataset.toml")]


def sanitizer_verdict(musubi, path: Path) -> str | None:
    """None when musubi-tuner's ConfigSanitizer accepts the file, else its error."""
    cu = musubi["dataset.config_utils"]
    try:
        cu.ConfigSanitizer().sanitize_user_config(cu.load_user_config(str(path)))
    except Exception as e:  # voluptuous.MultipleInvalid, ValueError from load_user_config
        return f"{type(e).__name__}: {e}"
    return None


@pytest.mark.parametrize("version", sorted(SHIPPED))
def test_shipped_datasets_pass_both(musubi, workspace, version):
    path = workspace.root / SHIPPED[version] / "dataset.toml"
    assert sanitizer_verdict(musubi, path) is None
    assert dataset_findings(workspace, version) == []


@pytest.mark.parametrize(
    "version, old, new",
    [
        ("v1", "num_repeats = 1", 'num_repeats = 1\ncache_directory = "cache/x"'),  # dataset-only key in [general]
        ("v1", "fp_1f_no_post = true", 'fp_1f_no_post = true\ncaption_extention = ".txt"'),  # typo
        ("v1", "fp_1f_no_post = true", "fp_1f_no_post = true\ntarget_frames = [1]"),  # video key in an image dataset
        ("v1", "[general]", "[genral]\n[general]"),  # unknown top-level table
        ("v1", "resolution = [512, 768]", "resolution = [512.0, 768.0]"),
        ("v1", "fp_1f_target_index = 1", 'fp_1f_target_index = "1"'),
        ("example-video", "source_fps = 30.0", "source_fps = 30"),  # musubi-tuner wants a float
        ("example-video", 'frame_extraction = "head"', 'frame_extraction = "head"\nfp_1f_no_post = true'),
    ],
)
def test_what_the_check_rejects_the_sanitizer_rejects(musubi, workspace, version, old, new):
    path = workspace.root / SHIPPED[version] / "dataset.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    assert sanitizer_verdict(musubi, path) is not None
    assert [f for f in dataset_findings(workspace, version) if f.startswith("error: ")]


def test_booleans_pass_as_numbers_in_both(musubi, workspace):
    """voluptuous's int takes TOML booleans; the check does not reject what musubi-tuner accepts."""
    path = workspace.root / "configs/v1/dataset.toml"
    path.write_text(path.read_text().replace("num_repeats = 1", "num_repeats = true"))
    assert sanitizer_verdict(musubi, path) is None
    assert dataset_findings(workspace, "v1") == []


@pytest.mark.parametrize("version", sorted(SHIPPED))
def test_shipped_prompt_lines_read_the_same_in_both(musubi, version):
    parse = musubi["training.sampling_prompts"].line_to_prompt_dict
    schema = load_schema()["prompt_options"]
    names = {
        "w": "width",
        "h": "height",
        "f": "frame_count",
        "d": "seed",
        "s": "sample_steps",
        "i": "image_path",
        "of": "one_frame",
    }
    for n, text in read_lines(REPO / SHIPPED[version] / "prompts.txt"):
        ours = parse_line(n, text, schema["train"], schema["one_frame"])
        theirs = parse(text)
        assert ours.problems == []
        assert ours.prompt == theirs["prompt"]
        for short, key in names.items():
            if short in ours.options:
                value = ours.first(short)
                assert theirs[key] == (int(value) if short in "whfds" else value), short
        assert ours.options.get("ci", []) == theirs.get("control_image_path", [])


def test_what_the_prompt_check_flags_musubi_ignores(musubi):
    parse = musubi["training.sampling_prompts"].line_to_prompt_dict
    schema = load_schema()["prompt_options"]
    for line in ("a cat --width 512 --i x.png", "a cat --w abc --i x.png", "a cat --s 25.5 --i x.png"):
        ours = parse_line(1, line, schema["train"], schema["one_frame"])
        theirs = parse(line)
        assert ours.problems, line
        # musubi-tuner drops the option, or reads only the digits before the dot
        assert "width" not in theirs or theirs.get("sample_steps") == 25, theirs
