"""The gpu-torch target (python backend + PyTorch, FP16 and CUDA graphs on a GPU), run here on
CPU through the real Triton: the same repository layout, model.py and runner as on a GPU
host, with the scorer on CPU in FP32. Its scores must be the CPU ensemble's."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sampleiqa.build.repository import build_repository  # noqa: E402
from sampleiqa.build.torch_runner import TorchScorer, buckets, chunks, guard, half_weights  # noqa: E402
from sampleiqa.build.triton_config import RepositorySettings, read_config  # noqa: E402
from sampleiqa.clients import ScoringClient  # noqa: E402
from sampleiqa.runtime.preprocessing import preprocess_file  # noqa: E402
from sampleiqa.server import TritonServer  # noqa: E402

from .helpers import SAMPLES, WEIGHTS, biq_images  # noqa: E402

CHECKPOINT = WEIGHTS / "biq2021_default.pt"


def test_buckets_pad_by_at_most_seven_past_eight_and_guard():
    assert buckets(64) == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64] and buckets(12) == [1, 2, 4, 8, 12]
    assert buckets(1) == [1] and buckets(5) == [1, 2, 4, 5]
    for n in range(1, 65):  # batch 33 runs as 40, not 64
        assert next(b for b in buckets(64) if b >= n) - n < max(8, n)
        assert next(b for b in buckets(64) if b >= n) <= max(n + 7, 2 * n - 1)
    got = guard(torch.tensor([[0.5], [float("nan")], [float("inf")], [7.0], [-2.0]]))
    assert got[0, 0] == 0.5 and got[1:3].isnan().all() and got[3, 0] == 1.0 and got[4, 0] == 0.0


@pytest.mark.slow
def test_torch_scorer_matches_the_served_onnx_scorer():
    import onnxruntime as ort

    from sampleiqa.server import DEFAULT_REPOSITORY

    x = np.stack([preprocess_file(p).pixels for p in biq_images(5)])
    ref = ort.InferenceSession(
        str(DEFAULT_REPOSITORY / "scorer" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    ).run(None, {"PIXELS": x})[0]
    scorer = TorchScorer(CHECKPOINT, device="cpu", max_batch=2)  # 5 items: chunks of 2
    got = scorer(x)
    assert got.shape == (5, 1) and np.abs(got - ref).max() < 1e-4, np.abs(got - ref).max()


def test_requests_reach_the_runner_unjoined_in_order():
    parts = [np.arange(3), np.arange(3, 8), np.arange(8, 9)]
    runs = list(chunks(parts, 4))
    assert [sum(b - a for _, a, b in run) for run in runs] == [4, 4, 1]
    assert np.concatenate([p[a:b] for run in runs for p, a, b in run]).tolist() == list(range(9))


@pytest.mark.slow
def test_scorer_takes_one_array_per_request_and_fp16_weights_keep_the_scores():
    """The served path hands the runner each request's PIXELS (no concatenation first); the
    FP16 weights of a GPU load, run here under CPU autocast, stay within the FP16 tolerance."""
    x = np.stack([preprocess_file(p).pixels for p in biq_images(5)])
    scorer = TorchScorer(CHECKPOINT, device="cpu", max_batch=4)
    whole = scorer(x)
    assert np.array_equal(scorer([x[:1], x[1:4], x[4:]]), whole)
    assert np.allclose(scorer([torch.from_numpy(x[:2]), x[2:]]), whole, atol=1e-6)
    half_weights(scorer.model)
    halves = [m.weight.dtype for m in scorer.model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert halves and set(halves) == {torch.float16}
    assert all(b.dtype == torch.float32 for b in scorer.model.buffers() if b.is_floating_point())
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.float16):
        fp16 = guard(scorer.model(torch.from_numpy(x)).float()).numpy()
    assert np.abs(fp16 - whole).max() < 1e-2, np.abs(fp16 - whole).max()


@pytest.mark.server
def test_gpu_torch_repository_served_on_cpu_scores_like_the_cpu_ensemble(tmp_path, client):
    out = build_repository(
        tmp_path / "repo",
        RepositorySettings(target="gpu-torch", torch_device="cpu"),
        checkpoint=CHECKPOINT,
        vendor=False,
    )
    scorer = read_config(out / "scorer")
    assert scorer.backend == "python" and scorer.parameters["precision"].string_value == "fp32"
    gpu = read_config(
        build_repository(tmp_path / "gpu", RepositorySettings(target="gpu-torch"), checkpoint=CHECKPOINT, vendor=False)
        / "scorer"
    )
    assert gpu.instance_group[0].kind == gpu.instance_group[0].KIND_GPU
    assert gpu.parameters["precision"].string_value == "fp16" and gpu.parameters["cuda_graphs"].string_value == "1"
    photos = [p.read_bytes() for p in biq_images(6)] + [(SAMPLES / "astronaut.jpg").read_bytes()]
    with TritonServer(out, log_file=tmp_path / "t.log", supervise=False) as server, ScoringClient(server.url) as c:
        got = c.score_batch(photos)
    ref = client.score_batch(photos)  # the session's CPU ensemble
    assert all(r.ok for r in got), got
    assert max(abs(a.score - b.score) for a, b in zip(got, ref)) < 1e-4
    assert [r.face_box for r in got] == [r.face_box for r in ref]


@pytest.mark.server
@pytest.mark.perf
def test_gpu_run_rehearsal_on_cpu(tmp_path):
    """perf/gpu_run.py end to end with every torch model on CPU: each step runs (the repository
    with the GPU preprocessing, the CPU reference, the served scores, real perf_analyzer on
    all three models through shared memory, the in-process runner, the GPU preprocessing's
    parity, decoding, torch.compile), so a lent GPU's minutes go to measuring."""
    import json

    from sampleiqa.perf.gpu_run import main

    assert main(["--out", str(tmp_path), "--device", "cpu", "--quick", "--photos", "8", "--budget-s", "400"]) == 0
    results = json.loads((tmp_path / "gpu_run.json").read_text())
    steps = results["steps"]
    assert all("result" in s for s in steps.values()), {k: s.get("error") or s.get("skipped") for k, s in steps.items()}
    assert steps["scores: GPU repository against the CPU path"]["result"]["same_scores"]
    served = steps["served figures"]["result"]
    for model in ("sampleiqa", "preprocess", "scorer"):
        assert served[model]["img_s"] > 0 and served[model]["mean_batch"] >= 1
    assert served["ensemble_over_slowest_step"] > 0
    stop = steps["GPU server stop"]["result"]
    assert stop["stubs_killed_by_launcher"] == 0 and not stop["exit_timeout_expired"], stop
    # copy and compute apart; pinned memory needs CUDA, and the output says it was skipped
    rows = steps["in-process scorer (TorchScorer)"]["result"]["by_batch"]
    for row in rows.values():
        assert min(row["compute_only_img_s"], row["host_input_img_s"], row["gpu_input_img_s"]) > 0
        assert "needs CUDA" in row["upload_pinned"]
    parity = steps["GPU preprocessing against the CPU path"]["result"]
    assert parity["compared"] == 8 and parity["same_face_decision"] == 1.0 and parity["scores_within_1e-2"] >= 0.99
    assert steps["torch.compile against eager"]["result"]["compiled_over_eager"] > 0
    # the targets table heads the report, each with a figure
    assert [t["figure"] is not None for t in results["targets"]] == [True] * 4
    assert "| ensemble end to end, img/s |" in (tmp_path / "gpu_run.md").read_text()


def test_upload_figures_skip_pinned_memory_on_cpu_and_say_so():
    from sampleiqa.perf.gpu_scorer_bench import rate, upload_rates

    got = upload_rates(torch.zeros(2, 3, 448, 448, dtype=torch.uint8), "cpu", 0.05)
    assert got["batch"] == 2 and got["dtype"] == "uint8" and got["mb_per_image"] == pytest.approx(0.602112)
    assert got["pageable_img_s"] > 0 and got["pageable_gb_s"] > 0
    assert "pinned_img_s" not in got and "needs CUDA" in got["pinned"]
    calls = []
    assert rate(lambda: calls.append(1), 4, 0.0, "cpu") > 0 and len(calls) == 1 + 3  # warm-up, then 3 at least
