"""Faults during a bulk run, against real servers: a server restart in the middle of
`sampleiqa score`, and per-request timeouts. (Kill-and-resume, server gone and
unwritable output are in test_cli.py.)"""

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from sampleiqa.clients.server import DEFAULT_REPOSITORY, TritonServer, free_port

from .conftest import biq_images

pytestmark = pytest.mark.server
SAMPLEIQA = [sys.executable, "-m", "sampleiqa.cli"]


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def line_count(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_run_continues_through_a_server_restart_on_the_same_port(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in biq_images(100):
        os.symlink(p, photos / p.name)
    port = free_port()
    out = tmp_path / "scores.csv"
    first = TritonServer(DEFAULT_REPOSITORY, grpc_port=port, log_file=tmp_path / "first.log").start()
    run = subprocess.Popen(SAMPLEIQA + ["score", str(photos), "--url", f"127.0.0.1:{port}", "--out", str(out),
                                        "--concurrency", "2", "--retry-seconds", "180"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while line_count(out) <= 20:
            assert run.poll() is None and time.monotonic() < deadline, "the run ended before the server was killed"
            time.sleep(0.05)
        first.process.kill()  # SIGKILL: no drain, in-flight requests fail
        first.process.wait()
        scored_before = line_count(out) - 1
        assert run.poll() is None and scored_before < 100  # still running, with work left
        second = TritonServer(DEFAULT_REPOSITORY, grpc_port=port, log_file=tmp_path / "second.log").start()
        try:
            _, err = run.communicate(timeout=600)
            assert run.returncode == 0, err
            with grpcclient.InferenceServerClient(second.url) as c:  # the new server did the rest
                stats = c.get_inference_statistics("sampleiqa", as_json=True)["model_stats"][0]
            assert int(stats.get("inference_count", 0)) > 0
        finally:
            second.stop()
    finally:
        first.stop()
        if run.poll() is None:
            run.kill()
    got = rows(out)
    assert sorted(r["path"] for r in got) == sorted(str(photos / p.name) for p in biq_images(100))
    assert all(r["status"] == "ok" for r in got), [r for r in got if r["status"] != "ok"][:3]


def test_per_request_timeout_gives_timeout_rows_not_a_hang(server, client, tmp_path):
    out = tmp_path / "scores.csv"
    res = subprocess.run(SAMPLEIQA + ["score", *biq_images(3), "--url", server.url, "--out", out,
                                      "--timeout", "0.001"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    got = rows(out)
    assert len(got) == 3
    assert all(r["status"] == "error" and r["error"].startswith("[timeout] ") for r in got), got
    assert "timeout 3" in res.stderr  # the summary counts them
    assert client.score(biq_images(1)[0].read_bytes()).ok  # the server is fine afterwards
