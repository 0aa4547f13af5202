"""Faults during a bulk run, against real servers: the server killed in the middle of
`sampleiqa score` (stop, then resume), restarted in the middle of it (retry and go on), and
per-request timeouts. (The CLI itself killed, no server at all and unwritable output are in
test_cli.py.)"""

import os
import subprocess
import time
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from sampleiqa.procfs import orphaned_stub
from sampleiqa.server import DEFAULT_REPOSITORY, TritonServer, free_port

from .helpers import SAMPLEIQA, biq_images, rows


def line_count(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


N_PHOTOS = 150


def _score(photos: Path, port: int, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        SAMPLEIQA
        + ["score", str(photos), "--url", f"127.0.0.1:{port}", "--out", str(out), "--concurrency", "2", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_when_rows(server: TritonServer, run: subprocess.Popen, out: Path, rows_wanted: int) -> int:
    """SIGKILL the server (no drain: in-flight requests fail) once `out` has that many rows."""
    deadline = time.monotonic() + 300
    while line_count(out) - 1 < rows_wanted:
        assert run.poll() is None and time.monotonic() < deadline, "the run ended before the server was killed"
        time.sleep(0.05)
    server.process.kill()
    server.process.wait()
    return line_count(out) - 1


@pytest.mark.server
def test_server_killed_then_resumed_then_restarted_mid_run(tmp_path):
    """1. The server dies mid-run and stays down: the CLI says STOPPED and exits 1.
    2. `--resume` against a new server on the same port; that server is killed too and a
       third one starts: the run retries with backoff and finishes.
    The output ends with exactly one ok row per photo. Rows reach the file in flushes of up
    to 64 rows (or one second), so each kill waits for one more flush and 150 photos leave
    work for the next phase even on a fast machine."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in biq_images(N_PHOTOS):
        os.symlink(p, photos / p.name)
    port = free_port()
    out = tmp_path / "scores.csv"
    servers, run, stubs = [], None, []

    def start(name):
        servers.append(TritonServer(DEFAULT_REPOSITORY, grpc_port=port, log_file=tmp_path / f"{name}.log").start())
        stubs.extend(servers[-1].stub_pids)
        return servers[-1]

    try:
        first = start("first")
        run = _score(photos, port, out, "--retry-seconds", "2")
        _kill_when_rows(first, run, out, 1)
        _, err = run.communicate(timeout=120)
        assert run.returncode == 1 and "STOPPED" in err and "--resume" in err, err
        stopped_at = len(rows(out))
        assert 1 <= stopped_at < N_PHOTOS

        second = start("second")
        run = _score(photos, port, out, "--resume", "--retry-seconds", "180")
        killed_at = _kill_when_rows(second, run, out, stopped_at + 1)
        assert run.poll() is None and killed_at < N_PHOTOS  # still running, with work left
        third = start("third")
        _, err = run.communicate(timeout=600)
        assert run.returncode == 0, err
        with grpcclient.InferenceServerClient(third.url) as c:  # the restarted server did the rest
            stats = c.get_inference_statistics("sampleiqa", as_json=True)["model_stats"][0]
        assert int(stats.get("inference_count", 0)) > 0
    finally:
        for s in servers:
            s.stop()
        if run is not None and run.poll() is None:
            run.kill()
    assert len(stubs) >= 3 * 3  # each server: 2 preprocess instances and 1 scorer
    time.sleep(0.5)  # SIGKILL is asynchronous
    assert not [p for p in stubs if orphaned_stub(p)]  # the killed servers' stubs were stopped too
    got = rows(out)
    assert sorted(r["path"] for r in got) == sorted(str(photos / p.name) for p in biq_images(N_PHOTOS))
    assert all(r["status"] == "ok" for r in got), [r for r in got if r["status"] != "ok"][:3]
    assert out.read_bytes().endswith(b"\n")


def test_per_request_timeout_gives_timeout_rows_not_a_hang(server, client, tmp_path):
    out = tmp_path / "scores.csv"
    res = subprocess.run(
        SAMPLEIQA + ["score", *biq_images(3), "--url", server.url, "--out", out, "--timeout", "0.001"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 1 and "NOT FINISHED" in res.stderr, res.stderr  # --resume retries them
    got = rows(out)
    assert len(got) == 3
    assert all(r["status"] == "error" and r["error"].startswith("[timeout] ") for r in got), got
    assert "timeout 3" in res.stderr  # the summary counts them
    assert client.score(biq_images(1)[0].read_bytes()).ok  # the server is fine afterwards


def test_old_default_triton_logs_are_pruned_not_piled_up(tmp_path):
    from sampleiqa.server import KEPT_LOGS, prune_logs

    for i in range(KEPT_LOGS + 5):
        log = tmp_path / f"triton-{50000 + i}.log"
        log.write_text("x")
        os.utime(log, (1_000_000 + i, 1_000_000 + i))  # 50000 is the oldest
    (tmp_path / "mine.log").write_text("a log the user named")
    prune_logs(tmp_path)
    left = sorted(p.name for p in tmp_path.glob("triton-*.log"))
    assert left == [f"triton-{50000 + i}.log" for i in range(5, KEPT_LOGS + 5)]
    assert (tmp_path / "mine.log").exists()
