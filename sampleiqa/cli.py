"""`sampleiqa` console entry point. Each subcommand wires library calls; the work lives in
the stage packages (build/, clients/, training/, perf/). Heavy imports happen inside the
handlers, so `sampleiqa score` never imports torch."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
import time
from pathlib import Path

from . import __version__

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES = REPO_ROOT / "samples"


def _add_tls(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("TLS (gRPC)")
    g.add_argument("--ssl", action="store_true", help="connect with TLS")
    g.add_argument("--ssl-root-certs", help="CA certificate file that signed the server's certificate")
    g.add_argument("--ssl-key", help="client private key (mutual TLS)")
    g.add_argument("--ssl-cert", help="client certificate chain (mutual TLS)")


def _tls(args):
    from sampleiqa.clients.protocol import TLSConfig

    if not (args.ssl or args.ssl_root_certs or args.ssl_key or args.ssl_cert):
        return None
    return TLSConfig(args.ssl_root_certs, args.ssl_key, args.ssl_cert)


def _shortest(path: Path) -> Path:
    """`samples` rather than /abs/path/samples when run from the checkout (rows are shorter)."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def cmd_score(args) -> int:
    from sampleiqa.clients import ScoringClient
    from sampleiqa.clients.bulk import check_output, discover, score_files
    from sampleiqa.clients.server import ServerError, TritonServer

    fmt = args.format or ("jsonl" if str(args.out).endswith(".jsonl") else "csv")
    try:
        check_output(args.out, args.resume)  # before anything slow
        paths = discover(args.paths or [_shortest(SAMPLES)], recursive=args.recursive)
    except (OSError, ValueError) as exc:
        print(f"sampleiqa score: {exc}", file=sys.stderr)
        return 2
    if not paths:
        print("sampleiqa score: no image files found", file=sys.stderr)
        return 2
    server = None
    urls = args.url
    if not urls:
        server = TritonServer(args.repository, log_file=args.server_log)
        print(f"starting the embedded Triton server ({args.repository}) ...", file=sys.stderr)
        try:
            server.start()
        except ServerError as exc:
            print(f"sampleiqa score: the embedded server did not start: {exc}", file=sys.stderr)
            return 1
        urls = [server.url]
    try:
        with ScoringClient(urls, timeout_s=args.timeout, tls=_tls(args)) as client:
            summary = score_files(client, paths, args.out, fmt=fmt, resume=args.resume,
                                  concurrency=args.concurrency, batch_size=args.batch_size)
    finally:
        if server is not None:
            server.stop()
    print(summary.text(Path(args.out)), file=sys.stderr)
    return 1 if summary.aborted else 0


def cmd_serve(args) -> int:
    from sampleiqa.clients.server import ServerError, TritonServer

    server = TritonServer(args.repository, grpc_port=args.grpc_port, http_port=args.http_port or None,
                          metrics_port=args.metrics_port or None, host=args.host, log_file=args.log_file,
                          extra_args=args.triton_args)
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


def cmd_build_repository(args) -> int:
    from sampleiqa.build.repository import build_repository
    from sampleiqa.build.triton_config import RepositorySettings

    settings = RepositorySettings(target=args.target, max_batch_size=args.max_batch,
                                  preprocess_instances=args.preprocess_instances,
                                  scorer_instances=args.scorer_instances, ort_threads=args.ort_threads)
    out = Path(args.out)
    onnx_path, engine = args.onnx, args.engine
    with tempfile.TemporaryDirectory(prefix="sampleiqa-build-") as scratch:
        if onnx_path is None and engine is None:
            onnx_path = Path(scratch) / "scorer.onnx"
            _export(args, onnx_path)
        if args.target == "gpu-trt" and engine is None:
            from sampleiqa.build.tensorrt_engine import build_engine

            engine = build_engine(onnx_path, Path(scratch) / "model.plan", min_batch=args.min_batch,
                                  opt_batch=args.opt_batch, max_batch=args.max_batch, timing_cache=args.timing_cache)
        build_repository(out, settings, onnx_path=onnx_path, engine_path=engine, vendor=not args.no_vendor)
    print(f"wrote the {args.target} repository to {out}", file=sys.stderr)
    return 0


def _export(args, onnx_path: Path) -> None:
    from sampleiqa.build.export_onnx import export_checkpoint, export_onnx

    if args.checkpoint:
        export_checkpoint(args.checkpoint, onnx_path)
        return
    if not args.untrained:
        raise SystemExit("give --checkpoint, --onnx or --engine (or --untrained MODEL for a random-weight model)")
    import torch

    from sampleiqa.training.models import create_model

    torch.manual_seed(args.seed)
    logging.getLogger("sampleiqa").warning("exporting an UNTRAINED %s (seed %d): scores are meaningless",
                                           args.untrained, args.seed)
    export_onnx(create_model(args.untrained).eval(), onnx_path)


def cmd_export_onnx(args) -> int:
    from sampleiqa.build.export_onnx import export_checkpoint

    export_checkpoint(args.checkpoint, args.out, opset=args.opset, fp16=args.fp16)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def cmd_build_engine(args) -> int:
    from sampleiqa.build.tensorrt_engine import build_engine

    build_engine(args.onnx, args.out, min_batch=args.min_batch, opt_batch=args.opt_batch,
                 max_batch=args.max_batch, timing_cache=args.timing_cache)
    return 0


def cmd_perf(args) -> int:
    from sampleiqa.perf.harness import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    from sampleiqa.clients.server import DEFAULT_REPOSITORY

    parser = argparse.ArgumentParser(prog="sampleiqa", description="Portrait image quality scoring")
    parser.add_argument("--version", action="version", version=f"sampleiqa {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("score", help="score files and folders into one CSV/JSONL row per file")
    p.add_argument("paths", nargs="*", help=f"files or folders (default: the bundled {SAMPLES.name}/ folder)")
    p.add_argument("--url", action="append", help="server HOST:PORT (repeat to spread load); "
                                                  "default: start the embedded CPU server for this run")
    p.add_argument("--out", default="scores.csv")
    p.add_argument("--format", choices=["csv", "jsonl"], help="default: from --out's suffix")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    p.add_argument("--batch-size", type=int, default=1, help="images per request")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    p.add_argument("--resume", action="store_true", help="skip files already in --out")
    p.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    p.add_argument("--repository", default=DEFAULT_REPOSITORY, help="model repository for the embedded server")
    p.add_argument("--server-log", default=None, help="embedded server log file")
    _add_tls(p)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("serve", help="run the embedded Triton server until Ctrl-C / SIGTERM")
    p.add_argument("--repository", default=DEFAULT_REPOSITORY)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--http-port", type=int, default=0, help="0: HTTP off")
    p.add_argument("--metrics-port", type=int, default=0, help="0: metrics off")
    p.add_argument("--log-file", default=None)
    p.add_argument("triton_args", nargs=argparse.REMAINDER, help="after --: extra tritonserver flags")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("build-repository", help="assemble a Triton model repository for a target")
    p.add_argument("--target", choices=["cpu", "gpu-trt", "gpu-onnx"], default="cpu")
    p.add_argument("--out", required=True)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="training checkpoint (.pt)")
    src.add_argument("--onnx", help="exported scorer (.onnx)")
    src.add_argument("--engine", help="built TensorRT engine (.plan, with its .json profile)")
    src.add_argument("--untrained", metavar="MODEL", help="random weights of a named config (smoke tests only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--min-batch", type=int, default=1)
    p.add_argument("--opt-batch", type=int, default=16)
    p.add_argument("--timing-cache", default=None)
    p.add_argument("--preprocess-instances", type=int, default=2)
    p.add_argument("--scorer-instances", type=int, default=1)
    p.add_argument("--ort-threads", type=int, default=2)
    p.add_argument("--no-vendor", action="store_true",
                   help="do not copy the preprocessing package into the repository (it must be installed)")
    p.set_defaults(func=cmd_build_repository)

    p = sub.add_parser("export-onnx", help="export a checkpoint's scorer to ONNX")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--fp16", action="store_true")
    p.set_defaults(func=cmd_export_onnx)

    p = sub.add_parser("build-engine", help="build a TensorRT FP16 engine (GPU host with TensorRT)")
    p.add_argument("--onnx", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--min-batch", type=int, default=1)
    p.add_argument("--opt-batch", type=int, default=16)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--timing-cache", default=None)
    p.set_defaults(func=cmd_build_engine)

    from sampleiqa.perf.harness import add_arguments as add_perf_arguments

    p = sub.add_parser("perf", help="perf_analyzer sweeps, in-process baselines and a report in perf/results/")
    add_perf_arguments(p)
    p.set_defaults(func=cmd_perf)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if getattr(args, "triton_args", None) and args.triton_args[0] == "--":
        args.triton_args = args.triton_args[1:]
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
