"""Incremental `make cache` through the real Makefile, with stand-ins for the two caching scripts that write cache
files the way musubi-tuner names them (tests/bin/_behave_fpack_cache_*.py)."""

from __future__ import annotations

import json
import os

from conftest import error_line, write_safetensors
from PIL import Image, ImageDraw

from musubi_workspace.model_files import TENSORS

CACHE = "cache/v1/example-1f"
JSONL = "datasets/example-1f/train.jsonl"
HEAD = f"[cache] {CACHE}: 4 item(s): "


def progs(w) -> list[str]:
    """The scripts run on the training data (configs/v1's validation set follows with the same options:
    tests/validation/test_validation_set.py)."""
    return [c["prog"] for c in w.calls() if "validation/dataset.toml" not in c["argv"]]


def files(w, folder=CACHE) -> dict[str, str]:
    """Cache files and their content (the stand-ins write JSON saying what each was made from)."""
    d = w.root / folder
    return {p.name: p.read_text() for p in sorted(d.iterdir()) if p.name.endswith(".safetensors")}


def manifest(w, folder=CACHE) -> dict:
    return json.loads(w.read(f"{folder}/ws_cache_manifest.json"))


def redraw(w, rel: str, colour=(0, 0, 0)) -> None:
    """The same image size with other pixels: musubi-tuner's latent file name stays the same."""
    p = w.root / rel
    img = Image.open(p).convert("RGB")
    ImageDraw.Draw(img).rectangle((10, 10, 60, 60), fill=colour)
    img.save(p)


def test_first_cache_encodes_everything_without_skip_existing(ready):
    r = ready.tool("cache")
    assert r.returncode == 0, r.stderr
    assert progs(ready) == ["fpack_cache_latents", "fpack_cache_text_encoder_outputs"]
    assert all("--skip_existing" not in c["argv"] for c in ready.calls())
    assert f"{HEAD}latents: all 4 to encode (4 new); text-encoder outputs: all 4 to encode (4 new)" in r.stderr
    assert "\n[cache] v1: up to date\n" in r.stderr
    assert sorted(files(ready)) == sorted(
        [f"item0{i}_0512x0768_fp.safetensors" for i in range(1, 5)]
        + [f"item0{i}_fp_te.safetensors" for i in range(1, 5)]
    )
    m = manifest(ready)
    assert sorted(m["latents"]["entries"]) == [f"item0{i}_0512x0768_fp.safetensors" for i in range(1, 5)]
    assert sorted(m["te"]["entries"]) == [f"item0{i}_fp_te.safetensors" for i in range(1, 5)]


def test_unchanged_dataset_is_up_to_date_and_runs_nothing(cached):
    before = {p.name: p.stat().st_mtime_ns for p in (cached.root / CACHE).iterdir()}
    r = cached.tool("cache")
    assert r.returncode == 0, r.stderr
    assert cached.calls() == []
    assert f"{HEAD}up to date\n" in r.stderr and "\n[cache] v1: up to date, nothing to run\n" in r.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (cached.root / CACHE).iterdir()} == before


def test_caption_edit_reruns_only_the_text_encoder_for_that_item(cached):
    latents = {k: v for k, v in files(cached).items() if k.endswith("_fp.safetensors")}
    cached.write(JSONL, cached.read(JSONL).replace("the blue shirt", "the navy shirt"))
    r = cached.tool("cache")
    assert r.returncode == 0, r.stderr
    assert progs(cached) == ["fpack_cache_text_encoder_outputs"]
    assert "--skip_existing" in cached.calls()[0]["argv"]
    assert f"{HEAD}latents up to date; text-encoder outputs: 1 of 4 to encode (1 changed)" in r.stderr
    assert "fpack_cache_text_encoder_outputs (stand-in): encoded 1: item02" in r.stdout
    assert json.loads(files(cached)["item02_fp_te.safetensors"])["caption"] == (
        "The figure now wears the navy shirt from the reference image."
    )
    assert {k: v for k, v in files(cached).items() if k.endswith("_fp.safetensors")} == latents
    assert cached.tool("cache").returncode == 0 and progs(cached) == ["fpack_cache_text_encoder_outputs"]


def test_image_edit_of_the_same_size_reruns_only_latents_for_that_item(cached):
    redraw(cached, "datasets/example-1f/target/item03.png")
    r = cached.tool("cache")
    assert r.returncode == 0, r.stderr
    assert progs(cached) == ["fpack_cache_latents"]
    assert "--skip_existing" in cached.calls()[0]["argv"]
    assert f"{HEAD}latents: 1 of 4 to encode (1 changed); text-encoder outputs up to date" in r.stderr
    assert f"[cache] {CACHE}: deleted 1 stale cache file(s)" in r.stderr
    assert "fpack_cache_latents (stand-in): encoded 1: item03" in r.stdout
    import hashlib

    sha = hashlib.sha256((cached.root / "datasets/example-1f/target/item03.png").read_bytes()).hexdigest()
    assert json.loads(files(cached)["item03_0512x0768_fp.safetensors"])["sha256"] == sha


def test_control_image_edit_reruns_latents_of_its_item(cached):
    redraw(cached, "datasets/example-1f/control/item01_1.png")
    r = cached.tool("cache")
    assert r.returncode == 0, r.stderr
    assert progs(cached) == ["fpack_cache_latents"]
    assert "fpack_cache_latents (stand-in): encoded 1: item01" in r.stdout


def test_touched_but_unchanged_image_is_hashed_again_and_still_up_to_date(cached):
    p = cached.root / "datasets/example-1f/target/item01.png"
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    r = cached.tool("cache")
    assert r.returncode == 0 and cached.calls() == []
    assert manifest(cached)["hashes"]["datasets/example-1f/target/item01.png"][1] == p.stat().st_mtime_ns


def test_removed_media_deletes_its_cache_files_and_manifest_entries_without_a_run(cached):
    lines = cached.read(JSONL).splitlines(keepends=True)
    cached.write(JSONL, "".join(l for l in lines if "item04" not in l))
    r = cached.tool("cache")
    assert r.returncode == 0, r.stderr
    assert cached.calls() == []
    assert (
        f"[cache] {CACHE}: 3 item(s): latents: 1 file(s) of removed media to delete; "
        "text-encoder outputs: 1 file(s) of removed media to delete"
    ) in r.stderr
    assert f"[cache] {CACHE}: deleted 2 stale cache file(s)" in r.stderr
    assert not [n for n in files(cached) if n.startswith("item04")]
    m = manifest(cached)
    assert (
        "item04_0512x0768_fp.safetensors" not in m["latents"]["entries"]
        and "item04_fp_te.safetensors" not in m["te"]["entries"]
    )
    assert cached.tool("cache").returncode == 0 and cached.calls() == []


def test_new_item_is_encoded_alone_on_both_sides(cached):
    item = json.loads(cached.read(JSONL).splitlines()[0])
    item["image_path"] = "datasets/example-1f/target/item05.png"
    (cached.root / item["image_path"]).write_bytes((cached.root / "datasets/example-1f/target/item01.png").read_bytes())
    cached.write(JSONL, cached.read(JSONL) + json.dumps(item) + "\n")
    r = cached.tool("cache")
    assert r.returncode == 0, r.stderr
    assert progs(cached) == ["fpack_cache_latents", "fpack_cache_text_encoder_outputs"]
    assert all("--skip_existing" in c["argv"] for c in cached.calls())
    assert (
        "[cache] cache/v1/example-1f: 5 item(s): latents: 1 of 5 to encode (1 new); text-encoder outputs: 1 of 5 to encode (1 new)"
        in r.stderr
    )
    assert "(stand-in): encoded 1: item05" in r.stdout


def test_a_cache_file_deleted_by_hand_is_made_again(cached):
    (cached.root / CACHE / "item02_fp_te.safetensors").unlink()
    r = cached.tool("cache")
    assert r.returncode == 0 and progs(cached) == ["fpack_cache_text_encoder_outputs"]
    assert "text-encoder outputs: 1 of 4 to encode (1 missing)" in r.stderr


def test_interrupted_run_is_never_up_to_date_and_the_next_run_redoes_it(cached):
    for name in ("item02", "item03"):
        redraw(cached, f"datasets/example-1f/target/{name}.png")
    r = cached.tool("cache", env={"STANDIN_DIE_AFTER_FPACK_CACHE_LATENTS": "1"})
    assert r.returncode == 4  # a program failed
    assert (
        error_line(r)
        == "error: cache latents was killed by SIGKILL (an out-of-memory kill looks like this; see the log)"
    )
    assert "killed while writing cache/v1/example-1f/item03_0512x0768_fp.safetensors" in r.stdout
    # item02 was written, item03 half-written; neither counts as done.
    t = cached.make("train")
    assert error_line(t) == (
        "error: configs/v1/config.toml: the cache is missing or stale (cache/v1/example-1f: latents: 2 of 4 to encode "
        "(2 not recorded (unfinished or made outside `make cache`))); run `make cache` first"
    )
    assert cached.calls("accelerate") == []
    cached.record.unlink()
    r = cached.tool("cache")
    assert r.returncode == 0, r.stderr
    assert progs(cached) == ["fpack_cache_latents"]
    assert "fpack_cache_latents (stand-in): encoded 2: item02 item03" in r.stdout
    json.loads(files(cached)["item03_0512x0768_fp.safetensors"])  # whole again
    assert cached.tool("cache").returncode == 0 and progs(cached) == ["fpack_cache_latents"]


def test_failed_text_encoder_run_keeps_the_finished_latents(ready):
    r = ready.tool("cache", env={"STANDIN_EXIT_FPACK_CACHE_TEXT_ENCODER_OUTPUTS": "1"})
    assert error_line(r) == "error: cache text encoder outputs failed with exit code 1"
    ready.record.unlink()
    r = ready.tool("cache")
    assert r.returncode == 0, r.stderr
    assert progs(ready) == ["fpack_cache_text_encoder_outputs"]
    assert "--skip_existing" not in ready.calls()[0]["argv"]
    assert f"{HEAD}latents up to date; text-encoder outputs: all 4 to encode (4 new)" in r.stderr


def test_force_reruns_everything_without_skip_existing(cached):
    r = cached.tool("cache", "FORCE=1")
    assert r.returncode == 0, r.stderr
    assert progs(cached) == ["fpack_cache_latents", "fpack_cache_text_encoder_outputs"]
    assert all("--skip_existing" not in c["argv"] for c in cached.calls())
    assert f"{HEAD}latents: all 4 to encode (FORCE=1); text-encoder outputs: all 4 to encode (FORCE=1)" in r.stderr
    assert r.stdout.count("encoded 4: item01 item02 item03 item04") == 2


def test_option_change_for_every_entry_reruns_both_sides_in_full(cached):
    cached.write(
        "configs/v1/dataset.toml",
        cached.read("configs/v1/dataset.toml").replace("resolution = [512, 768]", "resolution = [384, 576]"),
    )
    cached.write(
        "configs/v1/config.toml", cached.read("configs/v1/config.toml").replace("fp8_llm = false", "fp8_llm = true")
    )
    r = cached.tool("cache")
    assert r.returncode == 0, r.stderr
    assert progs(cached) == ["fpack_cache_latents", "fpack_cache_text_encoder_outputs"]
    assert all("--skip_existing" not in c["argv"] for c in cached.calls())
    assert (
        f"{HEAD}latents: all 4 to encode (options changed: resolution); "
        "text-encoder outputs: all 4 to encode (options changed: fp8_llm)"
    ) in r.stderr


def test_option_of_one_side_reruns_only_that_side(cached):
    cfg = cached.read("configs/v1/config.toml")
    cached.write("configs/v1/config.toml", cfg.replace("one_frame_no_4x = true", "one_frame_no_4x = false"))
    r = cached.tool("cache")
    assert r.returncode == 0 and progs(cached) == ["fpack_cache_latents"]
    assert "latents: all 4 to encode (options changed: one_frame_no_4x)" in r.stderr
    cached.record.unlink()
    # Writing a dataset default out explicitly, or changing what does not change the output, is no change.
    ds = cached.read("configs/v1/dataset.toml").replace("num_repeats = 1", "num_repeats = 3\nbucket_no_upscale = true")
    cached.write(
        "configs/v1/dataset.toml", ds.replace("fp_1f_no_post = true", "fp_1f_no_post = true\nfp_latent_window_size = 9")
    )
    cached.write(
        "configs/v1/config.toml",
        cached.read("configs/v1/config.toml").replace("vae_chunk_size = 32", "vae_chunk_size = 16"),
    )
    assert cached.tool("cache").returncode == 0 and cached.calls() == []


def test_replaced_model_file_reruns_its_side(cached):
    vae = cached.root / "models/hunyuanvideo/vae/diffusion_pytorch_model.safetensors"
    write_safetensors(vae, TENSORS["vae"][1], metadata={"release": "another vae"})
    r = cached.tool("cache")
    assert r.returncode == 0 and progs(cached) == ["fpack_cache_latents"]
    assert "latents: all 4 to encode (options changed: vae)" in r.stderr


def test_dry_run_shows_only_what_would_run_and_changes_nothing(cached):
    redraw(cached, "datasets/example-1f/target/item01.png")
    before = files(cached), cached.read(f"{CACHE}/ws_cache_manifest.json")
    r = cached.tool("cache", "DRY_RUN=1")
    assert r.returncode == 0, r.stderr
    assert cached.calls() == []
    assert r.stdout.startswith("python -m musubi_tuner.fpack_cache_latents ") and r.stdout.rstrip().endswith(
        " --skip_existing"
    )
    assert len(r.stdout.splitlines()) == 1
    assert (files(cached), cached.read(f"{CACHE}/ws_cache_manifest.json")) == before


def test_train_without_a_cache_stops_and_names_make_cache(ready):
    r = ready.make("train")
    assert r.returncode == 2 and "Error 3" in r.stderr
    assert error_line(r) == (
        "error: configs/v1/config.toml: the cache is missing or stale (cache/v1/example-1f: not cached yet); run `make cache` first"
    )
    assert ready.calls("accelerate") == []


def test_train_dry_run_on_a_stale_cache_only_warns(cached):
    cached.write(JSONL, cached.read(JSONL).replace("the blue shirt", "the navy shirt"))
    r = cached.make("train", "DRY_RUN=1")
    assert r.returncode == 0, r.stderr
    assert (
        "warning: configs/v1/config.toml: the cache is missing or stale (cache/v1/example-1f: text-encoder outputs: "
        "1 of 4 to encode (1 changed)); run `make cache` first (dry run: not needed now)"
    ) in r.stderr


def test_unreadable_manifest_counts_as_nothing_cached(cached):
    cached.write(f"{CACHE}/ws_cache_manifest.json", "{not json")
    r = cached.tool("cache")
    assert r.returncode == 0, r.stderr
    assert progs(cached) == ["fpack_cache_latents", "fpack_cache_text_encoder_outputs"]
    assert f"[cache] {CACHE}: 4 item(s) (ws_cache_manifest.json unreadable: everything counts as stale)" in r.stderr
    assert "--skip_existing" not in cached.calls()[0]["argv"]


def _directory_dataset(w) -> None:
    """A second version with an image_directory dataset: captions in .txt files, one control image per item."""
    imgs, ctrl = w.root / "datasets/dir/images", w.root / "datasets/dir/control"
    imgs.mkdir(parents=True)
    ctrl.mkdir(parents=True)
    for i, size in enumerate([(640, 480), (480, 640), (512, 512)]):
        Image.new("RGB", size, (40 * i, 80, 120)).save(imgs / f"pic{i}.png")
        Image.new("RGB", size, (200, 40 * i, 10)).save(ctrl / f"pic{i}.png")
        (imgs / f"pic{i}.txt").write_text(f"picture number {i}\n")
    Image.new("RGB", (64, 64)).save(imgs / "uncaptioned.png")  # musubi-tuner skips images without a caption
    assert w.make("new").returncode == 0
    ds = (
        '[general]\nresolution = [512, 512]\ncaption_extension = ".txt"\nbatch_size = 1\nenable_bucket = true\n\n'
        '[[datasets]]\nimage_directory = "datasets/dir/images"\ncontrol_directory = "datasets/dir/control"\n'
        'cache_directory = "cache/v2/dir"\nfp_1f_target_index = 1\nfp_1f_clean_indices = [0]\n'
    )
    w.write("configs/v2/dataset.toml", ds)


def test_image_directory_dataset_with_caption_files_and_controls(ready):
    _directory_dataset(ready)
    r = ready.tool("cache")
    assert r.returncode == 0, r.stderr
    assert sorted(files(ready, "cache/v2/dir")) == [
        "pic0_0640x0480_fp.safetensors",
        "pic0_fp_te.safetensors",
        "pic1_0480x0640_fp.safetensors",
        "pic1_fp_te.safetensors",
        "pic2_0512x0512_fp.safetensors",
        "pic2_fp_te.safetensors",
    ]
    assert "[cache] cache/v2/dir: 3 item(s): latents: all 3 to encode (3 new)" in r.stderr
    ready.record.unlink()
    (ready.root / "datasets/dir/images/pic1.txt").write_text("picture number one\n")
    redraw(ready, "datasets/dir/control/pic2.png")
    r = ready.tool("cache")
    assert r.returncode == 0, r.stderr
    assert (
        "[cache] cache/v2/dir: 3 item(s): latents: 1 of 3 to encode (1 changed); text-encoder outputs: 1 of 3 to encode (1 changed)"
        in r.stderr
    )
    assert "fpack_cache_latents (stand-in): encoded 1: pic2" in r.stdout
    assert "fpack_cache_text_encoder_outputs (stand-in): encoded 1: pic1" in r.stdout
    ready.record.unlink()
    (ready.root / "datasets/dir/images/pic0.txt").unlink()  # uncaptioned now: no longer an item
    r = ready.tool("cache")
    assert r.returncode == 0 and ready.calls() == []
    assert sorted(files(ready, "cache/v2/dir")) == [
        "pic1_0480x0640_fp.safetensors",
        "pic1_fp_te.safetensors",
        "pic2_0512x0512_fp.safetensors",
        "pic2_fp_te.safetensors",
    ]


def test_stray_cache_files_in_the_cache_directory_are_deleted_like_musubi_tuner_does(cached):
    (cached.root / CACHE / "old_0100x0100_fp.safetensors").write_text("{}")
    r = cached.tool("cache")
    assert r.returncode == 0 and cached.calls() == []
    assert not (cached.root / CACHE / "old_0100x0100_fp.safetensors").exists()


def test_video_dataset_is_tracked_as_a_whole(ready):
    clips = ready.root / "datasets/clips"
    clips.mkdir(parents=True)
    for name in ("walk", "turn"):
        (clips / f"{name}.mp4").write_bytes(b"not really a video: " + name.encode())
        (clips / f"{name}.txt").write_text(f"a person, {name}\n")
    assert ready.make("new").returncode == 0
    ds = '[general]\nresolution = [512, 512]\ncaption_extension = ".txt"\n\n[[datasets]]\nvideo_directory = "datasets/clips"\ncache_directory = "cache/v2/clips"\n'
    ready.write("configs/v2/dataset.toml", ds)
    ready.write(
        "configs/v2/config.toml",
        ready.read("configs/v2/config.toml")
        .replace("one_frame = true", "one_frame = false")
        .replace('\nvalidation = "validation/dataset.toml"\n', "\n"),  # the example's set is one-frame
    )
    r = ready.tool("cache")
    assert r.returncode == 0, r.stderr
    assert (
        "[cache] cache/v2/clips: 2 item(s): latents: the whole dataset to encode (new); text-encoder outputs: the whole dataset to encode (new)"
        in r.stderr
    )
    ready.record.unlink()
    assert ready.tool("cache").returncode == 0 and ready.calls() == []
    (clips / "turn.txt").write_text("a person turning around\n")
    r = ready.tool("cache")
    assert r.returncode == 0, r.stderr
    assert progs(ready) == ["fpack_cache_text_encoder_outputs"]
    assert (
        "text-encoder outputs: the whole dataset to encode (changed; video datasets are tracked as a whole)" in r.stderr
    )
    assert "fpack_cache_text_encoder_outputs (stand-in): encoded 2: turn walk" in r.stdout
    ready.record.unlink()
    assert ready.tool("cache").returncode == 0 and ready.calls() == []
