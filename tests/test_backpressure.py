"""Memory bounded under load (issue 25): the credits between the ensemble's steps, Triton's
queue bounds refusing work at once, clients that retry those refusals (never a row), and the
server's peak memory at 256 requests in flight. Real Triton, real gRPC, real photos."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from sampleiqa.build.repository import build_repository
from sampleiqa.build.triton_config import RepositorySettings, all_configs
from sampleiqa.runtime import admission
from sampleiqa.runtime.admission import CropCredits
from sampleiqa.runtime.contracts import PREPROCESS, SCORER
from sampleiqa.runtime.scores import score_in_chunks
from sampleiqa.server import DEFAULT_REPOSITORY, TritonServer

from .helpers import SAMPLEIQA, biq_images, rows

ONNX = DEFAULT_REPOSITORY / SCORER / "1" / "model.onnx"


# --- the credits (sampleiqa.runtime.admission), between real processes ----------------------------


def busy_scorer(path: Path):
    """The scorer's side of the credits, in a run (a scorer that is running is not idle)."""
    return CropCredits(1, path).scoring()


def test_credits_are_taken_up_to_the_limit_and_given_back(tmp_path):
    credits = CropCredits(4, tmp_path / "credits")
    with busy_scorer(tmp_path / "credits"):
        assert credits.try_take(3) and not credits.try_take(2) and credits.try_take(1)
        assert credits.out() == 4 and not credits.try_take(1)
        credits.give_back(2)
        assert credits.try_take(2) and credits.out() == 4
        credits.give_back(10)  # a direct call to the scorer gives back what nobody took: never below zero
        assert credits.out() == 0
        assert credits.try_take(9), "a batch larger than the limit goes when nothing else is out"
        assert not credits.try_take(1)
    assert credits.forgiven == 0


def _take_in_another_process(path: str, n: int, done) -> None:
    CropCredits(2, path).take(n)
    done.set()


def test_a_second_process_waits_for_credits_until_the_scorer_gives_them_back(tmp_path):
    path = tmp_path / "credits"
    mine = CropCredits(2, path)
    mine.take(2)
    done = multiprocessing.get_context("spawn").Event()
    other = multiprocessing.get_context("spawn").Process(target=_take_in_another_process, args=(str(path), 1, done))
    with busy_scorer(path):
        other.start()
        try:
            assert not done.wait(1.5), "took a credit while none was free and the scorer was running"
            mine.give_back(1)
            assert done.wait(10), "still waiting after a credit came back"
        finally:
            other.join(10)
    assert mine.out() == 2 and mine.forgiven == 0


def test_credits_nobody_will_give_back_are_forgiven(tmp_path, monkeypatch):
    """Crops asked of preprocess directly never reach the scorer: an idle scorer forgives
    them at once; a scorer that runs without giving any back (hung), after STALE_S."""
    credits = CropCredits(2, tmp_path / "credits")
    credits.take(2)
    start = time.monotonic()
    credits.take(1)  # the scorer never ran: idle
    assert time.monotonic() - start < 1 and credits.forgiven == 1 and credits.out() == 1
    monkeypatch.setattr(admission, "STALE_S", 0.5)
    with busy_scorer(tmp_path / "credits"):
        credits.take(1)
        start = time.monotonic()
        credits.take(1)  # 2 out, the scorer running and giving none back
        assert 0.3 < time.monotonic() - start < 5 and credits.forgiven == 2 and credits.out() == 1


# --- the scorer's runs ---------------------------------------------------------------------


def test_scores_in_chunks_follow_the_requests_in_order():
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(n, 3, 2, 2)).astype(np.float32) for n in (1, 5, 2, 3)]
    sizes, given_back = [], []

    def run(pixels):
        sizes.append(len(pixels))
        return pixels.reshape(len(pixels), -1).sum(axis=1, keepdims=True)

    scores = score_in_chunks(run, batches, 4, given_back.append)
    expected = np.concatenate(batches).reshape(11, -1).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    assert sizes == [4, 4, 3] and given_back == sizes


# --- generated configs ----------------------------------------------------------------------


def test_configs_bound_the_queues_and_pass_the_credits():
    cpu = all_configs(RepositorySettings())
    pre, scorer = cpu[PREPROCESS], cpu[SCORER]
    assert pre.dynamic_batching.default_queue_policy.max_queue_size == 64
    assert scorer.dynamic_batching.default_queue_policy.max_queue_size == 128
    assert pre.parameters["crops_in_flight"].string_value == scorer.parameters["crops_in_flight"].string_value == "48"
    assert list(pre.dynamic_batching.preferred_batch_size) == [4]
    assert list(scorer.dynamic_batching.preferred_batch_size) == [8]
    assert scorer.parameters["run_batch"].string_value == "4"
    # A TensorRT or ORT-backend scorer cannot give credits back: no credits, only the queue bounds.
    trt = all_configs(RepositorySettings(target="gpu-trt", crops_in_flight=16))
    assert "crops_in_flight" not in trt[PREPROCESS].parameters
    assert trt[SCORER].dynamic_batching.default_queue_policy.max_queue_size == 128
    assert (
        all_configs(RepositorySettings(target="gpu-torch"))[SCORER].parameters["crops_in_flight"].string_value == "256"
    )
    with pytest.raises(ValueError):
        RepositorySettings(ort_run_batch=0)


# --- against the real Triton ---------------------------------------------------------------


def tight_repository(out: Path) -> Path:
    """The shipped scorer behind tiny bounds: 2 crops in flight, 2 requests queued per step,
    so that a few clients already meet refusals."""
    settings = RepositorySettings(crops_in_flight=2, preprocess_max_queue=2, scorer_max_queue=2, preprocess_instances=1)
    return build_repository(out, settings, onnx_path=ONNX)


@pytest.fixture(scope="module")
def tight(tmp_path_factory):
    work = tmp_path_factory.mktemp("tight")
    with TritonServer(tight_repository(work / "repo"), log_file=work / "triton.log") as server:
        yield server


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for p in biq_images(60):
        os.symlink(p, folder / p.name)
    return folder


@pytest.mark.server
def test_over_the_queue_bound_triton_refuses_and_the_server_stays_up(tight, photos):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from sampleiqa.clients.protocol import build_inputs, classify

    data = sorted(photos.iterdir())[0].read_bytes()

    def once(_):
        with grpcclient.InferenceServerClient(tight.url) as c:
            inputs, outputs = build_inputs(grpcclient, [data])
            try:
                c.infer("sampleiqa", inputs, outputs=outputs, client_timeout=120)
                return "ok"
            except InferenceServerException as exc:
                return f"{classify(exc)[0]}:{exc.status()}:{exc.message()}"

    with ThreadPoolExecutor(32) as pool:
        outcomes = list(pool.map(once, range(32)))
    refused = [o for o in outcomes if o != "ok"]
    assert refused, "32 requests at once against 2 crops in flight and queues of 2: none refused"
    assert all(o.startswith("busy:StatusCode.UNAVAILABLE:") and "maximum queue size" in o for o in refused), refused
    assert outcomes.count("ok") >= 3
    with grpcclient.InferenceServerClient(tight.url) as c:
        assert c.is_server_ready() and c.is_model_ready("sampleiqa")


@pytest.mark.server
def test_sync_and_async_clients_retry_refusals_and_every_photo_is_scored(tight, photos, server):
    from sampleiqa.clients import ScoringClient
    from sampleiqa.clients.aio import AsyncScoringClient

    items = [(p.name, p.read_bytes()) for p in sorted(photos.iterdir())[:40]]
    with ScoringClient(server.url) as roomy:  # the shipped repository: the reference scores
        reference = dict(roomy.score_many(items, concurrency=4))
    with ScoringClient(tight.url, timeout_s=120) as client:
        results = dict(client.score_many(items, concurrency=32))
        assert client.refusals > 0, "no refusal at 32 in flight against queues of 2"
    assert sorted(results) == sorted(reference)
    for name, result in results.items():
        assert result.ok, (name, result)
        assert abs(result.score - reference[name].score) < 1e-5, name  # runs of 4 or of 1: the same scores

    async def score_all():
        async with AsyncScoringClient(tight.url, timeout_s=120) as client:
            scored = await asyncio.gather(*(client.score(data) for _, data in items[:24]))
            return scored, client.refusals

    scored, refusals = asyncio.run(score_all())
    assert refusals > 0 and all(r.ok for r in scored)


@pytest.mark.server
def test_bulk_cli_at_256_in_flight_writes_one_row_per_file_and_counts_refusals(tight, photos, tmp_path):
    out = tmp_path / "scores.csv"
    res = subprocess.run(
        SAMPLEIQA
        + ["score", str(photos), "--url", tight.url, "--out", str(out), "--concurrency", "256", "--timeout", "300"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    written = rows(out)
    names = [Path(r["path"]).name for r in written]
    assert sorted(names) == sorted(p.name for p in photos.iterdir()), "a file has no row, or two"
    assert all(r["status"] == "ok" for r in written), [r for r in written if r["status"] != "ok"][:3]
    refused = int(res.stderr.split("server busy: ")[1].split()[0])
    assert refused > 0, res.stderr


@pytest.mark.server
def test_ray_engine_shards_at_256_in_flight_keep_every_row(tight, photos, tmp_path):
    """The Ray actors' shard path (score_shard) against the tight server: one row per file,
    and the shard's summary counts the refusals."""
    pytest.importorskip("ray")
    from sampleiqa.clients import ScoringClient
    from sampleiqa.clients.protocol import RetryPolicy
    from sampleiqa.clients.ray_engine import Reader, Scoring, score_shard
    from sampleiqa.clients.shards import Job, Output

    files = sorted(photos.iterdir())
    output = Output(str(tmp_path / "out"))
    job = output.write_listing(Job([str(photos)], False, "csv", 1000), ((str(p), str(p)) for p in files))
    scoring = Scoring((tight.url,), timeout_s=300, concurrency=256)
    with ScoringClient(tight.url, timeout_s=300, retry=RetryPolicy(seconds=60)) as client:
        stats = score_shard(0, output, job.format, client, Reader(), scoring)
    assert job.shards == 1 and not stats.aborted and stats.refused > 0
    rows = output.rows(0, "csv")
    assert sorted(Path(r["path"]).name for r in rows) == sorted(p.name for p in files)
    assert all(r["status"] == "ok" for r in rows)
    assert dict(output.done()) == {0: {"rows": len(files), "retry": 0}}


@pytest.mark.server
def test_shipped_server_memory_stays_bounded_at_256_in_flight(server, tmp_path):
    """The shipped repository (README command 1's server) under one client with 256 requests in
    flight: every row, and the whole server's peak memory (sum of PSS) under 2 GiB. Before
    the bounds it was ~4.5 GiB at 64 (perf/results/memory-under-load.md)."""
    from sampleiqa.perf.memory_sweep import PeakSampler

    folder = tmp_path / "photos"
    folder.mkdir()
    for p in biq_images(120):
        os.symlink(p, folder / p.name)
    out = tmp_path / "scores.csv"
    with PeakSampler(server.process.pid) as sampler:
        res = subprocess.run(
            SAMPLEIQA
            + [
                "score",
                str(folder),
                "--url",
                server.url,
                "--out",
                str(out),
                "--concurrency",
                "256",
                "--timeout",
                "300",
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert res.returncode == 0, res.stderr
    written = rows(out)
    assert len(written) == 120 and all(r["status"] == "ok" for r in written)
    assert 0 < sampler.peak["pss"] < 2048, sampler.peak
