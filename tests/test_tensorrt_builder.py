"""TensorRT engine builder: what can be checked without TensorRT or a GPU."""

from __future__ import annotations

import pytest

from sampleiqa.build import tensorrt_engine as te
from sampleiqa.runtime.contracts import PIXELS, SCORE

# An engine's profile as build_engine writes it beside model.plan.
PROFILE = dict(
    min_batch=1,
    opt_batch=16,
    max_batch=64,
    precision="fp16",
    strongly_typed=True,
    tensorrt_version="10.8.0.43",
    input=PIXELS,
    output=SCORE,
    img_size=448,
)


def test_tensorrt_not_available_here():
    if te.tensorrt_available():
        pytest.skip("tensorrt is importable on this machine")
    assert te.tensorrt_available() is False


def test_build_engine_without_tensorrt(tmp_path):
    if te.tensorrt_available():
        pytest.skip("tensorrt is importable on this machine")
    with pytest.raises(RuntimeError, match="GPU") as err:
        te.build_engine(tmp_path / "model.onnx", tmp_path / "model.plan")
    assert "build-repository" in str(err.value)  # names the command to run there
    assert not (tmp_path / "model.plan").exists()


def test_build_engine_rejects_bad_profile(tmp_path):
    with pytest.raises(ValueError):
        te.build_engine(tmp_path / "model.onnx", tmp_path / "model.plan", min_batch=8, opt_batch=4)
    with pytest.raises(ValueError):
        te.build_engine(tmp_path / "model.onnx", tmp_path / "model.plan", precision="int8")


def test_profile_round_trip(tmp_path):
    plan = tmp_path / "scorer" / "1" / "model.plan"
    fields = {**PROFILE, "tensorrt_version": "10.13.0"}
    sidecar = te.write_engine_profile(plan, **fields)
    assert sidecar == plan.with_name("model.plan.json")
    assert te.read_engine_profile(plan) == fields


def test_profile_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="build_engine"):
        te.read_engine_profile(tmp_path / "model.plan")


def test_version_tuple():
    assert te._version_tuple("10.12.0.36") == (10, 12, 0)
    assert te._version_tuple("10.8.0.43")[:3] == te._version_tuple("10.8.0")


# The whole builder, driven through a fake `tensorrt` that records its calls (tests/fake_tensorrt.py).


@pytest.fixture()
def fake_trt(monkeypatch):
    import sys

    from .fake_tensorrt import make

    trt = make("10.8.0.43")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(te, "installed_tensorrt_version", lambda: "10.8.0")
    return trt


@pytest.fixture(scope="module")
def shipped_onnx():
    from sampleiqa.server import DEFAULT_REPOSITORY

    return DEFAULT_REPOSITORY / "scorer" / "1" / "model.onnx"


def test_builder_builds_strongly_typed_fp16_without_tf32(fake_trt, shipped_onnx, tmp_path):
    plan = tmp_path / "scorer" / "1" / "model.plan"
    cache = tmp_path / "timing.cache"
    te.build_engine(shipped_onnx, plan, opt_batch=16, max_batch=64, timing_cache=cache)
    parsed = [path for what, path in fake_trt.calls if what == "parse"]
    assert parsed == [str(plan.with_name("model.fp16.onnx"))]  # the FP16 copy, not the FP32 graph
    assert fake_trt.network.strongly_typed and fake_trt.network.fp16_weights
    (build,) = [detail for what, detail in fake_trt.calls if what == "build"]
    assert fake_trt.BuilderFlag.TF32 not in build["flags"] and fake_trt.BuilderFlag.FP16 not in build["flags"]
    assert build["profiles"] == [{PIXELS: ((1, 3, 448, 448), (16, 3, 448, 448), (64, 3, 448, 448))}]
    assert fake_trt.config.pools[fake_trt.MemoryPoolType.WORKSPACE] == 4 << 30
    assert plan.read_bytes() == b"PLAN10.8.0.43"
    profile = te.read_engine_profile(plan)
    assert profile["tensorrt_version"] == "10.8.0.43" and profile["strongly_typed"] and profile["min_batch"] == 1
    assert cache.read_bytes().startswith(b"TIMING")  # written back, and read on the next build
    te.build_engine(shipped_onnx, plan, timing_cache=cache)
    assert fake_trt.config.cache.blob.startswith(b"TIMING")


def test_builder_refuses_what_would_fail_later(fake_trt, shipped_onnx, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="batches from 1 up"):
        te.build_engine(shipped_onnx, tmp_path / "m.plan", min_batch=4, opt_batch=8)
    monkeypatch.setattr(te, "installed_tensorrt_version", lambda: "10.7.0")
    with pytest.raises(RuntimeError, match="libnvinfer is 10.7.0"):
        te.build_engine(shipped_onnx, tmp_path / "m.plan")
    assert not (tmp_path / "m.plan").exists()
    (tmp_path / "bad.cache").write_bytes(b"another GPU's cache")
    monkeypatch.setattr(te, "installed_tensorrt_version", lambda: "10.8.0")
    with pytest.raises(RuntimeError, match="refused timing cache"):
        te.build_engine(shipped_onnx, tmp_path / "m.plan", timing_cache=tmp_path / "bad.cache")


def test_builder_checks_tensorrt_limits_before_building(fake_trt, tmp_path):
    import onnx

    from .test_tensorrt_limits import topk_model

    onnx.save(topk_model(28_672), tmp_path / "topk.onnx")
    with pytest.raises(ValueError, match="exceeds TensorRT's maximum of 3840"):
        te.build_engine(tmp_path / "topk.onnx", tmp_path / "m.plan")
    assert not [c for c in fake_trt.calls if c[0] == "build"]


def test_engine_version_must_match_the_runtime(tmp_path):
    plan = tmp_path / "model.plan"
    te.write_engine_profile(plan, **PROFILE)
    te.check_engine_version(plan, "10.8.0")
    with pytest.raises(RuntimeError, match="built with TensorRT 10.8.0.43.*is 11.1.0"):
        te.check_engine_version(plan, "11.1.0")


def test_gpu_trt_repository_lets_the_batcher_fill_batches(tmp_path):
    from sampleiqa.build.repository import build_repository
    from sampleiqa.build.triton_config import RepositorySettings, read_config

    plan = tmp_path / "model.plan"
    plan.write_bytes(b"PLAN")
    te.write_engine_profile(plan, **PROFILE)
    out = build_repository(tmp_path / "repo", RepositorySettings(target="gpu-trt"), engine_path=plan, vendor=False)
    scorer = read_config(out / "scorer")
    assert scorer.max_batch_size == 64 and not scorer.dynamic_batching.preferred_batch_size
    te.write_engine_profile(plan, **{**PROFILE, "min_batch": 8})
    with pytest.raises(ValueError, match="batches from 1 up"):
        build_repository(tmp_path / "repo2", RepositorySettings(target="gpu-trt"), engine_path=plan, vendor=False)
