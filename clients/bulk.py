"""Bulk scoring of files and folders: one output row per input file, resumable, crash-safe.

Rows go to the output as complete lines, each batch of lines in one write() on an
O_APPEND descriptor; a failed write (disk full) is cut back to the last whole line, so
the file never holds a torn line; `--resume` also repairs a torn tail (e.g. after a power
cut). Server loss is not an item error: the run stops with no row for the unscored files
(exit 1), and a rerun with --resume scores exactly those.

- One row per file, whatever its spelling: a file is identified by its device and inode
  (by its resolved path when it cannot be stat'ed), so `a.jpg`, `x/../a.jpg`, a symlink to
  it and the same folder spelled relative or absolute on resume are one file.
- Any bytes in a file name round-trip: CSV rows hold the name's raw bytes (Python's
  `surrogateescape`), JSONL rows escape the bytes that are not UTF-8 as `\\udcXX`; both read
  back to the same name.
- Only regular files are read, and never more than the byte limit: a FIFO, a device or a
  socket gets a `[not_a_file]` row.
- Rows whose error says nothing about the image (RETRIED_CODES: `[server]`, `[timeout]`)
  are not final: `--resume` drops them and scores those files again.
"""

from __future__ import annotations

import csv
import io
import json
import os
import stat
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from sampleiqa.contracts import CSV_COLUMNS, MAX_BYTES, RETRIED_CODES

from .progress import Progress
from .protocol import ScoreResult, TransportError, split_code

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


def identity(path: str) -> tuple:
    """What makes two spellings one file: (device, inode), else the resolved path."""
    try:
        st = os.stat(path)
        return ("inode", st.st_dev, st.st_ino)
    except (OSError, ValueError):
        return ("path", os.path.realpath(path))


def discover(paths: Iterable[str | Path], recursive: bool = False) -> list[str]:
    """Files named directly are taken whatever their suffix; folders give every entry with
    an image suffix (case-insensitive) that is not a folder, sorted, so a FIFO or a broken
    link gets its error row rather than vanishing. Each file appears once (see identity)."""
    found: dict[tuple, str] = {}
    for p in map(Path, paths):
        if p.is_dir():
            walker = p.rglob("*") if recursive else p.iterdir()
            for f in sorted(walker):
                if not f.is_dir() and f.suffix.lower() in IMAGE_SUFFIXES:
                    found.setdefault(identity(str(f)), str(f))
        elif p.exists() or p.is_symlink():
            found.setdefault(identity(str(p)), str(p))
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    return list(found.values())


class FileRefused(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.result = ScoreResult.failure(code, f"[{code}] {message}")


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


def read_image_file(path: str, limit: int = MAX_BYTES) -> bytes:
    """A regular file's bytes, never more than `limit`. O_NONBLOCK: opening a FIFO must not
    wait for a writer; the mode is checked on the open descriptor, not on the name."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise FileRefused("unreadable", exc.strerror or str(exc)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            what = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
            raise FileRefused("not_a_file", f"{what}: only regular files are read")
        if st.st_size > limit:  # never read a huge file into memory just to have it refused
            raise FileRefused("too_large", f"{st.st_size} bytes exceeds the limit of {limit}")
        chunks, size = [], 0
        while size <= limit:  # read to EOF, whatever stat said (the file may be growing)
            chunk = os.read(fd, min(1 << 24, limit + 1 - size))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
        raise FileRefused("too_large", f"the file grew past the limit of {limit} bytes while it was read")
    except OSError as exc:
        raise FileRefused("unreadable", exc.strerror or str(exc)) from None
    finally:
        os.close(fd)


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


class OutputError(RuntimeError):
    """The output could not be written (disk full, quota, I/O error)."""


class RowWriter:
    """Appends rows as whole lines. CSV (with header) or JSONL."""

    def __init__(self, path: str | Path, fmt: str):
        if fmt not in ("csv", "jsonl"):
            raise ValueError("format must be csv or jsonl")
        self.path, self.fmt = Path(path), fmt
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if os.fstat(self.fd).st_size == 0 and fmt == "csv":
            self._write(format_row(dict(zip(CSV_COLUMNS, CSV_COLUMNS)), fmt))

    def _write(self, data: bytes) -> None:
        """All of data, or none of it: a short or failed write is cut back to where it began."""
        start = os.fstat(self.fd).st_size
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except OSError as exc:
            try:
                os.ftruncate(self.fd, start)
            except OSError:
                pass  # resume cuts a torn tail too
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def write_rows(self, rows: list[dict]) -> None:
        if rows:
            self._write(b"".join(format_row(r, self.fmt) for r in rows))

    def close(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        finally:
            os.close(self.fd)


def format_row(row: dict, fmt: str) -> bytes:
    if fmt == "csv":
        values = ["" if row[c] is None else row[c] for c in CSV_COLUMNS]
        # A lone CR is not quoted by the csv module's minimal quoting, and would end the record.
        quoting = csv.QUOTE_ALL if any("\r" in str(v) for v in values) else csv.QUOTE_MINIMAL
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n", quoting=quoting).writerow(values)
        return buf.getvalue().encode("utf-8", "surrogateescape")
    line = json.dumps({c: row[c] for c in CSV_COLUMNS}, ensure_ascii=False) + "\n"
    return line.encode("utf-8", "backslashreplace")  # a lone surrogate (a non-UTF-8 byte) -> \udcXX


def read_rows(path: str | Path, fmt: str) -> list[dict]:
    """The rows of an output. A torn last line (no newline) is cut off first."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return []
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        with open(path, "r+b") as f:
            f.truncate(keep)
        data = data[:keep]
    text = data.decode("utf-8", "surrogateescape")
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(text, newline="")))
    return [json.loads(line) for line in text.split("\n") if line.strip()]  # not splitlines(): U+2028


def retried(row: dict) -> bool:
    """A row that says nothing about its image: --resume scores the file again."""
    return row["status"] != "ok" and split_code(row["error"] or "") in RETRIED_CODES


def remaining(path: str | Path, fmt: str, paths: list[str]) -> list[str]:
    """The paths without a final row in the output (nothing is rewritten)."""
    rows = read_rows(path, fmt)
    missing = [c for c in ("path", "status", "error") if rows and c not in rows[0]]
    if missing:
        raise ValueError(f"{path} is not a sampleiqa score output (no {', '.join(missing)} column): "
                         "choose another --out, or --overwrite it")
    done = {identity(r["path"]) for r in rows if not retried(r)}
    return [p for p in paths if identity(p) not in done]


def read_done(path: str | Path, fmt: str) -> tuple[list[str], int]:
    """(paths that have a final row, number of retried rows dropped). Rows to retry are
    removed from the output (rewritten atomically), so each file ends with one row."""
    rows = read_rows(path, fmt)
    final = [r for r in rows if not retried(r)]
    dropped = len(rows) - len(final)
    if dropped:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        header = format_row(dict(zip(CSV_COLUMNS, CSV_COLUMNS)), fmt) if fmt == "csv" else b""
        tmp.write_bytes(header + b"".join(format_row(r, fmt) for r in final))
        os.replace(tmp, path)
    return [r["path"] for r in final], dropped


def check_output(path: str | Path, resume: bool) -> None:
    """Fail before any work when the output cannot be written, or holds rows and --resume
    was not asked for (a silent append would mix two runs; an overwrite would lose one)."""
    path = Path(path)
    if not resume and path.is_file() and path.stat().st_size > 0:
        raise FileExistsError(f"{path} already has rows: pass --resume to continue it, --overwrite to start "
                              "again, or choose another --out")
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
    retrying: int = 0  # rows of an earlier run dropped by --resume to be scored again
    aborted: str = ""

    @property
    def to_retry(self) -> int:
        """Rows written by this run that --resume will score again."""
        return sum(n for code, n in self.errors.items() if code in RETRIED_CODES)

    @property
    def finished(self) -> bool:
        return not self.aborted and not self.to_retry

    def text(self, out: Path) -> str:
        rate = self.scored / self.seconds if self.seconds else 0.0
        ok = self.scored - sum(self.errors.values())
        again = f" ({self.retrying} of them again after a transient error)" if self.retrying else ""
        lines = [f"{self.total} files: {ok} scored ok ({self.faces} with a face), "
                 f"{sum(self.errors.values())} errors, {self.skipped} already in {out}",
                 f"{self.scored} rows written{again} in {self.seconds:.1f}s ({rate:.1f} images/s)"]
        if self.errors:
            lines.append("errors: " + ", ".join(f"{k} {v}" for k, v in self.errors.most_common()))
        if self.aborted:
            lines.append(f"STOPPED: {self.aborted}. Rerun with --resume to score the rest.")
        elif self.to_retry:
            lines.append(f"NOT FINISHED: {self.to_retry} files failed on the server's side "
                         f"({', '.join(sorted(RETRIED_CODES))}), not because of the image; "
                         "rerun with --resume to score them again.")
        return "\n".join(lines)


def score_files(client, paths: list[str], out: str | Path, fmt: str = "csv", resume: bool = False,
                concurrency: int = 8, batch_size: int = 1, progress_stream=sys.stderr) -> Summary:
    """Score `paths` with a ScoringClient, writing one row per file to `out`."""
    out = Path(out)
    check_output(out, resume)
    done, retrying = read_done(out, fmt) if resume else ([], 0)
    done_ids = {identity(p) for p in done}
    todo = [p for p in paths if identity(p) not in done_ids]
    summary = Summary(total=len(paths), skipped=len(paths) - len(todo), retrying=retrying)
    writer = RowWriter(out, fmt)
    progress = Progress(len(todo), "scoring", stream=progress_stream)
    refused: list[tuple[str, ScoreResult]] = []  # files never sent: unreadable, not a file, too large

    def readable():  # read lazily; a file that cannot be read gets its row beside the scored ones
        for p in todo:
            try:
                yield p, read_image_file(p)
            except FileRefused as exc:
                refused.append((p, exc.result))

    start = time.monotonic()
    pending: list[tuple[dict, ScoreResult]] = []
    last_flush = start

    def flush():  # the summary counts rows once they are in the file
        nonlocal last_flush
        batch = pending[:]
        pending.clear()
        last_flush = time.monotonic()
        writer.write_rows([row for row, _ in batch])
        for _, result in batch:
            summary.scored += 1
            if result.ok:
                summary.faces += bool(result.face_found)
            else:
                summary.errors[result.error_code] += 1

    def record(path: str, result: ScoreResult):
        pending.append((to_row(path, result), result))
        progress.update(1, **({"err": 1} if not result.ok else {}))

    def record_refused():
        while refused:
            record(*refused.pop())

    try:
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
            try:
                flush()
            finally:
                writer.close()
    except OutputError as exc:  # disk full: what is in the file is whole lines, and resume goes on
        summary.aborted = str(exc)
    finally:
        progress.close()
        summary.seconds = time.monotonic() - start
    return summary
