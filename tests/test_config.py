"""Reading config.toml: one clear line for every way it can be wrong."""

from __future__ import annotations

import re

import pytest
from conftest import error_line as last_line


def test_malformed_config_names_file_and_line(ws):
    ws.write("configs/v1/config.toml", ws.read("configs/v1/config.toml").replace("seed = 42", "seed = = 42"))
    r = ws.make("train", "DRY_RUN=1")
    assert r.returncode == 2 and "Error 2" in r.stderr
    line = ws.read("configs/v1/config.toml").splitlines().index("seed = = 42") + 1
    assert last_line(r).startswith(f"error: configs/v1/config.toml:{line}: not valid TOML: ")
    assert "Traceback" not in r.stderr


def test_unknown_version_lists_the_versions_and_the_fix(ws):
    r = ws.make("train", "DRY_RUN=1", "CONFIG_FILE=configs/v9/config.toml")
    assert r.returncode == 2 and "Error 2" in r.stderr
    assert (
        last_line(r)
        == "error: CONFIG_FILE=configs/v9/config.toml: configs/v9/config.toml not found; versions here: v1; `make new` creates the next one"
    )


def test_missing_dataset_toml_is_one_line(ready):
    (ready.root / "configs" / "v1" / "dataset.toml").unlink()
    r = ready.make("cache")
    assert r.returncode == 2 and "Error 3" in r.stderr
    assert (
        "error: configs/v1/config.toml:27: dataset_config configs/v1/dataset.toml not found; create it (copy configs/v1/dataset.toml) or fix the path"
        in r.stderr
    )
    assert ready.calls() == []


def test_unreadable_config_is_one_line(ws, tmp_path):
    p = ws.root / "configs" / "v1" / "config.toml"
    p.write_bytes(b"\xff\xfe not utf-8")
    r = ws.tool("check")
    assert r.returncode == 2
    assert last_line(r).startswith("error: configs/v1/config.toml: cannot read (UnicodeDecodeError")


@pytest.mark.parametrize(
    "line, message",
    [
        ('auto_stp = "5m"', "unknown key `auto_stp` in [workspace] (did you mean `auto_stop`?)"),
        ("num_processes = 0", 'num_processes must be "auto" or a whole number >= 1, got 0'),
        ('auto_stop = "soon"', 'expected a duration such as "10m", "30s", "1h" or "off", got \'soon\''),
        ('price_per_hour = "cheap"', "[workspace] price_per_hour must be float, got 'cheap'"),
        ("blocks_without_checkpointing = 61", "= 61: the FramePack DiT has 60 blocks; set 0 to 60"),
        ("blocks_without_checkpointing = -1", "[workspace] blocks_without_checkpointing must be >= 0, got -1"),
        ("blocks_without_checkpointing = true", "[workspace] blocks_without_checkpointing must be int, got True"),
    ],
)
def test_workspace_table_errors(ws, line, message):
    text = ws.read("configs/v1/config.toml")
    key = line.split(" =")[0]
    text, n = re.subn(rf"^{key} = .*$", line, text, flags=re.M)
    if n == 0:
        text = text.replace("\n[workspace]\n", f"\n[workspace]\n{line}\n", 1)
    ws.write("configs/v1/config.toml", text)
    r = ws.tool("check")
    assert r.returncode == 2
    assert message in last_line(r), r.stderr


def test_no_workspace_key_collides_with_a_musubi_tuner_option_or_dataset_key():
    """musubi-tuner flattens [workspace] into its options and uses them as dataset fallbacks."""
    from dataclasses import fields

    from musubi_workspace.config import WorkspaceSettings
    from musubi_workspace.schema import load_schema

    schema = load_schema()
    ours = {f.name for f in fields(WorkspaceSettings)}
    train = set(schema["parsers"]["fpack_train_network"])
    dataset = set().union(*(set(v) for v in schema["dataset"].values()))
    assert ours & train == set()
    assert ours & dataset == set()


def test_a_table_header_with_a_comment_keeps_the_line_of_its_keys(ws):
    text = ws.read("configs/v1/config.toml").replace(
        "\n[workspace]\n", "\n[workspace]  # the workspace's own settings\n", 1
    )
    text = re.sub(r"^auto_stop = .*$", 'auto_stp = "5m"', text, count=1, flags=re.M)
    ws.write("configs/v1/config.toml", text)
    line = text.splitlines().index('auto_stp = "5m"') + 1
    r = ws.tool("check")
    assert r.returncode == 2
    assert last_line(r).startswith(
        f"error: configs/v1/config.toml:{line}: unknown key `auto_stp` in [workspace] (did you mean `auto_stop`?)"
    )


def test_key_line_reads_table_headers_and_not_array_rows():
    from musubi_workspace.config import key_line

    text = (
        "seed = 1\n"
        "[workspace]  # the workspace's own\n"
        'auto_stop = "10m"\n'
        "[[datasets]] # one dataset\n"
        "resolution = [512, 768]\n"
        "rows = [\n"
        "  [1, 2],  # an array row, not a header\n"
        "]\n"
        "batch_size = 1\n"
    )
    assert key_line(text, "seed") == 1
    assert key_line(text, "auto_stop", "workspace") == 3
    assert key_line(text, "resolution", "datasets") == 5
    assert key_line(text, "batch_size", "datasets") == 9
    assert key_line(text, "batch_size", "workspace") is None


@pytest.mark.parametrize(
    "line, message",
    [
        (
            "validation_every_n_steps = -1",
            "[workspace] validation_every_n_steps must be a whole number >= 0 (0: only at step 0, each save and the "
            "end), got -1",
        ),
        (
            "validation_timesteps = [0.1, 1.0]",
            "[workspace] validation_timesteps has 1.0: each timestep must be a number between 0 and 1 (0 and 1 "
            "excluded), e.g. [0.1, 0.3, 0.5, 0.7, 0.9]",
        ),
        (
            "validation_timesteps = [0, 0.5]",
            "[workspace] validation_timesteps has 0: each timestep must be a number between 0 and 1 (0 and 1 "
            "excluded), e.g. [0.1, 0.3, 0.5, 0.7, 0.9]",
        ),
        (
            "validation_timesteps = []",
            "[workspace] validation_timesteps is empty; list at least one, e.g. [0.1, 0.3, 0.5, 0.7, 0.9] (the "
            "default), or remove the key",
        ),
        (
            "validation_timesteps = 0.5",
            "[workspace] validation_timesteps must be a list of numbers between 0 and 1, e.g. [0.1, 0.3, 0.5, 0.7, "
            "0.9], got 0.5",
        ),
        ("validation = 3", "[workspace] validation must be str, got 3"),
    ],
)
def test_validation_key_errors_are_one_exact_line(ws, line, message):
    text = ws.read("configs/v1/config.toml")
    text = (
        text.replace('\nvalidation = "validation/dataset.toml"\n', f"\n{line}\n", 1)
        if line.startswith("validation =")
        else text.replace("\n[workspace]\n", f"\n[workspace]\n{line}\n", 1)
    )
    ws.write("configs/v1/config.toml", text)
    n = text.splitlines().index(line) + 1
    r = ws.tool("check")
    assert r.returncode == 2
    assert last_line(r) == f"error: configs/v1/config.toml:{n}: {message}"
