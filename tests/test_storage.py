"""Object-store reads as a distributed run's actors do them (clients/storage.py), against a
real S3 server (moto) behind a fault-injecting proxy (perf/faultproxy.py): transient faults
retried to the right bytes, reads overlapped, what outlasts the retries a `[storage]` code,
and the output's lease (clients/lock.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("pyarrow.fs")
pytest.importorskip("moto")

from sampleiqa.clients.files import FileRefused  # noqa: E402
from sampleiqa.clients.lock import Lease, OutputBusy  # noqa: E402
from sampleiqa.clients.shards import LEASE, META, Output  # noqa: E402
from sampleiqa.clients.storage import Reader, Retries, read_ahead  # noqa: E402
from sampleiqa.perf.faultproxy import FaultProxy  # noqa: E402
from sampleiqa.perf.s3 import moto_server, options  # noqa: E402

FILES = 48


@pytest.fixture(scope="module")
def s3():
    """A moto server holding FILES small objects, photos/k/NNN.jpg, with distinct bytes."""
    with moto_server() as (port, fs):
        fs.create_dir("photos")
        for i in range(FILES):
            with fs.open_output_stream(f"photos/k/{i:03d}.jpg") as f:
                f.write(_content(i))
        yield port


def _content(i: int) -> bytes:
    return f"object {i} ".encode() * (100 + i)


def _locations(port: int) -> list[tuple[str, str]]:
    return [(f"s3://photos/k/{i:03d}.jpg", f"s3://photos/k/{i:03d}.jpg?{options(port)}") for i in range(FILES)]


def _read_all(port: int, depth: int, reader: Reader | None = None) -> tuple[list, float]:
    reader = reader or Reader()
    start = time.monotonic()
    with ThreadPoolExecutor(depth) as pool:
        got = list(read_ahead(reader.read, _locations(port), pool, depth))
    return got, time.monotonic() - start


def test_ten_percent_of_reads_failing_transiently_still_read_every_object_right(s3):
    proxy = FaultProxy(s3, fail_rate=0.10, stall_s=4, seed=1)
    try:
        got, seconds = _read_all(proxy.port, depth=8)
    finally:
        proxy.close()
    print(f"\n{FILES} reads, faults injected: {dict(proxy.counts)}, {seconds:.1f}s")
    assert all(proxy.counts[k] > 0 for k in ("reset", "slowdown", "stall")), proxy.counts
    assert [name for name, _ in got] == [name for name, _ in _locations(s3)], "read_ahead kept the order"
    assert [data for _, data in got] == [_content(i) for i in range(FILES)]


def test_reads_ahead_at_concurrency_8_are_5x_faster_than_one_at_a_time_with_50ms_reads(s3):
    proxy = FaultProxy(s3, latency_s=0.05)
    try:
        rates = {}
        for depth in (1, 8, 1, 8):  # interleaved: a noisy host slows both alike
            got, seconds = _read_all(proxy.port, depth)
            assert [data for _, data in got] == [_content(i) for i in range(FILES)]
            rates.setdefault(depth, []).append(FILES / seconds)
    finally:
        proxy.close()
    one, eight = max(rates[1]), max(rates[8])
    print(f"\nfiles/s with 50 ms per request: {one:.1f} at 1, {eight:.1f} at 8 ({eight / one:.1f}x)")
    assert eight >= 5 * one


def test_a_missing_object_is_final_and_a_fault_that_outlasts_the_retries_is_storage(s3):
    reader = Reader(retries=Retries(attempts=2, base_s=0.01))
    with pytest.raises(FileRefused) as missing:
        reader.read(f"s3://photos/k/nothing.jpg?{options(s3)}")
    assert missing.value.result.error_code == "unreadable"
    # Every request refused with 503 SlowDown: the S3 client's own retries, then ours, give up.
    proxy = FaultProxy(s3, fail_rate=1.0, stall_s=0.5)
    try:
        start = time.monotonic()
        with pytest.raises(FileRefused) as refused:
            reader.read(f"s3://photos/k/000.jpg?{options(proxy.port)}")
    finally:
        proxy.close()
    print(f"\ngave up after {time.monotonic() - start:.0f}s and {proxy.counts['object requests']} requests")
    assert refused.value.result.error_code == "storage"
    assert "still failing after 2 tries" in refused.value.result.error
    assert reader.retries.retried == 1


def test_a_second_lease_is_refused_while_the_first_is_live(tmp_path):
    output = Output(str(tmp_path / "out"))
    first = Lease(output).acquire()
    try:
        with pytest.raises(OutputBusy, match=f"pid {os.getpid()} on"):
            Lease(Output(str(tmp_path / "out"))).acquire()
    finally:
        first.release()
    assert output.read(META, LEASE) is None, "a released lease is removed"
    Lease(output).acquire().release()


def test_the_lease_of_a_dead_run_on_this_host_is_taken_over_at_once(tmp_path):
    code = (
        "import sys, os; from sampleiqa.clients.shards import Output; from sampleiqa.clients.lock import Lease; "
        "Lease(Output(sys.argv[1])).acquire(); os._exit(0)"
    )  # exits holding it, like a SIGKILL
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "out")], check=True)
    assert Output(str(tmp_path / "out")).read(META, LEASE) is not None
    Lease(Output(str(tmp_path / "out"))).acquire().release()


def test_two_runs_leasing_one_object_store_output_at_once_one_wins(s3):
    uri = f"s3://photos/out?{options(s3)}"
    won, refused = [], []

    def take():
        try:
            won.append(Lease(Output(uri)).acquire())
        except OutputBusy as exc:
            refused.append(str(exc))

    runs = [threading.Thread(target=take) for _ in range(2)]
    for t in runs:
        t.start()
    for t in runs:
        t.join()
    assert len(won) == 1 and len(refused) == 1, (won, refused)
    assert "is being written by another run" in refused[0]
    lost = threading.Event()
    thief = Lease(Output(uri), lost=lost)
    thief.owner["host"] = "another-host"
    thief._write()  # a run that found this one's lease expired
    assert won[0].lost.wait(Lease.BEAT_S * 3), "the holder learns it lost the lease"
    won[0].release()
    assert Output(uri).read(META, LEASE) is not None, "the new holder's lease stays"
