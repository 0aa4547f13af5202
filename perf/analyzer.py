"""The real perf_analyzer (from the tritonclient 2.51 wheel), one load level per call.

One call per level lets the harness read Triton's statistics before and after it, so the
scorer's executed batch sizes belong to that level alone. Its CSV (`-f`) is parsed here.

(Over 300 lines: finding perf_analyzer and its libraries, one call, and its CSV belong together.)
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib.util
import io
import math
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path


class PerfAnalyzerError(RuntimeError):
    pass


def _package_dirs() -> list[Path]:
    """Where installed packages are: this interpreter's site-packages, then every sys.path
    entry (a `pip install --target` folder on PYTHONPATH, as perf/gpu_run.sh makes on a GPU host)."""
    dirs = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *sys.path]
    return [Path(d) for d in dict.fromkeys(d for d in dirs if d)]


def perf_analyzer_binary() -> str:
    beside = Path(sys.executable).parent / "perf_analyzer"  # the venv's, installed by tritonclient[all]
    # `pip install --target DIR` puts the wheel's scripts in DIR/bin.
    candidates = [beside, *(d / "bin" / "perf_analyzer" for d in _package_dirs())]
    found = next((str(c) for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)
    found = found or shutil.which("perf_analyzer")
    if not found:
        raise PerfAnalyzerError("perf_analyzer not found: install the perf extra (tritonclient[all]==2.51.0)")
    return found


# perf_analyzer 2.51 is linked against these two sonames (readelf -d). A host without them
# (no libb64 package, no nvidia-cuda-runtime-cu12 wheel: the lent GPU host) still has both
# inside the nvidia-pytriton wheel, under auditwheel's hashed names.
BUNDLED_SONAMES = {"libb64.so.0d": "libb64-*.so.0d", "libcudart.so.12": "libcudart-*.so.12*"}


def pytriton_libs() -> Path | None:
    """The nvidia-pytriton wheel's `nvidia_pytriton.libs` folder, wherever pytriton is installed."""
    candidates = []
    spec = importlib.util.find_spec("pytriton")
    if spec is not None and spec.submodule_search_locations:
        candidates.append(Path(list(spec.submodule_search_locations)[0]).parent / "nvidia_pytriton.libs")
    candidates += [d / "nvidia_pytriton.libs" for d in _package_dirs()]
    return next((c for c in candidates if c.is_dir()), None)


def soname_links(libs: Path | None = None, folder: Path | None = None) -> Path | None:
    """A folder of symlinks under the plain sonames (libb64.so.0d, libcudart.so.12) to the
    hashed files of `libs` (default: pytriton_libs()), for LD_LIBRARY_PATH: no root, no
    ldconfig. Default folder: $XDG_CACHE_HOME/sampleiqa/perf-analyzer-libs-<hash of libs>.
    None when there is no such wheel or it lacks both libraries."""
    libs = libs or pytriton_libs()
    if libs is None:
        return None
    targets = {}
    for soname, pattern in BUNDLED_SONAMES.items():
        found = sorted(libs.glob(pattern))
        if found:
            targets[soname] = found[-1].resolve()
    if not targets:
        return None
    if folder is None:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sampleiqa"
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.mkdir(mode=0o700, exist_ok=True)  # the server's logs folder too: 0700 if made here
        key = hashlib.sha256(str(libs.resolve()).encode()).hexdigest()[:12]
        folder = cache / f"perf-analyzer-libs-{key}"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for soname, target in targets.items():
        link = folder / soname
        if link.is_symlink() and Path(os.readlink(link)) == target:
            continue
        scratch = folder / f".{soname}.{os.getpid()}"  # made aside, then renamed over: no window without it
        scratch.unlink(missing_ok=True)
        scratch.symlink_to(target)
        os.replace(scratch, link)
    return folder


def environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """perf_analyzer's environment: its two libraries put on LD_LIBRARY_PATH, ahead of what
    `base` (default os.environ) has there. libcudart.so.12 (needed even on CPU) comes from
    the nvidia-cuda-runtime-cu12 wheel where it is installed; both libraries come from the
    nvidia-pytriton wheel through soname_links() on any host that has that wheel."""
    env = dict(os.environ if base is None else base)
    dirs = [d / "nvidia" / "cuda_runtime" / "lib" for d in _package_dirs()]
    found = [str(d) for d in dirs if (d / "libcudart.so.12").exists()][:1]
    try:
        links = soname_links()
    except OSError:  # no writable cache folder: the libraries must then be found as they are
        links = None
    if links is not None:
        found.append(str(links))
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [*found, env.get("LD_LIBRARY_PATH")]))
    return env


def check_start(env: dict[str, str] | None = None, timeout_s: float = 30.0) -> str:
    """`perf_analyzer --version` with environment(): its version line, or PerfAnalyzerError
    with the loader's words (a missing library shows here, not in the middle of a sweep)."""
    binary = perf_analyzer_binary()
    done = subprocess.run(
        [binary, "--version"],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=environment() if env is None else env,
    )
    text = (done.stdout + done.stderr).strip()
    if done.returncode != 0 or "Perf Analyzer Version" not in text:
        raise PerfAnalyzerError(f"{binary} does not start (exit {done.returncode}): {text[-600:]}")
    return text.splitlines()[-1]


# Bytes per element of Triton's fixed-size datatypes.
DTYPE_BYTES = {
    "BOOL": 1,
    "UINT8": 1,
    "INT8": 1,
    "UINT16": 2,
    "INT16": 2,
    "FP16": 2,
    "BF16": 2,
    "UINT32": 4,
    "INT32": 4,
    "FP32": 4,
    "UINT64": 8,
    "INT64": 8,
    "FP64": 8,
}


def largest_output_bytes(url: str, model: str) -> int | None:
    """The largest output of one request (batch 1) of `model`, from the server's metadata;
    None when an output has a variable size (BYTES, or a -1 past the batch dimension)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        meta = client.get_model_metadata(model, as_json=True)
        batching = int(client.get_model_config(model, as_json=True)["config"].get("max_batch_size", 0)) > 0
    finally:
        client.close()
    sizes = []
    for out in meta["outputs"]:
        shape = [int(d) for d in out["shape"]][1 if batching else 0 :]
        if out["datatype"] not in DTYPE_BYTES or any(d < 0 for d in shape):
            return None
        sizes.append(math.prod(shape) * DTYPE_BYTES[out["datatype"]])
    return max(sizes, default=None)


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
    return Measurement(
        model,
        load,
        float(row["Inferences/Second"]),
        ms("p50 latency"),
        ms("p95 latency"),
        ms("p99 latency"),
        ms("Server Queue"),
        compute,
    )


@dataclasses.dataclass(frozen=True)
class AnalyzerSettings:
    measurement_ms: int = 4000
    stability_percent: int = 25  # the default 10% rarely settles on a shared 2-core machine
    max_trials: int = 6
    request_count: int = 0  # > 0: measure exactly this many requests, no stability search
    timeout_s: float = 300.0


class UnstableMeasurement(PerfAnalyzerError):
    pass


def measure(
    url: str,
    model: str,
    input_json: str | Path,
    load: Load,
    settings: AnalyzerSettings,
    shared_memory: bool = False,
    output_shm_bytes: int | None = None,
) -> Measurement:
    """perf_analyzer at one level; if the machine is too noisy to settle within the stability
    percentage, once more at 100% (max/min of the last 3 windows within 2x) before giving up.

    `shared_memory`: inputs and outputs go through system shared memory (the server must have
    its shared-memory API open to this client, and be on this host), so the figure leaves out
    the gRPC transfer of the tensors. `output_shm_bytes`: the region per output tensor
    (default: the model's largest output, from the server; perf_analyzer sizes fixed-shape
    outputs itself and uses this for variable ones)."""
    if shared_memory and output_shm_bytes is None:
        output_shm_bytes = max(4096, largest_output_bytes(url, model) or 0)
    try:
        return _measure_once(url, model, input_json, load, settings, shared_memory, output_shm_bytes)
    except UnstableMeasurement:
        if settings.stability_percent >= 100:
            raise
        looser = dataclasses.replace(settings, stability_percent=100)
        return _measure_once(url, model, input_json, load, looser, shared_memory, output_shm_bytes)


def _measure_once(
    url: str,
    model: str,
    input_json: str | Path,
    load: Load,
    settings: AnalyzerSettings,
    shared_memory: bool,
    output_shm_bytes: int | None = None,
) -> Measurement:
    with tempfile.TemporaryDirectory(prefix="sampleiqa-pa-") as scratch:
        out = Path(scratch) / "pa.csv"
        cmd = [
            perf_analyzer_binary(),
            "-m",
            model,
            "-u",
            url,
            "-i",
            "grpc",
            "-b",
            "1",
            "--input-data",
            str(input_json),
            *load.flags(),
            "--measurement-interval",
            str(settings.measurement_ms),
            "-s",
            str(settings.stability_percent),
            "-r",
            str(settings.max_trials),
            "-f",
            str(out),
        ]
        if settings.request_count:
            cmd += ["--request-count", str(settings.request_count)]
        if shared_memory:  # the client writes tensors into system shared memory, not the gRPC message
            cmd += ["--shared-memory", "system", "--output-shared-memory-size", str(output_shm_bytes or 4096)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, env=environment(), timeout=settings.timeout_s)
        except subprocess.TimeoutExpired:
            raise PerfAnalyzerError(
                f"perf_analyzer ran past {settings.timeout_s:.0f}s on {model} {load.label}"
            ) from None
        if done.returncode != 0 or not out.exists():
            # (its clean-up lines, one per region, would push the error itself out of the tail)
            lines = [
                line
                for line in (done.stdout + done.stderr).strip().splitlines()
                if not line.startswith(("Unable to unlink shared memory", "Unable to unregister all shared"))
            ]
            tail = "\n".join(lines[-8:])
            error = UnstableMeasurement if "stable measurement" in tail else PerfAnalyzerError
            if "protocol is restricted" in tail:
                tail += "\n(the server restricts shared memory: rerun with --no-shared-memory)"
            raise error(f"perf_analyzer failed on {model} {load.label} (exit {done.returncode}):\n{tail}")
        return parse_csv(out.read_text(), model, load)
