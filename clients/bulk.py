"""Bulk scoring of files and folders: one output row per input file, resumable, crash-safe.

Which files and how they are read: files.py; the output's rows: rows.py. Server loss is not
an item error: the run stops with no row for the unscored files (exit 1), and a rerun with
--resume scores exactly those; so does a failed write (disk full). `[server]` and
`[timeout]` rows are retried by --resume.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sampleiqa.progress import Progress
from sampleiqa.runtime.contracts import RETRIED_CODES

from .files import FileRefused, not_done, read_image_file
from .protocol import ScoreResult, TransportError
from .rows import OutputError, RowWriter, check_output, read_done, to_row


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
    refused: int = 0  # requests a busy server refused (its queue at its bound), each retried
    failed: int = 0  # shards of a distributed run that failed (storage, a bug): no rows, scored on --resume
    failure: str = ""  # the first of their errors

    def record(self, result: ScoreResult) -> None:
        """One row written, for `result`."""
        self.scored += 1
        if result.ok:
            self.faces += bool(result.face_found)
        else:
            self.errors[result.error_code] += 1

    def add(self, part: "Summary") -> None:
        """A part of this run (a shard of a distributed one), whose files `total` counts already."""
        self.skipped += part.skipped
        self.retrying += part.retrying
        self.scored += part.scored
        self.faces += part.faces
        self.refused += part.refused
        self.failed += part.failed
        self.failure = self.failure or part.failure
        self.errors.update(part.errors)
        self.aborted = self.aborted or part.aborted

    def to_json(self) -> str:
        return json.dumps({**vars(self), "errors": dict(self.errors)})  # not asdict(): it mangles a Counter

    @classmethod
    def from_json(cls, text: str) -> "Summary":
        fields = json.loads(text)
        return cls(**{**fields, "errors": Counter(fields["errors"])})

    @property
    def to_retry(self) -> int:
        """Rows written by this run that --resume will score again."""
        return sum(n for code, n in self.errors.items() if code in RETRIED_CODES)

    @property
    def finished(self) -> bool:
        return not self.aborted and not self.to_retry and not self.failed

    def text(self, out: Path) -> str:
        rate = self.scored / self.seconds if self.seconds else 0.0
        ok = self.scored - sum(self.errors.values())
        again = f" ({self.retrying} of them again after a transient error)" if self.retrying else ""
        lines = [
            f"{self.total} files: {ok} scored ok ({self.faces} with a face), "
            f"{sum(self.errors.values())} errors, {self.skipped} already in {out}",
            f"{self.scored} rows written{again} in {self.seconds:.1f}s ({rate:.1f} images/s)",
        ]
        if self.errors:
            lines.append("errors: " + ", ".join(f"{k} {v}" for k, v in self.errors.most_common()))
        if self.refused:
            lines.append(f"server busy: {self.refused} requests refused (its queue was full) and sent again")
        if self.aborted:
            lines.append(f"STOPPED: {self.aborted}. Rerun with --resume to score the rest.")
        elif self.to_retry or self.failed:
            why = []
            if self.to_retry:
                why.append(
                    f"{self.to_retry} files failed on the server's or the storage's side "
                    f"({', '.join(sorted(RETRIED_CODES))}), not because of the image"
                )
            if self.failed:
                why.append(f"{self.failed} shards failed and have no rows yet (first: {self.failure})")
            lines.append(f"NOT FINISHED: {'; '.join(why)}; rerun with --resume to score them again.")
        return "\n".join(lines)


class _Rows:
    """Rows on their way to the output: flushed in batches (64 rows or a second), counted in
    the summary once they are in the file."""

    def __init__(self, writer: RowWriter, summary: Summary, progress: Progress):
        self.writer, self.summary, self.progress = writer, summary, progress
        self.pending: list[tuple[dict, ScoreResult]] = []
        self.last_flush = time.monotonic()

    def record(self, path: str, result: ScoreResult) -> None:
        self.pending.append((to_row(path, result), result))
        self.progress.update(1, **({"err": 1} if not result.ok else {}))
        if len(self.pending) >= 64 or time.monotonic() - self.last_flush > 1.0:
            self.flush()

    def flush(self) -> None:
        batch, self.pending = self.pending, []
        self.last_flush = time.monotonic()
        self.writer.write_rows([row for row, _ in batch])
        for _, result in batch:
            self.summary.record(result)


def score_files(
    client,
    paths: list[str],
    out: str | Path,
    fmt: str = "csv",
    resume: bool = False,
    concurrency: int = 8,
    batch_size: int = 1,
    progress_stream=sys.stderr,
) -> Summary:
    """Score `paths` with a ScoringClient, writing one row per file to `out`."""
    out = Path(out)
    check_output(out, resume)
    done, retrying = read_done(out, fmt) if resume else ([], 0)
    todo = not_done(paths, done)
    summary = Summary(total=len(paths), skipped=len(paths) - len(todo), retrying=retrying)
    progress = Progress(len(todo), "scoring", stream=progress_stream)
    rows = _Rows(RowWriter(out, fmt), summary, progress)
    refused: list[tuple[str, ScoreResult]] = []  # files never sent: unreadable, not a file, too large

    def readable():  # read lazily; a file that cannot be read gets its row beside the scored ones
        for p in todo:
            try:
                yield p, read_image_file(p)
            except FileRefused as exc:
                refused.append((p, exc.result))

    start, refused_before = time.monotonic(), client.refusals
    try:
        try:
            for path, result in client.score_many(readable(), concurrency=concurrency, batch_size=batch_size):
                for item in [(path, result), *refused]:
                    rows.record(*item)
                refused.clear()
            for item in refused:
                rows.record(*item)
        except TransportError as exc:
            summary.aborted = str(exc)
        except KeyboardInterrupt:
            summary.aborted = "interrupted"
        finally:
            try:
                rows.flush()
            finally:
                rows.writer.close()
    except OutputError as exc:  # disk full: what is in the file is whole lines, and resume goes on
        summary.aborted = str(exc)
    finally:
        progress.close()
        summary.seconds = time.monotonic() - start
        summary.refused = client.refusals - refused_before
    return summary
