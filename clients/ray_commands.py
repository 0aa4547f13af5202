"""`sampleiqa score --engine ray`: the command's checks, then the Ray run (ray_engine.py).

The same promises as the local command: a rerun of a finished run has nothing to do (exit
0); an output with rows needs --resume or --overwrite; exit 1 with STOPPED or NOT FINISHED
when rows are missing or to retry, and --resume scores exactly those.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time

from sampleiqa.paths import SAMPLES

from .bulk import Summary
from .endpoints import server_urls, tls_config


def score_on_ray(args) -> int:
    try:
        import pyarrow.fs  # noqa: F401  (imported lazily below: a serve-only install lacks both)
        import ray  # noqa: F401

        from .lock import Lease, OutputBusy
        from .shards import FORMATS, Job, Output
    except ImportError as exc:
        print(
            f"sampleiqa score: --engine ray needs the ray extra (pip install 'sampleiqa[ray]'): {exc}", file=sys.stderr
        )
        return 2
    out = args.out or "scores"
    fmt = args.format or next((f for f in FORMATS if out.rstrip("/").endswith("." + f)), "parquet")
    inputs = [str(p) for p in args.paths] or [str(SAMPLES)]
    stop = threading.Event()  # set by a lost lease; Ctrl-C raises KeyboardInterrupt as usual
    try:
        output = Output(out)
        lease = Lease(output, lost=stop).acquire()
    except (OutputBusy, OSError, ValueError) as exc:
        print(f"sampleiqa score: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 1
    try:
        return _score(args, output, Job(inputs, args.recursive, fmt, args.shard_size), stop)
    except KeyboardInterrupt:  # before the scoring began: nothing was written but the listing
        print("sampleiqa score: STOPPED: interrupted. Rerun with --resume to go on.", file=sys.stderr)
        return 1
    finally:
        lease.release()


def _score(args, output, wanted, stop) -> int:
    from .listing import iter_inputs
    from .ray_engine import Listing, plan, todo_shards

    out = output.uri
    refused = FileExistsError(
        f"{out} already has rows: pass --resume to continue it, --overwrite to start again, or choose another --out"
    )
    try:
        listing = None
        if args.overwrite:  # the inputs are found, and not empty, before anything is dropped
            listing = iter_inputs(wanted.inputs, wanted.recursive)
            first = next(listing, None)
            if first is None:
                print("sampleiqa score: no image files found; nothing was dropped", file=sys.stderr)
                return 2
            listing = itertools.chain([first], listing)
            output.clear()
        # Rows without --resume: only the same run, finished, is fine (nothing to do).
        must_be_done = not (args.resume or args.overwrite) and output.has_rows()
        if must_be_done and not ((existing := output.job()) and existing.same_inputs(wanted)):
            raise refused
        job, rest = plan(output, wanted, listing)
        if not job.files and rest is None:
            print("sampleiqa score: no image files found", file=sys.stderr)
            return 2
        todo, final_rows = todo_shards(output, job)
        if must_be_done and (todo or rest is not None):
            raise refused
        output.drop_partial_writes()
    except (OSError, ValueError) as exc:
        print(f"sampleiqa score: {exc}", file=sys.stderr)
        return 2
    if not todo and rest is None:
        print(
            f"sampleiqa score: all {job.files} files already have a row in {out}; nothing to do "
            "(--overwrite scores them again)",
            file=sys.stderr,
        )
        return 0
    listing = None if rest is None else Listing(output, job, rest, stop)
    return _run(args, output, job, todo, listing, Summary(skipped=final_rows), stop)


def _run(args, output, job, todo: list[int], listing, summary: Summary, stop) -> int:
    import ray

    from .ray_engine import ListingFailed, Scoring, connect, run_shards

    server, urls = server_urls(args)
    if not urls:
        return 1
    scoring = Scoring(
        tuple(urls), args.timeout, args.retry_seconds, tls_config(args), args.concurrency, args.batch_size
    )
    start = time.monotonic()
    try:
        connect(args.ray_address)
        listed = f"{len(todo)} shards" + (", and more as the listing goes on" if listing else "")
        print(
            f"sampleiqa score: Ray ready in {time.monotonic() - start:.1f}s; scoring {listed} "
            f"with {args.ray_actors} actors over {len(urls)} endpoint(s)",
            file=sys.stderr,
        )
        start = time.monotonic()  # the rate in the summary is the scoring's, as the local CLI's
        if listing:
            listing.start()
        run_shards(output.uri, job.format, todo, scoring, args.ray_actors, args.ray_actor_cpus, summary, stop, listing)
        if stop.is_set() and not summary.aborted:
            summary.aborted = f"another run took {output.uri} over (this run's lease expired)"
    except KeyboardInterrupt:
        summary.aborted = "interrupted"
        stop.set()  # the listing stops too
    except ListingFailed as exc:  # --resume goes on from its saved progress
        summary.aborted = str(exc)
    finally:
        summary.total = job.files
        summary.seconds = time.monotonic() - start
        ray.shutdown()
        if server is not None:
            server.stop()
    print(summary.text(output.uri), file=sys.stderr)
    return 0 if summary.finished else 1
