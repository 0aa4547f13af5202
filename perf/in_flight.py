"""Throughput and server CPU per image against requests in flight, through the bulk CLI.

    python -m sampleiqa.perf.in_flight --repository model_repository [--repository OTHER ...] \\
        --in-flight 8 16 32 --photos 600 --rounds 2 --report perf/results/arena-under-load.md

A cluster of clients (Ray actors, several services) keeps more requests in flight than one
CLI; the server must not get less efficient when it does. For each repository: one embedded
server, then `sampleiqa score --concurrency N` over the same photos for each N, `--rounds`
times interleaved; the images/s of each run's summary and the CPU time of Triton and its
stubs per image (core-ms per image barely depends on what else runs on a shared host).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from sampleiqa.server import TritonServer

from .cpu_time import process_tree_cpu_s
from .inputs import copy_photos


def measure(repository: Path, in_flight: list[int], photos: Path, rounds: int, work: Path) -> dict:
    n = len(list(photos.iterdir()))
    runs: dict[int, list[tuple[float, float]]] = {k: [] for k in in_flight}
    with TritonServer(repository, log_file=work / f"{repository.name}.log") as server:
        for r in range(rounds):
            for k in in_flight:
                before = process_tree_cpu_s(server.process.pid)
                res = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "sampleiqa.cli",
                        "score",
                        str(photos),
                        "--url",
                        server.url,
                        "--out",
                        str(work / f"{repository.name}-{k}-{r}.csv"),
                        "--concurrency",
                        str(k),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                rate = float(re.search(r"\(([\d.]+) images/s\)", res.stderr).group(1))
                runs[k].append((rate, 1000 * (process_tree_cpu_s(server.process.pid) - before) / n))
                print(
                    f"{repository}: {k} in flight: {rate:.1f} images/s, {runs[k][-1][1]:.1f} server CPU ms/image",
                    file=sys.stderr,
                    flush=True,
                )
    return {k: (statistics.median(x for x, _ in v), statistics.median(c for _, c in v)) for k, v in runs.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repository", type=Path, action="append", required=True)
    p.add_argument("--label", action="append", help="a name per --repository in the report")
    p.add_argument("--in-flight", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--photos", type=int, default=600)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--report", type=Path)
    args = p.parse_args(argv)
    labels = args.label or [str(r) for r in args.repository]
    lines = [
        f"| repository | {' | '.join(f'{k} in flight: images/s, server CPU ms/image' for k in args.in_flight)} |",
        "|---|" + "---|" * len(args.in_flight),
    ]
    with tempfile.TemporaryDirectory(prefix="sampleiqa-in-flight-") as tmp:
        photos = copy_photos(Path(tmp) / "photos", args.photos)
        for label, repository in zip(labels, args.repository):
            result = measure(repository, args.in_flight, photos, args.rounds, Path(tmp))
            lines.append(
                f"| {label} | " + " | ".join(f"{result[k][0]:.1f}, {result[k][1]:.1f}" for k in args.in_flight) + " |"
            )
    table = "\n".join(lines)
    print(table)
    if args.report:
        args.report.write_text(
            f"# Requests in flight ({args.photos} BIQ2021 photos, medians of {args.rounds} rounds)\n\n"
            f"`python -m sampleiqa.perf.in_flight {' '.join(argv or sys.argv[1:])}`\n\n{table}\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
