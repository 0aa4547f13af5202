"""`sampleiqa score --engine ray`: bulk scoring on a Ray cluster, over every Triton endpoint given.

The driver lists the inputs lazily into a manifest of fixed shards (shards.py), then runs a
Ray Data pipeline over the shard numbers: `map_batches` through an actor pool, each actor
one ScoringClient (the project's client: retries, failover across endpoints, per-item
errors) that reads a shard's files, scores them and writes the shard's rows whole.

Why whole shards rather than read -> score -> write_parquet stages: Ray Data re-blocks data
between stages and names written files by a per-execution id, so a retried or resumed run
could not tell which files a written block holds. A shard is a fixed set of files with a
fixed name, so a retried task (a worker killed) or a rerun rewrites the same rows under the
same name: one row per file, never two.

Same rows, error codes and exit codes as the local CLI; a rerun with --resume scores the
shards that are missing or hold [server]/[timeout] rows, keeping their final rows.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Sequence
from urllib.parse import unquote, urlsplit

import numpy as np

from sampleiqa.contracts import MAX_BYTES

from .bulk import Summary
from .client import ScoringClient
from .files import FileRefused, read_image_file
from .listing import is_uri, iter_inputs
from .protocol import RetryPolicy, ScoreResult, TLSConfig, TransportError
from .rows import retried, to_row
from .shards import Job, Output, escaped

# Environment a worker needs to reach object stores the way the driver does.
FORWARDED_ENV = ("AWS_", "GOOGLE_", "ARROW_", "SAMPLEIQA_MAX_")
OBJECT_STORES = ("s3", "gs", "gcs")


@dataclass(frozen=True)
class Scoring:
    """How each actor scores: the same settings as the local CLI's."""

    urls: tuple[str, ...]
    timeout_s: float = 60.0
    retry_seconds: float = 60.0
    tls: TLSConfig | None = None
    concurrency: int = 8  # requests in flight per actor
    batch_size: int = 1


class Reader:
    """A file's bytes, local or behind a URI, refused with the local CLI's codes."""

    def __init__(self, limit: int = MAX_BYTES):
        self.limit = limit
        self._filesystems: dict[tuple, object] = {}

    def read(self, location: str) -> bytes:
        if not is_uri(location):
            return read_image_file(location, self.limit)
        import pyarrow as pa

        fs, path = self._filesystem(location)
        try:
            with fs.open_input_file(path) as f:
                if f.size() > self.limit:
                    raise FileRefused("too_large", f"{f.size()} bytes exceeds the limit of {self.limit}")
                return f.read()
        except FileNotFoundError:
            raise FileRefused("unreadable", "no such file") from None
        except (OSError, pa.ArrowException) as exc:
            raise FileRefused("unreadable", str(exc).splitlines()[0]) from None

    def _filesystem(self, location: str):
        """(filesystem, path in it): one filesystem (an S3 client, ...) per bucket and options."""
        import pyarrow.fs as pafs

        parts = urlsplit(location)  # listing.py quoted the path
        key = (parts.scheme, parts.netloc, parts.query)
        if key not in self._filesystems:
            query = f"?{parts.query}" if parts.query else ""
            self._filesystems[key] = pafs.FileSystem.from_uri(f"{parts.scheme}://{parts.netloc}{query}")[0]
        # Object stores name a file bucket/key; the others by its path.
        path = unquote(parts.netloc + parts.path if parts.scheme in OBJECT_STORES else parts.path)
        return self._filesystems[key], path


def score_shard(shard: int, output: Output, fmt: str, client: ScoringClient, reader: Reader,
                scoring: Scoring) -> Summary:
    """Makes shard `shard` whole: its earlier final rows kept (skipped), every other file
    scored; the shard's part of the run's summary."""
    entries = output.manifest(shard)
    before = output.rows(shard, fmt)
    final = {escaped(r["path"]): r for r in before if not retried(r)}
    stats = Summary(total=len(entries), skipped=len(final), retrying=len(before) - len(final))
    results: dict[str, ScoreResult] = {}
    refused_before = client.refusals

    def readable():
        for path, location in entries:
            if escaped(path) not in final:
                try:
                    yield path, reader.read(location)
                except FileRefused as exc:
                    results[path] = exc.result

    try:
        for path, result in client.score_many(readable(), concurrency=scoring.concurrency,
                                              batch_size=scoring.batch_size):
            results[path] = result
    except TransportError as exc:  # no row for this shard: a rerun with --resume scores it
        stats.aborted = str(exc)
        return stats
    finally:
        stats.refused = client.refusals - refused_before
    rows = [final.get(escaped(path)) or to_row(path, results[path]) for path, _ in entries]
    output.write_rows(shard, fmt, rows, retry=sum(map(retried, rows)))
    for result in results.values():
        stats.record(result)
    return stats


class ShardScorer:
    """The Ray Data actor: one client and one reader for all the shards it is given."""

    def __init__(self, out: str, fmt: str, scoring: Scoring):
        self.output, self.fmt, self.scoring = Output(out), fmt, scoring
        retry = RetryPolicy(seconds=scoring.retry_seconds)
        self.client = ScoringClient(list(scoring.urls), timeout_s=scoring.timeout_s, retry=retry, tls=scoring.tls)
        self.reader = Reader()

    def __call__(self, batch: dict) -> dict:
        stats = [score_shard(int(i), self.output, self.fmt, self.client, self.reader, self.scoring)
                 for i in batch["shard"]]
        return {"stats": np.array([s.to_json() for s in stats], dtype=object)}


def connect(address: str | None) -> None:
    """ray.init on `address` (None: a local cluster for this run), quiet, and with the
    driver's object-store credentials passed on to the workers."""
    import logging

    import ray

    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
    ray.init(address=address, runtime_env={"env_vars": env} if env else None, logging_level=logging.WARNING,
             include_dashboard=False, configure_logging=True, log_to_driver=True)


def run_shards(out: str, fmt: str, shards: Sequence[int], scoring: Scoring, actors: int,
               actor_cpus: float, summary: Summary) -> None:
    """Scores `shards` on the connected cluster, adding each finished shard to `summary`;
    stops at the first shard that could not reach a server."""
    import ray

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = True
    dataset = ray.data.from_items([{"shard": i} for i in shards], override_num_blocks=len(shards))
    dataset = dataset.map_batches(ShardScorer, fn_constructor_kwargs=dict(out=out, fmt=fmt, scoring=scoring),
                                  batch_size=1, compute=ray.data.ActorPoolStrategy(size=min(actors, len(shards))),
                                  num_cpus=actor_cpus,
                                  batch_format="numpy")
    for row in dataset.iter_rows():
        summary.add(Summary.from_json(row["stats"]))
        if summary.aborted:
            print(f"sampleiqa score: stopping: {summary.aborted}", file=sys.stderr)
            break


def plan(output: Output, job: Job, stream=sys.stderr) -> Job:
    """The run's listing: the one already in the output, or a new one streamed into it."""
    existing = output.job()
    if existing:
        if not existing.same_inputs(job):
            raise ValueError(f"{output.uri} holds a run over other inputs ({' '.join(existing.inputs)}, "
                             f"{existing.format}): choose another --out, or --overwrite it")
        return existing
    counted = {"files": 0, "shown": time.monotonic()}

    def count():  # a listing has no total to show progress against: a count every 5 s
        counted["files"] += 1
        if time.monotonic() - counted["shown"] > 5:
            counted["shown"] = time.monotonic()
            print(f"sampleiqa score: listing ... {counted['files']} files", file=stream, flush=True)

    job = output.write_listing(job, iter_inputs(job.inputs, job.recursive), on_file=count)
    print(f"sampleiqa score: listed {job.files} files into {job.shards} shards of up to {job.shard_size}",
          file=stream)
    return job


def todo_shards(output: Output, job: Job) -> tuple[list[int], int]:
    """(shards to score: missing, or holding rows to retry; rows final already)."""
    done = dict(output.done())
    todo = [i for i in range(job.shards) if i not in done or done[i]["retry"]]
    return todo, sum(m["rows"] for m in done.values() if not m["retry"])
