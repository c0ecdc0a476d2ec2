"""`make report`: versions side by side, offline, in `runs/report/`.

Reads each version's musubi-tuner outputs (tensorboard files in logging_dir, samples in output_dir/sample) and
writes `loss.png`, `lr.png`, one `samples_NN.png` per sample prompt and `index.html`, a page that holds all of
them (images inline as data URIs: it opens offline, on its own, anywhere). Flags on the curves (`curves.judge`)
are shown in the page and printed.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import curves, samples
from .config import Config
from .curves import Series
from .errors import WorkspaceError
from .paths import Workspace
from .samples import Sample

FOLDER = "report"


@dataclass
class VersionData:
    version: str
    cfg: Config
    logging_dir: Path | None
    sample_dir: Path | None
    runs: list[Series] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)

    @property
    def has_data(self) -> bool:
        return bool(self.runs or self.samples)


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
            raise WorkspaceError(
                f"VERSIONS={value}: no configs/{name}; versions here: {', '.join(have) or 'none'}"
            )
        if name not in chosen:
            chosen.append(name)
    return chosen


def prompt_texts(cfg: Config) -> list[str]:
    """The prompts of a .txt sample_prompts file by index NN (the text before the first ` --` option)."""
    path = cfg.path_of("sample_prompts")
    if path is None or path.suffix != ".txt" or not path.is_file():
        return []
    lines = [l for l in path.read_text(encoding="utf-8", errors="replace").splitlines() if l.strip() and not l.startswith("#")]
    return [l.split(" --")[0].strip() for l in lines]


def gather(ws: Workspace, version: str) -> VersionData:
    cfg = Config.load(ws, ws.configs / version / "config.toml")
    logging_dir = cfg.path_of("logging_dir")
    output_dir = cfg.path_of("output_dir")
    d = VersionData(version, cfg, logging_dir, output_dir / "sample" if output_dir else None)
    if logging_dir:
        d.runs = curves.read_runs(version, logging_dir, str(cfg.get("log_prefix") or ""))
    if d.sample_dir:
        d.samples = samples.find_samples(version, d.sample_dir, str(cfg.get("output_name") or ""))
    d.prompts = prompt_texts(cfg)
    continues = next((k for k in curves.CONTINUES_FROM if cfg.get(k)), "")
    for s in d.runs:
        s.label = version if len(d.runs) == 1 else f"{version} {s.run}"
        s.continues_from = continues
        s.flags = curves.judge(s)
    return d


def where_looked(ws: Workspace, d: VersionData) -> str:
    logs = ws.rel(d.logging_dir) if d.logging_dir else "no logging_dir"
    sample = ws.rel(d.sample_dir) if d.sample_dir else "no output_dir"
    return f"{d.version} ({logs}, {sample})"


def report(ws: Workspace, versions: str = "") -> Path:
    names = parse_versions(ws, versions)
    if not names:
        raise WorkspaceError("configs/: no version found (configs/v1/config.toml); restore configs/v1 from git")
    data = [gather(ws, v) for v in names]
    if not any(d.has_data for d in data):
        looked = "; ".join(where_looked(ws, d) for d in data)
        raise WorkspaceError(
            f"no tensorboard logs or samples to report for {', '.join(names)} (looked in {looked}); "
            f"train first (`make train`) or copy the pod's output folders here"
        )
    if not versions.strip():
        data = [d for d in data if d.has_data]  # the default: versions with data
    out = ws.runs / FOLDER
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("*.png"), out / "index.html"]:
        old.unlink(missing_ok=True)  # a previous report's grids for prompts that are gone

    series = [s for d in data for s in d.runs]
    written = []
    if series:
        curves.plot_loss(series, out / "loss.png")
        curves.plot_lr(series, out / "lr.png")
        written += ["loss.png", "lr.png"]
    grids = sample_grids(data)
    for prompt, (rows, cells) in grids.items():
        name = f"samples_{prompt:02d}.png"
        samples.grid(prompt, [d.version for d in data], rows, cells, out / name)
        written.append(name)
    page = out / "index.html"
    page.write_text(render_html(ws, data, grids, out), encoding="utf-8")

    print(f"report: {', '.join(d.version for d in data)}")
    for d in data:
        print(f"  {summary(ws, d)}")
    for s in series:
        for flag in s.flags:
            print(f"flag: {s.label}: {flag}")
    print(f"wrote {ws.rel(page)} ({', '.join(written) or 'no PNGs: no data to plot'}); open it in a browser")
    return page


def summary(ws: Workspace, d: VersionData) -> str:
    parts = []
    if d.runs:
        steps = sum(len(s.loss[0]) for s in d.runs)
        parts.append(f"{len(d.runs)} run(s), {steps} logged steps")
    else:
        parts.append(f"no loss logged in {ws.rel(d.logging_dir) if d.logging_dir else '(logging_dir not set)'}")
    if d.samples:
        parts.append(f"{len(d.samples)} sample(s) for {len({s.prompt for s in d.samples})} prompt(s)")
    else:
        parts.append(f"no samples in {ws.rel(d.sample_dir) if d.sample_dir else '(output_dir not set)'}")
    return f"{d.version}: " + "; ".join(parts)


def sample_grids(data: list[VersionData]) -> dict[int, tuple[list, dict]]:
    """Per prompt: the rows (steps) any version has, and the thumbnails (or why none) per (row, version)."""
    grids: dict[int, tuple[list, dict]] = {}
    for d in data:
        for s in d.samples:
            rows, cells = grids.setdefault(s.prompt, ([], {}))
            if s.row not in rows:
                rows.append(s.row)
            cells[(s.row, d.version)] = samples.frames(s)
    for rows, _ in grids.values():
        rows.sort()
    return dict(sorted(grids.items()))


def data_uri(img, fmt: str = "JPEG") -> str:
    buf = io.BytesIO()
    img.save(buf, format=fmt, quality=85) if fmt == "JPEG" else img.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def png_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; }
table { border-collapse: collapse; } td, th { border: 1px solid #ddd; padding: 4px 8px; vertical-align: top; }
th { background: #f4f4f4; text-align: left; }
.flag { background: #fff1e6; border-left: 4px solid #e8590c; padding: 6px 10px; margin: 6px 0; }
.ok { background: #ebfbee; border-left: 4px solid #2f9e44; padding: 6px 10px; }
.note { color: #884400; max-width: 256px; font-size: 12px; }
.missing { color: #999; }
.frames img { margin-right: 4px; }
.prompt { color: #555; margin: 2px 0; }
img.plot { max-width: 100%; }
"""


def render_html(ws: Workspace, data: list[VersionData], grids: dict, out: Path) -> str:
    e = html.escape
    series = [s for d in data for s in d.runs]
    names = ", ".join(d.version for d in data)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>musubi-workspace report: {e(names)}</title><style>{CSS}</style></head><body>",
        f"<h1>Report: {e(names)}</h1>",
        f"<p>Written {time.strftime('%Y-%m-%d %H:%M')} by <code>make report</code> from each version's "
        f"logging_dir (tensorboard) and output_dir/sample.</p>",
        "<h2>Flags</h2>",
    ]
    flags = [(s, f) for s in series for f in s.flags]
    if flags:
        parts += [f'<div class="flag"><b>{e(s.label)}</b>: {e(f)}</div>' for s, f in flags]
    elif series:
        parts.append('<div class="ok">No flags: no curve starts near 0.01 without resume, none diverges.</div>')
    else:
        parts.append("<p>No loss curves to judge.</p>")
    parts.append(
        f"<p class=prompt>Rules: <i>starts near 0.01</i> = median <code>{curves.LOSS_TAG}</code> of the first "
        f"{curves.LOW_START_STEPS} steps &lt; {curves.LOW_START_LOSS}, unless the config sets "
        f"{' or '.join(curves.CONTINUES_FROM)}; <i>diverged</i> = a NaN/inf loss; <i>diverging</i> = median of "
        f"the last fifth &gt; {curves.GROWTH_RATIO}&times; the first fifth's (at least {curves.GROWTH_MIN_STEPS} steps).</p>"
    )

    parts += ["<h2>Runs</h2>", "<table><tr><th>series</th><th>tensorboard folder</th><th>steps</th>"
              "<th>loss, first fifth (median)</th><th>loss, last fifth (median)</th><th>continues from</th><th>flags</th></tr>"]
    for d in data:
        if not d.runs:
            parts.append(f'<tr><td>{e(d.version)}</td><td colspan=6 class="missing">{e(summary(ws, d))}</td></tr>')
        for s in d.runs:
            steps, values = s.loss
            first, last = _fifths(values)
            parts.append(
                f"<tr><td>{e(s.label)}</td><td><code>{e(ws.rel(s.folder))}</code></td>"
                f"<td>{len(steps)} ({steps[0]}&ndash;{steps[-1]})</td><td>{first}</td><td>{last}</td>"
                f"<td>{e(s.continues_from) or '&ndash;'}</td><td>{len(s.flags) or '&ndash;'}</td></tr>"
            )
    parts.append("</table>")

    if series:
        legend = ", ".join(s.label for s in series)
        parts += [
            "<h2>Loss</h2>",
            f'<img class="plot" src="{png_uri(out / "loss.png")}" alt="loss by step: {e(legend)}">',
            "<h2>Learning rate</h2>",
            f'<img class="plot" src="{png_uri(out / "lr.png")}" alt="learning rate by step: {e(legend)}">',
        ]

    parts.append("<h2>Samples</h2>")
    if not grids:
        parts.append("<p>No samples in any version's output_dir/sample.</p>")
    for prompt, (rows, cells) in grids.items():
        parts.append(f'<h2 id="prompt-{prompt:02d}">Prompt {prompt:02d}</h2>')
        texts = {d.version: d.prompts[prompt] for d in data if prompt < len(d.prompts)}
        if len(set(texts.values())) == 1:  # the same prompt in every version: once
            parts.append(f'<p class="prompt">{e(next(iter(texts.values())))}</p>')
        else:
            parts += [f'<p class="prompt"><b>{e(v)}</b>: {e(t)}</p>' for v, t in texts.items()]
        parts.append("<table><tr><th></th>" + "".join(f"<th>{e(d.version)}</th>" for d in data) + "</tr>")
        for row in rows:
            label = samples.row_label(row)
            parts.append(f"<tr><th>{e(label)}</th>")
            for d in data:
                parts.append(f"<td>{_cell(cells.get((row, d.version)), d.version, prompt, label)}</td>")
            parts.append("</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _cell(cell, version: str, prompt: int, label: str) -> str:
    if cell is None:
        return '<span class="missing">&ndash;</span>'
    if isinstance(cell, str):
        return f'<div class="note">{html.escape(cell)}</div>'
    names = samples.FRAME_NAMES if len(cell) == 3 else ("",) * len(cell)
    imgs = []
    for img, name in zip(cell, names):
        what = f"{version} prompt {prompt:02d} {label}" + (f" ({name} frame)" if name else "")
        imgs.append(f'<img src="{data_uri(img)}" alt="{html.escape(what)}" title="{html.escape(what)}">')
    return '<div class="frames">' + "".join(imgs) + "</div>"


def _fifths(values: list[float]) -> tuple[str, str]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "NaN", "NaN"
    part = max(1, len(finite) // curves.GROWTH_PART)
    return f"{statistics.median(finite[:part]):.4f}", f"{statistics.median(finite[-part:]):.4f}"
