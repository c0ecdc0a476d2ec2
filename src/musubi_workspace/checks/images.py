"""What `make check` knows about an image file: whether it decodes, its size, and a hash of its pixels.

Decoding every image of a dataset is the slow part of a check, so the facts are kept in .cache/ws/images.json
(git-ignored), keyed by path and looked up again only while the file's size and modification time are unchanged.
They are written as they come (every SAVE_EVERY seconds, atomically) and when the check is interrupted.
The hash (SHA-256, the fastest of hashlib's here) is of the decoded RGB pixels (what the model sees; alpha dropped), not of the file's bytes: a PNG saved
again, or with other compression, is the same content.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from musubi_workspace.paths import Workspace

FORMAT = 2
# From this many images to decode on, worker processes (about twice the speed of threads on two cores: part of
# a decode holds the GIL); below it, threads (no process start-up).
PROCESSES_FROM = 64
# While decoding, the facts so far are written this often (seconds), and at Ctrl-C or SIGTERM: a cut-short first
# check of a large dataset keeps its work, and the next one decodes only the rest.
SAVE_EVERY = 1.0


@dataclass(frozen=True)
class ImageFacts:
    width: int = 0
    height: int = 0
    digest: str = ""  # SHA-256 of the RGB pixels and the size; "" when the image does not decode
    error: str = ""  # why it does not decode

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)


def read_facts(path: Path) -> ImageFacts:
    """Decode one image fully (a truncated file fails here, not only at caching) and hash its RGB pixels."""
    try:
        from PIL import Image  # imported where images are read: every `ws` call loads this module

        with Image.open(path) as im:
            im.load()
            rgb = im if im.mode == "RGB" else im.convert("RGB")
            h = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
            h.update(rgb.tobytes())
            return ImageFacts(rgb.width, rgb.height, h.hexdigest()[:32])
    except Exception as e:  # any decoder failure is a finding about the file, not a bug here
        return ImageFacts(error=f"{e.__class__.__name__}: {e}".splitlines()[0][:160])


def _ignore_sigint() -> None:
    """In a worker: Ctrl-C reaches the whole process group; the check itself stops the pool and keeps the facts."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _sigterm_interrupts():
    """While images are decoded, SIGTERM stops the check as Ctrl-C does (the facts so far are written first)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class ImageCache:
    """Facts of many images at once, decoded in parallel."""

    def __init__(self, ws: Workspace):
        self.file = ws.root / ".cache" / "ws" / "images.json"
        self.entries: dict[str, list] = {}
        self.dirty = False
        try:
            data = json.loads(self.file.read_text(encoding="utf-8"))
            if data.get("format") == FORMAT:
                self.entries = data["images"]
        except (OSError, ValueError, KeyError, AttributeError):
            self.entries = {}

    def facts(self, paths: list[Path]) -> dict[Path, ImageFacts]:
        out: dict[Path, ImageFacts] = {}
        todo: list[tuple[Path, str, int, int]] = []
        for p in dict.fromkeys(paths):
            try:
                st = p.stat()
            except OSError:
                continue
            key = str(p.resolve())
            e = self.entries.get(key)
            if e and e[0] == st.st_size and e[1] == st.st_mtime_ns:
                out[p] = ImageFacts(*e[2:])
            else:
                todo.append((p, key, st.st_size, st.st_mtime_ns))
        if todo:
            from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

            workers = max(1, min(32, os.cpu_count() or 1, len(todo)))
            files = [t[0] for t in todo]
            if len(todo) >= PROCESSES_FROM and workers > 1:
                pool = ProcessPoolExecutor(workers, initializer=_ignore_sigint)
                kwargs = {"chunksize": max(1, min(8, len(todo) // (workers * 8)))}
            else:
                pool, kwargs = ThreadPoolExecutor(workers), {}
            saved = time.monotonic()
            with _sigterm_interrupts(), pool:
                try:
                    for (p, key, size, mtime), f in zip(todo, pool.map(read_facts, files, **kwargs)):
                        out[p] = f
                        self.entries[key] = [size, mtime, f.width, f.height, f.digest, f.error]
                        self.dirty = True
                        if time.monotonic() - saved >= SAVE_EVERY:
                            self.save()
                            saved = time.monotonic()
                except BaseException:  # Ctrl-C, SIGTERM: keep what is decoded, drop what is queued
                    self.save()
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
            self.save()
        return out

    def save(self) -> None:
        """Write atomically (another check may read it at the same time); a read-only workspace just skips it."""
        if not self.dirty:
            return
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.file.parent, prefix=".images.", suffix=".json")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"format": FORMAT, "images": self.entries}, f)
            os.replace(tmp, self.file)
            self.dirty = False
        except OSError:
            pass
