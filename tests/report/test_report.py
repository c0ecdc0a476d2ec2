"""`make report` on real musubi-tuner outputs: tensorboard event files written with tensorboard's own writer, sample
PNGs (and an .mp4 where PyAV is installed) named the way musubi-tuner names them."""

from __future__ import annotations

import base64
import html as html_lib
import io
import json
import math
import os
import random
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import TmpWorkspace, add_cache, built_once, clone, copy_workspace, error_line, isolated_env
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

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


def write_sample(
    root: Path, version: str, tag: str, prompt: int, color, stamp: str = "20250611100000", size=(64, 96)
) -> Path:
    """A one-frame sample: `{output_dir}/sample/{output_name}_{tag}_{NN}_{YYYYmmddHHMMSS}_{seed}_000.png`."""
    p = root / "outputs" / version / "sample" / f"example-1f_{version}_{tag}_{prompt:02d}_{stamp}_1234_000.png"
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(p)
    return p


def write_validation(root: Path, version: str, depth: float, steps=(0, 100, 200, 300)) -> None:
    """A training run's validation series (validation.records, as the launcher writes it), a LoRA at each save."""
    from musubi_workspace.validation import records

    out = root / "outputs" / version
    name = f"example-1f_{version}"
    for step in steps:
        f = 1 - depth * step / 200 + depth * (step / 200) ** 2 / 2
        by_t = {"0.1": 0.05 * f, "0.5": 0.1 * f, "0.9": 0.15 * f}
        lora = f"{name}-step{step:08d}.safetensors" if step else None
        r = records.Record(step, sum(by_t.values()) / 3, by_t, 2, "ab" * 8, "validation/dataset.toml", [0.1, 0.5, 0.9])
        records.append_series(out, name, records.Record(**{**r.__dict__, "lora": lora}))
        if lora:
            (out / lora).write_bytes(b"lora")
            records.write_beside(out / lora, records.Record(**{**r.__dict__, "lora": lora}))


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

    r = ws.tool("report", "VERSIONS=v1,v2")
    assert r.returncode == 0, r.stderr
    out = ws.root / "runs" / "report"
    assert sorted(p.name for p in out.iterdir()) == [
        "index.html",
        "loss.png",
        "lr.png",
        "samples",
        "samples_00.png",
        "samples_01.png",
    ]
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["v1", "v2"]
    assert len(list((out / "samples" / "v1").iterdir())) == 5 and len(list((out / "samples" / "v2").iterdir())) == 4
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
    assert 'src="http' not in page and "<script" not in page and "<link" not in page  # offline, self-contained
    # every thumbnail links to its full-size copy beside the page
    links = re.findall(r'<a class="frames" href="([^"]+)">', page)
    assert len(links) == 6 + 3
    assert "samples/v2/example-1f_v2_000100_00_20250611100000_1234_000.png" in links
    for link in links:
        assert (out / link).is_file()
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert re.search(r"<p>Written \d{4}-\d\d-\d\d \d\d:\d\d UTC by", page)
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

    r = ws.tool("report")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "report: v1, v2, v3, v4"
    flags = [l for l in r.stdout.splitlines() if l.startswith("flag: ")]
    assert [l.split(":")[1].strip() for l in flags] == ["v2", "v3", "v4"], r.stdout
    assert flags[0].startswith("flag: v2: starts near 0.01: median loss of the first 20 steps is 0.01")
    assert "(< 0.02) without resume" in flags[0]
    assert flags[1].startswith("flag: v3: diverged: loss is nan from step 150 (51 of 200 steps not finite)")
    assert re.match(
        r"flag: v4: diverging: median loss of the last fifth is 0\.4\d+, [34]\.\dx the first fifth's", flags[2]
    )
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
    r = ws.tool("report")
    assert r.returncode == 0, r.stderr
    assert "flag:" not in r.stdout
    assert "<td>resume</td>" in html_of(ws)


def test_several_runs_of_a_version_are_separate_series(ws):
    write_run(ws.root, "v1", good(0), run="20250611093000")
    write_run(ws.root, "v1", constant_low(), run="20250612080000")  # e.g. a rerun with a broken dataset
    r = ws.tool("report", "VERSIONS=v1")
    assert r.returncode == 0, r.stderr
    assert 'alt="loss by step: v1 20250611093000, v1 20250612080000"' in html_of(ws)
    assert [l for l in r.stdout.splitlines() if l.startswith("flag:")][0].startswith(
        "flag: v1 20250612080000: starts near 0.01"
    )


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

    r = ws.tool("report")
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
    r = ws.tool("report")
    assert r.returncode == 0, r.stderr
    page = html_of(ws)
    assert re.search(
        r'<div class="note">video not shown: (cannot read example-1f_v1_000100_00_20250611100000\.mp4 \(\w+\)|reading \.mp4 needs PyAV .*)</div>',
        page,
    )
    assert len(images(page)) == 1


def test_a_chosen_version_without_data_is_shown_as_such(ws):
    versions(ws, 2)
    write_run(ws.root, "v1", good(0))
    r = ws.tool("report", "VERSIONS=v2,v1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[:3] == [
        "report: v2, v1",
        "  v2: no loss logged in outputs/v2/logs; no samples in outputs/v2/sample",
        "  v1: 1 run(s), 200 logged steps; no samples in outputs/v1/sample",
    ]
    assert '<td colspan=6 class="missing">v2: no loss logged in outputs/v2/logs' in html_of(ws)


def test_an_unknown_version_is_one_error_line(ws):
    r = ws.tool("report", "VERSIONS=v1,v9")
    assert r.returncode != 0
    assert error_line(r) == "error: VERSIONS=v1,v9: no configs/v9; versions here: v1"
    r = ws.tool("report", "VERSIONS=latest")
    assert error_line(r) == "error: VERSIONS=latest: `latest` is not a version name; write e.g. VERSIONS=v3,v4"
    assert not (ws.root / "runs" / "report").exists()


def test_no_data_anywhere_says_what_to_do(ws):
    r = ws.tool("report")
    assert r.returncode != 0
    assert error_line(r) == (
        "error: no tensorboard logs, samples or validation numbers to report for v1 (looked in v1 (outputs/v1/logs, outputs/v1/sample)); "
        "train first (`make train`) or copy the pod's output folders here"
    )


def test_a_second_report_drops_the_grids_of_prompts_that_are_gone(ws):
    write_sample(ws.root, "v1", "000100", 0, "red")
    old = write_sample(ws.root, "v1", "000100", 1, "red")
    assert ws.tool("report").returncode == 0
    assert (ws.root / "runs/report/samples_01.png").exists()
    old.unlink()
    assert ws.tool("report").returncode == 0
    assert not (ws.root / "runs/report/samples_01.png").exists()


def test_without_pyav_a_video_cell_says_how_to_get_it(ws, tmp_path):
    blocker = tmp_path / "no-pyav" / "av"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'av'\")\n")  # a base-only install
    video = ws.root / "outputs/v1/sample/example-1f_v1_000100_00_20250611100000.mp4"
    video.parent.mkdir(parents=True)
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    path = os.pathsep.join(p for p in (str(blocker.parent), os.environ.get("PYTHONPATH")) if p)
    r = ws.make("report", env={"PYTHONPATH": path})  # a new process: the blocker hides an installed PyAV
    assert r.returncode == 0, r.stderr
    assert (
        '<div class="note">video not shown: reading .mp4 needs PyAV (comes with the train extra; or `uv pip install av`)</div>'
        in html_of(ws)
    )


# Resumed runs --------------------------------------------------------------------------------------------------

NAME = "example-1f_v1"
OUTPUTS = {"STANDIN_OUTPUTS": "1", "STANDIN_STEP_SECONDS": "0.001"}


def sample_rows(page: str) -> list[str]:
    """The row labels of the sample tables, in order."""
    return re.findall(r"<tr><th>([^<]+)</th>\n<td>", page)


def tag(sample_name: str) -> str:
    """A sample's name without its time and seed."""
    return re.sub(r"_\d{14}_42_000\.png$", "", sample_name)


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, example_template, cached_template) -> TmpWorkspace:
    """A `cached` workspace where `train_then_resume` ran, made once per test run (`built_once`): the tests of a
    resumed run each start from a copy (`clone`)."""

    def build(folder: Path) -> None:
        w = copy_workspace(example_template, folder)
        w.touch_models()
        w.env["WANDB_MODE"] = "offline"
        add_cache(w, cached_template)
        train_then_resume(w)

    folder = built_once(tmp_path_factory, "report-resumed", build)
    return TmpWorkspace(root=folder / "workspace", env={**isolated_env(folder), "WANDB_MODE": "offline"})


def train_then_resume(cached) -> None:
    """The real `make train` (the trainer stand-in writes tensorboard events and samples as musubi-tuner does)
    fails at step 350 after saving a state at step 300; the real `make resume` goes on from that state for 200
    steps (301-500), logging from step 1 again in a new folder and naming its samples `…-resume300_…`."""
    r = cached.make("train", "AUTO_STOP=0", env={**OUTPUTS, "STANDIN_STEPS": "all", "STANDIN_FAIL_AT": "350"})
    assert r.returncode != 0
    # A real resume starts minutes after the run it continues; the stand-ins take a second or less. The report keeps
    # the newer of two samples at one step by the time in their names (seconds): the resume's first sample (step 300)
    # must not share it with the failed run's step-300 sample.
    last = max(
        re.search(r"_(\d{14})_42_000\.png$", p.name).group(1) for p in (cached.root / "outputs/v1/sample").iterdir()
    )
    while time.strftime("%Y%m%d%H%M%S", time.localtime()) <= last:
        time.sleep(0.05)
    r = cached.make("resume", "AUTO_STOP=0", env={**OUTPUTS, "STANDIN_STEPS": "200"})
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in (cached.root / "outputs/v1/sample").iterdir())
    assert [tag(n) for n in names] == [
        f"{NAME}-resume300_000100_00",
        f"{NAME}-resume300_000200_00",
        f"{NAME}-resume300_e000000_00",
        f"{NAME}_000100_00",
        f"{NAME}_000200_00",
        f"{NAME}_000300_00",
        f"{NAME}_e000000_00",
    ]
    assert len(list((cached.root / "outputs/v1/logs").iterdir())) == 2  # one tensorboard folder per run


def assert_one_continued_series(ws, r, continues: str) -> None:
    assert r.returncode == 0, r.stderr
    assert "  v1: 2 run(s) (1 resumed: at step 300), 550 logged steps; 6 sample(s) for 1 prompt(s)" in r.stdout
    assert "flag:" not in r.stdout  # the resumed run's low loss is no "starts near 0.01": it continues
    page = html_of(ws)
    assert 'alt="loss by step: v1 (resumed at 300)"' in page  # one series for the version
    rows = re.findall(
        r"<tr><td>(.*?)</td><td><code>(.*?)</code></td><td>(.*?)</td><td>[^<]*</td><td>[^<]*</td><td>(.*?)</td>", page
    )
    assert [(name, steps) for name, _, steps, _ in rows] == [
        ("v1 (resumed at 300)", "350 (1&ndash;350; 301&ndash;350 left out: the resume at 300 replaced them)"),
        ('<span class="sub">&#8627; v1 resumed at step 300</span>', "200 (301&ndash;500)"),
    ]
    assert rows[0][3] == "&ndash;" and re.fullmatch(continues, rows[1][3].replace("<wbr>", "")), rows[1][3]
    # every sample, the resumed run's at their true steps, in step order; the resume's first sample is step 300's
    assert sample_rows(page) == ["start", "step 100", "step 200", "step 300", "step 400", "step 500"]
    links = re.findall(r'<a class="frames" href="([^"]+)">', page)
    assert [tag(l.split("/")[-1]) for l in links] == [
        f"{NAME}_e000000_00",
        f"{NAME}_000100_00",
        f"{NAME}_000200_00",
        f"{NAME}-resume300_e000000_00",
        f"{NAME}-resume300_000100_00",
        f"{NAME}-resume300_000200_00",
    ]
    for link in links:
        assert (ws.root / "runs/report" / link).is_file()


def test_a_resumed_run_continues_its_version_at_its_true_steps(resumed, tmp_path):
    cached = clone(resumed, tmp_path)
    r = cached.tool("report")
    [resume] = [p for p in (cached.root / "runs/v1").iterdir() if p.name.endswith("-resume")]
    assert_one_continued_series(cached, r, rf"outputs/v1/{NAME}-step00000300-state \(step 300; run {resume.name}\)")

    from musubi_workspace.paths import Workspace
    from musubi_workspace.report import gather

    [line] = gather(Workspace(cached.root), "v1").lines
    steps, values = line.loss
    assert steps == list(range(1, 501))  # 1-300 from the first run, 301-500 from the resumed one
    assert values[299] == pytest.approx(0.05 + 0.15 * 0.97**300) and values[300] == pytest.approx(
        0.05 + 0.15 * 0.97**301
    )
    assert line.resumes == [300]


def test_without_run_records_the_offset_comes_from_the_sample_names(resumed, tmp_path):
    cached = clone(resumed, tmp_path)
    import shutil

    shutil.rmtree(cached.root / "runs/v1")  # only the pod's outputs/ were copied here
    r = cached.tool("report")
    assert_one_continued_series(cached, r, r"a state at step 300 \(no run record; from the names of its samples\)")


def test_a_resumed_run_whose_first_run_is_gone_starts_at_its_offset(resumed, tmp_path):
    cached = clone(resumed, tmp_path)
    first = sorted((cached.root / "outputs/v1/logs").iterdir())[0]
    import shutil

    shutil.rmtree(first)
    r = cached.tool("report")
    assert r.returncode == 0, r.stderr
    assert "flag:" not in r.stdout
    page = html_of(cached)
    assert 'alt="loss by step: v1 (resumed at 300)"' in page
    assert "<td>200 (301&ndash;500)</td>" in page


# The page in a real browser ----------------------------------------------------------------------------------

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
# Written into the page by a copy of index.html with this script added (the report itself has no script).
MEASURE = """<script>
window.addEventListener("load", () => {
  const root = document.documentElement, runs = document.querySelector("table.runs");
  const imgs = [...document.images];
  document.body.insertAdjacentHTML("beforeend", "<pre id=measured>" + JSON.stringify({
    width: window.innerWidth, scrollWidth: root.scrollWidth,
    runsRight: runs ? runs.getBoundingClientRect().right : null,
    flagsRight: runs ? [...runs.querySelectorAll("th")].pop().getBoundingClientRect().right : null,
    images: imgs.length, broken: imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt),
  }) + "</pre>");
});
</script>"""


def measure(page: Path, width: int, tmp_path: Path) -> dict:
    probe = page.with_name("measure.html")
    probe.write_text(page.read_text().replace("</body>", MEASURE + "</body>"))
    r = subprocess.run(
        [
            BROWSER,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / f'browser-{width}'}",
            f"--window-size={width},900",
            "--virtual-time-budget=10000",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    probe.unlink()
    found = re.search(r'<pre id="measured">(.*?)</pre>', r.stdout, re.S)  # the DOM, not the script's text
    assert found, f"no measurement in the browser's DOM (exit {r.returncode}):\n{r.stderr[-2000:]}"
    return json.loads(html_lib.unescape(found.group(1)))


@pytest.mark.skipif(
    BROWSER is None,
    reason="no Chromium or Google Chrome on PATH (e.g. `apt-get install chromium`): "
    "the page's layout is checked in a real browser only where one is installed",
)
def test_the_page_fits_a_narrow_screen_and_shows_every_image(ws, tmp_path):
    """Four versions with 512x768 samples (the example's size), one resumed, long paths: at 800 px nothing sticks
    out of the page (the runs table, flags column included, fits; sample tables shrink or scroll inside
    themselves) and every image decodes."""
    versions(ws, 4)
    for i, v in enumerate(("v1", "v2", "v3", "v4")):
        write_run(ws.root, v, good(i) if v != "v3" else nan_from(150), run="20250611093000")
        write_validation(ws.root, v, depth=0.1 * (i + 1))
        for tag in ("e000000", "000100", "000200"):
            for prompt in (0, 1):
                write_sample(ws.root, v, tag, prompt, (60 * i, 120, 200), size=(512, 768))
    r = ws.tool("report")
    assert r.returncode == 0, r.stderr
    page = ws.root / "runs/report/index.html"
    for width in (800, 1400):
        m = measure(page, width, tmp_path)
        assert m["width"] == width
        assert m["scrollWidth"] <= width, m  # no horizontal overflow of the page
        assert m["runsRight"] <= width and m["flagsRight"] <= width, m  # the flags column is on screen
        assert m["images"] == 2 + 2 + 4 * 3 * 2 and m["broken"] == [], m  # loss, lr, both validation plots, grids


# Plots and grids that read well ---------------------------------------------------------------------------------


def line_of(version: str, losses: list[float], offset: int = 0):
    from musubi_workspace.report import curves

    steps = list(range(1, len(losses) + 1))
    run = curves.Series(
        version,
        "20250611093000",
        Path("."),
        {"loss/current": (steps, losses), "lr/unet": (steps, [1e-4] * len(steps))},
        offset=offset,
    )
    line = curves.Line([run], label=version)
    line.flags = curves.judge(line)
    return line


def test_loss_ticks_are_decimals_and_the_nan_label_sits_above_the_curves():
    from musubi_workspace.report import curves

    falling = [0.3 * (0.003 / 0.3) ** (i / 199) for i in range(200)]  # two decades
    lines = [line_of("v1", falling), line_of("v2", nan_from(150))]
    fig = curves.loss_figure(lines)
    ax = fig.axes[0]
    fig.canvas.draw()
    labels = [
        t.get_text()
        for t in ax.get_yticklabels()
        if t.get_visible() and ax.get_ylim()[0] <= t.get_position()[1] <= ax.get_ylim()[1]
    ]
    assert {"0.005", "0.01", "0.02", "0.05", "0.1", "0.2"} <= set(labels), labels
    assert not any("10" in l and "^" in l or "$" in l for l in labels)
    renderer = fig.canvas.get_renderer()
    [nan] = [t for t in ax.texts if "NaN from step 150" in t.get_text()]
    assert nan.get_text() == "v2: NaN from step 150"
    assert nan.get_window_extent(renderer).y0 >= ax.get_window_extent(renderer).y1  # above the plot area
    title = ax.title.get_window_extent(renderer)
    assert title.y0 >= nan.get_window_extent(renderer).y1  # and below the title
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_every_series_has_its_own_colour_and_style_beyond_ten():
    from musubi_workspace.report import curves

    lines = [line_of(f"v{i}", good(i)) for i in range(1, 15)]
    fig = curves.loss_figure(lines)
    bold = [l for l in fig.axes[0].lines if l.get_linewidth() == 2]
    assert len(bold) == 14
    assert len({(l.get_color(), l.get_linestyle()) for l in bold}) == 14
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_plots_are_sharp_on_hidpi_screens(ws):
    write_run(ws.root, "v1", good(0))
    assert ws.tool("report").returncode == 0
    with Image.open(ws.root / "runs/report/loss.png") as loss, Image.open(ws.root / "runs/report/lr.png") as lr:
        assert loss.width == 2000 and lr.width == 2000  # twice the 1000 px the page shows them at
    assert re.search(r'<img class="plot" width="1000" height="550" src="data:image/png', html_of(ws))


def write_epochs(root: Path, version: str, steps: int, every: int) -> None:
    """A run that logs `loss/epoch` after every `every` steps (at "step" = the epoch's number), as musubi-tuner does."""
    folder = root / "outputs" / version / "logs" / "20250611093000" / "example-1f"
    writer = EventFileWriter(str(folder))
    t = 1_750_000_000.0
    for step in range(1, steps + 1):
        t += 1
        value = [summary_pb2.Summary.Value(tag="loss/current", simple_value=0.1)]
        writer.add_event(event_pb2.Event(step=step, wall_time=t, summary=summary_pb2.Summary(value=value)))
        if step % every == 0:
            value = [summary_pb2.Summary.Value(tag="loss/epoch", simple_value=0.1)]
            writer.add_event(
                event_pb2.Event(step=step // every, wall_time=t + 0.5, summary=summary_pb2.Summary(value=value))
            )
    writer.close()


def test_epoch_samples_sit_among_the_steps_they_were_taken_at(ws):
    versions(ws, 2)
    write_epochs(ws.root, "v1", 400, every=150)  # epochs end at steps 150, 300
    for tag, stamp in (
        ("e000000", "20250611100000"),
        ("000100", "20250611110000"),
        ("e000001", "20250611113000"),
        ("000200", "20250611120000"),
        ("000300", "20250611130000"),
        ("e000002", "20250611130500"),
    ):
        write_sample(ws.root, "v1", tag, 0, "red", stamp=stamp)
    # v2 has no tensorboard logs: its epoch sample goes after the step sample rendered before it
    for tag, stamp in (("000100", "20250611110000"), ("e000001", "20250611111500"), ("000200", "20250611120000")):
        write_sample(ws.root, "v2", tag, 0, "blue", stamp=stamp)
    r = ws.tool("report")
    assert r.returncode == 0, r.stderr
    assert sample_rows(html_of(ws)) == [
        "start",
        "step 100",
        "epoch 1 (step 150)",
        "step 200",
        "step 300",
        "epoch 2 (step 300)",
    ]


def test_epochs_of_a_resumed_run_are_named_after_the_resume(ws):
    write_sample(ws.root, "v1", "000100", 0, "red")
    p = ws.root / "outputs/v1/sample/example-1f_v1-resume100_e000001_00_20250611120000_1234_000.png"
    Image.new("RGB", (64, 96), "blue").save(p)
    p = ws.root / "outputs/v1/sample/example-1f_v1-resume100_000050_00_20250611110000_1234_000.png"
    Image.new("RGB", (64, 96), "blue").save(p)
    assert ws.tool("report").returncode == 0
    assert sample_rows(html_of(ws)) == ["step 100", "step 150", "epoch 1 after the resume at step 100"]


def test_the_sample_grid_png_carries_the_prompt_text(tmp_path):
    from musubi_workspace.report import samples

    rows, cells = [(1, 100, 0)], {((1, 100, 0), "v1"): [Image.new("RGB", (64, 96), "red")]}
    samples.grid(0, ["v1"], rows, cells, tmp_path / "bare.png")
    text = "The figure now wears the purple shirt from the reference image, seen from the back. " * 3
    samples.grid(0, ["v1"], rows, cells, tmp_path / "text.png", texts={"v1": text})
    with Image.open(tmp_path / "bare.png") as bare, Image.open(tmp_path / "text.png") as shown:
        assert shown.height > bare.height + 2 * 15  # the text, wrapped over several lines
        strip = shown.convert("L").crop((6, 32, shown.width - 6, 47))
        assert strip.getextrema()[0] < 128  # dark text in the line under "prompt 00"


# A restarted run (`make train RESTART=1`) ------------------------------------------------------------------------


def test_a_restarted_run_is_drawn_apart_from_the_earlier_one_by_its_run_record(cached):
    """The real `make train` twice, the second with RESTART=1: the earlier run's samples were moved into
    outputs/v1/earlier-<time>/, its tensorboard folder stayed in outputs/v1/logs; the report draws two series and
    two sample columns, the earlier one named by the time its files were moved, neither curve holding the other's
    steps."""
    env = {**OUTPUTS, "STANDIN_STEPS": "200"}
    assert cached.make("train", "AUTO_STOP=0", env=env).returncode == 0
    # A real restart comes minutes after the run it moves aside; the earlier-<time> folder's name (what places the
    # runs without records) keeps whole seconds: the earlier run's first step must be before the move's second.
    time.sleep(1.1)
    r = cached.make("train", "AUTO_STOP=0", "RESTART=1", env=env)
    assert r.returncode == 0, r.stderr
    [folder] = [p for p in (cached.root / "outputs/v1").iterdir() if p.name.startswith("earlier-")]
    stamp = re.fullmatch(r"earlier-(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)\d\dZ", folder.name).groups()
    earlier = f"v1 (earlier {stamp[0]}-{stamp[1]}-{stamp[2]} {stamp[3]}:{stamp[4]}Z)"
    assert len(list((cached.root / "outputs/v1/logs").iterdir())) == 2  # both runs' tensorboard folders, in place

    def check(w) -> None:
        r = w.tool("report")
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[:3] == [
            f"report: {earlier}, v1",
            f"  {earlier}: 1 run(s), 200 logged steps; 3 sample(s) for 1 prompt(s)",
            "  v1: 1 run(s), 200 logged steps; 3 sample(s) for 1 prompt(s)",
        ]
        page = html_of(w)
        assert f'alt="loss by step: {html_lib.escape(earlier)}, v1"' in page
        assert f"<th>{html_lib.escape(earlier)}</th><th>v1</th></tr>" in page  # two sample columns
        links = re.findall(r'<a class="frames" href="([^"]+)">', page)
        assert sorted({l.split("/")[1] for l in links}) == ["v1", f"v1-{folder.name}"]
        assert all((w.root / "runs/report" / l).is_file() for l in links)
        from musubi_workspace.paths import Workspace
        from musubi_workspace.report import gather_all

        old, new = gather_all(Workspace(w.root), "v1")
        assert [line.loss[0] for line in old.lines] == [list(range(1, 201))]  # not merged into one curve
        assert [line.loss[0] for line in new.lines] == [list(range(1, 201))]
        assert {s.path.parent for s in old.samples} == {folder / "sample"}
        assert {s.path.parent for s in new.samples} == {w.root / "outputs/v1/sample"}

    check(cached)
    shutil.rmtree(cached.root / "runs/v1")  # only the pod's outputs/ copied here: placed by the folder's name
    check(cached)
