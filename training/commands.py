"""`sampleiqa train`, `cache` and `evaluate`: their flags and what they run. Light at
import (torch loads when a command runs)."""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
from pathlib import Path

from sampleiqa.commands import Command
from sampleiqa.paths import DEFAULT_REPOSITORY, SHARED_DATA


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="e.g. training/configs/biq2021_default.toml")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/last.pt")
    p.add_argument("--out-dir", help="override the config's out_dir")


def cmd_train(args) -> int:
    import faulthandler

    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints every thread's stack of a stuck run
    from sampleiqa.training.config import load_config
    from sampleiqa.training.pipelines import train

    overrides = {"out_dir": args.out_dir} if args.out_dir else {}
    result = train(load_config(args.config, overrides), resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"best validation SROCC {result['best_srocc']:.4f}; checkpoints in {result['out_dir']}", file=sys.stderr)
    return 0


def add_cache_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", help="cache folder (default: $SAMPLEIQA_CACHE or ~/.cache/sampleiqa/crops)")
    p.add_argument(
        "--prune-older-than",
        type=float,
        metavar="DAYS",
        help="delete caches not used for DAYS days (0: all), and leftovers of killed builds",
    )
    p.add_argument("--dry-run", action="store_true", help="with --prune-older-than: only say what would go")


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
        print(
            f"  {e.folder.name}  {e.dataset:24s} {e.images:6d} images {e.bytes / 1e9:6.2f} GB  "
            f"last used {time.strftime('%Y-%m-%d %H:%M', time.localtime(e.last_used))}{state}"
        )
    return 0


def _data_spec(pairs: list[str]) -> dict:
    spec = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--data takes KEY=VALUE pairs, not {pair!r}")
        spec[key.replace("-", "_")] = value
    return spec


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    model = p.add_mutually_exclusive_group()
    model.add_argument("--checkpoint", metavar="FILE.pt", help="training checkpoint (.pt)")
    model.add_argument(
        "--onnx",
        metavar="FILE.onnx",
        default=str(Path(DEFAULT_REPOSITORY) / "scorer" / "1" / "model.onnx"),
        help="exported scorer, run in process with ONNX Runtime (default: the shipped one)",
    )
    model.add_argument("--url", action="append", metavar="HOST:PORT", help="the served ensemble at HOST:PORT")
    p.add_argument(
        "--data",
        nargs="+",
        default=["kind=biq2021", f"root={SHARED_DATA / 'biq2021'}", "split=val"],
        metavar="KEY=VALUE",
        help="dataset spec, as in a config's [data] table; your own labels: "
        "kind=csv path=FILE.csv (columns path,score[,scene]; relative paths from the CSV's folder); "
        "PIQ23: kind=piq23 labels_root=... image_root=... split=scene part=test",
    )
    p.add_argument(
        "--baselines",
        action="store_true",
        help="also run the Laplacian-variance and stats+GBM baselines (computes statistics of every "
        "--baseline-train photo first: minutes for BIQ2021's 6,331, not seconds)",
    )
    p.add_argument(
        "--baseline-train",
        nargs="+",
        default=["kind=biq2021", f"root={SHARED_DATA / 'biq2021'}", "split=train"],
        metavar="KEY=VALUE",
        help="training set of the GBM baseline",
    )
    p.add_argument("--concurrency", type=int, default=8, metavar="N", help="requests in flight with --url")
    p.add_argument("--report", metavar="FILE.md", help="write a markdown table (and a .json beside it)")


def cmd_evaluate(args) -> int:
    import json

    from sampleiqa.training import evaluate as ev
    from sampleiqa.training.data.datasets import create_dataset
    from sampleiqa.training.metrics import format_result

    try:
        dataset = create_dataset(_data_spec(args.data))
    except (OSError, ValueError, TypeError) as exc:  # a missing file, other columns, an unknown key
        print(f"sampleiqa evaluate: {exc}", file=sys.stderr)
        return 2
    print(dataset.describe(), file=sys.stderr)
    if dataset.missing:
        raise SystemExit(f"missing images: {dataset.describe()}")
    if args.url:
        name, (scores, errors) = (
            f"served ensemble at {', '.join(args.url)}",
            ev.predict_server(args.url, dataset, args.concurrency),
        )
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
        command = (
            "sampleiqa " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("sampleiqa") else "sampleiqa evaluate ..."
        )
        out.write_text(f"# {dataset.name}\n\n" + ev.report_markdown(results, command))
        out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
        print(f"wrote {out}", file=sys.stderr)
    return 0


COMMANDS = {
    "train": Command(
        "train a scorer from a TOML config (torchrun for several GPUs/nodes)", add_train_arguments, cmd_train
    ),
    "cache": Command(
        "list the training crop caches, or prune those not used for a while", add_cache_arguments, cmd_cache
    ),
    "evaluate": Command(
        "PLCC/SROCC/KRCC of a model on a labelled set (per scene where scenes exist)",
        add_evaluate_arguments,
        cmd_evaluate,
    ),
}
