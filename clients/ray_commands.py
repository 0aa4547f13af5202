"""`sampleiqa score --engine ray`: the command's checks, then the Ray run (ray_engine.py).

The same promises as the local command: a rerun of a finished run has nothing to do (exit
0); an output with rows needs --resume or --overwrite; exit 1 with STOPPED or NOT FINISHED
when rows are missing or to retry, and --resume scores exactly those.
"""

from __future__ import annotations

import sys
import time

from sampleiqa.paths import SAMPLES

from .bulk import Summary
from .endpoints import server_urls, tls_config


def score_on_ray(args) -> int:
    try:
        import pyarrow.fs  # noqa: F401  (imported lazily below: a serve-only install lacks both)
        import ray  # noqa: F401

        from .ray_engine import plan, todo_shards
        from .shards import FORMATS, Job, Output
    except ImportError as exc:
        print(f"sampleiqa score: --engine ray needs the ray extra (pip install 'sampleiqa[ray]'): {exc}",
              file=sys.stderr)
        return 2
    out = args.out or "scores"
    fmt = args.format or next((f for f in FORMATS if out.rstrip("/").endswith("." + f)), "parquet")
    inputs = [str(p) for p in args.paths] or [str(SAMPLES)]
    wanted = Job(inputs, args.recursive, fmt, args.shard_size)
    refused = FileExistsError(f"{out} already has rows: pass --resume to continue it, --overwrite to start again, "
                              "or choose another --out")
    try:
        output = Output(out)
        if args.overwrite:
            output.clear()
        # Rows without --resume: only the same run, finished, is fine (nothing to do).
        must_be_done = not (args.resume or args.overwrite) and output.has_rows()
        if must_be_done and not ((existing := output.job()) and existing.same_inputs(wanted)):
            raise refused
        job = plan(output, wanted)
        if not job.files:
            print("sampleiqa score: no image files found", file=sys.stderr)
            return 2
        todo, final_rows = todo_shards(output, job)
        if must_be_done and todo:
            raise refused
        output.drop_partial_writes()
    except (OSError, ValueError) as exc:
        print(f"sampleiqa score: {exc}", file=sys.stderr)
        return 2
    if not todo:
        print(f"sampleiqa score: all {job.files} files already have a row in {out}; nothing to do "
              "(--overwrite scores them again)", file=sys.stderr)
        return 0
    return _run(args, output, job, todo, Summary(total=job.files, skipped=final_rows))


def _run(args, output, job, todo: list[int], summary: Summary) -> int:
    import ray

    from .ray_engine import Scoring, connect, run_shards

    server, urls = server_urls(args)
    if not urls:
        return 1
    scoring = Scoring(tuple(urls), args.timeout, args.retry_seconds, tls_config(args), args.concurrency,
                      args.batch_size)
    start = time.monotonic()
    try:
        connect(args.ray_address)
        print(f"sampleiqa score: Ray ready in {time.monotonic() - start:.1f}s; scoring {len(todo)} shards "
              f"with {args.ray_actors} actors over {len(urls)} endpoint(s)", file=sys.stderr)
        start = time.monotonic()  # the rate in the summary is the scoring's, as the local CLI's
        run_shards(output.uri, job.format, todo, scoring, args.ray_actors, args.ray_actor_cpus, summary)
    except KeyboardInterrupt:
        summary.aborted = "interrupted"
    finally:
        summary.seconds = time.monotonic() - start
        ray.shutdown()
        if server is not None:
            server.stop()
    print(summary.text(output.uri), file=sys.stderr)
    return 0 if summary.finished else 1
