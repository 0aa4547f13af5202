"""How fast one scoring actor reads photos from an object store, by reads in flight.

    python -m sampleiqa.perf.storage_reads --files 96 --latency-ms 50 --rounds 3 \\
        --report perf/results/storage-reads.md

A real S3 server (moto) on loopback holds `--files` real photos; a proxy in front of it
(perf/faultproxy.py) adds `--latency-ms` to every object request, as a remote bucket
would (a read is a HEAD and a GET). The actor's own reader (clients/storage.py: Reader and
read_ahead, what `--engine ray` runs) reads them all at each depth, the depths interleaved
`--rounds` times; medians and their ratio to depth 1. With `--fail-rate`, that share of
object requests fail transiently (resets, 503 SlowDown, stalls) and every byte must still
come back right. A PNG of files/s by depth goes beside the report.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sampleiqa.clients.storage import Reader, read_ahead

from .faultproxy import FaultProxy
from .inputs import copy_photos
from .plots import new_axes, save
from .s3 import moto_server, options

DEPTHS = (1, 2, 4, 8, 16)


def files_per_s(port: int, names: list[str], expected: list[bytes], depth: int) -> float:
    locations = [(n, f"s3://photos/{n}?{options(port)}") for n in names]
    reader = Reader()
    start = time.monotonic()
    with ThreadPoolExecutor(depth) as pool:
        got = [data for _, data in read_ahead(reader.read, locations, pool, depth)]
    seconds = time.monotonic() - start
    if got != expected:
        raise SystemExit("a read came back wrong")
    return len(names) / seconds


def measure(files: int, latency_s: float, rounds: int, fail_rate: float) -> dict:
    with moto_server() as (port, fs), tempfile.TemporaryDirectory() as tmp:
        fs.create_dir("photos")
        photos = sorted(copy_photos(Path(tmp) / "photos", files).iterdir())
        for p in photos:
            with fs.open_output_stream(f"photos/{p.name}") as f:
                f.write(p.read_bytes())
        expected = [p.read_bytes() for p in photos]
        proxy = FaultProxy(port, latency_s=latency_s, fail_rate=fail_rate, stall_s=4)
        try:
            rates: dict[int, list[float]] = {d: [] for d in DEPTHS}
            for r in range(rounds):
                for depth in DEPTHS:
                    rates[depth].append(files_per_s(proxy.port, [p.name for p in photos], expected, depth))
                    print(f"round {r + 1}: depth {depth:2d}: {rates[depth][-1]:6.1f} files/s", flush=True)
        finally:
            proxy.close()
    return {
        "files": files,
        "latency_ms": latency_s * 1000,
        "fail_rate": fail_rate,
        "rounds": rounds,
        "faults": dict(proxy.counts),
        "files_per_s": {str(d): v for d, v in rates.items()},
    }


def markdown(result: dict, plot: str | None) -> str:
    rates = {int(d): statistics.median(v) for d, v in result["files_per_s"].items()}
    lines = [
        f"# One actor's object-store reads by reads in flight ({result['latency_ms']:.0f} ms per request)",
        "",
        f"`python -m sampleiqa.perf.storage_reads --files {result['files']} --latency-ms "
        f"{result['latency_ms']:.0f} --rounds {result['rounds']}`: real photos in a real S3 server (moto) "
        "on loopback behind a latency proxy; the reader of `--engine ray` (clients/storage.py). "
        "A read is a HEAD and a GET.",
        "",
        "| reads in flight (`--concurrency`) | median files/s | vs 1 |",
        "|---|---|---|",
    ]
    lines += [f"| {d} | {r:.1f} | {r / rates[1]:.2f}x |" for d, r in rates.items()]
    if result["fail_rate"]:
        lines += [
            "",
            f"{result['fail_rate']:.0%} of object requests failed transiently: {result['faults']}; "
            "every read came back right.",
        ]
    if plot:
        lines += ["", f"![files/s by reads in flight]({plot})"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--files", type=int, default=96)
    p.add_argument("--latency-ms", type=float, default=50.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--fail-rate", type=float, default=0.0)
    p.add_argument("--report", type=Path, default=Path("perf/results/storage-reads.md"))
    args = p.parse_args(argv)
    result = measure(args.files, args.latency_ms / 1000, args.rounds, args.fail_rate)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.with_suffix(".json").write_text(json.dumps(result, indent=1))
    plot = None
    if axes := new_axes():
        fig, ax = axes
        rates = {int(d): statistics.median(v) for d, v in result["files_per_s"].items()}
        ax.plot(list(rates), list(rates.values()), marker="o", label=f"{result['latency_ms']:.0f} ms per request")
        ax.set_xscale("log", base=2)
        png = args.report.with_suffix(".png")
        save(fig, ax, png, "One actor's reads from an object store", "reads in flight", "files/s")
        plot = png.name
    text = markdown(result, plot)
    args.report.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
