"""`sampleiqa score`: its flags, and its run: the flags made into one job (job.py), run by
the engine it names (local_engine.py, ray_driver.py) through the one flow of engine.py.
Light at import (the CLI builds every parser). `sampleiqa serve` is beside the launcher, in
sampleiqa/serve_command.py."""

from __future__ import annotations

import argparse
import sys

from sampleiqa.commands import Command
from sampleiqa.paths import DEFAULT_REPOSITORY, SAMPLES


def _add_tls(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("TLS (gRPC)")
    g.add_argument("--tls", "--ssl", dest="ssl", action="store_true", help="connect with TLS")
    g.add_argument(
        "--tls-ca",
        "--ssl-root-certs",
        dest="ssl_root_certs",
        metavar="CA.pem",
        help="CA certificate file that signed the server's certificate",
    )
    g.add_argument("--tls-key", "--ssl-key", dest="ssl_key", metavar="KEY.pem", help="client private key (mutual TLS)")
    g.add_argument(
        "--tls-cert", "--ssl-cert", dest="ssl_cert", metavar="CERT.pem", help="client certificate chain (mutual TLS)"
    )


def add_score_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="*", help=f"files or folders (default: the bundled {SAMPLES.name}/ folder)")
    p.add_argument(
        "--url",
        action="append",
        metavar="HOST:PORT",
        help="server HOST:PORT (repeat to spread load); default: start the embedded CPU server for this run",
    )
    p.add_argument(
        "--out",
        metavar="FILE",
        help="output rows: a file (CSV, or JSONL by suffix; default scores.csv); "
        "with --engine ray a folder or URI of shards (default scores/)",
    )
    p.add_argument(
        "--format",
        choices=["csv", "jsonl", "parquet"],
        help="default: from --out's suffix; parquet (the default) only with --engine ray",
    )
    p.add_argument(
        "--concurrency", type=int, default=8, metavar="N", help="requests in flight (per actor with --engine ray)"
    )
    p.add_argument("--batch-size", type=int, default=1, metavar="N", help="images per request")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S", help="seconds per request")
    p.add_argument(
        "--retry-seconds",
        type=float,
        default=60.0,
        metavar="S",
        help="keep retrying an unreachable server this long (outlasts a restart) before stopping",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="skip files already in --out, and score again those whose row says [server], [timeout] or [storage]",
    )
    p.add_argument("--overwrite", action="store_true", help="start --out afresh, dropping the rows it has")
    p.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    p.add_argument(
        "--repository", default=DEFAULT_REPOSITORY, metavar="DIR", help="model repository for the embedded server"
    )
    p.add_argument(
        "--server-log",
        default=None,
        metavar="FILE",
        help="embedded server log file (default: ~/.cache/sampleiqa/triton-PORT.log)",
    )
    _add_tls(p)
    _add_distributed_arguments(p)


def _add_distributed_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("distributed (--engine ray: docs/cluster.md)")
    g.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: this process; ray: a Ray cluster (pip install sampleiqa[ray]), inputs may be URIs",
    )
    g.add_argument(
        "--ray-address", metavar="auto|HOST:PORT", help="Ray cluster to join (default: a local one for this run)"
    )
    g.add_argument("--ray-actors", type=int, default=2, metavar="N", help="scoring actors (gRPC clients)")
    g.add_argument("--ray-actor-cpus", type=float, default=1.0, metavar="N", help="CPUs Ray reserves per actor")
    g.add_argument(
        "--shard-size",
        type=int,
        default=200,
        metavar="N",
        help="files per output shard: the unit of work, retry and resume",
    )


def cmd_score(args) -> int:
    from .engine import run
    from .job import JobError, job_from_args

    try:
        job = job_from_args(args)
    except JobError as exc:
        print(f"sampleiqa score: {exc}", file=sys.stderr)
        return 2
    if job.engine == "ray":
        from .ray_driver import RayEngine as engine
    else:
        from .local_engine import LocalEngine as engine
    return run(engine(job))


COMMANDS = {
    "score": Command("score files and folders into one CSV/JSONL row per file", add_score_arguments, cmd_score),
}
