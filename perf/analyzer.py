"""The real perf_analyzer (from the tritonclient 2.51 wheel), one load level per call.

One call per level lets the harness read Triton's statistics before and after it, so the
scorer's executed batch sizes belong to that level alone. Its CSV (`-f`) is parsed here.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path


class PerfAnalyzerError(RuntimeError):
    pass


def perf_analyzer_binary() -> str:
    beside = Path(sys.executable).parent / "perf_analyzer"  # the venv's, installed by tritonclient[all]
    found = str(beside) if beside.exists() else shutil.which("perf_analyzer")
    if not found:
        raise PerfAnalyzerError("perf_analyzer not found: install the perf extra (tritonclient[all]==2.51.0)")
    return found


def environment() -> dict[str, str]:
    """perf_analyzer links libcudart.so.12 even on CPU: nvidia-cuda-runtime-cu12 supplies it."""
    env = dict(os.environ)
    lib = Path(sysconfig.get_paths()["purelib"]) / "nvidia" / "cuda_runtime" / "lib"
    if lib.exists():
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(lib), env.get("LD_LIBRARY_PATH")]))
    return env


@dataclasses.dataclass(frozen=True)
class Load:
    """One load level: a fixed number of requests in flight, or a fixed request rate."""

    concurrency: int | None = None
    rate: float | None = None

    def __post_init__(self):
        if (self.concurrency is None) == (self.rate is None):
            raise ValueError("give a concurrency or a request rate")

    @property
    def label(self) -> str:
        return f"c{self.concurrency}" if self.concurrency is not None else f"r{self.rate:g}"

    def flags(self) -> list[str]:
        if self.concurrency is not None:
            return ["--concurrency-range", str(self.concurrency)]
        return ["--request-rate-range", f"{self.rate:g}"]


@dataclasses.dataclass(frozen=True)
class Measurement:
    """perf_analyzer's figures for one model at one load level (latencies in ms)."""

    model: str
    load: Load
    throughput: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    server_queue_ms: float
    server_compute_ms: float


def parse_csv(text: str, model: str, load: Load) -> Measurement:
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise PerfAnalyzerError(f"perf_analyzer wrote no rows for {model} at {load.label}")
    row = rows[-1]

    def ms(column: str) -> float:
        return float(row.get(column) or 0) / 1000.0  # perf_analyzer reports microseconds

    compute = sum(ms(c) for c in ("Server Compute Input", "Server Compute Infer", "Server Compute Output"))
    return Measurement(model, load, float(row["Inferences/Second"]), ms("p50 latency"), ms("p95 latency"),
                       ms("p99 latency"), ms("Server Queue"), compute)


@dataclasses.dataclass(frozen=True)
class AnalyzerSettings:
    measurement_ms: int = 4000
    stability_percent: int = 25  # the default 10% rarely settles on a shared 2-core machine
    max_trials: int = 6
    request_count: int = 0  # > 0: measure exactly this many requests, no stability search
    timeout_s: float = 300.0


class UnstableMeasurement(PerfAnalyzerError):
    pass


def measure(url: str, model: str, input_json: str | Path, load: Load, settings: AnalyzerSettings,
            shared_memory: bool = False) -> Measurement:
    """perf_analyzer at one level; if the machine is too noisy to settle within the stability
    percentage, once more at 100% (max/min of the last 3 windows within 2x) before giving up."""
    try:
        return _measure_once(url, model, input_json, load, settings, shared_memory)
    except UnstableMeasurement:
        if settings.stability_percent >= 100:
            raise
        looser = dataclasses.replace(settings, stability_percent=100)
        return _measure_once(url, model, input_json, load, looser, shared_memory)


def _measure_once(url: str, model: str, input_json: str | Path, load: Load, settings: AnalyzerSettings,
                  shared_memory: bool) -> Measurement:
    with tempfile.TemporaryDirectory(prefix="sampleiqa-pa-") as scratch:
        out = Path(scratch) / "pa.csv"
        cmd = [perf_analyzer_binary(), "-m", model, "-u", url, "-i", "grpc", "-b", "1",
               "--input-data", str(input_json), *load.flags(),
               "--measurement-interval", str(settings.measurement_ms),
               "-s", str(settings.stability_percent), "-r", str(settings.max_trials), "-f", str(out)]
        if settings.request_count:
            cmd += ["--request-count", str(settings.request_count)]
        if shared_memory:  # the client writes tensors into system shared memory, not the gRPC message
            cmd += ["--shared-memory", "system", "--output-shared-memory-size", "4096"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, env=environment(), timeout=settings.timeout_s)
        except subprocess.TimeoutExpired:
            raise PerfAnalyzerError(f"perf_analyzer ran past {settings.timeout_s:.0f}s on {model} {load.label}") from None
        if done.returncode != 0 or not out.exists():
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
            error = UnstableMeasurement if "stable measurement" in tail else PerfAnalyzerError
            if "protocol is restricted" in tail:
                tail += "\n(the server restricts shared memory: rerun with --no-shared-memory)"
            raise error(f"perf_analyzer failed on {model} {load.label} (exit {done.returncode}):\n{tail}")
        return parse_csv(out.read_text(), model, load)
