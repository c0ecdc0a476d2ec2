"""The incremental cache's model of musubi-tuner, checked against the real dataset code and cache loops.

The workspace predicts the cache file names musubi-tuner writes (cache_state) and relies on two behaviours of
its caching scripts: `--skip_existing` skips what exists (latents: items whose file exists; text encoder: files
that existed at start), and after encoding every unproduced `*_fp.safetensors` / `*_fp_te.safetensors` in the
cache directory is deleted unless `--keep_cache`. The encoders are replaced by functions that write the file
each item names, so no model is loaded; the loops, datasets and file naming are musubi-tuner's own.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
from PIL import Image
from runs.test_cache_plan import _directory_dataset


@pytest.fixture
def loops(musubi, ready, monkeypatch):
    """musubi-tuner's modules; the process in the workspace root, where musubi-tuner runs."""
    monkeypatch.chdir(ready.root)
    return musubi


def musubi_datasets(musubi, dataset_toml: str):
    config_utils = musubi["dataset.config_utils"]
    gen = config_utils.BlueprintGenerator(config_utils.ConfigSanitizer())
    user = config_utils.load_user_config(dataset_toml)
    args = argparse.Namespace(debug_dataset=False, batch_size=None, num_workers=1)
    blueprint = gen.generate(user, args, architecture="fp")
    return config_utils.generate_dataset_group_by_blueprint(blueprint.dataset_group).datasets


def encode_latents(musubi, dataset_toml, skip_existing, keep_cache=False) -> list[str]:
    encoded = []

    def encode(batch):
        for item in batch:
            Path(item.latent_cache_path).write_bytes(b"latent")
            encoded.append(os.path.basename(item.latent_cache_path))

    args = argparse.Namespace(num_workers=1, skip_existing=skip_existing, keep_cache=keep_cache, batch_size=None)
    musubi["fpack_cache_latents"].encode_datasets_framepack(musubi_datasets(musubi, dataset_toml), encode, args)
    return sorted(encoded)


def encode_te(musubi, dataset_toml, skip_existing, keep_cache=False) -> list[str]:
    encoded = []

    def encode(batch):
        for item in batch:
            Path(item.text_encoder_output_cache_path).write_bytes(b"te")
            encoded.append(os.path.basename(item.text_encoder_output_cache_path))

    te_loop = musubi["cache_text_encoder_outputs"]
    datasets = musubi_datasets(musubi, dataset_toml)
    files, paths = te_loop.prepare_cache_files_and_paths(datasets)
    te_loop.process_text_encoder_batches(1, skip_existing, None, datasets, files, paths, encode)
    te_loop.post_process_cache_files(datasets, files, paths, keep_cache)
    return sorted(encoded)


def planned(root: Path, version: str) -> tuple[set, set]:
    from musubi_workspace.config import Config
    from musubi_workspace.paths import Workspace
    from musubi_workspace.runs import cache_plan as cache_state

    cfg = Config.load(Workspace(root), root / "configs" / version / "config.toml")
    [d] = cache_state.plan(cfg).datasets
    return set(d.sides["latents"].expected), set(d.sides["te"].expected)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_workspace_predicts_the_file_names_musubi_tuner_writes(loops, ready, version):
    if version == "v2":
        _directory_dataset(ready)
    cache = ready.root / ("cache/v1/example-1f" if version == "v1" else "cache/v2/dir")
    cache.mkdir(parents=True)
    toml = f"configs/{version}/dataset.toml"
    latents, te = encode_latents(loops, toml, False), encode_te(loops, toml, False)
    assert (set(latents), set(te)) == planned(ready.root, version)


def test_skip_existing_and_deletion_of_unproduced_files(loops, ready):
    cache = ready.root / "cache/v1/example-1f"
    cache.mkdir(parents=True)
    toml = "configs/v1/dataset.toml"
    assert len(encode_latents(loops, toml, False)) == 4 and len(encode_te(loops, toml, False)) == 4
    # Same-size image edit: the name does not change, so --skip_existing keeps the stale file...
    img = ready.root / "datasets/example-1f/target/item02.png"
    Image.new("RGB", Image.open(img).size, (0, 0, 0)).save(img)
    assert encode_latents(loops, toml, True) == []
    # ...until it is deleted: then exactly that item is encoded again.
    (cache / "item02_0512x0768_fp.safetensors").unlink()
    (cache / "item03_fp_te.safetensors").unlink()
    assert encode_latents(loops, toml, True) == ["item02_0512x0768_fp.safetensors"]
    assert encode_te(loops, toml, True) == ["item03_fp_te.safetensors"]
    # Files no item produces are deleted after encoding (also when nothing was encoded), unless --keep_cache.
    for name in ("gone_0512x0768_fp.safetensors", "gone_fp_te.safetensors"):
        (cache / name).write_bytes(b"x")
    encode_latents(loops, toml, True, keep_cache=True)
    encode_te(loops, toml, True, keep_cache=True)
    assert (cache / "gone_0512x0768_fp.safetensors").exists() and (cache / "gone_fp_te.safetensors").exists()
    assert encode_latents(loops, toml, True) == [] and encode_te(loops, toml, True) == []
    assert not (cache / "gone_0512x0768_fp.safetensors").exists() and not (cache / "gone_fp_te.safetensors").exists()
    # The manifest is not a cache file: musubi-tuner leaves it alone.
    (cache / "ws_cache_manifest.json").write_text("{}")
    encode_latents(loops, toml, True)
    encode_te(loops, toml, True)
    assert (cache / "ws_cache_manifest.json").exists()
