"""The Ray engine of `sampleiqa score --engine ray`, its driver side: the output's lease,
the job's listing planned against the shards already done, then the run on the cluster
(ray_engine.py: the actors). The refusals, the summary and the exit codes are the shared
flow's (engine.py), the same as the local engine's.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time

from .engine import Plan, Refused
from .job import ScoreJob
from .summary import Summary


class RayEngine:
    def __init__(self, job: ScoreJob):
        self.job = job
        self.out = job.out
        self.stop = threading.Event()  # set by a lost lease; Ctrl-C raises KeyboardInterrupt as usual
        self.output = self.lease = self.wanted = self.run_job = None
        self.listing = self.rest = None  # the entries still to list: from --overwrite's check, then the plan's
        self.todo: list[int] = []
        self.final_rows = 0

    def claim(self) -> None:
        try:
            import pyarrow.fs  # noqa: F401  (imported lazily below: a serve-only install lacks both)
            import ray  # noqa: F401

            from .lock import Lease
            from .shards import Job, Output
        except ImportError as exc:
            raise Refused(f"--engine ray needs the ray extra (pip install 'sampleiqa[ray]'): {exc}") from None
        job = self.job
        self.wanted = Job(list(job.inputs), job.recursive, job.format, job.shard_size)
        self.output = Output(self.out)
        self.lease = Lease(self.output, lost=self.stop).acquire()

    def release(self) -> None:
        if self.lease is not None:
            self.lease.release()

    def found_any(self) -> bool:
        from .listing import iter_inputs

        listing = iter_inputs(self.wanted.inputs, self.wanted.recursive)
        first = next(listing, None)
        if first is None:
            return False
        self.listing = itertools.chain([first], listing)
        return True

    def drop(self) -> None:
        self.output.clear()

    def has_rows(self) -> bool:
        return self.output.has_rows()

    def other_run(self) -> bool:
        existing = self.output.job()
        return not (existing and existing.same_inputs(self.wanted))

    def plan(self) -> Plan:
        from .ray_engine import plan, todo_shards

        self.run_job, self.rest = plan(self.output, self.wanted, self.listing)
        self.todo, self.final_rows = todo_shards(self.output, self.run_job)
        self.output.drop_partial_writes()
        return Plan(files=self.run_job.files, listing=self.rest is not None, todo=len(self.todo))

    def score(self, urls: list[str]) -> Summary:
        import ray

        from .ray_engine import Listing, ListingFailed, Scoring, connect, run_shards

        job, output, stop = self.job, self.output, self.stop
        listing = None if self.rest is None else Listing(output, self.run_job, self.rest, stop)
        summary = Summary(skipped=self.final_rows)
        scoring = Scoring(tuple(urls), job.timeout_s, job.retry_seconds, job.tls, job.concurrency, job.batch_size)
        start = time.monotonic()
        try:
            connect(job.ray_address)
            listed = f"{len(self.todo)} shards" + (", and more as the listing goes on" if listing else "")
            print(
                f"sampleiqa score: Ray ready in {time.monotonic() - start:.1f}s; scoring {listed} "
                f"with {job.ray_actors} actors over {len(urls)} endpoint(s)",
                file=sys.stderr,
            )
            start = time.monotonic()  # the rate in the summary is the scoring's, as the local CLI's
            if listing:
                listing.start()
            fmt = self.run_job.format
            run_shards(output.uri, fmt, self.todo, scoring, job.ray_actors, job.ray_actor_cpus, summary, stop, listing)
            if stop.is_set() and not summary.aborted:
                summary.aborted = f"another run took {output.uri} over (this run's lease expired)"
        except KeyboardInterrupt:
            summary.aborted = "interrupted"
            stop.set()  # the listing stops too
        except ListingFailed as exc:  # --resume goes on from its saved progress
            summary.aborted = str(exc)
        finally:
            summary.total = self.run_job.files
            summary.seconds = time.monotonic() - start
            ray.shutdown()
        return summary
