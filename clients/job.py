"""What one `sampleiqa score` run does, as data: a `ScoreJob`, made once from the command's
flags by `job_from_args`, which also refuses nonsense (numbers, a format the engine cannot
write) before anything starts. Below this module nothing reads the argparse Namespace: the
engines (local_engine.py, ray_driver.py), the shared flow (engine.py) and the endpoints
(endpoints.py) take the job's fields."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sampleiqa.paths import SAMPLES

from .protocol import TLSConfig

SHARD_FORMATS = ("parquet", "csv", "jsonl")  # what a Ray run's shards may hold


class JobError(ValueError):
    """The flags ask for something no engine can do: said, exit 2, before anything starts."""


@dataclass(frozen=True)
class ScoreJob:
    """Every field comes from the flags (job_from_args): their defaults are the parser's alone."""

    engine: str  # "local" (this process) or "ray" (a Ray cluster)
    inputs: tuple[str, ...]  # files, folders (and, on Ray, URIs); the bundled samples when none
    out: str  # local: one CSV/JSONL file; Ray: a folder or URI of shards
    format: str  # csv | jsonl (| parquet on Ray)
    recursive: bool
    resume: bool
    overwrite: bool
    urls: tuple[str, ...]  # servers; none: an embedded server started for the run
    repository: str | Path  # the embedded server's model repository
    server_log: str | None  # the embedded server's log file
    tls: TLSConfig | None
    timeout_s: float  # per request
    retry_seconds: float  # an unreachable server is retried this long
    concurrency: int  # requests in flight (per actor on Ray)
    batch_size: int  # images per request
    shard_size: int  # Ray: files per shard
    ray_address: str | None  # Ray: the cluster to join; None: a local one for the run
    ray_actors: int
    ray_actor_cpus: float


def job_from_args(args) -> ScoreJob:
    """The job of `sampleiqa score ARGS`; JobError when the flags cannot make one."""
    if problem := bad_numbers(args):
        raise JobError(problem)
    ray = args.engine == "ray"
    if ray:
        out = args.out or "scores"
        fmt = args.format or next((f for f in SHARD_FORMATS if out.rstrip("/").endswith("." + f)), "parquet")
        default = str(SAMPLES)  # absolute: Ray workers may run elsewhere
    else:
        out = args.out or "scores.csv"
        fmt = args.format or ("jsonl" if str(args.out).endswith(".jsonl") else "csv")
        if fmt == "parquet":
            raise JobError("--format parquet writes shards: it needs --engine ray")
        default = str(_shortest(SAMPLES))
    return ScoreJob(
        engine=args.engine,
        inputs=tuple(str(p) for p in args.paths) or (default,),
        out=str(out),
        format=fmt,
        recursive=args.recursive,
        resume=args.resume,
        overwrite=args.overwrite,
        urls=tuple(args.url or ()),
        repository=args.repository,
        server_log=args.server_log,
        tls=tls_config(args),
        timeout_s=args.timeout,
        retry_seconds=args.retry_seconds,
        concurrency=args.concurrency,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        ray_address=args.ray_address,
        ray_actors=args.ray_actors,
        ray_actor_cpus=args.ray_actor_cpus,
    )


def bad_numbers(args) -> str:
    """What is wrong with the numeric flags, or ''."""
    for flag, value in (
        ("--concurrency", args.concurrency),
        ("--batch-size", args.batch_size),
        ("--shard-size", args.shard_size),
        ("--ray-actors", args.ray_actors),
    ):
        if value < 1:
            return f"{flag} must be at least 1 (got {value})"
    for flag, value in (("--timeout", args.timeout), ("--ray-actor-cpus", args.ray_actor_cpus)):
        if not value >= 0:  # NaN too
            return f"{flag} cannot be negative (got {value:g})"
    return ""


def tls_config(args) -> TLSConfig | None:
    """The client's TLS from --tls/--tls-ca/--tls-key/--tls-cert, or None."""
    if not (args.ssl or args.ssl_root_certs or args.ssl_key or args.ssl_cert):
        return None
    return TLSConfig(args.ssl_root_certs, args.ssl_key, args.ssl_cert)


def _shortest(path: Path) -> Path:
    """`samples` rather than /abs/path/samples when run from the checkout (rows are shorter)."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path
