"""`make validate`'s module: its own options over the launcher's variables, the run a LoRA file belongs to, and
a missing LoRA as one line before anything loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from musubi_workspace.validation import offline


def test_options_override_the_launchers_variables_and_the_rest_goes_to_the_trainer():
    ns, rest = offline.own_parser().parse_known_args(
        [
            "--lora",
            "a.safetensors",
            "b.safetensors",
            "--timesteps",
            "0.25,0.75",
            "--config_file",
            "c.toml",
            "--lora",
            "c",
        ]
    )
    assert ns.lora == ["a.safetensors", "b.safetensors", "c"] and rest == ["--config_file", "c.toml"]
    env = {"WS_VALIDATION": "validation/dataset.toml", "WS_VALIDATION_TIMESTEPS": "0.5", "WS_VALIDATION_SET": "ab" * 8}
    s = offline.settings(ns, env)
    assert (s.path, s.timesteps, s.set_hash) == ("validation/dataset.toml", [0.25, 0.75], "ab" * 8)
    ns, _ = offline.own_parser().parse_known_args(["--lora", "a", "--validation", "other.toml", "--set", "cd" * 8])
    assert offline.settings(ns, {}).set_hash == "cd" * 8
    ns.validation_set = None
    assert offline.settings(ns, {}).path == "other.toml" and offline.settings(ns, {}).set_hash is None


def test_no_set_and_bad_timesteps_are_one_line_each():
    ns, _ = offline.own_parser().parse_known_args(["--lora", "a.safetensors"])
    with pytest.raises(
        SystemExit, match=r"^musubi-workspace: no validation set: pass --validation or set \$WS_VALIDATION$"
    ):
        offline.settings(ns, {})
    with pytest.raises(
        SystemExit, match="WS_VALIDATION_TIMESTEPS='0,1' is not a comma list of numbers between 0 and 1"
    ):
        offline.settings(ns, {"WS_VALIDATION": "v.toml", "WS_VALIDATION_TIMESTEPS": "0,1"})


def test_a_missing_lora_stops_before_anything_loads(tmp_path):
    with pytest.raises(SystemExit, match=r"^musubi-workspace: no such LoRA file: .*nope.safetensors$"):
        offline.main(["--lora", str(tmp_path / "nope.safetensors")], {"WS_VALIDATION": "v.toml"})


@pytest.mark.parametrize(
    "name,run", [("x-step00000500", "x"), ("x-000002", "x"), ("x", "x"), ("my-lora-v2-step00000010", "my-lora-v2")]
)
def test_the_run_of_a_lora_is_its_name_without_musubis_step_or_epoch_suffix(name, run):
    assert offline.run_name(Path(f"out/{name}.safetensors")) == run
