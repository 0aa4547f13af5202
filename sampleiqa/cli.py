"""`sampleiqa` console entry point. Each subcommand wires library calls; the work lives in
the stage packages (build/, clients/, training/, perf/). Heavy imports happen inside the
handlers, so `sampleiqa score` never imports torch."""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from . import __version__

from .paths import SAMPLES


def _add_tls(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("TLS (gRPC)")
    g.add_argument("--tls", "--ssl", dest="ssl", action="store_true", help="connect with TLS")
    g.add_argument("--tls-ca", "--ssl-root-certs", dest="ssl_root_certs",
                   help="CA certificate file that signed the server's certificate")
    g.add_argument("--tls-key", "--ssl-key", dest="ssl_key", help="client private key (mutual TLS)")
    g.add_argument("--tls-cert", "--ssl-cert", dest="ssl_cert", help="client certificate chain (mutual TLS)")


def _tls(args):
    from sampleiqa.clients.protocol import TLSConfig

    if not (args.ssl or args.ssl_root_certs or args.ssl_key or args.ssl_cert):
        return None
    return TLSConfig(args.ssl_root_certs, args.ssl_key, args.ssl_cert)


def _add_serve_security(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("security (see README: Bad input, faults and security)")
    g.add_argument("--admin-key", default=None,
                   help="key for the model-repository/shared-memory/trace/logging APIs (default: "
                        "$SAMPLEIQA_ADMIN_KEY, else random per start); inference never needs it")
    g.add_argument("--unrestricted", action="store_true", help="do not restrict those APIs (not advised)")
    g.add_argument("--tls-cert", help="server certificate (PEM): turns on gRPC TLS")
    g.add_argument("--tls-key", help="server private key (PEM)")
    g.add_argument("--tls-ca", help="CA that signs client certificates (with --tls-mutual)")
    g.add_argument("--tls-mutual", action="store_true", help="require client certificates signed by --tls-ca")
    g.add_argument("--max-bytes", type=int, help="largest accepted image file (default 64 MiB)")
    g.add_argument("--max-pixels", type=int, help="largest accepted width x height (default 100 M)")


def _server_security(args) -> dict:
    """TritonServer keyword arguments from the serve security flags."""
    from sampleiqa.clients.server import ServerError, ServerTLS

    tls = None
    if args.tls_cert or args.tls_key or args.tls_mutual:
        if not (args.tls_cert and args.tls_key):
            raise ServerError("TLS needs both --tls-cert and --tls-key")
        tls = ServerTLS(args.tls_cert, args.tls_key, args.tls_ca, args.tls_mutual)
    env = {k: str(v) for k, v in (("SAMPLEIQA_MAX_BYTES", args.max_bytes), ("SAMPLEIQA_MAX_PIXELS", args.max_pixels))
           if v is not None}
    return dict(tls=tls, admin_key=args.admin_key, restrict=not args.unrestricted, env=env)


def _shortest(path: Path) -> Path:
    """`samples` rather than /abs/path/samples when run from the checkout (rows are shorter)."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def cmd_score(args) -> int:
    from sampleiqa.clients import RetryPolicy, ScoringClient
    from sampleiqa.clients.bulk import score_files
    from sampleiqa.clients.files import discover
    from sampleiqa.clients.rows import check_output, remaining
    from sampleiqa.clients.server import start_embedded

    fmt = args.format or ("jsonl" if str(args.out).endswith(".jsonl") else "csv")
    out = Path(args.out)
    try:
        check_output(out, resume=True)  # writable: before anything slow
        paths = discover(args.paths or [_shortest(SAMPLES)], recursive=args.recursive)
        if args.overwrite:
            out.unlink(missing_ok=True)
        elif not args.resume and out.is_file() and out.stat().st_size > 0:
            left = remaining(out, fmt, paths)
            if not left:  # the same command run again: nothing to do, and nothing to mix up
                print(f"sampleiqa score: all {len(paths)} files already have a row in {out}; nothing to do "
                      "(--overwrite scores them again)", file=sys.stderr)
                return 0
            check_output(out, resume=False)
    except (OSError, ValueError) as exc:
        print(f"sampleiqa score: {exc}", file=sys.stderr)
        return 2
    if not paths:
        print("sampleiqa score: no image files found", file=sys.stderr)
        return 2
    server = None
    urls = args.url
    if urls:
        _say_if_waiting(urls, args)
    else:
        server = start_embedded(args.repository, "score", log_file=args.server_log)
        if server is None:
            return 1
        urls = [server.url]
    try:
        retry = RetryPolicy(seconds=args.retry_seconds)
        with ScoringClient(urls, timeout_s=args.timeout, tls=_tls(args), retry=retry) as client:
            summary = score_files(client, paths, args.out, fmt=fmt, resume=args.resume,
                                  concurrency=args.concurrency, batch_size=args.batch_size)
    finally:
        if server is not None:
            server.stop()
    print(summary.text(Path(args.out)), file=sys.stderr)
    return 0 if summary.finished else 1


def _say_if_waiting(urls: list[str], args) -> None:
    """A server that does not answer at once: say so now, not after --retry-seconds of silence."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(urls[0], **(_tls(args).client_kwargs() if _tls(args) else {})) as c:
        try:
            if c.is_server_ready(client_timeout=2):
                return
        except Exception:  # refused, unreachable, TLS mismatch: the client's retries will tell which
            pass
    until = time.strftime("%H:%M:%S", time.localtime(time.time() + args.retry_seconds))
    print(f"sampleiqa score: no ready server at {urls[0]} yet; retrying until {until} "
          f"(--retry-seconds {args.retry_seconds:g})", file=sys.stderr)


def cmd_serve(args) -> int:
    from sampleiqa.clients.server import ServerError, TritonServer

    try:
        server = TritonServer(args.repository, grpc_port=args.grpc_port, http_port=args.http_port or None,
                              metrics_port=args.metrics_port or None, host=args.host, log_file=args.log_file,
                              extra_args=args.triton_args, **_server_security(args))
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


def cmd_build_repository(args) -> int:
    from sampleiqa.build.repository import build_repository
    from sampleiqa.build.triton_config import RepositorySettings

    settings = RepositorySettings(target=args.target, max_batch_size=args.max_batch,
                                  preprocess_instances=args.preprocess_instances,
                                  scorer_instances=args.scorer_instances, ort_threads=args.ort_threads,
                                  torch_device=args.torch_device)
    out = Path(args.out)
    onnx_path, engine = args.onnx, args.engine
    if args.target == "gpu-torch":
        if not args.checkpoint:
            print("sampleiqa build-repository: --target gpu-torch needs --checkpoint", file=sys.stderr)
            return 2
        build_repository(out, settings, checkpoint=args.checkpoint, vendor=not args.no_vendor)
        print(f"wrote the {args.target} repository to {out}", file=sys.stderr)
        return 0
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


def cmd_train(args) -> int:
    import faulthandler

    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints every thread's stack of a stuck run
    from sampleiqa.training.config import load_config
    from sampleiqa.training.loop import train

    overrides = {"out_dir": args.out_dir} if args.out_dir else {}
    result = train(load_config(args.config, overrides), resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"best validation SROCC {result['best_srocc']:.4f}; checkpoints in {result['out_dir']}", file=sys.stderr)
    return 0


def cmd_cache(args) -> int:
    from sampleiqa.training.data.cache import default_root, list_caches, prune_caches

    root = Path(args.root) if args.root else default_root()
    if args.prune_older_than is not None:
        doomed = prune_caches(args.prune_older_than, root, dry_run=args.dry_run)
        verb = "would delete" if args.dry_run else "deleted"
        for e in doomed:
            print(f"{verb} {e.folder} ({e.dataset}, {e.bytes / 1e9:.2f} GB)")
        print(f"{verb} {len(doomed)} cache(s), {sum(e.bytes for e in doomed) / 1e9:.2f} GB")
        return 0
    entries = list_caches(root)
    print(f"{len(entries)} cache(s) under {root}, {sum(e.bytes for e in entries) / 1e9:.2f} GB")
    for e in entries:
        state = "" if e.complete else "  (incomplete: a killed or running build)"
        print(f"  {e.folder.name}  {e.dataset:24s} {e.images:6d} images {e.bytes / 1e9:6.2f} GB  "
              f"last used {time.strftime('%Y-%m-%d %H:%M', time.localtime(e.last_used))}{state}")
    return 0


def _data_spec(pairs: list[str]) -> dict:
    spec = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--data takes KEY=VALUE pairs, not {pair!r}")
        spec[key.replace("-", "_")] = value
    return spec


def cmd_evaluate(args) -> int:
    import json

    from sampleiqa.training import evaluate as ev
    from sampleiqa.training.data.datasets import create_dataset
    from sampleiqa.training.metrics import format_result

    dataset = create_dataset(_data_spec(args.data))
    print(dataset.describe(), file=sys.stderr)
    if dataset.missing:
        raise SystemExit(f"missing images: {dataset.describe()}")
    if args.url:
        name, (scores, errors) = f"served ensemble at {', '.join(args.url)}", ev.predict_server(args.url, dataset, args.concurrency)
    elif args.checkpoint:
        name, (scores, errors) = f"checkpoint {args.checkpoint}", ev.predict_checkpoint(args.checkpoint, dataset)
    else:
        name, (scores, errors) = f"onnx {os.path.relpath(args.onnx)}", ev.predict_onnx(args.onnx, dataset)
    results = [ev.summarise(name, dataset, scores, errors)]
    if args.baselines:
        from sampleiqa.training.baselines import run_baselines

        train_set = create_dataset(_data_spec(args.baseline_train))
        for bname, pred in run_baselines(train_set, dataset).items():
            unreadable = {str(s.path): "unreadable" for s, p in zip(dataset.samples, pred) if math.isnan(p)}
            results.append(ev.summarise(bname, dataset, pred, unreadable))
    for r in results:
        print(f"{r['model']} on {r['dataset']} ({r['failed']} failed)\n{format_result(r)}")
        for path, err in list(r["errors"].items())[:10]:
            print(f"  failed: {path}: {err}", file=sys.stderr)
    if args.report:
        out = Path(args.report)
        out.parent.mkdir(parents=True, exist_ok=True)
        command = "sampleiqa " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("sampleiqa") else "sampleiqa evaluate ..."
        out.write_text(f"# {dataset.name}\n\n" + ev.report_markdown(results, command))
        out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
        print(f"wrote {out}", file=sys.stderr)
    return 0


def cmd_perf(args) -> int:
    from sampleiqa.perf.harness import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    from sampleiqa.paths import DEFAULT_REPOSITORY

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
    p.add_argument("--retry-seconds", type=float, default=60.0,
                   help="keep retrying an unreachable server this long (outlasts a restart) before stopping")
    p.add_argument("--resume", action="store_true",
                   help="skip files already in --out, and score again those whose row says [server] or [timeout]")
    p.add_argument("--overwrite", action="store_true", help="start --out afresh, dropping the rows it has")
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
    _add_serve_security(p)
    p.add_argument("triton_args", nargs=argparse.REMAINDER, help="after --: extra tritonserver flags")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("train", help="train a scorer from a TOML config (torchrun for several GPUs/nodes)")
    p.add_argument("config", help="e.g. training/configs/biq2021_default.toml")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/last.pt")
    p.add_argument("--out-dir", help="override the config's out_dir")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("cache", help="list the training crop caches, or prune those not used for a while")
    p.add_argument("--root", help="cache folder (default: $SAMPLEIQA_CACHE or ~/.cache/sampleiqa/crops)")
    p.add_argument("--prune-older-than", type=float, metavar="DAYS",
                   help="delete caches not used for DAYS days (0: all), and leftovers of killed builds")
    p.add_argument("--dry-run", action="store_true", help="with --prune-older-than: only say what would go")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("evaluate", help="PLCC/SROCC/KRCC of a model on a labelled set (per scene where scenes exist)")
    model = p.add_mutually_exclusive_group()
    model.add_argument("--checkpoint", help="training checkpoint (.pt)")
    model.add_argument("--onnx", default=str(Path(DEFAULT_REPOSITORY) / "scorer" / "1" / "model.onnx"),
                       help="exported scorer, run in process with ONNX Runtime (default: the shipped one)")
    model.add_argument("--url", action="append", help="the served ensemble at HOST:PORT")
    p.add_argument("--data", nargs="+", default=["kind=biq2021", "root=../shared/data/biq2021", "split=val"],
                   metavar="KEY=VALUE", help="dataset spec, as in a config's [data] table "
                   "(e.g. kind=piq23 labels_root=... image_root=... split=scene part=test)")
    p.add_argument("--baselines", action="store_true", help="also run the Laplacian-variance and stats+GBM baselines")
    p.add_argument("--baseline-train", nargs="+", default=["kind=biq2021", "root=../shared/data/biq2021", "split=train"],
                   metavar="KEY=VALUE", help="training set of the GBM baseline")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--report", help="write a markdown table (and a .json beside it)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("build-repository", help="assemble a Triton model repository for a target")
    p.add_argument("--target", choices=["cpu", "gpu-trt", "gpu-onnx", "gpu-torch"], default="cpu")
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
    p.add_argument("--torch-device", choices=["gpu", "cpu"], default="gpu",
                   help="gpu-torch: where the scorer runs (cpu: a dry run of the GPU repository)")
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
