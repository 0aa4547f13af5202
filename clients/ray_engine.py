"""`sampleiqa score --engine ray`: bulk scoring on a Ray cluster, over every Triton endpoint given.

The driver lists the inputs lazily into a manifest of fixed shards (shards.py), and hands
each shard to a pool of Ray actors as soon as its manifest is written: scoring starts while
a 10M-file listing goes on. Each actor is one ScoringClient (the project's client: retries,
failover across endpoints, per-item errors) that reads a shard's files ahead of its
requests, scores them and writes the shard's rows whole.

Why whole shards rather than a Ray Data read -> score -> write_parquet pipeline (or its
checkpointing, ray.data.checkpoint: docs/cluster.md): Ray Data re-blocks data
between stages and names written files by a per-execution id, so a retried or resumed run
could not tell which files a written block holds. A shard is a fixed set of files with a
fixed name, so a retried task (a worker killed) or a rerun rewrites the same rows under the
same name: one row per file, never two.

Same rows, error codes and exit codes as the local CLI; a rerun with --resume scores the
shards that are missing or hold [server]/[timeout]/[storage] rows, keeping their final rows.

(Over 300 lines: the driver, its listing thread and the actors share one protocol of shards.)
"""

from __future__ import annotations

import itertools
import os
import queue
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Iterator, Sequence

from sampleiqa.progress import Progress
from sampleiqa.runtime import environment

from .client import ScoringClient
from .listing import iter_inputs
from .protocol import RetryPolicy, ScoreResult, TLSConfig, TransportError
from .rows import retried, to_row
from .shards import Job, Output, escaped
from .storage import Reader, read_ahead
from .summary import Summary

# What the workers get from the driver's environment: the server's input limits, nothing
# else. Credentials never travel in runtime_env (Ray keeps it in the job's metadata, and it
# would override the workers' own identity: IRSA, Workload Identity, the node's role).
FORWARDED_ENV = (environment.LIMITS_PREFIX,)


@dataclass(frozen=True)
class Scoring:
    """How each actor scores: the same settings as the local CLI's."""

    urls: tuple[str, ...]
    timeout_s: float = 60.0
    retry_seconds: float = 60.0
    tls: TLSConfig | None = None
    concurrency: int = 8  # requests in flight per actor, and reads ahead of them
    batch_size: int = 1


def score_shard(
    shard: int,
    output: Output,
    fmt: str,
    client: ScoringClient,
    reader: Reader,
    scoring: Scoring,
    pool: ThreadPoolExecutor | None = None,
) -> Summary:
    """Makes shard `shard` whole: its earlier final rows kept (skipped), every other file
    scored; the shard's part of the run's summary."""
    entries = output.manifest(shard)
    before = output.rows(shard, fmt)
    final = {escaped(r["path"]): r for r in before if not retried(r)}
    stats = Summary(total=len(entries), skipped=len(final), retrying=len(before) - len(final))
    results: dict[str, ScoreResult] = {}
    refused_before = client.refusals
    todo = [(path, location) for path, location in entries if escaped(path) not in final]

    def readable():
        with ThreadPoolExecutor(scoring.concurrency) if pool is None else nullcontext(pool) as reads:
            for path, data in read_ahead(reader.read, todo, reads, scoring.concurrency):
                if isinstance(data, bytes):
                    yield path, data
                else:
                    results[path] = data.result

    try:
        for path, result in client.score_many(
            readable(), concurrency=scoring.concurrency, batch_size=scoring.batch_size
        ):
            results[path] = result
    except TransportError as exc:  # no row for this shard: a rerun with --resume scores it
        stats.aborted = str(exc)
        return stats
    finally:
        stats.refused = client.refusals - refused_before
    rows = [final.get(escaped(path)) or to_row(path, results[path]) for path, _ in entries]
    output.write_rows(shard, fmt, rows, retry=sum(map(retried, rows)), replaces=before)
    for result in results.values():
        stats.record(result)
    return stats


class ShardScorer:
    """A scoring actor: one client, one reader and one pool of reads for all the shards it is
    given. A shard that fails for any reason but an unreachable server is reported as
    failed, and the run goes on: it has no done marker, so --resume scores it."""

    def __init__(self, out: str, fmt: str, scoring: Scoring):
        self.output, self.fmt, self.scoring = Output(out), fmt, scoring
        retry = RetryPolicy(seconds=scoring.retry_seconds)
        self.client = ScoringClient(list(scoring.urls), timeout_s=scoring.timeout_s, retry=retry, tls=scoring.tls)
        self.reader = Reader()
        self.reads = ThreadPoolExecutor(max(1, scoring.concurrency), thread_name_prefix="sampleiqa-read")

    def score(self, shard: int) -> str:
        """The shard's Summary, as JSON."""
        try:
            stats = score_shard(shard, self.output, self.fmt, self.client, self.reader, self.scoring, self.reads)
        except Exception as exc:  # noqa: BLE001 (isolated: reported in the summary, never lost)
            stats = failed_shard(shard, exc)
        return stats.to_json()


def failed_shard(shard: int, exc: BaseException) -> Summary:
    """A shard's part of the summary when it failed: no rows, scored again by --resume."""
    first = (str(exc).splitlines() or [""])[0]
    return Summary(failed=1, failure=f"shard {shard}: {type(exc).__name__}: {first}")


def connect(address: str | None) -> None:
    """ray.init on `address` (None: a local cluster for this run), quiet; the workers get the
    server's input limits (FORWARDED_ENV) and use their own identity for storage."""
    import logging

    import ray

    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
    ray.init(
        address=address,
        runtime_env={"env_vars": env} if env else None,
        logging_level=logging.WARNING,
        include_dashboard=False,
        configure_logging=True,
        log_to_driver=True,
    )


def run_shards(
    out: str,
    fmt: str,
    shards: Sequence[int],
    scoring: Scoring,
    actors: int,
    actor_cpus: float,
    summary: Summary,
    stop: threading.Event,
    listing: Listing | None = None,
) -> None:
    """Scores `shards`, then those `listing` adds as it goes, on the connected cluster,
    adding each finished shard to `summary`. Stops at the first shard that could not reach a
    server, or when `stop` is set, within POLL_S.

    Actors are Ray actors fed directly, two shards queued each, rather than a Ray Data
    pipeline: a Dataset's blocks are fixed when it starts, and the listing is not. A killed
    actor is restarted by Ray and its shard retried (max_restarts, max_task_retries); a shard
    whose actor is lost for good is counted failed, and --resume scores it."""
    import ray

    remote = ray.remote(num_cpus=actor_cpus, max_restarts=-1, max_task_retries=-1)(ShardScorer)
    pool = [remote.remote(out, fmt, scoring) for _ in range(max(1, actors))]
    waiting = deque(shards)
    running: dict = {}  # object ref -> (actor, shard)
    load = {i: 0 for i in range(len(pool))}
    listing_open = listing is not None
    progress = Progress(len(waiting), "shards", every_s=5.0)
    try:
        while not stop.is_set():
            if listing_open:
                listing_open = _take_listed(listing, waiting, progress, block=not waiting and not running)
            while waiting and min(load.values()) < 2:
                i = min(load, key=load.get)
                shard = waiting.popleft()
                running[pool[i].score.remote(shard)] = (i, shard)
                load[i] += 1
            if not running:
                if not listing_open:
                    return
                continue
            ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL_S)
            for ref in ready:
                i, shard = running.pop(ref)
                load[i] -= 1
                summary.add(_outcome(ref, shard))
                progress.update(1)
                if summary.aborted:
                    print(f"sampleiqa score: stopping: {summary.aborted}", file=sys.stderr)
                    return
    finally:
        progress.close()


def _take_listed(listing: Listing, waiting: deque, progress: Progress, block: bool) -> bool:
    """Moves the shards the listing wrote since the last call to `waiting`; False once the
    listing is whole. Raises what stopped the listing."""
    while True:
        try:
            item = listing.shards.get(timeout=POLL_S) if block else listing.shards.get_nowait()
        except queue.Empty:
            return True
        if item is None:
            return False
        if isinstance(item, BaseException):
            raise ListingFailed(f"listing the inputs failed: {item}") from item
        waiting.append(item)
        progress.total += 1
        block = False


def _outcome(ref, shard: int) -> Summary:
    import ray

    try:
        return Summary.from_json(ray.get(ref))
    except (ray.exceptions.RayError, OSError) as exc:  # the actor lost for good, its node gone
        return failed_shard(shard, exc)


POLL_S = 0.2


def plan(output: Output, job: Job, listing=None, stream=sys.stderr) -> tuple[Job, Iterator | None]:
    """(the run's job, the entries still to list or None when its listing is whole): the job
    already in the output, its listing resumed where it stopped if a crash cut it, or a new
    one (`listing`, else the job's inputs listed now). The first entry still to list is read
    here: a missing input raises now, and a new listing with no file is an empty job."""
    existing = output.job()
    if existing:
        if not existing.same_inputs(job):
            raise ValueError(
                f"{output.uri} holds a run over other inputs ({' '.join(existing.inputs)}, "
                f"{existing.format}): choose another --out, or --overwrite it"
            )
        if existing.listed:
            return existing, None
        print(f"sampleiqa score: resuming the listing after the {existing.files} files listed before", file=stream)
        job, listing = existing, _resumed(existing, iter_inputs(existing.inputs, existing.recursive))
    else:
        listing = iter_inputs(job.inputs, job.recursive) if listing is None else listing
    first = next(listing, None)
    if first is None:
        job.listed = True  # nothing (more) to list
        return job, None
    return job, itertools.chain([first], listing)


def _resumed(job: Job, entries: Iterator) -> Iterator:
    """The entries after the `job.files` listed before a crash, which must end as they did."""
    last = None
    for _, last in zip(range(job.files), entries):
        pass
    if job.files and (last is None or last[0] != job.last):
        raise ValueError(
            f"the inputs changed since this output's listing began (file {job.files} was "
            f"{job.last}, is now {last[0] if last else 'missing'}): --overwrite to list them again"
        )
    return entries


class ListingFailed(RuntimeError):
    """The listing stopped part way (an input vanished, storage failed past its retries)."""


class Listing(threading.Thread):
    """Writes the rest of the listing into the output while the shards listed so far are
    scored: each new shard number goes to `shards`, then None (or the exception)."""

    def __init__(self, output: Output, job: Job, entries: Iterator, stop: threading.Event, stream=sys.stderr):
        super().__init__(name="sampleiqa-listing", daemon=True)
        self.output, self.job, self.entries, self.stop, self.stream = output, job, entries, stop, stream
        self.shards: queue.Queue = queue.Queue()
        self.shown = time.monotonic()

    def run(self) -> None:
        try:
            self.output.write_listing(self.job, self.entries, on_file=self._count, on_shard=self.shards.put)
            print(
                f"sampleiqa score: listed {self.job.files} files into {self.job.shards} shards of up to "
                f"{self.job.shard_size}",
                file=self.stream,
                flush=True,
            )
            self.shards.put(None)
        except BaseException as exc:  # noqa: BLE001 (handed to the dispatcher)
            self.shards.put(exc)

    def _count(self) -> None:  # a listing has no total to show progress against: a count every 5 s
        if self.stop.is_set():  # the run stopped: its saved progress resumes the listing
            raise InterruptedError("the run stopped")
        if time.monotonic() - self.shown > 5:
            self.shown = time.monotonic()
            print(f"sampleiqa score: listing ... {self.job.files} files so far", file=self.stream, flush=True)


def todo_shards(output: Output, job: Job) -> tuple[list[int], int]:
    """(shards to score: missing, or holding rows to retry; rows final already)."""
    done = output.done()
    todo = [i for i in range(job.shards) if i not in done or done[i]["retry"]]
    return todo, sum(m["rows"] for m in done.values() if not m["retry"])
