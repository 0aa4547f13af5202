"""Bulk scoring of files and folders: one output row per input file, resumable, crash-safe.

Which files and how they are read: files.py; the output's rows: rows.py. Server loss is not
an item error: the run stops with no row for the unscored files (exit 1), and a rerun with
--resume scores exactly those; so does a failed write (disk full). `[server]` and
`[timeout]` rows are retried by --resume.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from sampleiqa.progress import Progress

from .files import FileRefused, not_done, read_image_file
from .protocol import ScoreResult, TransportError
from .rows import OutputError, RowWriter, check_output, read_done, to_row
from .summary import Summary


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
