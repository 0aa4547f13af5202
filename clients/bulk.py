"""Bulk scoring of files and folders: one output row per input file, resumable, crash-safe.

Rows go to the output as complete lines, each batch of lines in one write() on an
O_APPEND descriptor, so a killed run never leaves a torn line; `--resume` also repairs a
torn tail (e.g. after a power cut) and skips every path that already has a row. Server
loss is not an item error: the run stops with no row for the unscored files (exit 1),
and a rerun with --resume scores exactly those.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from sampleiqa.contracts import CSV_COLUMNS, MAX_BYTES

from .progress import Progress
from .protocol import ScoreResult, TransportError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


def discover(paths: Iterable[str | Path], recursive: bool = False) -> list[str]:
    """Files named directly are taken whatever their suffix; folders give their image files
    (by suffix, case-insensitive), sorted. Each file appears once."""
    found: dict[str, None] = {}
    for p in map(Path, paths):
        if p.is_dir():
            walker = p.rglob("*") if recursive else p.iterdir()
            for f in sorted(walker):
                # A broken link is kept: it gets an "unreadable" row rather than vanishing.
                if (f.is_file() or f.is_symlink()) and f.suffix.lower() in IMAGE_SUFFIXES:
                    found[str(f)] = None
        elif p.exists():
            found[str(p)] = None
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    return list(found)


def to_row(path: str, r: ScoreResult) -> dict:
    box = r.face_box if r.face_found else (None, None, None, None)  # no face: no box
    return {
        "path": path,
        "score": None if r.score is None else round(r.score, 6),
        "face_found": r.face_found,
        "face_x": box[0], "face_y": box[1], "face_w": box[2], "face_h": box[3],
        "status": r.status,
        "error": r.error,
    }


class RowWriter:
    """Appends rows as whole lines. CSV (with header) or JSONL."""

    def __init__(self, path: str | Path, fmt: str):
        if fmt not in ("csv", "jsonl"):
            raise ValueError("format must be csv or jsonl")
        self.path, self.fmt = Path(path), fmt
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if os.fstat(self.fd).st_size == 0 and fmt == "csv":
            self._write(self._csv_line(dict(zip(CSV_COLUMNS, CSV_COLUMNS))))

    @staticmethod
    def _csv_line(row: dict) -> str:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(["" if row[c] is None else row[c] for c in CSV_COLUMNS])
        return buf.getvalue()

    def format(self, row: dict) -> str:
        if self.fmt == "csv":
            return self._csv_line(row)
        return json.dumps({c: row[c] for c in CSV_COLUMNS}, ensure_ascii=False) + "\n"

    def _write(self, text: str) -> None:
        data = text.encode()
        while data:
            data = data[os.write(self.fd, data):]

    def write_rows(self, rows: list[dict]) -> None:
        if rows:
            self._write("".join(self.format(r) for r in rows))

    def close(self) -> None:
        os.fsync(self.fd)
        os.close(self.fd)


def read_done(path: str | Path, fmt: str) -> set[str]:
    """Paths that already have a row. A torn last line (no newline) is cut off first."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return set()
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        with open(path, "r+b") as f:
            f.truncate(keep)
        data = data[:keep]
    text = data.decode()
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        return {r["path"] for r in rows}
    return {json.loads(line)["path"] for line in text.splitlines() if line.strip()}


def check_output(path: str | Path, resume: bool) -> None:
    """Fail before any work when the output cannot be written, or holds rows and --resume
    was not asked for (a silent append would mix two runs; an overwrite would lose one)."""
    path = Path(path)
    if not resume and path.is_file() and path.stat().st_size > 0:
        raise FileExistsError(f"{path} already has rows: pass --resume to continue it, or choose another --out")
    parent = path.parent
    if path.is_dir():
        raise PermissionError(f"output {path} is a folder")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise PermissionError(f"output {path} is not writable")
    elif not parent.exists():
        try:
            parent.mkdir(parents=True)
        except OSError as exc:
            raise PermissionError(f"cannot create the folder for {path}: {exc}") from None
    elif not os.access(parent, os.W_OK):
        raise PermissionError(f"cannot create {path}: its folder is not writable")


@dataclass
class Summary:
    total: int = 0
    skipped: int = 0
    scored: int = 0
    errors: Counter = field(default_factory=Counter)
    faces: int = 0
    seconds: float = 0.0
    aborted: str = ""

    def text(self, out: Path) -> str:
        rate = self.scored / self.seconds if self.seconds else 0.0
        ok = self.scored - sum(self.errors.values())
        lines = [f"{self.total} files: {ok} scored ok ({self.faces} with a face), "
                 f"{sum(self.errors.values())} errors, {self.skipped} already in {out}",
                 f"{self.scored} rows written in {self.seconds:.1f}s ({rate:.1f} images/s)"]
        if self.errors:
            lines.append("errors: " + ", ".join(f"{k} {v}" for k, v in self.errors.most_common()))
        if self.aborted:
            lines.append(f"STOPPED: {self.aborted}. Rerun with --resume to score the rest.")
        return "\n".join(lines)


def score_files(client, paths: list[str], out: str | Path, fmt: str = "csv", resume: bool = False,
                concurrency: int = 8, batch_size: int = 1, progress_stream=sys.stderr) -> Summary:
    """Score `paths` with a ScoringClient, writing one row per path to `out`."""
    out = Path(out)
    check_output(out, resume)
    done = read_done(out, fmt) if resume else set()
    todo = [p for p in paths if p not in done]
    summary = Summary(total=len(paths), skipped=len(paths) - len(todo))
    writer = RowWriter(out, fmt)
    progress = Progress(len(todo), "scoring", stream=progress_stream)
    refused: list[tuple[str, ScoreResult]] = []  # files never sent: unreadable or too large

    def readable():  # read lazily; a file that cannot be read gets its row beside the scored ones
        for p in todo:
            try:
                size = Path(p).stat().st_size
                if size > MAX_BYTES:  # never read a huge file into memory just to have it refused
                    refused.append((p, ScoreResult.failure(
                        "too_large", f"[too_large] {size} bytes exceeds the limit of {MAX_BYTES}")))
                    continue
                yield p, Path(p).read_bytes()
            except OSError as exc:
                refused.append((p, ScoreResult.failure("unreadable", f"[unreadable] {exc.strerror or exc}")))

    start = time.monotonic()
    pending: list[dict] = []
    last_flush = start

    def flush():
        nonlocal last_flush
        writer.write_rows(pending)
        pending.clear()
        last_flush = time.monotonic()

    def record(path: str, result: ScoreResult):
        pending.append(to_row(path, result))
        summary.scored += 1
        if result.ok:
            summary.faces += bool(result.face_found)
        else:
            summary.errors[result.error_code] += 1
        progress.update(1, **({"err": 1} if not result.ok else {}))

    def record_refused():
        while refused:
            record(*refused.pop())

    try:
        for path, result in client.score_many(readable(), concurrency=concurrency, batch_size=batch_size):
            record(path, result)
            record_refused()
            if len(pending) >= 64 or time.monotonic() - last_flush > 1.0:
                flush()
        record_refused()
    except TransportError as exc:
        summary.aborted = str(exc)
    except KeyboardInterrupt:
        summary.aborted = "interrupted"
    finally:
        flush()
        writer.close()
        progress.close()
        summary.seconds = time.monotonic() - start
    return summary
