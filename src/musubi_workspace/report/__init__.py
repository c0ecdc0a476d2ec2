"""`make report`: versions side by side, offline, in `runs/report/`.

Reads each version's musubi-tuner outputs (tensorboard files in logging_dir, samples in output_dir/sample) and
writes `loss.png`, `lr.png`, `validation.png` and `validation_timesteps.png` (the validation loss, where
versions have one: validation.py), one `samples_NN.png` per sample prompt and `index.html`, a page that holds all of
them (plots and thumbnails inline as data URIs: it opens offline, on its own, anywhere). Each thumbnail links to
the full-size sample, copied to `runs/report/samples/<version>/` (copy the folder to keep those links). Flags on
the curves (`curves.judge`) are shown in the page and printed.

A run of `make resume` logs from step 1 again in a new tensorboard folder and names its samples
`<output_name>-resume<S>`. Its offset S comes from its run record (`runs/<version>/*/run.json`: the record whose
run was going when the folder's first step was logged; `resume.step_offset`), or, without records, from the
sample names of the resumed run that started after the folder did. It is drawn as the continuation of the run
before it, at its true steps.

A `make train RESTART=1` moved the earlier run's LoRAs, states and samples into `output_dir/earlier-<UTC time>/`
(runs/outputs.py) and left its tensorboard folders in logging_dir. The report keeps the two apart by the run
records: the restarted run's record (`restart.moved_to`) marks when the earlier run's outputs were moved; the
tensorboard folders logged before that, and the samples in that folder, are drawn as `v1 (earlier 2026-12-03
10:20Z)`, each earlier run beside the current `v1`, in the curves and as its own column of the sample grids. An
earlier-<time> folder without a record (only the outputs copied here) is placed by the time in its name (whole
seconds: the earlier run's first step came long before, the next run's after the check that preceded the move).
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import re
import shutil
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from musubi_workspace.config import Config
from musubi_workspace.errors import WorkspaceError
from musubi_workspace.paths import Workspace
from musubi_workspace.report import curves, samples
from musubi_workspace.report import validation as val
from musubi_workspace.report.curves import Line, Series
from musubi_workspace.report.samples import Sample

FOLDER = "report"
# Full-size copies of the samples the thumbnails link to, under runs/report/.
FULL_SIZE = "samples"
# A run record's end is written in whole seconds: a run's first step may be logged up to this much after it.
END_SLACK = 1.0


@dataclass
class VersionData:
    version: str
    cfg: Config
    logging_dir: Path | None
    sample_dir: Path | None
    runs: list[Series] = field(default_factory=list)  # one per tensorboard folder
    lines: list[Line] = field(default_factory=list)  # the runs joined: a resumed run continues its line
    samples: list[Sample] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    epoch_steps: dict[tuple[int, int], int] = field(default_factory=dict)  # (epoch, run offset) -> true step
    label: str = ""  # how the page names it: the version, or `v1 (earlier 2026-12-03 10:20Z)` (an earlier run)
    key: str = ""  # its folder under runs/report/samples/: the version, or `v1-earlier-20261203T102000Z`

    def __post_init__(self) -> None:
        self.label = self.label or self.version
        self.key = self.key or self.version

    validation: val.Validation | None = None  # the validation numbers (report/validation.py), None without any

    @property
    def has_data(self) -> bool:
        return bool(self.runs or self.samples or self.validation)


def parse_versions(ws: Workspace, value: str) -> list[str]:
    """`v3,v4` (or `v3 v4`, `3,4`) checked against configs/; empty: every version."""
    have = ws.versions()
    if not value.strip():
        return have
    chosen = []
    for token in re.split(r"[,\s]+", value.strip()):
        name = f"v{token}" if token.isdigit() else token
        if not re.fullmatch(r"v\d+", name):
            raise WorkspaceError(f"VERSIONS={value}: `{token}` is not a version name; write e.g. VERSIONS=v3,v4")
        if name not in have:
            raise WorkspaceError(f"VERSIONS={value}: no configs/{name}; versions here: {', '.join(have) or 'none'}")
        if name not in chosen:
            chosen.append(name)
    return chosen


def prompt_texts(cfg: Config) -> list[str]:
    """The prompts of a .txt sample_prompts file by index NN (the text before the first ` --` option)."""
    path = cfg.path_of("sample_prompts")
    if path is None or path.suffix != ".txt" or not path.is_file():
        return []
    lines = [
        l
        for l in path.read_text(encoding="utf-8", errors="replace").splitlines()
        if l.strip() and not l.startswith("#")
    ]
    return [l.split(" --")[0].strip() for l in lines]


@dataclass(frozen=True)
class Era:
    """The outputs of one run of a version (with its resumes): the current ones in output_dir, or an earlier
    run's, moved by RESTART=1 into output_dir/earlier-<stamp>/ at `until`."""

    sample_dir: Path | None
    until: float | None = None  # when RESTART=1 moved them (seconds since the epoch); None: the current outputs
    folder: str = ""  # earlier-<stamp>


def eras(ws: Workspace, version: str, output_dir: Path | None) -> list[Era]:
    """The version's earlier runs, oldest first, then its current one: each restart's `restart.moved_to` from
    its run record, and any earlier-<time> folder in output_dir that no record names (placed by its name)."""
    from musubi_workspace.runs.outputs import earlier_time

    moves: dict[Path, float] = {}
    for start, _end, rec in train_records(ws, version):
        restart = rec.get("restart")
        if isinstance(restart, dict) and isinstance(restart.get("moved_to"), str):
            moves[ws.resolve(restart["moved_to"])] = start
    if output_dir is not None and output_dir.is_dir():
        for p in output_dir.iterdir():
            at = earlier_time(p.name)
            if at is not None and p.is_dir() and p not in moves:
                moves[p] = at
    ordered = sorted(moves.items(), key=lambda kv: (kv[1], kv[0].name))
    return [Era(folder / "sample", at, folder.name) for folder, at in ordered] + [
        Era(output_dir / "sample" if output_dir else None)
    ]


def era_label(version: str, era: Era) -> tuple[str, str]:
    """(label, key) of an era: `v1 (earlier 2026-12-03 10:20Z)` and `v1-earlier-20261203T102000Z`."""
    if era.until is None:
        return version, version
    when = datetime.fromtimestamp(era.until, timezone.utc).strftime("%Y-%m-%d %H:%MZ")
    return f"{version} (earlier {when})", f"{version}-{era.folder}"


def gather(ws: Workspace, version: str) -> VersionData:
    """The version's current run (its outputs in output_dir), resumes included."""
    return gather_all(ws, version)[-1]


def gather_all(ws: Workspace, version: str) -> list[VersionData]:
    """The version's earlier runs (moved aside by RESTART=1) that left data, oldest first, then its current run."""
    cfg = Config.load(ws, ws.configs / version / "config.toml")
    logging_dir = cfg.path_of("logging_dir")
    output_dir = cfg.path_of("output_dir")
    runs = curves.read_runs(version, logging_dir, str(cfg.get("log_prefix") or "")) if logging_dir else []
    out = []
    for era in eras(ws, version, output_dir):
        label, key = era_label(version, era)
        mine = [r for r in runs if era.until is None or r.start_time < era.until]
        runs = [r for r in runs if not any(r is m for m in mine)]
        d = gather_era(ws, version, cfg, logging_dir, era, mine, label, key)
        if d.has_data or era.until is None:
            out.append(d)
    return out


def gather_era(
    ws: Workspace,
    version: str,
    cfg: Config,
    logging_dir: Path | None,
    era: Era,
    runs: list[Series],
    label: str,
    key: str,
) -> VersionData:
    d = VersionData(version, cfg, logging_dir, era.sample_dir, runs=runs, label=label, key=key)
    for run in d.runs:
        run.version = label
    if d.sample_dir:
        d.samples = samples.find_samples(label, d.sample_dir, str(cfg.get("output_name") or ""))
    d.prompts = prompt_texts(cfg)
    if era.until is None:  # the version's numbers, once: with its current run (the JSON lies beside its LoRAs)
        from musubi_workspace.validation.scored import points

        found = points(cfg)
        d.validation = val.Validation(version, found) if found.by_step else None
    place_resumed_runs(ws, version, d.runs, d.samples)
    d.lines = curves.join(d.runs)
    continues = next((k for k in curves.CONTINUES_FROM if cfg.get(k)), "")
    for line in d.lines:
        first = line.parts[0]
        label = d.label if len(d.lines) == 1 else f"{d.label} {first.run}"
        line.label = label + (f" (resumed at {', '.join(map(str, line.resumes))})" if line.resumes else "")
        line.continues_from = continues or (f"a state at step {first.offset}" if first.offset else "")
        line.flags = curves.judge(line)
    for run in d.runs:  # the newest run of each offset: the one whose samples were kept
        for epoch, step in run.epoch_ends.items():
            d.epoch_steps[(epoch, run.offset)] = run.offset + step
    return d


def train_records(ws: Workspace, version: str) -> list[tuple[float, float | None, dict]]:
    """(start, end or None, record) of the version's train and resume runs."""
    from musubi_workspace.runs.ledger import load_runs, parse_utc

    out = []
    for r in load_runs(ws):
        if r.get("version") != version or r.get("target") not in ("train", "resume"):
            continue
        start = r.get("started_at") or parse_utc(r.get("start"))
        if isinstance(start, (int, float)):
            out.append((float(start), parse_utc(r.get("end")), r))
    return out


def place_resumed_runs(ws: Workspace, version: str, runs: list[Series], found: list[Sample]) -> None:
    """Set `offset` and `resumed_from` of each resumed run: from the run record that was running when the run
    logged its first step, else from the names of the resumed run's samples (rendered after the tensorboard
    folder was made, before the next one was)."""
    records = train_records(ws, version)
    unplaced = []
    for run in runs:
        going = [
            (start, rec)
            for start, end, rec in records
            if run.start_time and start <= run.start_time and (end is None or run.start_time <= end + END_SLACK)
        ]
        if not going:
            unplaced.append(run)
            continue
        rec = max(going, key=lambda g: g[0])[1]
        resume = rec.get("resume") if rec.get("target") == "resume" else None
        if isinstance(resume, dict) and isinstance(resume.get("step_offset"), int):
            run.offset = resume["step_offset"]
            run.resumed_from = f"{resume.get('from') or 'a state'} (step {run.offset}; run {rec.get('id')})"
    firsts: dict[int, str] = {}  # offset -> stamp of the first sample of the resumed run
    for s in found:
        if s.offset and (s.offset not in firsts or s.stamp < firsts[s.offset]):
            firsts[s.offset] = s.stamp
    stamps = sorted((r.run, r) for r in runs if re.fullmatch(r"\d{14}", r.run))
    for i, (stamp, run) in enumerate(stamps):
        if not any(run is u for u in unplaced):
            continue
        until = stamps[i + 1][0] if i + 1 < len(stamps) else "9" * 14
        inside = sorted(off for off, first in firsts.items() if stamp <= first < until)
        if inside:
            run.offset = inside[0]
            run.resumed_from = f"a state at step {run.offset} (no run record; from the names of its samples)"


def where_looked(ws: Workspace, d: VersionData) -> str:
    logs = ws.rel(d.logging_dir) if d.logging_dir else "no logging_dir"
    sample = ws.rel(d.sample_dir) if d.sample_dir else "no output_dir"
    return f"{d.label} ({logs}, {sample})"


def report(ws: Workspace, versions: str = "") -> Path:
    names = parse_versions(ws, versions)
    if not names:
        raise WorkspaceError("configs/: no version found (configs/v1/config.toml); restore configs/v1 from git")
    data = [d for v in names for d in gather_all(ws, v)]
    if not any(d.has_data for d in data):
        looked = "; ".join(where_looked(ws, d) for d in data)
        raise WorkspaceError(
            f"no tensorboard logs, samples or validation numbers to report for {', '.join(names)} (looked in {looked}); "
            f"train first (`make train`) or copy the pod's output folders here"
        )
    if not versions.strip():
        data = [d for d in data if d.has_data]  # the default: versions with data
    out = ws.runs / FOLDER
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("*.png"), out / "index.html"]:
        old.unlink(missing_ok=True)  # a previous report's grids for prompts that are gone
    shutil.rmtree(out / FULL_SIZE, ignore_errors=True)  # the previous report's full-size copies

    lines = [line for d in data for line in d.lines]
    written = []
    if lines:
        curves.plot_loss(lines, out / "loss.png")
        curves.plot_lr(lines, out / "lr.png")
        written += ["loss.png", "lr.png"]
    validated = [d.validation for d in data if d.validation]
    written += val.write(validated, out)
    grids = sample_grids(data)
    for prompt, grid in grids.items():
        name = f"samples_{prompt:02d}.png"
        frames = {k: (c[1] if isinstance(c, tuple) else c) for k, c in grid.cells.items()}
        samples.grid(
            prompt,
            [d.label for d in data],
            grid.rows,
            frames,
            out / name,
            texts=prompt_of(data, prompt),
            labels=grid.labels,
        )
        written.append(name)
    copied = copy_full_size(data, out / FULL_SIZE)
    page = out / "index.html"
    skipped = [val.skipped_line(d.version) for d in data if not d.validation and d.key == d.version]
    page.write_text(render_html(ws, data, grids, out, copied, skipped), encoding="utf-8")

    print(f"report: {', '.join(d.label for d in data)}")
    for d in data:
        print(f"  {summary(ws, d)}")
    for line in lines:
        for flag in line.flags:
            print(f"flag: {line.label}: {flag}")
    for v in validated:
        print(val.best_line(v))
    for line in skipped:
        print(line)
    print(f"wrote {ws.rel(page)} ({', '.join(written) or 'no PNGs: no data to plot'}); open it in a browser")
    return page


def summary(ws: Workspace, d: VersionData) -> str:
    parts = []
    if d.runs:
        steps = sum(len(s.loss[0]) for s in d.runs)
        resumed = [r.offset for r in d.runs if r.offset]
        how = f" ({len(resumed)} resumed: at step {', '.join(map(str, resumed))})" if resumed else ""
        parts.append(f"{len(d.runs)} run(s){how}, {steps} logged steps")
    else:
        parts.append(f"no loss logged in {ws.rel(d.logging_dir) if d.logging_dir else '(logging_dir not set)'}")
    if d.samples:
        parts.append(f"{len(d.samples)} sample(s) for {len({s.prompt for s in d.samples})} prompt(s)")
    else:
        parts.append(f"no samples in {ws.rel(d.sample_dir) if d.sample_dir else '(output_dir not set)'}")
    return f"{d.label}: " + "; ".join(parts)


def prompt_of(data: list[VersionData], prompt: int) -> dict[str, str]:
    """The text of prompt NN in each version that has it."""
    return {d.label: d.prompts[prompt] for d in data if prompt < len(d.prompts)}


@dataclass
class Grid:
    """One prompt's samples: rows in step order, their labels, and per (row, version) the sample and its frames
    (or a sentence why there are none)."""

    rows: list[tuple[int, int, int]] = field(default_factory=list)
    labels: dict[tuple[int, int, int], str] = field(default_factory=dict)
    cells: dict[tuple, tuple[Sample, list] | str] = field(default_factory=dict)


def row_steps(d: VersionData) -> dict[tuple[int, int, int], tuple[float, bool]]:
    """Each of a version's sample rows -> (the step it was taken at, whether that step is known exactly). An
    epoch's step comes from its run's `loss/epoch` log; without it, from the sample's time: after the run's last
    step sample rendered before it."""
    out: dict[tuple[int, int, int], tuple[float, bool]] = {}
    for s in d.samples:
        kind, n, offset = s.row
        if kind != 2:
            out[s.row] = (float(n) if kind else -1.0, True)
            continue
        known = d.epoch_steps.get((n, offset))
        if known is not None:
            out[s.row] = (float(known), True)
            continue
        before = [o.row[1] for o in d.samples if o.row[0] == 1 and o.offset == offset and o.stamp <= s.stamp]
        guess = max(before, default=offset) + 0.5
        out[s.row] = min(out.get(s.row, (guess, False)), (guess, False))
    return out


def sample_grids(data: list[VersionData]) -> dict[int, Grid]:
    """Per prompt: the rows (steps) any version has, in step order (epochs where they were taken), and the
    thumbnails (or why none) per (row, version)."""
    grids: dict[int, Grid] = {}
    where: dict[tuple[int, int, int], list[tuple[float, bool]]] = {}
    for d in data:
        steps = row_steps(d)
        for row, at in steps.items():
            where.setdefault(row, []).append(at)
        for s in d.samples:
            g = grids.setdefault(s.prompt, Grid())
            if s.row not in g.rows:
                g.rows.append(s.row)
            shown = samples.frames(s)
            g.cells[(s.row, d.label)] = shown if isinstance(shown, str) else (s, shown)
    for g in grids.values():
        g.rows.sort(key=lambda row: (min(at for at, _ in where[row]), row))
        for row in g.rows:
            label = samples.row_label(row)
            known = sorted({int(at) for at, exact in where[row] if exact})
            if row[0] == 2 and known:
                label += f" (step {known[0]})" if len(known) == 1 else f" (steps {', '.join(map(str, known))})"
            g.labels[row] = label
    return dict(sorted(grids.items()))


def copy_full_size(data: list[VersionData], folder: Path) -> dict[Path, str]:
    """Every sample shown, copied (hard-linked where the disk allows) to `folder/<version>/`: what the thumbnails
    link to, so the report folder can be copied off the pod whole. Sample path -> its link from index.html."""
    links = {}
    for d in data:
        for s in d.samples:
            target = folder / d.key / s.path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(s.path, target)
            except OSError:
                shutil.copy2(s.path, target)
            links[s.path] = f"{FULL_SIZE}/{d.key}/{s.path.name}"
    return links


def data_uri(img, fmt: str = "JPEG") -> str:
    buf = io.BytesIO()
    img.save(buf, format=fmt, quality=85) if fmt == "JPEG" else img.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def png_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


CSS = """
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, sans-serif; margin: 16px auto; padding: 0 16px; max-width: 1600px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; }
table { border-collapse: collapse; }
td, th { border: 1px solid #ddd; padding: 4px 8px; vertical-align: top; }
th { background: #f4f4f4; text-align: left; }
table.runs { width: 100%; }
table.runs code { overflow-wrap: anywhere; }
table.samples th { min-width: 72px; }
.scroll { max-width: 100%; overflow-x: auto; }
.flag { background: #fff1e6; border-left: 4px solid #e8590c; padding: 6px 10px; margin: 6px 0; }
.ok { background: #ebfbee; border-left: 4px solid #2f9e44; padding: 6px 10px; }
.note { color: #884400; max-width: 256px; font-size: 12px; }
.missing { color: #999; }
.sub { color: #666; font-size: 12px; }
.frames { display: flex; gap: 4px; }
.frames img { display: block; height: auto; }
.prompt { color: #555; margin: 2px 0; }
img.plot { display: block; width: 100%; max-width: 1000px; height: auto; }
"""


def render_html(
    ws: Workspace,
    data: list[VersionData],
    grids: dict[int, Grid],
    out: Path,
    links: dict[Path, str],
    skipped: list[str] = (),
) -> str:
    e = html.escape
    lines = [line for d in data for line in d.lines]
    names = ", ".join(d.label for d in data)
    written = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>musubi-workspace report: {e(names)}</title><style>{CSS}</style></head><body>",
        f"<h1>Report: {e(names)}</h1>",
        f"<p>Written {written} by <code>make report</code> from each version's "
        f"logging_dir (tensorboard) and output_dir/sample.</p>",
        "<h2>Flags</h2>",
    ]
    flags = [(s, f) for s in lines for f in s.flags]
    if flags:
        parts += [f'<div class="flag"><b>{e(s.label)}</b>: {e(f)}</div>' for s, f in flags]
    elif lines:
        parts.append('<div class="ok">No flags: no curve starts near 0.01 without resume, none diverges.</div>')
    else:
        parts.append("<p>No loss curves to judge.</p>")
    parts.append(
        f"<p class=prompt>Rules: <i>starts near 0.01</i> = median <code>{curves.LOSS_TAG}</code> of the first "
        f"{curves.LOW_START_STEPS} steps &lt; {curves.LOW_START_LOSS}, unless the config sets "
        f"{' or '.join(curves.CONTINUES_FROM)} or the run resumes a state; <i>diverged</i> = a NaN/inf loss; "
        f"<i>diverging</i> = median of the last fifth &gt; {curves.GROWTH_RATIO}&times; the first fifth's (at least "
        f"{curves.GROWTH_MIN_STEPS} steps). A resumed run is judged with the run it continues.</p>"
    )

    parts += [
        "<h2>Runs</h2>",
        '<table class="runs"><tr><th>series</th><th>tensorboard folder</th><th>steps</th>'
        "<th>loss: median of the first fifth</th><th>loss: median of the last fifth</th><th>continues from</th>"
        "<th>flags</th></tr>",
    ]
    for d in data:
        if not d.runs:
            parts.append(f'<tr><td>{e(d.label)}</td><td colspan=6 class="missing">{e(summary(ws, d))}</td></tr>')
        for line in d.lines:
            for i, run in enumerate(line.parts):
                parts.append(_run_row(ws, line, i, run))
    parts.append("</table>")

    if lines:
        legend = ", ".join(s.label for s in lines)
        w, h = curves.PLOT_WIDTH_IN * 100, 550
        parts += [
            "<h2>Loss</h2>",
            f'<img class="plot" width="{w}" height="{h}" src="{png_uri(out / "loss.png")}" alt="loss by step: {e(legend)}">',
            "<h2>Learning rate</h2>",
            f'<img class="plot" width="{w}" height="350" src="{png_uri(out / "lr.png")}" alt="learning rate by step: {e(legend)}">',
        ]

    parts += val.html_section([d.validation for d in data if d.validation], list(skipped), lambda n: png_uri(out / n))

    parts.append("<h2>Samples</h2>")
    if not grids:
        parts.append("<p>No samples in any version's output_dir/sample.</p>")
    else:
        parts.append(
            f'<p class="sub">Each thumbnail links to the full-size sample (a copy in '
            f"<code>{e(ws.rel(out / FULL_SIZE))}/</code>: copy the whole report folder to keep the links).</p>"
        )
    for prompt, grid in grids.items():
        parts.append(f'<h2 id="prompt-{prompt:02d}">Prompt {prompt:02d}</h2>')
        texts = prompt_of(data, prompt)
        if len(set(texts.values())) == 1:  # the same prompt in every version: once
            parts.append(f'<p class="prompt">{e(next(iter(texts.values())))}</p>')
        else:
            parts += [f'<p class="prompt"><b>{e(v)}</b>: {e(t)}</p>' for v, t in texts.items()]
        parts.append(
            '<div class="scroll"><table class="samples"><tr><th></th>'
            + "".join(f"<th>{e(d.label)}</th>" for d in data)
            + "</tr>"
        )
        for row in grid.rows:
            label = grid.labels[row]
            parts.append(f"<tr><th>{e(label)}</th>")
            for d in data:
                cell = grid.cells.get((row, d.label))
                parts.append(f"<td>{_cell(cell, d.label, prompt, label, links, len(data))}</td>")
            parts.append("</tr>")
        parts.append("</table></div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _run_row(ws: Workspace, line: Line, i: int, run: Series) -> str:
    e = html.escape
    steps, values = run.loss
    true = run.true_steps
    first, last = _fifths(values)
    nxt = line.parts[i + 1].offset if i + 1 < len(line.parts) else None
    lost = (
        f"; {max(nxt + 1, true[0])}&ndash;{true[-1]} left out: the resume at {nxt} replaced them"
        if nxt is not None and true and true[-1] > nxt
        else ""
    )
    span = f"{len(steps)} ({true[0]}&ndash;{true[-1]}{lost})" if steps else "0"
    if i == 0:
        name = e(line.label)
        continues = _path(run.resumed_from or line.continues_from) or "&ndash;"
    else:
        name = f'<span class="sub">&#8627; {e(line.version)} resumed at step {run.offset}</span>'
        continues = _path(run.resumed_from)
    flags = ""
    if i == 0:
        what = ", ".join(f.split(":")[0] for f in line.flags)
        flags = f"<td rowspan={len(line.parts)}>{e(what) or '&ndash;'}</td>"
    return (
        f"<tr><td>{name}</td><td><code>{_path(ws.rel(run.folder))}</code></td><td>{span}</td><td>{first}</td>"
        f"<td>{last}</td><td>{continues}</td>{flags}</tr>"
    )


def _path(text: str) -> str:
    """Escaped, with a line-break opportunity after each `/`: a long path wraps at its folders."""
    return html.escape(text).replace("/", "/<wbr>")


def _cell(cell, version: str, prompt: int, label: str, links: dict[Path, str], columns: int = 1) -> str:
    if cell is None:
        return '<span class="missing">&ndash;</span>'
    if isinstance(cell, str):
        return f'<div class="note">{html.escape(cell)}</div>'
    sample, frames = cell
    names = samples.FRAME_NAMES if len(frames) == 3 else ("",) * len(frames)
    imgs = []
    for img, name in zip(frames, names):
        what = f"{version} prompt {prompt:02d} {label}" + (f" ({name} frame)" if name else "")
        scale = min(1.0, samples.THUMB / max(img.width, img.height))  # twice the pixels on a HiDPI screen
        w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
        # a narrow screen shrinks the thumbnails to fit the versions side by side, down to 96 px (then it scrolls)
        fit = f"max-width: max(96px, calc((100vw - 180px) / {columns * len(frames)} - 20px))"
        imgs.append(
            f'<img width="{w}" height="{h}" style="{fit}" src="{data_uri(img)}" alt="{html.escape(what)}" '
            f'title="{html.escape(what)}">'
        )
    return f'<a class="frames" href="{html.escape(links[sample.path])}">' + "".join(imgs) + "</a>"


def _fifths(values: list[float]) -> tuple[str, str]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "NaN", "NaN"
    part = max(1, len(finite) // curves.GROWTH_PART)
    return f"{statistics.median(finite[:part]):.4f}", f"{statistics.median(finite[-part:]):.4f}"
