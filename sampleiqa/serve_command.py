"""`sampleiqa serve`: the embedded Triton launcher (server.py) as a command, its flags and
its run until Ctrl-C / SIGTERM. On the ground floor beside the launcher: deploy/ parses its
manifests' container arguments with `add_serve_arguments`, and serving needs no stage."""

from __future__ import annotations

import argparse
import signal
import sys
import time

from sampleiqa.commands import Command
from sampleiqa.paths import DEFAULT_REPOSITORY
from sampleiqa.runtime import environment


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
    "serve": Command("run the embedded Triton server until Ctrl-C / SIGTERM", add_serve_arguments, cmd_serve),
}
