"""The local engine of `sampleiqa score`: this process scores the job's files into one
CSV/JSONL file (bulk.py), held by a lock file. The refusals, the summary and the exit codes
are the shared flow's (engine.py)."""

from __future__ import annotations

from pathlib import Path

from .engine import Plan
from .files import discover
from .job import ScoreJob
from .lock import LocalLock
from .rows import check_output, remaining
from .summary import Summary


class LocalEngine:
    def __init__(self, job: ScoreJob):
        self.job = job
        self.out = Path(job.out)
        self.paths: list[str] | None = None  # the inputs' files, once listed
        self.lock: LocalLock | None = None

    def claim(self) -> None:
        check_output(self.out, resume=True)  # writable: before anything slow
        self.lock = LocalLock(self.out).acquire(str(self.out))  # one writer: before the server starts

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def _listed(self) -> list[str]:
        if self.paths is None:
            self.paths = discover(self.job.inputs, recursive=self.job.recursive)
        return self.paths

    def found_any(self) -> bool:
        return bool(self._listed())

    def drop(self) -> None:
        self.out.unlink(missing_ok=True)

    def has_rows(self) -> bool:
        return self.out.is_file() and self.out.stat().st_size > 0

    def other_run(self) -> bool:
        return False  # a file of rows says which files it holds, not which inputs: plan() tells

    def plan(self) -> Plan:
        paths = self._listed()
        todo = len(remaining(self.out, self.job.format, paths)) if paths and self.has_rows() else len(paths)
        return Plan(files=len(paths), listing=False, todo=todo)

    def score(self, urls: list[str]) -> Summary:
        from .bulk import score_files
        from .client import ScoringClient
        from .protocol import RetryPolicy

        job = self.job
        retry = RetryPolicy(seconds=job.retry_seconds)
        with ScoringClient(urls, timeout_s=job.timeout_s, tls=job.tls, retry=retry) as client:
            return score_files(
                client,
                self._listed(),
                self.out,
                fmt=job.format,
                resume=job.resume,
                concurrency=job.concurrency,
                batch_size=job.batch_size,
            )
