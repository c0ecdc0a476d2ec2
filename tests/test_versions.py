"""`make new` and `make diff` on real files."""

from __future__ import annotations

from conftest import error_line


def test_new_copies_the_newest_version_and_renames_what_names_it(ws):
    r = ws.tool("new")
    assert r.returncode == 0, r.stderr
    assert "Created configs/v2 from configs/v1." in r.stdout
    cfg = ws.read("configs/v2/config.toml")
    assert 'dataset_config = "configs/v2/dataset.toml"' in cfg
    assert 'sample_prompts = "configs/v2/prompts.txt"' in cfg
    assert 'output_name = "example-1f_v2"' in cfg
    assert 'output_dir = "outputs/v2"' in cfg
    assert 'huggingface_path_in_repo = "v2"' in cfg
    assert "# LoRA rank; 16-32 suits poses and edits" in cfg  # comments survive
    ds = ws.read("configs/v2/dataset.toml")
    assert 'cache_directory = "cache/v2/example-1f"' in ds
    assert 'image_jsonl_file = "datasets/example-1f/train.jsonl"' in ds  # shared inputs are left alone
    assert ws.read("configs/v2/prompts.txt") == ws.read("configs/v1/prompts.txt").replace(
        "# configs/v1/", "# configs/v2/", 1
    )
    assert "configs/v2/config.toml: output_name = 'example-1f_v1' -> 'example-1f_v2'" in r.stdout


def test_new_drops_resume_and_keeps_shared_model_and_weight_paths(ws):
    cfg = ws.read("configs/v1/config.toml")
    cfg = cfg.replace(
        "seed = 42",
        'seed = 42\nresume = "outputs/v1/example-1f_v1-state"\nnetwork_weights = "outputs/v1/example-1f_v1.safetensors"',
    )
    ws.write("configs/v1/config.toml", cfg)
    r = ws.tool("new")
    assert r.returncode == 0, r.stderr
    new = ws.read("configs/v2/config.toml")
    assert (
        "resume" not in new.split("[workspace]")[0].replace("# ", "").split("make resume")[0] or "resume =" not in new
    )
    assert "resume =" not in new
    assert 'network_weights = "outputs/v1/example-1f_v1.safetensors"' in new
    assert "resume removed (a new version starts fresh)" in r.stdout


def test_new_from_an_older_version_takes_the_next_free_number(ws):
    assert ws.tool("new").returncode == 0
    r = ws.tool("new", "FROM=v1")
    assert r.returncode == 0, r.stderr
    assert "Created configs/v3 from configs/v1." in r.stdout
    assert 'output_name = "example-1f_v3"' in ws.read("configs/v3/config.toml")


def test_new_never_overwrites_an_existing_version(ws):
    (ws.root / "configs" / "v2").write_text("a file in the way")
    (ws.root / "configs" / "v2").unlink()
    (ws.root / "configs" / "v2").mkdir()
    (ws.root / "configs" / "v2" / "config.toml").write_text("# mine\n")
    r = ws.tool("new", "FROM=v1")
    assert r.returncode == 0
    assert "Created configs/v3" in r.stdout
    assert ws.read("configs/v2/config.toml") == "# mine\n"


def test_new_from_an_unknown_version_names_the_ones_that_exist(ws):
    r = ws.tool("new", "FROM=v7")
    assert r.returncode == 2
    assert error_line(r) == "error: FROM=v7: configs/v7 not found; versions here: v1"


def test_diff_shows_changes_key_by_key_and_version_renames_apart(ws):
    assert ws.tool("new").returncode == 0
    cfg = ws.read("configs/v2/config.toml").replace("learning_rate = 2e-4", "learning_rate = 1e-4")
    cfg = cfg.replace("network_dim = 32", "# network_dim = 32").replace(
        "seed = 42", 'seed = 42\nnetwork_args = ["loraplus_lr_ratio=4"]'
    )
    ws.write("configs/v2/config.toml", cfg)
    ds = ws.read("configs/v2/dataset.toml").replace("batch_size = 16", "batch_size = 8")
    ws.write("configs/v2/dataset.toml", ds)
    ws.write("configs/v2/prompts.txt", ws.read("configs/v2/prompts.txt") + "A second prompt. --i a.png --f 1\n")
    r = ws.tool("diff")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "diff configs/v1 -> configs/v2" in out
    assert "  ~ learning_rate: 0.0002 -> 0.0001" in out
    assert "  - network_dim = 32" in out
    assert '  + network_args = ["loraplus_lr_ratio=4"]' in out
    assert "  ~ general.batch_size: 16 -> 8" in out
    assert "only the version name differs:" in out
    assert '    output_name: "example-1f_v1" -> "example-1f_v2"' in out
    assert '    datasets[0].cache_directory: "cache/v1/example-1f" -> "cache/v2/example-1f"' in out
    assert "+A second prompt. --i a.png --f 1" in out


def test_diff_with_explicit_versions_and_errors(ws):
    assert ws.tool("new").returncode == 0
    assert "(no changes)" in ws.tool("diff", "A=v2", "B=v2").stdout
    r = ws.tool("diff", "A=v1")
    assert r.returncode == 2 and "give both A= and B=" in r.stderr
    r = ws.tool("diff", "A=v1", "B=v9")
    assert r.returncode == 2 and "error: B=v9: configs/v9 not found; versions here: v1, v2" in r.stderr


def test_diff_needs_two_versions(ws):
    r = ws.tool("diff")
    assert r.returncode == 2
    assert "error: make diff needs two versions; have v1: `make new` creates one" in r.stderr


def test_new_points_at_the_dry_run_check_off_the_pod_and_the_full_check_on_it(ws):
    r = ws.tool("new")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == (
        "Next: edit configs/v2/config.toml, then `make diff` and `make check DRY_RUN=1 "
        "CONFIG_FILE=configs/v2/config.toml` (off the pod: models and keys not needed); on the pod, "
        "`make check CONFIG_FILE=configs/v2/config.toml`."
    )
