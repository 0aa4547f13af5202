"""The perf harness: a few seconds of real perf_analyzer against the session's server, and
the parsing it relies on. Figures are printed by benchmarks, never asserted on time."""

import base64
import json
import struct

import pytest

from sampleiqa.perf.analyzer import Load, parse_csv
from sampleiqa.perf.inputs import image_entry, pixels_entry

from .helpers import BIQ, SAMPLES

# A row as perf_analyzer 2.51 writes it with -f (latencies in microseconds).
CSV = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
    "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency\n"
    "4,26.9111,7,38911,1,752,106120,1799,10,147505,187547,201028,221226\n"
)


def test_csv_row_becomes_a_measurement_in_ms():
    m = parse_csv(CSV, "sampleiqa", Load(concurrency=4))
    assert m.throughput == pytest.approx(26.9111)
    assert (m.p50_ms, m.p95_ms, m.p99_ms) == pytest.approx((147.505, 201.028, 221.226))
    assert m.server_compute_ms == pytest.approx(0.752 + 106.12 + 1.799)


def test_json_inputs_carry_length_prefixed_bytes_and_raw_uint8_pixels():
    import numpy as np

    data = (SAMPLES / "astronaut.jpg").read_bytes()
    raw = base64.b64decode(image_entry(data)["IMAGE"]["b64"])
    assert struct.unpack("<I", raw[:4])[0] == len(data) and raw[4:] == data
    pixels = np.arange(12, dtype=np.uint8).reshape(3, 2, 2)
    assert np.array_equal(
        np.frombuffer(base64.b64decode(pixels_entry(pixels)["PIXELS"]["b64"]), np.uint8), pixels.ravel()
    )


@pytest.mark.server
@pytest.mark.perf
def test_sampleiqa_perf_runs_against_the_embedded_server_and_writes_its_report(tmp_path):
    """The embedded server of `sampleiqa perf` (it opens shared memory for the scorer's
    tensors, which the default locked-down server refuses without the admin key)."""
    from sampleiqa.cli import main

    if not BIQ.exists():
        pytest.skip("BIQ2021 photos not found")
    code = main(
        [
            "perf",
            "--images",
            str(BIQ / "images"),
            "--photos",
            "6",
            "--tensors",
            "2",
            "--concurrency",
            "4",
            "--request-count",
            "12",
            "--batches",
            "1,2",
            "--baseline-seconds",
            "0.2",
            "--name",
            "smoke",
            "--out-dir",
            str(tmp_path),
        ]
    )
    assert code == 0
    report = (tmp_path / "smoke.md").read_text()
    for model in ("sampleiqa", "preprocess", "scorer"):
        assert f"| {model} | c4 |" in report
        assert (tmp_path / f"smoke-{model}.png").stat().st_size > 1000
    raw = json.loads((tmp_path / "smoke.json").read_text())
    (run,) = raw["runs"]
    assert run["figures"]["ensemble_img_s"] > 0 and run["figures"]["preprocess_ms_per_image"] > 0
    assert sum(sum(p["batches"].values()) for p in run["points"] if p["batch_model"] == "scorer") > 0


def _perf_analyzer_or_skip():
    from sampleiqa.perf.analyzer import PerfAnalyzerError, perf_analyzer_binary, pytriton_libs

    try:
        binary = perf_analyzer_binary()
    except PerfAnalyzerError:
        pytest.skip("perf_analyzer not installed (the perf extra)")
    if pytriton_libs() is None:
        pytest.skip("the nvidia-pytriton wheel is not installed")
    return binary


@pytest.mark.perf
def test_perf_analyzer_starts_on_the_pytriton_wheels_libraries_alone(tmp_path):
    """A host without libb64 or a CUDA runtime (the lent GPU host): links under the plain
    sonames to the wheel's hashed files are all perf_analyzer needs, no root, no ldconfig."""
    import shutil
    import subprocess

    from sampleiqa.perf.analyzer import BUNDLED_SONAMES, soname_links

    binary = _perf_analyzer_or_skip()
    links = soname_links(folder=tmp_path / "links")
    assert sorted(p.name for p in links.iterdir()) == sorted(BUNDLED_SONAMES)
    assert all(p.is_symlink() and p.resolve().exists() and p.resolve().name != p.name for p in links.iterdir())
    env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": str(links)}  # nothing else of this venv's
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0 and "Perf Analyzer Version 2.51" in done.stdout + done.stderr, done
    if shutil.which("ldd"):  # the loader takes both from the links, not from elsewhere on this machine
        resolved = subprocess.run(["ldd", binary], capture_output=True, text=True, env=env).stdout
        for soname in BUNDLED_SONAMES:
            assert f"{soname} => {links / soname}" in resolved, resolved
    assert soname_links(folder=tmp_path / "links") == links  # again: the links are kept as they are


@pytest.mark.perf
def test_perf_analyzers_environment_starts_it_and_keeps_the_callers_library_path():
    from sampleiqa.perf.analyzer import check_start, environment, soname_links

    _perf_analyzer_or_skip()
    assert check_start().startswith("Perf Analyzer Version 2.51")
    env = environment({"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": "/opt/elsewhere"})
    dirs = env["LD_LIBRARY_PATH"].split(":")
    assert str(soname_links()) in dirs and dirs[-1] == "/opt/elsewhere"


def test_perf_analyzer_is_found_in_a_pip_target_folder(tmp_path, monkeypatch):
    """`pip install --target DIR` (perf/gpu_run.sh on the GPU host) puts it in DIR/bin, with DIR
    on PYTHONPATH and nothing beside the interpreter."""
    import sys

    from sampleiqa.perf import analyzer

    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "perf_analyzer"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python-elsewhere" / "python3"))
    monkeypatch.setattr(analyzer, "_package_dirs", lambda: [tmp_path / "nothing", tmp_path])
    assert analyzer.perf_analyzer_binary() == str(fake)


def test_gpu_shell_scripts_parse():
    import subprocess

    for script in ("gpu_run.sh", "gpu_wheels.sh"):
        done = subprocess.run(["bash", "-n", str(SAMPLES.parent / "perf" / script)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


@pytest.mark.server
def test_largest_output_sizes_the_shared_memory_regions(server):
    """perf_analyzer's --output-shared-memory-size for a step alone: its largest output at batch 1."""
    import tritonclient.grpc as grpcclient

    from sampleiqa.perf.analyzer import DTYPE_BYTES, largest_output_bytes

    client = grpcclient.InferenceServerClient(server.url)
    try:
        pixels = next(
            o for o in client.get_model_metadata("preprocess", as_json=True)["outputs"] if o["name"] == "PIXELS"
        )
    finally:
        client.close()
    assert largest_output_bytes(server.url, "preprocess") == 3 * 448 * 448 * DTYPE_BYTES[pixels["datatype"]]
    assert largest_output_bytes(server.url, "scorer") == 4  # SCORE, FP32 [1]
