"""`sampleiqa score --engine ray` on a real local Ray cluster (a head node and a worker node
process on loopback), two real Triton replicas, real photos and broken files, and a real
S3-compatible server (moto) on loopback; the faults of issue 15: SIGKILL of a Ray worker,
SIGKILL of a Triton replica, SIGINT of the driver and a resume. Each run must end with
exactly one row per file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("ray")
pa_fs = pytest.importorskip("pyarrow.fs")

from sampleiqa.clients.shards import META, Output, decode_rows  # noqa: E402
from sampleiqa.perf.faultproxy import FaultProxy  # noqa: E402
from sampleiqa.perf.ray_scaling import RAY, RAY_ENV, start_head  # noqa: E402
from sampleiqa.perf.s3 import S3_ENV, moto_server, options  # noqa: E402
from sampleiqa.procfs import all_stats, argv  # noqa: E402
from sampleiqa.server import DEFAULT_REPOSITORY, TritonServer  # noqa: E402

from .badinputs import CASES  # noqa: E402
from .helpers import SAMPLES, all_running, biq_images  # noqa: E402

# conftest marks the tests that ask for `cluster` (ray) or `replicas` (server); the others that
# start a cluster, a Triton or an S3 server say so here.

SAMPLEIQA = [sys.executable, "-m", "sampleiqa.cli"]
BAD = [c for c in CASES if c.outcome != "ok" and c.name != "oversize.jpg"]  # 64 MiB: kept out of S3
PHOTOS = int(os.environ.get("SAMPLEIQA_RAY_PHOTOS", 200))


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    """Two Triton servers, unsupervised: a replica killed by a test stays dead."""
    logs = tmp_path_factory.mktemp("replicas")
    servers = [TritonServer(DEFAULT_REPOSITORY, log_file=logs / f"triton-{i}.log", supervise=False) for i in range(2)]
    with all_running(servers):
        yield servers


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """`ray start --head` on loopback, and one worker node process joining it."""
    env = {**os.environ, **S3_ENV, **RAY_ENV}
    common = ("--num-cpus", "1", "--disable-usage-stats")
    address = start_head(tmp_path_factory.mktemp("ray"), env, common)
    try:
        subprocess.run(
            [RAY, "start", "--address", address, "--node-ip-address", "127.0.0.1", *common],
            check=True,
            env=env,
            capture_output=True,
        )
        yield address
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for photo in biq_images(PHOTOS):
        shutil.copyfile(photo, folder / photo.name)
    for case in BAD:
        (folder / case.name).write_bytes(case.make())
    return folder


def score(args, cluster, replicas, **kw) -> subprocess.Popen:
    urls = [a for s in replicas if s.running() for a in ("--url", s.url)]
    cmd = SAMPLEIQA + [
        "score",
        "--shard-size",
        "20",
        "--concurrency",
        "4",
        *map(str, args),
        "--engine",
        "ray",
        "--ray-address",
        cluster,
        *urls,
    ]  # args after the defaults: the last of a flag wins
    return subprocess.Popen(
        cmd, env={**os.environ, **S3_ENV, **RAY_ENV}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw
    )


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def all_rows(out: str, fmt: str = "parquet") -> list[dict]:
    output = Output(out)
    return [r for name in output.shard_names() for r in decode_rows(output.read(name), fmt, name)]


def assert_one_row_per_file(rows: list[dict], folder: Path) -> dict[str, dict]:
    counts = Counter(Path(r["path"]).name for r in rows)
    assert [n for n, c in counts.items() if c > 1] == [], "a file has two rows"
    assert set(counts) == {p.name for p in folder.iterdir()}, "a file has no row"
    by_name = {Path(r["path"]).name: r for r in rows}
    for case in BAD:
        assert by_name[case.name]["status"] == "error" and by_name[case.name]["error"].startswith(f"[{case.outcome}]")
    photos = [r for n, r in by_name.items() if n.startswith("ss0")]
    assert all(r["status"] == "ok" and 0 <= float(r["score"]) <= 1 for r in photos), "a photo was not scored"
    return by_name


def wait_for_shards(out: Path, n: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while len(list((out / META / "done").glob("*.json"))) < n:
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "no shard was finished in time"
        time.sleep(0.2)


def test_without_the_ray_extra_it_says_what_to_install(tmp_path):
    # A serve-only install has neither ray nor pyarrow: imported, they raise ImportError.
    code = (
        "import sys; sys.modules['ray'] = sys.modules['pyarrow'] = None; from sampleiqa.cli import main; "
        f"sys.exit(main(['score', '--engine', 'ray', '--out', {str(tmp_path / 'out')!r}]))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 2 and "pip install 'sampleiqa[ray]'" in res.stderr, res.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.ray
@pytest.mark.server
def test_with_no_cluster_and_no_url_it_starts_both_for_the_run(tmp_path):
    """First in this module, before its cluster exists: what a new user's first try does."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    res = subprocess.run(
        SAMPLEIQA
        + ["score", "--engine", "ray", "--out", str(tmp_path / "scores"), "--server-log", str(tmp_path / "t.log")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    rows = all_rows(str(tmp_path / "scores"))
    samples = sorted(p.name for p in SAMPLES.glob("*.jpg"))
    assert sorted(Path(r["path"]).name for r in rows) == samples
    assert all(r["status"] == "ok" for r in rows) and f"{len(samples)} files: {len(samples)} scored ok" in res.stderr


def test_scores_a_folder_with_the_local_rows_and_codes(inputs, cluster, replicas, tmp_path):
    out = tmp_path / "scores"
    code, log = finish(score([inputs, "--out", out], cluster, replicas))
    assert code == 0, log
    by_name = assert_one_row_per_file(all_rows(str(out)), inputs)
    assert f"{PHOTOS + len(BAD)} files: {PHOTOS} scored ok" in log
    # The same files through the local CLI: the same scores and codes.
    local = tmp_path / "local.csv"
    some = [inputs / n for n in sorted(by_name)[:5]] + [inputs / c.name for c in BAD]
    res = subprocess.run(
        SAMPLEIQA + ["score", *map(str, some), "--url", replicas[0].url, "--out", str(local)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    for row in decode_rows(local.read_bytes(), "csv", str(local)):
        ray_row = by_name[Path(row["path"]).name]
        assert row["status"] == ray_row["status"] and row["error"] == ray_row["error"]
        if row["score"]:
            assert abs(float(row["score"]) - ray_row["score"]) < 1e-6
    # Run again: nothing to do, like the local CLI.
    code, log = finish(score([inputs, "--out", out], cluster, replicas))
    assert code == 0 and "nothing to do" in log, log


def test_worker_killed_mid_run_still_one_row_per_file(inputs, cluster, replicas, tmp_path):
    out = tmp_path / "scores"
    proc = score([inputs, "--out", out], cluster, replicas)
    wait_for_shards(out, 1, proc)
    workers = ray_workers("ShardScorer")
    assert workers, "no scoring actor process found"
    os.kill(workers[0], signal.SIGKILL)  # Ray restarts the actor and retries its shard
    code, log = finish(proc)
    assert code == 0, log
    assert_one_row_per_file(all_rows(str(out)), inputs)


def test_driver_interrupted_on_a_loaded_machine_stops_at_once_then_resumes(inputs, cluster, replicas, tmp_path):
    """Ctrl-C with every core busy beside the run (where it once went unheeded): exit 1 and
    STOPPED within seconds, far from the run's end (small shards: most are left)."""
    out = tmp_path / "scores"
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        proc = score([inputs, "--out", out, "--format", "jsonl", "--shard-size", "5"], cluster, replicas)
        wait_for_shards(out, 2, proc)
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        code, log = finish(proc, timeout=120)
        took = time.monotonic() - sent
    finally:
        for h in hogs:
            h.kill()
    assert code == 1 and "STOPPED: interrupted" in log, log
    assert took < 15, f"the run took {took:.0f}s to stop"
    rows = all_rows(str(out), "jsonl")
    assert 0 < len(rows) < PHOTOS + len(BAD) and len(rows) == len({r["path"] for r in rows})
    code, log = finish(score([inputs, "--out", out, "--format", "jsonl", "--resume"], cluster, replicas))
    assert code == 0, log
    assert_one_row_per_file(all_rows(str(out), "jsonl"), inputs)


def test_two_drivers_on_one_output_one_is_refused_and_rows_stay_one_per_file(inputs, cluster, replicas, tmp_path):
    out = tmp_path / "scores"
    runs = [score([inputs, "--out", out, "--resume"], cluster, replicas) for _ in range(2)]
    results = [finish(p) for p in runs]
    assert sorted(code for code, _ in results) == [0, 2], results
    refused = next(log for code, log in results if code == 2)
    assert "is being written by another run (pid" in refused and "Traceback" not in refused, refused
    assert_one_row_per_file(all_rows(str(out)), inputs)
    assert not (out / META / "lease.json").exists(), "the winner gave its lease back"


def test_overwrite_with_a_mistyped_or_empty_input_leaves_the_output_whole(cluster, replicas, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for photo in biq_images(3):
        shutil.copyfile(photo, folder / photo.name)
    out = tmp_path / "scores"
    code, log = finish(score([folder, "--out", out], cluster, replicas))
    assert code == 0, log
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    empty = tmp_path / "empty"
    empty.mkdir()
    for inputs, said in (([tmp_path / "inn"], "no such file or folder"), ([empty], "no image files")):
        code, log = finish(score([*inputs, "--out", out, "--overwrite"], cluster, replicas))
        assert code == 2 and said in log and "Traceback" not in log, log
        assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.s3
def test_s3_inputs_and_outputs_through_transient_faults_on_a_real_s3_server(cluster, replicas, tmp_path):
    """Every object request goes through a proxy that fails 10% of reads (connection resets,
    503 SlowDown, stalls): every photo still ends `ok`, with one row."""
    with moto_server() as (port, fs):
        fs.create_dir("photos")
        fs.create_dir("results")
        folder = tmp_path / "in"
        folder.mkdir()
        for photo in biq_images(30):
            shutil.copyfile(photo, folder / photo.name)
        for case in BAD[:4]:
            (folder / case.name).write_bytes(case.make())
        # Keys a URI must quote, in the first shard an actor reads (a space is in every one).
        (folder / "a #1 ?café%20.jpg").write_bytes(biq_images(1)[0].read_bytes())
        for f in folder.iterdir():
            with fs.open_output_stream(f"photos/batch1/{f.name}") as s:
                s.write(f.read_bytes())
        proxy = FaultProxy(port, fail_rate=0.10, stall_s=4, seed=2)
        try:
            out = f"s3://results/run1?{options(proxy.port)}"
            code, log = finish(
                score([f"s3://photos/batch1?{options(proxy.port)}", "--out", out, "--format", "csv"], cluster, replicas)
            )
        finally:
            proxy.close()
        print(f"\nfaults injected: {dict(proxy.counts)}")
        assert code == 0, log
        assert all(proxy.counts[k] > 0 for k in ("reset", "slowdown", "stall")), proxy.counts
        rows = all_rows(f"s3://results/run1?{options(port)}", "csv")
        assert all(r["path"].startswith("s3://photos/batch1/") and "endpoint_override" not in r["path"] for r in rows)
        counts = Counter(Path(r["path"]).name for r in rows)
        assert set(counts) == {f.name for f in folder.iterdir()} and max(counts.values()) == 1
        assert sum(r["status"] == "ok" for r in rows) == 31, [r for r in rows if r["status"] != "ok"]


def test_a_shard_that_fails_is_isolated_and_resume_scores_it(inputs, cluster, replicas, tmp_path):
    """Shard 1's rows cannot be written (a folder sits at its name): the other shards are
    scored, the run ends with its summary and NOT FINISHED; once the way is clear, --resume
    scores shard 1 alone."""
    out = tmp_path / "scores"
    (out / "part-000001.parquet" / "x").mkdir(parents=True)
    code, log = finish(score([inputs, "--out", out], cluster, replicas))
    assert code == 1 and "NOT FINISHED" in log and "1 shards failed" in log and "shard 1:" in log, log
    assert "Traceback" not in log
    assert len(all_rows(str(out))) == PHOTOS + len(BAD) - 20  # every other shard is whole
    shutil.rmtree(out / "part-000001.parquet")
    code, log = finish(score([inputs, "--out", out, "--resume"], cluster, replicas))
    assert code == 0 and "scoring 1 shards" in log, log
    assert_one_row_per_file(all_rows(str(out)), inputs)


@pytest.mark.s3
def test_scoring_starts_while_a_slow_listing_goes_on_and_a_killed_driver_resumes_it(cluster, replicas, tmp_path):
    """A bucket of 30 folders whose every listing request takes 0.6 s: shards are scored
    before the listing is whole; the driver SIGKILLed then, a --resume picks the listing up
    where it was saved and ends with one row per file."""
    with moto_server() as (port, fs):
        fs.create_dir("photos")
        photos = biq_images(60)
        for i, photo in enumerate(photos):
            with fs.open_output_stream(f"photos/f{i // 2:02d}/{photo.name}") as f:
                f.write(photo.read_bytes())
        proxy = FaultProxy(port, list_latency_s=0.6)
        try:
            out = tmp_path / "scores"
            args = [f"s3://photos?{options(proxy.port)}", "--recursive", "--out", out, "--shard-size", "2"]
            proc = score(args, cluster, replicas)
            wait_for_shards(out, 1, proc)
            job = json.loads((out / META / "job.json").read_text())
            assert job["listed"] is False and job["files"] < len(photos), job
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            code, log = finish(score([*args, "--resume"], cluster, replicas))
        finally:
            proxy.close()
    assert code == 0, log
    assert "resuming the listing after the" in log, log
    rows = all_rows(str(out))
    counts = Counter(Path(r["path"]).name for r in rows)
    assert set(counts) == {p.name for p in photos} and max(counts.values()) == 1
    assert all(r["status"] == "ok" for r in rows)


def test_resume_rescores_only_the_rows_to_retry_and_keeps_the_rest(replicas, tmp_path):
    """A shard task on an output whose shard holds a [server] row: that file is scored
    again, the final rows are kept as they were, and the shard still has one row per file."""
    from sampleiqa.clients import ScoringClient
    from sampleiqa.clients.ray_engine import Reader, Scoring, score_shard
    from sampleiqa.clients.shards import Job

    photos = biq_images(3)
    output = Output(str(tmp_path / "scores"))
    job = output.write_listing(Job([str(tmp_path)], False, "parquet", 10), ((str(p), str(p)) for p in photos))
    kept = {
        "path": str(photos[0]),
        "score": 0.123,
        "face_found": False,
        "face_x": None,
        "face_y": None,
        "face_w": None,
        "face_h": None,
        "status": "ok",
        "error": "",
    }
    lost = {**kept, "path": str(photos[1]), "score": None, "status": "error", "error": "[server] UNAVAILABLE"}
    output.write_rows(0, "parquet", [kept, lost], retry=1)
    with ScoringClient(replicas[0].url) as client:
        stats = score_shard(0, output, job.format, client, Reader(), Scoring((replicas[0].url,)))
    rows = {r["path"]: r for r in output.rows(0, "parquet")}
    assert (stats.skipped, stats.retrying, stats.scored) == (1, 1, 2)
    assert len(rows) == 3 and rows[str(photos[0])]["score"] == 0.123  # kept as it was, not rescored
    assert all(rows[str(p)]["status"] == "ok" for p in photos[1:])
    assert dict(output.done()) == {0: {"rows": 3, "retry": 0}}


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_resume_keeps_and_rescores_files_with_odd_names_in_every_format(replicas, tmp_path, fmt):
    """Names that are not UTF-8, or hold a comma, LF or CR, listed for real: their rows are
    matched to the manifest on a rerun, kept or rescored, never doubled."""
    from sampleiqa.clients import ScoringClient
    from sampleiqa.clients.listing import iter_inputs
    from sampleiqa.clients.protocol import ScoreResult
    from sampleiqa.clients.ray_engine import Reader, Scoring, score_shard
    from sampleiqa.clients.rows import to_row
    from sampleiqa.clients.shards import Job

    folder = tmp_path / "in"
    folder.mkdir()
    photo = biq_images(1)[0].read_bytes()
    for name in [os.fsdecode(b"caf\xe9.jpg"), "a,b.jpg", "line\nbreak.jpg", "cr\rx.jpg", "plain.jpg"]:
        (folder / name).write_bytes(photo)
    output = Output(str(tmp_path / "scores"))
    output.write_listing(Job([str(folder)], False, fmt, 10), iter_inputs([str(folder)], False))
    entries = output.manifest(0)
    lost, kept = ScoreResult.failure("server", "[server] UNAVAILABLE"), ScoreResult(0.123, False, (0, 0, 0, 0))
    output.write_rows(0, fmt, [to_row(p, lost if i % 2 == 0 else kept) for i, (p, _) in enumerate(entries)], retry=3)
    with ScoringClient(replicas[0].url) as client:
        stats = score_shard(0, output, fmt, client, Reader(), Scoring((replicas[0].url,)))
    rows = output.rows(0, fmt)
    assert (stats.skipped, stats.retrying, stats.scored) == (2, 3, 3)
    assert len(rows) == 5 and all(r["status"] == "ok" for r in rows)
    assert sorted(float(r["score"]) == 0.123 for r in rows) == [False] * 3 + [True] * 2  # the kept two as they were
    assert dict(output.done()) == {0: {"rows": 5, "retry": 0}}


@pytest.mark.server
def test_a_busy_server_at_256_in_flight_loses_and_doubles_no_row(inputs, cluster, tmp_path):
    """Two actors at --concurrency 256 against one server with tiny queue bounds (issue 25):
    the refusals are retried, never rows; exactly one row per file, and the summary counts them."""
    from .test_backpressure import tight_repository

    with TritonServer(tight_repository(tmp_path / "repo"), log_file=tmp_path / "tight.log") as tight:
        out = tmp_path / "scores"
        cmd = SAMPLEIQA + [
            "score",
            str(inputs),
            "--out",
            str(out),
            "--engine",
            "ray",
            "--ray-address",
            cluster,
            "--url",
            tight.url,
            "--shard-size",
            "100",
            "--concurrency",
            "256",
            "--timeout",
            "300",
        ]
        res = subprocess.run(cmd, env={**os.environ, **S3_ENV, **RAY_ENV}, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert_one_row_per_file(all_rows(str(out)), inputs)
    log = res.stdout + res.stderr
    assert int(log.split("server busy: ")[1].split()[0]) > 0, log


def test_replica_killed_mid_run_fails_over(inputs, cluster, replicas, tmp_path):
    """Last in this module: the killed replica stays down."""
    out = tmp_path / "scores"
    proc = score([inputs, "--out", out], cluster, replicas)
    wait_for_shards(out, 1, proc)
    replicas[1].process.send_signal(signal.SIGKILL)
    code, log = finish(proc)
    assert code == 0, log
    assert_one_row_per_file(all_rows(str(out)), inputs)


def ray_workers(name: str) -> list[int]:
    return [
        pid for pid in all_stats() if (args := argv(pid)) and args[0].startswith(b"ray::") and name.encode() in args[0]
    ]
