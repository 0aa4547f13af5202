"""`sampleiqa score` and `sampleiqa serve`: their flags and what they run. Light at import
(the CLI builds every parser); the work is in bulk.py and server.py.

(Over 300 lines: the flags of `score` and `serve` and their runs; one engine interface is issue 26's part 4.)
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from sampleiqa.commands import Command
from sampleiqa.paths import DEFAULT_REPOSITORY, SAMPLES
from sampleiqa.runtime import environment

from .endpoints import server_urls, tls_config


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


def _add_serve_security(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("security (see docs/security.md)")
    g.add_argument(
        "--admin-key",
        default=None,
        metavar="KEY",
        help="key for the model-repository/shared-memory/trace/logging APIs (default: "
        "$SAMPLEIQA_ADMIN_KEY, else random per start); inference never needs it",
    )
    g.add_argument("--unrestricted", action="store_true", help="do not restrict those APIs (not advised)")
    g.add_argument("--tls-cert", metavar="CERT.pem", help="server certificate (PEM): turns on gRPC TLS")
    g.add_argument("--tls-key", metavar="KEY.pem", help="server private key (PEM)")
    g.add_argument("--tls-ca", metavar="CA.pem", help="CA that signs client certificates (with --tls-mutual)")
    g.add_argument("--tls-mutual", action="store_true", help="require client certificates signed by --tls-ca")
    g.add_argument("--max-bytes", type=int, metavar="N", help="largest accepted image file (default 64 MiB)")
    g.add_argument("--max-pixels", type=int, metavar="N", help="largest accepted width x height (default 100 M)")


def _server_security(args) -> dict:
    """TritonServer keyword arguments from the serve security flags."""
    from sampleiqa.server import ServerError, ServerTLS

    tls = None
    if args.tls_cert or args.tls_key or args.tls_mutual:
        if not (args.tls_cert and args.tls_key):
            raise ServerError("TLS needs both --tls-cert and --tls-key")
        tls = ServerTLS(args.tls_cert, args.tls_key, args.tls_ca, args.tls_mutual)
    env = {
        k: str(v)
        for k, v in ((environment.MAX_BYTES, args.max_bytes), (environment.MAX_PIXELS, args.max_pixels))
        if v is not None
    }
    return dict(tls=tls, admin_key=args.admin_key, restrict=not args.unrestricted, env=env)


def _shortest(path: Path) -> Path:
    """`samples` rather than /abs/path/samples when run from the checkout (rows are shorter)."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


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


def cmd_score(args) -> int:
    if problem := bad_numbers(args):
        print(f"sampleiqa score: {problem}", file=sys.stderr)
        return 2
    if args.engine == "ray":
        from .ray_commands import score_on_ray

        return score_on_ray(args)
    from .lock import LocalLock, OutputBusy
    from .rows import check_output

    fmt = args.format or ("jsonl" if str(args.out).endswith(".jsonl") else "csv")
    if fmt == "parquet":
        print("sampleiqa score: --format parquet writes shards: it needs --engine ray", file=sys.stderr)
        return 2
    out = Path(args.out or "scores.csv")
    try:
        check_output(out, resume=True)  # writable: before anything slow
        lock = LocalLock(out).acquire(str(out))  # one writer: before the server starts
    except (OSError, OutputBusy) as exc:
        print(f"sampleiqa score: {exc}", file=sys.stderr)
        return 2
    try:
        return _score_locally(args, out, fmt)
    finally:
        lock.release()


def _score_locally(args, out: Path, fmt: str) -> int:
    from sampleiqa.clients import RetryPolicy, ScoringClient
    from sampleiqa.clients.bulk import score_files
    from sampleiqa.clients.files import discover
    from sampleiqa.clients.rows import check_output, remaining

    try:
        paths = discover(args.paths or [_shortest(SAMPLES)], recursive=args.recursive)
        if not paths:  # before --overwrite drops anything
            print("sampleiqa score: no image files found", file=sys.stderr)
            return 2
        if args.overwrite:
            out.unlink(missing_ok=True)
        elif not args.resume and out.is_file() and out.stat().st_size > 0:
            left = remaining(out, fmt, paths)
            if not left:  # the same command run again: nothing to do, and nothing to mix up
                print(
                    f"sampleiqa score: all {len(paths)} files already have a row in {out}; nothing to do "
                    "(--overwrite scores them again)",
                    file=sys.stderr,
                )
                return 0
            check_output(out, resume=False)
    except (OSError, ValueError) as exc:
        print(f"sampleiqa score: {exc}", file=sys.stderr)
        return 2
    server, urls = server_urls(args)
    if not urls:
        return 1
    try:
        retry = RetryPolicy(seconds=args.retry_seconds)
        with ScoringClient(urls, timeout_s=args.timeout, tls=tls_config(args), retry=retry) as client:
            summary = score_files(
                client,
                paths,
                out,
                fmt=fmt,
                resume=args.resume,
                concurrency=args.concurrency,
                batch_size=args.batch_size,
            )
    except (OSError, ValueError) as exc:  # --resume of a file that is not a score output
        print(f"sampleiqa score: {exc}", file=sys.stderr)
        return 2
    finally:
        if server is not None:
            server.stop()
    print(summary.text(out), file=sys.stderr)
    return 0 if summary.finished else 1


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repository", default=DEFAULT_REPOSITORY, metavar="DIR", help="model repository to serve")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--grpc-port", type=int, default=8001, metavar="PORT", help="gRPC port")
    p.add_argument("--http-port", type=int, default=0, metavar="PORT", help="0: HTTP off")
    p.add_argument("--metrics-port", type=int, default=0, metavar="PORT", help="0: metrics off")
    p.add_argument(
        "--log-file",
        default=None,
        metavar="FILE",
        help="Triton log (default: ~/.cache/sampleiqa/triton-PORT.log, 0600)",
    )
    _add_serve_security(p)
    p.add_argument("triton_args", nargs=argparse.REMAINDER, help="after --: extra tritonserver flags")


def cmd_serve(args) -> int:
    from sampleiqa.server import ServerError, TritonServer

    try:
        server = TritonServer(
            args.repository,
            grpc_port=args.grpc_port,
            http_port=args.http_port or None,
            metrics_port=args.metrics_port or None,
            host=args.host,
            log_file=args.log_file,
            extra_args=args.triton_args,
            **_server_security(args),
        )
    except ServerError as exc:
        print(f"sampleiqa serve: {exc}", file=sys.stderr)
        return 2
    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server.start()
    except ServerError as exc:
        print(f"sampleiqa serve: {exc}", file=sys.stderr)
        return 1
    print(f"SampleIQA serving on grpc://{server.url} (log: {server.log_file}); Ctrl-C stops", file=sys.stderr)
    while stop["signal"] is None and server.running():
        time.sleep(0.2)
    code = 0 if stop["signal"] is not None else 1
    if code:
        print(f"Triton exited on its own:\n{server.log_tail()}", file=sys.stderr)
    server.stop()
    return code


COMMANDS = {
    "score": Command("score files and folders into one CSV/JSONL row per file", add_score_arguments, cmd_score),
    "serve": Command("run the embedded Triton server until Ctrl-C / SIGTERM", add_serve_arguments, cmd_serve),
}
