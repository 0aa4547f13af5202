"""One flow for `sampleiqa score`, whichever engine scores (local_engine.py: this process;
ray_driver.py: a Ray cluster). Both promise the same refusals, rows and exit codes, so the
decisions live here once; an engine only answers questions about its output and inputs:

1. claim the output: writable, and this run its one writer (before anything slow); exit 2
   when it cannot be claimed;
2. --overwrite: the inputs hold a file (else exit 2, nothing dropped), then the rows go;
3. an output with rows, without --resume or --overwrite: only the same run, finished, is
   fine (exit 0, nothing to do); anything else is refused (exit 2, naming both flags);
4. no file at all: exit 2; no file left to score: exit 0, nothing to do;
5. the server (--url, else an embedded one for the run), the scoring, its summary: exit 0
   when finished, 1 when rows are missing or to retry (STOPPED / NOT FINISHED), and
   --resume scores exactly those. Ctrl-C before the scoring began: exit 1, STOPPED.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Protocol

from .endpoints import server_urls
from .job import ScoreJob
from .lock import OutputBusy
from .summary import Summary


class Refused(Exception):
    """The run cannot start as asked: said, exit 2."""


@dataclass(frozen=True)
class Plan:
    """What an output holds of the job's inputs."""

    files: int  # files listed (so far)
    listing: bool  # more files are still to be listed (a Ray listing goes on while shards are scored)
    todo: int  # what is left to score: files (local), shards (Ray)

    @property
    def empty(self) -> bool:
        return not self.files and not self.listing

    @property
    def done(self) -> bool:
        return not self.todo and not self.listing


class Engine(Protocol):
    job: ScoreJob
    out: object  # the output as messages name it

    def claim(self) -> None:
        """Output writable and held by this run; raises Refused, OutputBusy, OSError, ValueError."""

    def release(self) -> None: ...

    def found_any(self) -> bool:
        """--overwrite, before anything is dropped: the inputs hold at least one file."""

    def drop(self) -> None:
        """--overwrite: the output's rows go."""

    def has_rows(self) -> bool: ...

    def other_run(self) -> bool:
        """The output's rows are known, before any listing, to be another run's (Ray: its job)."""

    def plan(self) -> Plan:
        """The inputs listed (at least their first file) against the output's rows."""

    def score(self, urls: list[str]) -> Summary:
        """Scores what the plan left, on these endpoints; the run's summary."""


def run(engine: Engine) -> int:
    """The command's exit code (see the module doc)."""
    try:
        engine.claim()
    except KeyboardInterrupt:
        return 1
    except (Refused, OutputBusy, OSError, ValueError) as exc:
        say(exc)
        return 2
    try:
        return _run(engine)
    except KeyboardInterrupt:  # before the scoring began: nothing was written but the listing
        say("STOPPED: interrupted. Rerun with --resume to go on.")
        return 1
    finally:
        engine.release()


def _run(engine: Engine) -> int:
    job = engine.job
    try:
        plan = _plan(engine)
    except (Refused, OSError, ValueError) as exc:
        say(exc)
        return 2
    if plan.done:
        say(f"all {plan.files} files already have a row in {engine.out}; nothing to do (--overwrite scores them again)")
        return 0
    server, urls = server_urls(job.urls, job.tls, job.retry_seconds, job.repository, job.server_log)
    if not urls:
        return 1
    try:
        summary = engine.score(urls)
    except (OSError, ValueError) as exc:  # the output failed under the run (a folder put in its place)
        say(exc)
        return 2
    finally:
        if server is not None:
            server.stop()
    say(summary.text(engine.out), prefix="")
    return 0 if summary.finished else 1


def _plan(engine: Engine) -> Plan:
    job = engine.job
    if job.overwrite:  # the inputs are found, and not empty, before anything is dropped
        if not engine.found_any():
            raise Refused("no image files found; nothing was dropped")
        engine.drop()
    # Rows without --resume: only the same run, finished, is fine (nothing to do).
    must_be_done = not (job.resume or job.overwrite) and engine.has_rows()
    refused = FileExistsError(
        f"{engine.out} already has rows: pass --resume to continue it, --overwrite to start again, "
        "or choose another --out"
    )
    if must_be_done and engine.other_run():
        raise refused
    plan = engine.plan()
    if plan.empty:
        raise Refused("no image files found")
    if must_be_done and not plan.done:
        raise refused
    return plan


def say(what, prefix: str = "sampleiqa score: ") -> None:
    print(f"{prefix}{what}", file=sys.stderr)
