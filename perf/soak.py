"""Bounded soak: N concurrent clients for M seconds against the embedded server, on loopback.

    python -m sampleiqa.perf.soak --clients 4 --seconds 150 --report perf/results/soak.md

Each client has its own gRPC channel and sends one image per request, round the image set:
real photos plus two bad inputs (a truncated JPEG, an empty file), so the error path runs
under load too. It reports errors (any result other than the one each image must get, or an
exception; must be 0), throughput, p50/p99 latency, and the resident memory (VmRSS) of the
Triton process plus its python-backend stub processes, taken after a warm-up and at the end.
The growth must stay under --max-growth-mib, and the growth over the second half of the
samples under MAX_LATE_GROWTH_MIB. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sampleiqa.paths import SAMPLES, SHARED_DATA
from sampleiqa.procfs import child_pids, rss_kib
from sampleiqa.runtime import environment

DATA = Path(os.environ.get(environment.DATA, SHARED_DATA)) / "biq2021" / "images"
# After warm-up ONNX Runtime's arena may still extend once, by a chunk of ~85 MiB with the
# 534-statistics graph (at random: whether a burst of requests needs it), and then levels off;
# a leak keeps growing. See perf/results/soak.md.
MAX_GROWTH_MIB = 128.0
MAX_LATE_GROWTH_MIB = 16.0  # over the second half of the samples


def tree_rss_mib(pid: int) -> tuple[float, int]:
    """(VmRSS in MiB, process count) of a process and all its descendants (Triton and its
    python stubs). /proc only: psutil is not a dependency."""
    total_kib, count, todo = 0, 0, [pid]
    while todo:
        p = todo.pop()
        kib = rss_kib(p)
        if kib is None:
            continue  # exited meanwhile
        count += 1
        total_kib += kib
        todo += child_pids(p)
    return total_kib / 1024, count


def image_set(n: int) -> list[tuple[bytes, str]]:
    """(bytes, expected error code or "" for a score): n real photos, then two bad inputs."""
    photos = sorted(DATA.glob("*.jpg"))[:n] if DATA.is_dir() else []
    if not photos:  # no shared data: the bundled samples
        photos = sorted(SAMPLES.glob("*.jpg"))
    items = [(p.read_bytes(), "") for p in photos]
    good = items[0][0]
    return items + [(good[: len(good) // 2], "truncated"), (b"", "empty")]


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    item_errors: int = 0  # expected per-item errors (the bad inputs)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _client_loop(url: str, items, stop_at: float, tally: Tally, offset: int, min_requests: int) -> None:
    from sampleiqa.clients import ScoringClient

    k = offset
    with ScoringClient(url, timeout_s=60) as client:
        while time.monotonic() < stop_at or k - offset < min_requests:
            data, expected = items[k % len(items)]
            k += 1
            t0 = time.monotonic()
            try:
                r = client.score(data)
                problem = (
                    "" if r.error_code == expected else f"expected {expected or 'a score'}, got {r.error or 'a score'}"
                )
            except Exception as exc:  # transport failures count as errors, never stop the soak
                problem = f"{type(exc).__name__}: {exc}"
            dt = time.monotonic() - t0
            with tally.lock:
                tally.latencies.append(dt)
                if problem:
                    tally.errors.append(problem)
                elif expected:
                    tally.item_errors += 1


def load(url: str, items, clients: int, seconds: float, min_requests: int = 0) -> tuple[Tally, float]:
    """Each client sends for `seconds`, and at least `min_requests` requests."""
    tally = Tally()
    start = time.monotonic()
    threads = [
        threading.Thread(
            target=_client_loop, args=(url, items, start + seconds, tally, i * 7, min_requests), daemon=True
        )
        for i in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return tally, time.monotonic() - start


@dataclass
class SoakResult:
    clients: int
    seconds: float
    requests: int
    errors: int
    item_errors: int
    throughput: float
    p50_ms: float
    p99_ms: float
    rss_start_mib: float
    rss_end_mib: float
    rss_samples: list[float]
    processes: int
    max_growth_mib: float
    error_examples: list[str]

    @property
    def growth_mib(self) -> float:
        return self.rss_end_mib - self.rss_start_mib

    @property
    def late_growth_mib(self) -> float:
        """Growth over the second half: a leak keeps growing; a warming allocator levels off."""
        return self.rss_end_mib - self.rss_samples[len(self.rss_samples) // 2]

    @property
    def passed(self) -> bool:
        return (
            self.errors == 0 and self.growth_mib <= self.max_growth_mib and self.late_growth_mib <= MAX_LATE_GROWTH_MIB
        )

    def report(self, command: str = "") -> str:
        lines = [
            "| figure | value |",
            "|---|---|",
            f"| clients x seconds | {self.clients} x {self.seconds:.0f} s (after warm-up) |",
            f"| requests | {self.requests} ({self.item_errors} of them the bad inputs, each with its expected error) |",
            f"| errors | {self.errors} |",
            f"| throughput | {self.throughput:.1f} images/s |",
            f"| latency p50 / p99 | {self.p50_ms:.0f} ms / {self.p99_ms:.0f} ms |",
            f"| RSS of Triton + stubs ({self.processes} processes) at start, after warm-up "
            f"| {self.rss_start_mib:.0f} MiB |",
            f"| RSS at end | {self.rss_end_mib:.0f} MiB |",
            f"| growth | {self.growth_mib:+.1f} MiB (bound {self.max_growth_mib:.0f} MiB) |",
            f"| growth over the second half | {self.late_growth_mib:+.1f} MiB (bound {MAX_LATE_GROWTH_MIB:.0f} MiB) |",
            f"| RSS samples (MiB) | {', '.join(f'{v:.0f}' for v in self.rss_samples)} |",
            f"| result | {'PASS' if self.passed else 'FAIL'} |",
        ]
        if command:
            lines.insert(0, f"Command: `{command}`\n")
        if self.error_examples:
            lines += ["", "First errors:", *(f"- {e}" for e in self.error_examples)]
        return "\n".join(lines)


def soak(
    clients: int = 4,
    seconds: float = 60,
    warmup_s: float = 10,
    images: int = 32,
    max_growth_mib: float = MAX_GROWTH_MIB,
    log_file: str | Path | None = None,
    sample_every_s: float = 10,
    every_image: bool = False,
) -> SoakResult:
    """Start the embedded server, warm it up, then soak it. `every_image`: in the warm-up and
    in the soak, each client also sends the whole image set at least once, however slow the
    machine. Call from the main
    thread (the server's parent-death signal follows the thread that starts it)."""
    from sampleiqa.server import TritonServer

    items = image_set(images)
    with TritonServer(log_file=log_file) as server:
        pid = server.process.pid
        load(server.url, items, clients, warmup_s, len(items) if every_image else 0)
        rss_start, processes = tree_rss_mib(pid)
        samples = [rss_start]
        sampler_stop = threading.Event()

        def sample():
            while not sampler_stop.wait(sample_every_s):
                samples.append(tree_rss_mib(pid)[0])

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        tally, elapsed = load(server.url, items, clients, seconds, len(items) if every_image else 0)
        sampler_stop.set()
        sampler.join()
        rss_end = tree_rss_mib(pid)[0]
        samples.append(rss_end)
    lat = np.array(tally.latencies) * 1000
    return SoakResult(
        clients=clients,
        seconds=elapsed,
        requests=len(lat),
        errors=len(tally.errors),
        item_errors=tally.item_errors,
        throughput=len(lat) / elapsed,
        p50_ms=float(np.percentile(lat, 50)) if len(lat) else 0.0,
        p99_ms=float(np.percentile(lat, 99)) if len(lat) else 0.0,
        rss_start_mib=rss_start,
        rss_end_mib=rss_end,
        rss_samples=samples,
        processes=processes,
        max_growth_mib=max_growth_mib,
        error_examples=tally.errors[:5],
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--seconds", type=float, default=120)
    p.add_argument("--warmup", type=float, default=15, help="seconds of load before the start RSS is taken")
    p.add_argument("--images", type=int, default=32, help="real photos in the rotation")
    p.add_argument("--max-growth-mib", type=float, default=MAX_GROWTH_MIB)
    p.add_argument("--log-file", default=None, help="Triton log")
    p.add_argument("--report", default=None, help="also write the markdown report here")
    args = p.parse_args(argv)
    result = soak(args.clients, args.seconds, args.warmup, args.images, args.max_growth_mib, args.log_file)
    command = "python -m sampleiqa.perf.soak " + " ".join(argv if argv is not None else sys.argv[1:])
    text = result.report(command)
    print(text)
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(text + "\n")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
