"""TensorRT engine builder: what can be checked without TensorRT or a GPU."""

from __future__ import annotations

import pytest

from sampleiqa.build import tensorrt_engine as te
from sampleiqa.contracts import PIXELS, SCORE


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
    fields = dict(min_batch=1, opt_batch=16, max_batch=64, precision="fp16", strongly_typed=True,
                  tensorrt_version="10.13.0", input=PIXELS, output=SCORE, img_size=448)
    sidecar = te.write_engine_profile(plan, **fields)
    assert sidecar == plan.with_name("model.plan.json")
    assert te.read_engine_profile(plan) == fields


def test_profile_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="build_engine"):
        te.read_engine_profile(tmp_path / "model.plan")


def test_version_tuple():
    assert te._version_tuple("10.12.0.36") >= te.STRONGLY_TYPED_FROM
    assert te._version_tuple("10.3.0") < te.STRONGLY_TYPED_FROM
    assert te._version_tuple("11.0.0") >= te.STRONGLY_TYPED_FROM
