"""`make report` on real musubi-tuner outputs: tensorboard event files written with tensorboard's own writer, sample
PNGs (and an .mp4 where PyAV is installed) named the way musubi-tuner names them."""

from __future__ import annotations

import base64
import io
import math
import os
import random
import re
import time
from pathlib import Path

import pytest
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from conftest import error_line

STEPS = 200


def good(seed: int = 0) -> list[float]:
    """A healthy curve: ~0.1 falling to ~0.08, with flow-matching-like noise."""
    rng = random.Random(seed)
    return [max(0.005, 0.1 - 0.02 * i / STEPS + rng.gauss(0, 0.012)) for i in range(STEPS)]


def constant_low() -> list[float]:
    rng = random.Random(1)
    return [0.01 + rng.gauss(0, 0.001) for _ in range(STEPS)]


def nan_from(step: int) -> list[float]:
    return [v if i + 1 < step else math.nan for i, v in enumerate(good(2))]


def growing() -> list[float]:
    rng = random.Random(3)
    return [0.1 + 0.4 * i / STEPS + rng.gauss(0, 0.012) for i in range(STEPS)]


def write_run(root: Path, version: str, losses: list[float], run: str = "20250611093000") -> Path:
    """One musubi-tuner run: `{logging_dir}/{run}/{log_tracker_name}/events.out.tfevents.*`, every step logging
    loss/current, loss/average and lr/unet (the names trainer_base.generate_step_logs uses)."""
    folder = root / "outputs" / version / "logs" / run / "example-1f"
    writer = EventFileWriter(str(folder))
    avg = 0.0
    for i, loss in enumerate(losses):
        step = i + 1
        avg = (avg * i + loss) / step
        lr = 2e-4 * min(1.0, step / 20)  # warm-up then constant
        values = [
            summary_pb2.Summary.Value(tag="loss/current", simple_value=loss),
            summary_pb2.Summary.Value(tag="loss/average", simple_value=avg),
            summary_pb2.Summary.Value(tag="lr/unet", simple_value=lr),
        ]
        writer.add_event(event_pb2.Event(step=step, wall_time=time.time(), summary=summary_pb2.Summary(value=values)))
    writer.close()
    return folder


def write_sample(root: Path, version: str, tag: str, prompt: int, color, stamp: str = "20250611100000") -> Path:
    """A one-frame sample: `{output_dir}/sample/{output_name}_{tag}_{NN}_{YYYYmmddHHMMSS}_{seed}_000.png`."""
    p = root / "outputs" / version / "sample" / f"example-1f_{version}_{tag}_{prompt:02d}_{stamp}_1234_000.png"
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 96), color).save(p)
    return p


def versions(ws, n: int) -> None:
    for _ in range(n - 1):
        assert ws.ws("new").returncode == 0


def html_of(ws) -> str:
    return ws.read("runs/report/index.html")


def images(page: str) -> list[str]:
    return re.findall(r"<img [^>]*>", page)


def decoded(img_tag: str) -> Image.Image:
    data = re.search(r'src="data:image/\w+;base64,([^"]+)"', img_tag).group(1)
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_report_overlays_versions_and_grids_samples_by_prompt(ws):
    versions(ws, 2)
    write_run(ws.root, "v1", good(0))
    write_run(ws.root, "v2", good(1))
    for v, color in (("v1", "red"), ("v2", "blue")):
        write_sample(ws.root, v, "e000000", 0, color)  # sample_at_first
        for step in ("000100", "000200"):
            write_sample(ws.root, v, step, 0, color)
            write_sample(ws.root, v, step, 1, color)
    (ws.root / "outputs/v2/sample/example-1f_v2_000200_01_20250611100000_1234_000.png").unlink()  # one missing

    r = ws.make("report", "VERSIONS=v1,v2")
    assert r.returncode == 0, r.stderr
    out = ws.root / "runs" / "report"
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "loss.png", "lr.png", "samples_00.png", "samples_01.png"]
    for name in ("loss.png", "lr.png", "samples_00.png", "samples_01.png"):
        with Image.open(out / name) as img:
            assert img.format == "PNG" and img.width > 200 and img.height > 100
    with Image.open(out / "samples_00.png") as g0, Image.open(out / "samples_01.png") as g1:
        assert g0.height > g1.height  # three rows (start, 100, 200) against two

    page = html_of(ws)
    imgs = images(page)
    # 2 plots + prompt 00: 3 rows x 2 versions + prompt 01: 2 rows x 2 versions - 1 missing
    assert len(imgs) == 2 + 6 + 3
    assert 'alt="loss by step: v1, v2"' in page and 'alt="learning rate by step: v1, v2"' in page
    assert "<h1>Report: v1, v2</h1>" in page
    assert page.count('<h2 id="prompt-') == 2 and "Prompt 00" in page and "Prompt 01" in page
    # the prompt's text from prompts.txt, once (v2's is the same)
    assert page.count('<p class="prompt">The figure now wears the purple shirt from the reference image.</p>') == 1
    assert page.count("<th>start</th>") == 1 and page.count("<th>step 200</th>") == 2
    assert len(re.findall(r'alt="v2 prompt 01 step 200', page)) == 0
    red, _, blue = decoded(next(i for i in imgs if 'alt="v2 prompt 00 step 100"' in i)).getpixel((5, 5))
    assert red < 10 and blue > 245  # v2's blue sample in v2's column (JPEG-rounded)
    assert "<td>200 (1&ndash;200)</td>" in page
    assert "No flags" in page and 'class="flag"' not in page
    assert "src=\"http" not in page and "<script" not in page and "<link" not in page  # offline, self-contained
    assert r.stdout.splitlines()[0] == "report: v1, v2"
    assert "v1: 1 run(s), 200 logged steps; 5 sample(s) for 2 prompt(s)" in r.stdout
    assert "flag:" not in r.stdout
    assert "wrote runs/report/index.html (loss.png, lr.png, samples_00.png, samples_01.png)" in r.stdout


def test_flags_fire_on_bad_curves_and_not_on_a_good_one(ws):
    versions(ws, 5)
    write_run(ws.root, "v1", good(0))
    write_run(ws.root, "v2", constant_low())
    write_run(ws.root, "v3", nan_from(150))
    write_run(ws.root, "v4", growing())
    # v5: no data; the default leaves it out

    r = ws.make("report")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "report: v1, v2, v3, v4"
    flags = [l for l in r.stdout.splitlines() if l.startswith("flag: ")]
    assert [l.split(":")[1].strip() for l in flags] == ["v2", "v3", "v4"], r.stdout
    assert flags[0].startswith("flag: v2: starts near 0.01: median loss of the first 20 steps is 0.01")
    assert "(< 0.02) without resume" in flags[0]
    assert flags[1].startswith("flag: v3: diverged: loss is nan from step 150 (51 of 200 steps not finite)")
    assert re.match(r"flag: v4: diverging: median loss of the last fifth is 0\.4\d+, [34]\.\dx the first fifth's", flags[2])
    page = html_of(ws)
    assert page.count('class="flag"') == 3
    assert '<div class="flag"><b>v2</b>: starts near 0.01' in page
    assert '<div class="flag"><b>v3</b>: diverged' in page
    assert '<div class="flag"><b>v4</b>: diverging' in page
    assert 'alt="loss by step: v1, v2, v3, v4"' in page
    assert "No samples in any version" in page


def test_a_low_start_is_not_flagged_when_the_config_resumes(ws):
    cfg = ws.read("configs/v1/config.toml").replace("seed = 42", 'seed = 42\nresume = "outputs/v0/state"')
    ws.write("configs/v1/config.toml", cfg)
    write_run(ws.root, "v1", constant_low())
    r = ws.make("report")
    assert r.returncode == 0, r.stderr
    assert "flag:" not in r.stdout
    assert "<td>resume</td>" in html_of(ws)


def test_several_runs_of_a_version_are_separate_series(ws):
    write_run(ws.root, "v1", good(0), run="20250611093000")
    write_run(ws.root, "v1", constant_low(), run="20250612080000")  # e.g. a rerun with a broken dataset
    r = ws.make("report", "VERSIONS=v1")
    assert r.returncode == 0, r.stderr
    assert 'alt="loss by step: v1 20250611093000, v1 20250612080000"' in html_of(ws)
    assert [l for l in r.stdout.splitlines() if l.startswith("flag:")][0].startswith("flag: v1 20250612080000: starts near 0.01")


def test_a_video_sample_shows_its_first_middle_and_last_frame(ws):
    av = pytest.importorskip("av", reason="PyAV (the train extra) is needed to write and read .mp4")
    import numpy as np

    path = ws.root / "outputs/v1/sample/example-1f_v1_000100_00_20250611100000_1234.mp4"
    path.parent.mkdir(parents=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=24)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(37):  # FramePack's shortest video, latent_window_size 9
            for packet in s.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 7, np.uint8), format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)

    r = ws.make("report")
    assert r.returncode == 0, r.stderr
    imgs = images(html_of(ws))
    assert len(imgs) == 3  # no loss logged: only the three frames
    shades = []
    for tag, name in zip(imgs, ("first", "middle", "last")):
        assert f'alt="v1 prompt 00 step 100 ({name} frame)"' in tag
        shades.append(decoded(tag).convert("L").getpixel((10, 10)))
    assert shades[0] < 10 and 110 < shades[1] < 140 and shades[2] > 240, shades
    assert (ws.root / "runs/report/samples_00.png").exists()


def test_an_unreadable_video_is_a_note_not_a_failure(ws):
    bad = ws.root / "outputs/v1/sample/example-1f_v1_000100_00_20250611100000.mp4"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a video")
    write_sample(ws.root, "v1", "000200", 0, "green")
    r = ws.make("report")
    assert r.returncode == 0, r.stderr
    page = html_of(ws)
    assert re.search(r'<div class="note">video not shown: (cannot read example-1f_v1_000100_00_20250611100000\.mp4 \(\w+\)|reading \.mp4 needs PyAV .*)</div>', page)
    assert len(images(page)) == 1


def test_a_chosen_version_without_data_is_shown_as_such(ws):
    versions(ws, 2)
    write_run(ws.root, "v1", good(0))
    r = ws.make("report", "VERSIONS=v2,v1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[:3] == [
        "report: v2, v1",
        "  v2: no loss logged in outputs/v2/logs; no samples in outputs/v2/sample",
        "  v1: 1 run(s), 200 logged steps; no samples in outputs/v1/sample",
    ]
    assert '<td colspan=6 class="missing">v2: no loss logged in outputs/v2/logs' in html_of(ws)


def test_an_unknown_version_is_one_error_line(ws):
    r = ws.make("report", "VERSIONS=v1,v9")
    assert r.returncode != 0
    assert error_line(r) == "error: VERSIONS=v1,v9: no configs/v9; versions here: v1"
    r = ws.make("report", "VERSIONS=latest")
    assert error_line(r) == "error: VERSIONS=latest: `latest` is not a version name; write e.g. VERSIONS=v3,v4"
    assert not (ws.root / "runs" / "report").exists()


def test_no_data_anywhere_says_what_to_do(ws):
    r = ws.make("report")
    assert r.returncode != 0
    assert error_line(r) == (
        "error: no tensorboard logs or samples to report for v1 (looked in v1 (outputs/v1/logs, outputs/v1/sample)); "
        "train first (`make train`) or copy the pod's output folders here"
    )


def test_a_second_report_drops_the_grids_of_prompts_that_are_gone(ws):
    write_sample(ws.root, "v1", "000100", 0, "red")
    old = write_sample(ws.root, "v1", "000100", 1, "red")
    assert ws.make("report").returncode == 0
    assert (ws.root / "runs/report/samples_01.png").exists()
    old.unlink()
    assert ws.make("report").returncode == 0
    assert not (ws.root / "runs/report/samples_01.png").exists()


def test_without_pyav_a_video_cell_says_how_to_get_it(ws, tmp_path):
    blocker = tmp_path / "no-pyav" / "av"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text('raise ModuleNotFoundError("No module named \'av\'")\n')  # a base-only install
    video = ws.root / "outputs/v1/sample/example-1f_v1_000100_00_20250611100000.mp4"
    video.parent.mkdir(parents=True)
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    path = os.pathsep.join(p for p in (str(blocker.parent), os.environ.get("PYTHONPATH")) if p)
    r = ws.make("report", env={"PYTHONPATH": path})
    assert r.returncode == 0, r.stderr
    assert (
        '<div class="note">video not shown: reading .mp4 needs PyAV (comes with the train extra; or `uv pip install av`)</div>'
        in html_of(ws)
    )
