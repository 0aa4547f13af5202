"""The rows of a bulk run's output: one per file, appended as whole lines, read back on resume.

Rows go to the output as complete lines, each batch of lines in one write() on an
O_APPEND descriptor; a failed write (disk full) is cut back to the last whole line, so the
file never holds a torn line; reading also cuts a torn tail (e.g. after a power cut).

- Any bytes in a file name round-trip: CSV rows hold the name's raw bytes (Python's
  `surrogateescape`), JSONL rows escape the bytes that are not UTF-8 as `\\udcXX`; both read
  back to the same name.
- Rows whose error says nothing about the image (RETRIED_CODES: `[server]`, `[timeout]`, `[storage]`)
  are not final: `--resume` drops them and scores those files again.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from sampleiqa.runtime.contracts import CSV_COLUMNS, RETRIED_CODES

from .files import not_done
from .protocol import ScoreResult, split_code


def to_row(path: str, r: ScoreResult) -> dict:
    box = r.face_box if r.face_found else (None, None, None, None)  # no face: no box
    return {
        "path": path,
        "score": None if r.score is None else round(r.score, 6),
        "face_found": r.face_found,
        "face_x": box[0],
        "face_y": box[1],
        "face_w": box[2],
        "face_h": box[3],
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
        if os.fstat(self.fd).st_size == 0:
            self._write(header(fmt))

    def _write(self, data: bytes) -> None:
        """All of data, or none of it: a short or failed write is cut back to where it began."""
        start = os.fstat(self.fd).st_size
        try:
            while data:
                data = data[os.write(self.fd, data) :]
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


def header(fmt: str) -> bytes:
    """What an output starts with: the column names for CSV, nothing for JSONL."""
    return format_row(dict(zip(CSV_COLUMNS, CSV_COLUMNS)), fmt) if fmt == "csv" else b""


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
    return parse_rows(data, fmt, str(path))


def parse_rows(data: bytes, fmt: str, name: str) -> list[dict]:
    """The rows in a CSV or JSONL output's bytes (whole lines)."""
    text = data.decode("utf-8", "surrogateescape")
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    else:
        rows = [json.loads(line) for line in text.split("\n") if line.strip()]  # not splitlines(): U+2028
    missing = [c for c in ("path", "status", "error") if rows and c not in rows[0]]
    if missing:
        raise ValueError(
            f"{name} is not a sampleiqa score output (no {', '.join(missing)} column): "
            "choose another --out, or --overwrite it"
        )
    return rows


def retried(row: dict) -> bool:
    """A row that says nothing about its image: --resume scores the file again."""
    return row["status"] != "ok" and split_code(row["error"] or "") in RETRIED_CODES


def remaining(path: str | Path, fmt: str, paths: list[str]) -> list[str]:
    """The paths without a final row in the output (nothing is rewritten)."""
    return not_done(paths, (r["path"] for r in read_rows(path, fmt) if not retried(r)))


def read_done(path: str | Path, fmt: str) -> tuple[list[str], int]:
    """(paths that have a final row, number of retried rows dropped). Rows to retry are
    removed from the output (rewritten atomically), so each file ends with one row."""
    rows = read_rows(path, fmt)
    final = [r for r in rows if not retried(r)]
    dropped = len(rows) - len(final)
    if dropped:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(header(fmt) + b"".join(format_row(r, fmt) for r in final))
        os.replace(tmp, path)
    return [r["path"] for r in final], dropped


def check_output(path: str | Path, resume: bool) -> None:
    """Fail before any work when the output cannot be written, or holds rows and --resume
    was not asked for (a silent append would mix two runs; an overwrite would lose one)."""
    path = Path(path)
    if not resume and path.is_file() and path.stat().st_size > 0:
        raise FileExistsError(
            f"{path} already has rows: pass --resume to continue it, --overwrite to start "
            "again, or choose another --out"
        )
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
