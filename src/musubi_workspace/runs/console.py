"""What the terminal shows of a run: the program's lines, with its training progress bar replaced by one status
line (step, loss, s/step, time left).

Output arrives in chunks; `Splitter` cuts it into pieces ending in a newline or a carriage return (tqdm redraws
its bar with carriage returns). On a terminal the status line is redrawn in place; elsewhere (a pipe, tmux's
log) a line is printed for each new step and other redraws are left out (tqdm ends every bar with a newline, so
its final state is still shown). Writes to a terminal that has gone away (an SSH connection dropped) are
ignored: the run goes on.
"""

from __future__ import annotations

import sys
import time

from musubi_workspace.runs.progress import Progress


class Splitter:
    """Cut a stream of text into (piece, terminator) pairs; an unterminated rest waits for more."""

    def __init__(self) -> None:
        self.rest = ""

    def feed(self, text: str) -> list[tuple[str, str]]:
        self.rest += text
        out = []
        start = 0
        for i, ch in enumerate(self.rest):
            if ch in "\r\n":
                out.append((self.rest[start:i], ch))
                start = i + 1
        self.rest = self.rest[start:]
        return out

    def close(self) -> list[tuple[str, str]]:
        rest, self.rest = self.rest, ""
        return [(rest, "\n")] if rest else []


def say(text: str, stream=None) -> None:
    """Print one line, ignoring a terminal that has gone away."""
    try:
        print(text, file=stream or sys.stdout, flush=True)
    except (OSError, ValueError):
        pass


# Seconds between status lines when the output is not a terminal.
PLAIN_EVERY = 30.0


class Display:
    def __init__(self, progress: Progress, stream=None, tty: bool | None = None) -> None:
        self.progress = progress
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.splitter = Splitter()
        self.status_shown = False
        # Off a terminal (a pipe, `tee`, a CI log) the status is a whole line: one every PLAIN_EVERY seconds,
        # the first and the last, not one per step.
        self.plain_last: float | None = None
        self.plain_pending = False

    def feed(self, text: str) -> None:
        """Show a chunk of raw output (used by `make logs`)."""
        for piece, term in self.splitter.feed(text):
            self.piece(piece, term)

    def piece(self, piece: str, term: str) -> None:
        """Show one piece; `progress` must not have seen it yet."""
        if self.progress.feed(piece):
            self.show_status()
        elif "steps:" in piece and "|" in piece:
            return  # a redraw of the training bar without a new step
        elif term == "\n":
            self._write(("\r\033[K" if self.status_shown else "") + piece + "\n")
            if self.status_shown:
                self._write(self.progress.status())
        elif self.tty and piece:
            self._write("\r\033[K" + piece)
            self.status_shown = False

    def show_status(self) -> None:
        line = self.progress.status()
        if not line:
            return
        if self.tty:
            self._write("\r\033[K" + line)
            self.status_shown = True
            return
        now = time.monotonic()
        if self.plain_last is None or now - self.plain_last >= PLAIN_EVERY:
            self._write(line + "\n")
            self.plain_last, self.plain_pending = now, False
        else:
            self.plain_pending = True

    def flush(self) -> None:
        for piece, term in self.splitter.close():
            self.piece(piece, term)
        if self.plain_pending:
            self._write(self.progress.status() + "\n")
            self.plain_pending = False
        if self.status_shown:
            self._write("\n")
            self.status_shown = False

    def line(self, text: str) -> None:
        """A line of the workspace's own (`==> ...`), kept clear of the status line."""
        if self.status_shown:
            self._write("\r\033[K" + text + "\n" + self.progress.status())
        else:
            self._write(text + "\n")

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass
