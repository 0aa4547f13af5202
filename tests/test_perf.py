"""The perf harness: a few seconds of real perf_analyzer against the session's server, and
the parsing it relies on. Figures are printed by benchmarks, never asserted on time."""

import base64
import json
import struct

import pytest

from sampleiqa.perf.analyzer import Load, parse_csv
from sampleiqa.perf.inputs import image_entry, pixels_entry

from .conftest import BIQ, SAMPLES

# A row as perf_analyzer 2.51 writes it with -f (latencies in microseconds).
CSV = ("Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
       "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency\n"
       "4,26.9111,7,38911,1,752,106120,1799,10,147505,187547,201028,221226\n")


def test_csv_row_becomes_a_measurement_in_ms():
    m = parse_csv(CSV, "sampleiqa", Load(concurrency=4))
    assert m.throughput == pytest.approx(26.9111)
    assert (m.p50_ms, m.p95_ms, m.p99_ms) == pytest.approx((147.505, 201.028, 221.226))
    assert m.server_compute_ms == pytest.approx(0.752 + 106.12 + 1.799)


def test_json_inputs_carry_length_prefixed_bytes_and_raw_float32():
    import numpy as np

    data = (SAMPLES / "astronaut.jpg").read_bytes()
    raw = base64.b64decode(image_entry(data)["IMAGE"]["b64"])
    assert struct.unpack("<I", raw[:4])[0] == len(data) and raw[4:] == data
    pixels = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    assert np.array_equal(np.frombuffer(base64.b64decode(pixels_entry(pixels)["PIXELS"]["b64"]), "<f4"), pixels.ravel())


@pytest.mark.server
def test_sampleiqa_perf_runs_against_the_embedded_server_and_writes_its_report(tmp_path):
    """The embedded server of `sampleiqa perf` (it opens shared memory for the scorer's
    tensors, which the default locked-down server refuses without the admin key)."""
    from sampleiqa.cli import main

    if not BIQ.exists():
        pytest.skip("BIQ2021 photos not found")
    code = main(["perf", "--images", str(BIQ / "images"), "--photos", "6", "--tensors", "2",
                 "--concurrency", "4", "--request-count", "12",
                 "--batches", "1,2", "--baseline-seconds", "0.2", "--name", "smoke", "--out-dir", str(tmp_path)])
    assert code == 0
    report = (tmp_path / "smoke.md").read_text()
    for model in ("sampleiqa", "preprocess", "scorer"):
        assert f"| {model} | c4 |" in report
        assert (tmp_path / f"smoke-{model}.png").stat().st_size > 1000
    raw = json.loads((tmp_path / "smoke.json").read_text())
    (run,) = raw["runs"]
    assert run["figures"]["ensemble_img_s"] > 0 and run["figures"]["preprocess_ms_per_image"] > 0
    assert sum(sum(p["batches"].values()) for p in run["points"] if p["batch_model"] == "scorer") > 0
