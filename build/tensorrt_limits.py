"""Check an exported scorer ONNX against TensorRT 10's documented limits, on CPU.

TensorRT is not installed anywhere this project's CI runs, so a graph that cannot become an
engine would only fail on a GPU host. This catches, from the ONNX alone:
- operators outside the ONNX-TensorRT parser's support list for TensorRT 10 (onnx-tensorrt
  `docs/operators.md`, opsets 9-20);
- TopK whose K is not a constant, or exceeds 3,840 ("K exceeds the maximum value allowed");
- with sample PIXELS: tensors outside the FP32 islands whose magnitude passes FP16's
  65,504 on real photos (the FP16 copy would overflow there), found by running the FP32
  graph in ONNX Runtime with every float tensor as an output.

    python -m sampleiqa.build.tensorrt_limits model.onnx [--photos DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

TOPK_MAX_K = 3840
FP16_MAX = 65504.0
OPSETS = (9, 20)
# The ONNX-TensorRT parser's operators for TensorRT 10 (Y in onnx-tensorrt docs/operators.md).
SUPPORTED_OPS = frozenset(
    """
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos
Cosh CumSum DFT DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike
Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool
GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU HammingWindow HannWindow
HardSigmoid HardSwish Identity If InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu
Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean Min
Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu
QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal
ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter
ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus
Softsign SpaceToDepth Split Sqrt Squeeze STFT Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose
Trilu Unsqueeze Upsample Where Xor
""".split()
)


class TensorRTLimitError(ValueError):
    """The ONNX would not build (or would overflow) in TensorRT."""


def _constants(graph) -> dict:
    from onnx import numpy_helper

    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].HasField("t"):
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def static_problems(model) -> list[str]:
    """What TensorRT 10's parser refuses, from the graph alone."""
    problems = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not OPSETS[0] <= opset <= OPSETS[1]:
        problems.append(f"opset {opset}: TensorRT 10 parses opsets {OPSETS[0]}-{OPSETS[1]}")
    values = _constants(model.graph)
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{node.name}: custom-domain op {node.domain}.{node.op_type} needs a TensorRT plugin")
        elif node.op_type not in SUPPORTED_OPS:
            problems.append(f"{node.name}: {node.op_type} is not in TensorRT 10's ONNX operator list")
        elif node.op_type == "TopK":
            k = values.get(node.input[1])
            if k is None:
                problems.append(f"{node.name}: TopK's K is computed at run time; TensorRT needs a constant")
            elif int(np.asarray(k).reshape(-1)[0]) > TOPK_MAX_K:
                problems.append(
                    f"{node.name}: TopK K = {int(np.asarray(k).reshape(-1)[0])} exceeds "
                    f"TensorRT's maximum of {TOPK_MAX_K}"
                )
    return problems


def overflow_problems(model, pixels: np.ndarray, fp32_scopes: tuple[str, ...]) -> list[str]:
    """Tensors produced outside `fp32_scopes` (and not by an FP32-kept op) whose largest
    magnitude on `pixels` exceeds FP16's range: the FP16 copy would overflow there."""
    import onnx
    import onnxruntime as ort

    from .fp16 import FP32_OPS

    inferred = onnx.shape_inference.infer_shapes(model)
    floats = {
        v.name
        for v in list(inferred.graph.value_info) + list(inferred.graph.output)
        if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    }
    watched = {}
    for node in model.graph.node:
        if node.name.startswith(fp32_scopes) or node.op_type in FP32_OPS or node.op_type == "Constant":
            continue
        for out in node.output:
            if out in floats:
                watched[out] = node.name
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for name in watched:
        if name not in known:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    problems = []
    for name, value in zip(names, session.run(names, {session.get_inputs()[0].name: pixels})):
        if name in watched and value.size:
            peak = float(np.nanmax(np.abs(value)))
            if peak > FP16_MAX:
                problems.append(
                    f"{watched[name]}: |{name}| reaches {peak:.3g} on the sample photos, past FP16's "
                    f"{FP16_MAX:g}; keep it in an FP32 scope (build/fp16.py FP32_SCOPES)"
                )
    return problems


def check_onnx(path: str | Path, pixels: np.ndarray | None = None) -> None:
    """Raise TensorRTLimitError listing every problem; `pixels` ([N,3,448,448] preprocessed
    photos) adds the FP16 overflow check."""
    import onnx

    from .fp16 import FP32_SCOPES

    model = onnx.load(str(path))
    problems = static_problems(model)
    if pixels is not None:
        problems += overflow_problems(model, pixels, FP32_SCOPES)
    if problems:
        raise TensorRTLimitError(
            f"{path} would not build (or would overflow) in TensorRT 10:\n  " + "\n  ".join(problems)
        )


def sample_pixels(folder: str | Path, n: int = 4) -> np.ndarray:
    from sampleiqa.runtime.preprocessing import preprocess_file

    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]
    if not paths:
        raise FileNotFoundError(f"no photos in {folder}")
    return np.stack([preprocess_file(p).pixels for p in paths])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("onnx")
    p.add_argument("--photos", help="folder of photos for the FP16 overflow check (4 are used)")
    args = p.parse_args(argv)
    try:
        check_onnx(args.onnx, sample_pixels(args.photos) if args.photos else None)
    except TensorRTLimitError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{args.onnx}: within TensorRT 10's documented limits", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
