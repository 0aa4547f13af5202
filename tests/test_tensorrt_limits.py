"""The CPU check of an ONNX against TensorRT 10's documented limits (build/tensorrt_limits.py):
the shipped scorer passes it on real photos; graphs that TensorRT would refuse, or that
would overflow in FP16, fail it here rather than on a GPU host."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from sampleiqa.build.tensorrt_limits import TensorRTLimitError, check_onnx, sample_pixels
from sampleiqa.server import DEFAULT_REPOSITORY

from .helpers import SAMPLES

SHIPPED = DEFAULT_REPOSITORY / "scorer" / "1" / "model.onnx"


def _model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def topk_model(k: int, constant: bool = True) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("PIXELS", TensorProto.FLOAT, [1, 30000])
    y = helper.make_tensor_value_info("SCORE", TensorProto.FLOAT, [1, None])
    if constant:
        nodes = [
            helper.make_node("Constant", [], ["k"], value=helper.make_tensor("kv", TensorProto.INT64, [1], [k])),
            helper.make_node("TopK", ["PIXELS", "k"], ["SCORE", "idx"], name="/stats/TopK"),
        ]
    else:  # K read from the shape at run time, as torch.sort exports
        nodes = [
            helper.make_node("Shape", ["PIXELS"], ["shape"]),
            helper.make_node("Constant", [], ["one"], value=helper.make_tensor("o", TensorProto.INT64, [1], [1])),
            helper.make_node("Gather", ["shape", "one"], ["k"]),
            helper.make_node("TopK", ["PIXELS", "k"], ["SCORE", "idx"], name="/stats/TopK"),
        ]
    return _model(nodes, [x], [y])


def test_the_shipped_scorer_is_within_tensorrt_limits_on_real_photos():
    check_onnx(SHIPPED, sample_pixels(SAMPLES))


@pytest.mark.parametrize(
    "k,constant,message",
    [
        (28_672, True, "TopK K = 28672 exceeds TensorRT's maximum of 3840"),
        (100, False, "computed at run time"),
    ],
)
def test_topk_that_tensorrt_refuses(tmp_path, k, constant, message):
    onnx.save(topk_model(k, constant), tmp_path / "m.onnx")
    with pytest.raises(TensorRTLimitError, match=message):
        check_onnx(tmp_path / "m.onnx")
    onnx.save(topk_model(3_840), tmp_path / "ok.onnx")
    check_onnx(tmp_path / "ok.onnx")


def test_operators_outside_tensorrts_list_and_old_opsets(tmp_path):
    x = helper.make_tensor_value_info("PIXELS", TensorProto.FLOAT, [2, 2])
    y = helper.make_tensor_value_info("SCORE", TensorProto.FLOAT, [])
    onnx.save(
        _model([helper.make_node("Det", ["PIXELS"], ["SCORE"], name="/det")], [x], [y], opset=8), tmp_path / "m.onnx"
    )
    with pytest.raises(TensorRTLimitError) as e:
        check_onnx(tmp_path / "m.onnx")
    assert "Det is not in TensorRT 10's ONNX operator list" in str(e.value) and "opset 8" in str(e.value)


def test_a_tensor_past_fp16_range_outside_the_fp32_scopes(tmp_path):
    """x * 1e5 overflows FP16 on real pixels; the same product inside /model/stats/ is kept FP32."""
    x = helper.make_tensor_value_info("PIXELS", TensorProto.UINT8, [None, 3, 448, 448])
    y = helper.make_tensor_value_info("SCORE", TensorProto.FLOAT, [None, 1])
    big = helper.make_tensor("big", TensorProto.FLOAT, [], [1e5])
    axes = helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3])
    pixels = sample_pixels(SAMPLES, 2)
    for scope, fails in (("/model/trunk/", True), ("/model/stats/", False)):
        nodes = [
            helper.make_node("Cast", ["PIXELS"], ["x"], name="/normalize/Cast", to=TensorProto.FLOAT),
            helper.make_node("Mul", ["x", "big"], ["scaled"], name=f"{scope}Mul"),
            helper.make_node("ReduceMean", ["scaled", "axes"], ["m"], name=f"{scope}Mean", keepdims=0),
            helper.make_node("Mul", ["m", "tiny"], ["small"], name=f"{scope}Down"),  # what leaves is small
            helper.make_node("Unsqueeze", ["small", "one"], ["SCORE"], name="/head/Unsqueeze"),
        ]
        one = helper.make_tensor("one", TensorProto.INT64, [1], [1])
        tiny = helper.make_tensor("tiny", TensorProto.FLOAT, [], [1e-6])
        onnx.save(_model(nodes, [x], [y], [big, axes, one, tiny], opset=18), tmp_path / "m.onnx")
        if fails:
            with pytest.raises(TensorRTLimitError, match="past FP16's 65504"):
                check_onnx(tmp_path / "m.onnx", pixels)
        else:
            check_onnx(tmp_path / "m.onnx", pixels)
