"""A small progress line for long runs (no dependency): redrawn in place on a terminal,
one line every few seconds in a log."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, label: str = "", stream=sys.stderr, every_s: float = 5.0):
        self.total, self.label, self.stream = total, label, stream
        self.tty = getattr(stream, "isatty", lambda: False)()
        self.every_s = 0.1 if self.tty else every_s
        self.done = 0
        self.counts: dict[str, int] = {}
        self.start = time.monotonic()
        self._last = 0.0

    def update(self, n: int = 1, **counts: int) -> None:
        self.done += n
        for k, v in counts.items():
            self.counts[k] = self.counts.get(k, 0) + v
        now = time.monotonic()
        if now - self._last >= self.every_s or self.done == self.total:
            self._last = now
            self._draw(now)

    def line(self, now: float | None = None) -> str:
        elapsed = (now or time.monotonic()) - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        width = 24
        filled = int(width * self.done / self.total) if self.total else width
        extra = " ".join(f"{k} {v}" for k, v in self.counts.items())
        return (
            f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
            f"{extra} {rate:.1f}/s ETA {eta:.0f}s"
        ).strip()

    def _draw(self, now: float) -> None:
        if self.tty:
            self.stream.write("\r" + self.line(now) + "\033[K")
        else:
            self.stream.write(self.line(now) + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
