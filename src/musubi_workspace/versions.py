"""`make new` (copy a version to the next number) and `make diff` (compare two versions key by key)."""

from __future__ import annotations

import difflib
import re
import shutil
from pathlib import Path
from typing import Any

from musubi_workspace.config import WORKSPACE_TABLE, load_toml
from musubi_workspace.errors import WorkspaceError
from musubi_workspace.paths import Workspace

# Values that point at inputs shared between versions: never rewritten by `make new`, even if they name a version.
SHARED_INPUT_KEYS = {
    "dit",
    "vae",
    "text_encoder1",
    "text_encoder2",
    "image_encoder",
    "network_weights",
    "base_weights",
    "image_directory",
    "image_jsonl_file",
    "video_directory",
    "video_jsonl_file",
    "control_directory",
    "validation",  # [workspace] validation: the held-out set every version shares
}
# Dropped by `make new`: a new version starts fresh.
DROPPED_KEYS = ("resume",)


def version_token(version: str) -> re.Pattern:
    """`v3` as a word of its own: in `configs/v3/`, `lora_v3`, `v3-state`, not in `v30` or `dev3`."""
    return re.compile(rf"(?<![A-Za-z0-9]){re.escape(version)}(?![0-9])")


def _check_version(ws: Workspace, name: str, var: str) -> Path:
    if not re.fullmatch(r"v\d+", name or ""):
        raise WorkspaceError(
            f"{var}={name}: a version is named vN (v1, v2, ...); versions here: {', '.join(ws.versions()) or 'none'}"
        )
    folder = ws.configs / name
    if not folder.is_dir():
        raise WorkspaceError(
            f"{var}={name}: configs/{name} not found; versions here: {', '.join(ws.versions()) or 'none'}"
        )
    return folder


def _rewrite_strings(
    node: Any, old: str, new: str, key: str, changes: list, where: str, renamed: dict | None = None
) -> None:
    """Rewrite, in place, string values of a tomlkit document that name the old version; `renamed` collects
    old value -> new value."""
    token = version_token(old)
    if isinstance(node, dict):
        for k in list(node.keys()):
            value = node[k]
            if isinstance(value, str):
                if k in SHARED_INPUT_KEYS:
                    continue
                replaced = token.sub(new, value)
                if replaced != value:
                    node[k] = replaced
                    changes.append(f"{where}: {k} = {str(value)!r} -> {replaced!r}")
                    if renamed is not None:
                        renamed[str(value)] = replaced
            else:
                _rewrite_strings(value, old, new, k, changes, where, renamed)
    elif isinstance(node, list):
        for item in node:
            _rewrite_strings(item, old, new, key, changes, where, renamed)


def _comment_start(line: str) -> int | None:
    """Index of the `#` that starts a TOML comment on a line (outside "..." and '...'), or None."""
    quote = None
    i = 0
    while i < len(line):
        c = line[i]
        if quote:
            if c == "\\" and quote == '"':
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c == "#":
            return i
        i += 1
    return None


def rename_in_comments(text: str, renamed: dict[str, str], toml: bool) -> str:
    """Comments that quote a value `make new` renamed (`outputs/v1`, `example-1f_v1`, the folder `configs/v1/`) get
    the same rename, so the copy does not describe the old version's files. A bare version (`v1`) is left alone:
    in a comment it is more likely history (\"v1 was too slow\") than a name. TOML comments start at a `#` outside
    a string (lines inside a multi-line string are left as they are); prompts.txt comments at a `#` in column 1."""
    pairs = sorted(renamed.items(), key=lambda kv: len(kv[0]), reverse=True)
    patterns = [(re.compile(rf"(?<![\w]){re.escape(a)}(?![0-9])"), b) for a, b in pairs]
    out, in_multiline = [], False
    for line in text.splitlines(keepends=True):
        triple = line.count('"""') + line.count("'''")
        start = None
        if not in_multiline and not triple:
            start = _comment_start(line) if toml else (0 if line.startswith("#") else None)
        if triple % 2:
            in_multiline = not in_multiline
        if start is not None:
            comment = line[start:]
            for pattern, new in patterns:
                comment = pattern.sub(new, comment)
            line = line[:start] + comment
        out.append(line)
    return "".join(out)


def new_version(ws: Workspace, source: str = "") -> str:
    """Copy configs/<source> (default: newest) to the next free vN; returns the new version's name."""
    versions = ws.versions()
    if not versions:
        raise WorkspaceError("configs/: no version to copy from (configs/v1); restore configs/v1 from git")
    source = source or versions[-1]
    src = _check_version(ws, source, "FROM")
    target = f"v{int(versions[-1][1:]) + 1}"
    dst = ws.configs / target
    if dst.exists():  # a file or stray folder of that name: never overwrite
        raise WorkspaceError(f"configs/{target} already exists; remove it or pick FROM=")
    missing = [f for f in ("config.toml",) if not (src / f).exists()]
    if missing:
        raise WorkspaceError(f"configs/{source}/config.toml not found; a version folder needs config.toml")

    changes: list[str] = []
    staged: dict[str, str] = {}
    renamed = {f"configs/{source}/": f"configs/{target}/"}
    files = sorted(p.name for p in src.iterdir() if p.is_file())
    for f in files:
        text = _read_text(ws, src / f)
        if f.endswith(".toml"):
            load_toml(src / f, ws)  # one clear line if the source is malformed
            import tomlkit  # only `make new` edits TOML; checks import this module for version_token

            doc = tomlkit.parse(text)
            for key in DROPPED_KEYS:
                for table in [doc] + [v for v in doc.values() if isinstance(v, dict)]:
                    if key in table:
                        changes.append(f"configs/{target}/{f}: {key} removed (a new version starts fresh)")
                        del table[key]
            _rewrite_strings(doc, source, target, "", changes, f"configs/{target}/{f}", renamed)
            text = tomlkit.dumps(doc)
        staged[f] = text
    renamed = {a: b for a, b in renamed.items() if a != source}
    for f in files:
        if f.endswith((".toml", ".txt")):
            before = staged[f].splitlines()
            staged[f] = rename_in_comments(staged[f], renamed, toml=f.endswith(".toml"))
            if n := sum(a != b for a, b in zip(before, staged[f].splitlines())):
                changes.append(f"configs/{target}/{f}: {n} comment line(s) quoting those values renamed too")

    tmp = ws.configs / f".{target}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for f, text in staged.items():
        (tmp / f).write_text(text, encoding="utf-8")
    try:
        tmp.rename(dst)  # atomic; fails rather than overwrite if dst appeared meanwhile
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise WorkspaceError(f"configs/{target} appeared while copying; nothing was written") from None

    print(f"Created configs/{target} from configs/{source}.")
    for line in changes:
        print(f"  {line}")
    if not changes:
        print("  (no value named the version; files copied as they are)")
    print(
        f"Next: edit configs/{target}/config.toml, then `make diff` and "
        f"`make check DRY_RUN=1 CONFIG_FILE=configs/{target}/config.toml` (off the pod: models and keys not needed); "
        f"on the pod, `make check CONFIG_FILE=configs/{target}/config.toml`."
    )
    return target


def _read_text(ws: Workspace, path: Path) -> str:
    """A version file as text; one clear line when it is not UTF-8 (musubi-tuner reads them as UTF-8 too)."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise WorkspaceError(
            f"{ws.rel(path)}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
            f"save it as UTF-8 (musubi-tuner reads it as UTF-8 too)"
        ) from None


def flatten_keys(data: Any, prefix: str = "") -> dict[str, Any]:
    """`{"general": {"resolution": [1, 2]}, "datasets": [{...}]}` -> `general.resolution`, `datasets[0].x`."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            name = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict) or (isinstance(v, list) and v and all(isinstance(i, dict) for i in v)):
                out.update(flatten_keys(v, name))
            else:
                out[name] = v
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out.update(flatten_keys(v, f"{prefix}[{i}]"))
    return out


def _fmt(value: Any) -> str:
    import tomlkit

    return tomlkit.item(value).as_string() if value is not None else "(unset)"


def diff_files(ws: Workspace, a: str, b: str, name: str) -> list[str]:
    fa, fb = ws.configs / a / name, ws.configs / b / name
    if not fa.exists() and not fb.exists():
        return []
    da = load_toml(fa, ws)[0] if fa.exists() else {}
    db = load_toml(fb, ws)[0] if fb.exists() else {}
    ka, kb = flatten_keys(da), flatten_keys(db)
    token = version_token(a)
    lines, renamed = [], []
    for key in sorted(set(ka) | set(kb), key=lambda k: (k.startswith(WORKSPACE_TABLE + "."), k)):
        if key not in kb:
            lines.append(f"  - {key} = {_fmt(ka[key])}")
        elif key not in ka:
            lines.append(f"  + {key} = {_fmt(kb[key])}")
        elif ka[key] != kb[key]:
            va, vb = ka[key], kb[key]
            if isinstance(va, str) and isinstance(vb, str) and token.sub(b, va) == vb:
                renamed.append(f"    {key}: {_fmt(va)} -> {_fmt(vb)}")
            else:
                lines.append(f"  ~ {key}: {_fmt(va)} -> {_fmt(vb)}")
    out = [f"{name}:"] + (lines or ["  (no changes)"])
    if renamed:
        out += ["  only the version name differs:"] + renamed
    return out


def diff_versions(ws: Workspace, a: str = "", b: str = "") -> list[str]:
    versions = ws.versions()
    if not a and not b:
        if len(versions) < 2:
            raise WorkspaceError(
                f"make diff needs two versions; have {', '.join(versions) or 'none'}: `make new` creates one"
            )
        a, b = versions[-2], versions[-1]
    elif not a or not b:
        raise WorkspaceError("make diff: give both A= and B= (e.g. make diff A=v1 B=v2), or neither for the newest two")
    _check_version(ws, a, "A")
    _check_version(ws, b, "B")
    out = [f"diff configs/{a} -> configs/{b}"]
    out += diff_files(ws, a, b, "config.toml")
    out += diff_files(ws, a, b, "dataset.toml")
    pa, pb = ws.configs / a / "prompts.txt", ws.configs / b / "prompts.txt"
    la = _read_text(ws, pa).splitlines() if pa.exists() else []
    lb = _read_text(ws, pb).splitlines() if pb.exists() else []
    udiff = list(difflib.unified_diff(la, lb, f"configs/{a}/prompts.txt", f"configs/{b}/prompts.txt", lineterm="", n=0))
    out += ["prompts.txt:"] + (["  " + line for line in udiff] if udiff else ["  (no changes)"])
    return out
