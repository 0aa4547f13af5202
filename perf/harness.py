"""`sampleiqa perf`: perf_analyzer sweeps of the ensemble and each step alone, in-process
baselines in the same run, the ratios between them, and a report in perf/results/.

Imports stay light at module level: the CLI builds its parser from add_arguments().
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from sampleiqa.commands import Command
from sampleiqa.paths import DEFAULT_REPOSITORY, RESULTS

MODELS = ("sampleiqa", "preprocess", "scorer")  # ensemble first: it is the figure users see


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .inputs import DEFAULT_IMAGES

    p.add_argument("--url", help="server HOST:PORT (default: start the embedded server for the run)")
    p.add_argument(
        "--repository",
        default=str(DEFAULT_REPOSITORY),
        help="repository for the embedded server; its scorer/1/model.onnx is the baselines' model",
    )
    p.add_argument("--onnx", help="scorer ONNX for the in-process baselines (default: the repository's)")
    p.add_argument("--images", default=str(DEFAULT_IMAGES), help="folder of real photos")
    p.add_argument("--photos", type=int, default=64, help="photos drawn from --images")
    p.add_argument("--tensors", type=int, default=8, help="preprocessed tensors fed to the scorer alone")
    p.add_argument("--models", default=",".join(MODELS), help="models to sweep")
    p.add_argument("--concurrency", type=_ints, default=[1, 2, 4, 8], help="comma-separated levels")
    p.add_argument("--request-rate", type=_floats, default=[], help="comma-separated requests/s levels (optional)")
    p.add_argument("--measurement-ms", type=int, default=4000, help="perf_analyzer's measurement window")
    p.add_argument("--stability", type=int, default=25, help="perf_analyzer's stability percentage")
    p.add_argument(
        "--max-trials", type=int, default=6, help="perf_analyzer's trials per level before it gives up on stability"
    )
    p.add_argument(
        "--request-count",
        type=int,
        default=0,
        help="measure exactly N requests per level instead of waiting for stability (noisy machines)",
    )
    p.add_argument("--batches", type=_ints, default=[1, 4, 8, 16], help="in-process batch sizes tried")
    p.add_argument("--baseline-seconds", type=float, default=5.0, help="seconds per in-process figure")
    p.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="in-process thread budget (preprocessing pool and ORT intra-op threads)",
    )
    p.add_argument("--repeats", type=int, default=1, help="whole runs; the report quotes medians")
    p.add_argument(
        "--no-shared-memory",
        action="store_true",
        help="send the scorer's tensors over gRPC (default: system shared memory on loopback)",
    )
    p.add_argument("--name", default=time.strftime("run-%Y%m%d-%H%M"), help="report name")
    p.add_argument("--out-dir", default=str(RESULTS), help="where the report and plots go")
    p.add_argument("--note", default="", help="free text for the report (what was changed)")


def run(args: argparse.Namespace) -> int:
    from .analyzer import PerfAnalyzerError
    from .sweep import SweepPlan, run_sweeps

    plan = SweepPlan.from_args(args)
    server = None
    url = args.url
    if not url:
        from sampleiqa.server import start_embedded

        # Loopback only and owned by this run; perf_analyzer registers system shared memory
        # for the scorer's tensors and cannot send the gRPC admin-key header.
        server = start_embedded(args.repository, "perf", open_apis=("shared-memory",))
        if server is None:
            return 1
        url = server.url
    try:
        report = run_sweeps(url, plan, server.process.pid if server is not None else None)
    except PerfAnalyzerError as exc:
        print(f"sampleiqa perf: {exc}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.stop()
    from .report import summary_lines, write_report

    md = write_report(report, Path(args.out_dir), args.name)
    print("\n".join(summary_lines(report)))
    print(f"report: {md}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sampleiqa perf", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())


COMMANDS = {
    "perf": Command("perf_analyzer sweeps, in-process baselines and a report in perf/results/", add_arguments, run),
}
