"""The real Triton binary serving the committed CPU repository, over real gRPC."""

import asyncio
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from sampleiqa.runtime.contracts import CROP, FACE_BOX, FACE_FOUND, IMAGE, PIXELS, PREPROCESS, SCORE

from .helpers import FACES, NO_FACE, biq_images, on_face

pytestmark = pytest.mark.server


@pytest.mark.parametrize("path", list(FACES), ids=lambda p: p.name)
def test_served_face_box_lies_on_the_face(client, path):
    if not path.exists():
        pytest.skip("photo not available")
    r = client.score(path.read_bytes())
    assert r.ok and r.face_found, r
    assert on_face(r.face_box, FACES[path]), (r.face_box, FACES[path])
    assert np.isfinite(r.score)


def test_no_face_still_scores_with_face_found_false(client):
    r = client.score(NO_FACE[0].read_bytes())
    assert r.ok and r.face_found is False and np.isfinite(r.score)


def test_batch_of_16_matches_one_by_one(client):
    images = [p.read_bytes() for p in biq_images(16)]
    batch = client.score_batch(images)
    single = [client.score(d) for d in images]
    assert all(r.ok for r in batch + single)
    np.testing.assert_allclose([r.score for r in batch], [r.score for r in single], atol=1e-5)
    assert [r.face_box for r in batch] == [r.face_box for r in single]
    assert len({round(r.score, 4) for r in batch}) > 8  # different photos, different scores


def test_a_corrupt_item_in_a_batch_costs_only_itself(client):
    good = [p.read_bytes() for p in biq_images(5)]
    expected = [client.score(d).score for d in good]
    images = good[:2] + [good[2][: len(good[2]) // 2]] + good[2:] + [b""]
    results = client.score_batch(images)
    assert [r.status for r in results] == ["ok", "ok", "error", "ok", "ok", "ok", "error"]
    assert results[2].error_code == "truncated" and results[6].error_code == "empty"
    np.testing.assert_allclose([r.score for r in results if r.ok], expected, atol=1e-5)


def test_served_pixels_equal_training_evaluation_tensor(server, tmp_path):
    """One source of truth: the `preprocess` model's uint8 crop, normalised as the scorer
    normalises it, is training's evaluation tensor (the crop cache and the batches the loop
    evaluates on), bit for bit."""
    pytest.importorskip("torch")
    from sampleiqa.runtime.preprocessing import normalize
    from sampleiqa.training.data.cache import build_cache
    from sampleiqa.training.data.datasets import LabelledSet, Sample
    from sampleiqa.training.prediction import eval_batches

    paths = [*list(FACES)[:3], NO_FACE[0]]
    data = build_cache(LabelledSet("parity", [Sample(Path(p), 0.5) for p in paths]), root=tmp_path, workers=1)
    ((_, training),) = list(eval_batches(data, range(len(data)), len(data)))
    c = grpcclient.InferenceServerClient(server.url)
    for path, expected in zip(data.paths, training.numpy()):
        inp = grpcclient.InferInput(IMAGE, [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[Path(path).read_bytes()]], dtype=object))
        served = c.infer(PREPROCESS, [inp]).as_numpy(PIXELS)[0]
        assert served.shape == (3, CROP, CROP) and served.dtype == np.uint8
        np.testing.assert_array_equal(normalize(served), expected)
    c.close()
    assert len(data.paths) == len(paths)


def test_score_many_and_asyncio_client_agree(server, client):
    from sampleiqa.clients.aio import AsyncScoringClient

    paths = biq_images(12)
    items = [(str(p), p.read_bytes()) for p in paths]
    sync = dict(client.score_many(items, concurrency=4))
    batched = dict(client.score_many(items, concurrency=2, batch_size=5))

    async def run():
        async with AsyncScoringClient(server.url) as c:
            return {k: r async for k, r in c.score_many(items, concurrency=4)}

    aio = asyncio.run(run())
    assert set(sync) == set(aio) == set(batched) == {str(p) for p in paths}
    for k in sync:
        assert sync[k].score == pytest.approx(aio[k].score, abs=1e-5) == pytest.approx(batched[k].score, abs=1e-5)


def test_raw_ensemble_contract(server, client):
    assert client.is_ready()
    c = grpcclient.InferenceServerClient(server.url)
    meta = c.get_model_metadata("sampleiqa")
    assert [(i.name, i.datatype) for i in meta.inputs] == [(IMAGE, "BYTES")]
    assert {o.name: o.datatype for o in meta.outputs} == {SCORE: "FP32", FACE_BOX: "INT32", FACE_FOUND: "BOOL"}
    c.close()
