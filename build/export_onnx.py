"""ONNX export of the single-branch scorer: PIXELS FP32 [N,3,448,448] -> SCORE FP32 [N,1].

`export_onnx` traces the model with the TorchScript exporter (opset >= 17, so LayerNorm is
one LayerNormalization node that TensorRT maps to INormalizationLayer), folds constants with
onnx-graphsurgeon and runs the full ONNX checker. `convert_to_fp16` makes the FP16 copy that
TensorRT's strongly-typed mode (>= 10.12) needs; see its docstring for what stays FP32.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np

from sampleiqa.contracts import CROP, PIXELS, PIXELS_LIMIT, SCORE

log = logging.getLogger(__name__)

MIN_OPSET = 17
# Ops computed in FP32 inside the FP16 graph (casts around them).
FP32_OPS = ("LayerNormalization",)
# Module scopes (torch's node-name prefixes) kept wholly FP32: the fused quality statistics
# count pixels (448*448 overflows FP16) and take logs of tiny energies, their head was
# fitted on FP32 statistics (training/models/swin.py), the prior's pooled moments square
# deviations up to 1.5e6 (training/models/prior.py), and the output guard compares against
# limits. build/tensorrt_limits.py finds tensors that would overflow outside these.
FP32_SCOPES = ("/stats/", "/stats_head/", "/trunk/moments", "/guard/")
# (op, input index) that the ONNX spec requires to stay float32 whatever the data type.
_FP32_INPUTS = {("Resize", 2), ("Upsample", 1)}


def _tmp_path(path: Path) -> Path:
    # Same folder as the target, so the final rename is atomic.
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _save_atomic(model, path: Path) -> None:
    import onnx

    tmp = _tmp_path(path)
    try:
        onnx.save(model, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _quiet_ort():
    # graphsurgeon's folding runs ONNX Runtime, which warns once per node it cannot simplify.
    try:
        import onnxruntime as ort

        ort.set_default_logger_severity(3)
        return lambda: ort.set_default_logger_severity(2)  # ORT's default: warnings
    except ImportError:
        return lambda: None


def clean_onnx(path: str | Path) -> dict:
    """Fold constants, drop dead nodes and toposort, in place. Keeps opset and IR version.

    Returns {"nodes_before": int, "nodes_after": int}.
    """
    import onnx
    import onnx_graphsurgeon as gs

    path = Path(path)
    model = onnx.load(path)
    before = len(model.graph.node)
    ir_version = model.ir_version
    # Shapes let graphsurgeon fold Shape->Gather chains on the static dims.
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    graph = gs.import_onnx(model)
    restore = _quiet_ort()
    try:
        graph.fold_constants().cleanup().toposort()
    finally:
        restore()
    out = gs.export_onnx(graph)
    # gs stamps the newest IR version; older TensorRT parsers reject IR versions they don't know.
    out.ir_version = ir_version
    after = len(out.graph.node)
    _save_atomic(out, path)
    log.info("cleaned: %d -> %d nodes", before, after)
    return {"nodes_before": before, "nodes_after": after}


GUARD = "/guard/"


def add_score_guard(model):
    """SCORE = clip(score, 0, 1) where the PIXELS are what an image gives, else NaN.

    In the graph, so every target (cpu, gpu-onnx, gpu-trt) has it: an item whose PIXELS
    hold NaN/Inf or any |x| > PIXELS_LIMIT, or whose raw score is not finite, gets NaN, which
    the CPU scorer and the clients turn into a `[non_finite]` error. `x <= limit` is false
    for NaN, so one comparison catches both. Idempotent. Returns the (modified) ModelProto.
    """
    from onnx import TensorProto, helper

    graph = model.graph
    if any(n.name.startswith(GUARD) for n in graph.node):
        return model
    raw = f"{GUARD}score_raw"
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == SCORE:
                node.output[i] = raw
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    consts = {"limit": PIXELS_LIMIT, "half": 0.5, "zero": 0.0, "one": 1.0, "huge": 1e30, "nan": float("nan")}
    nodes = [helper.make_node("Constant", [], [f"{GUARD}{k}"], name=f"{GUARD}const_{k}",
                              value=helper.make_tensor(f"{GUARD}{k}_value", TensorProto.FLOAT, [], [v]))
             for k, v in consts.items()]

    def node(op, inputs, out, **attrs):
        nodes.append(helper.make_node(op, inputs, [f"{GUARD}{out}"], name=f"{GUARD}{out}", **attrs))
        return f"{GUARD}{out}"

    g = lambda k: f"{GUARD}{k}"  # noqa: E731
    in_range = node("LessOrEqual", [node("Abs", [PIXELS], "abs"), g("limit")], "in_range")
    outside = node("Cast", [node("Not", [in_range], "outside_bool")], "outside", to=TensorProto.FLOAT)
    if opset >= 18:
        axes = helper.make_tensor(f"{GUARD}axes_value", TensorProto.INT64, [3], [1, 2, 3])
        nodes.append(helper.make_node("Constant", [], [g("axes")], name=f"{GUARD}const_axes", value=axes))
        worst = node("ReduceMax", [outside, g("axes")], "worst", keepdims=0)
    else:
        worst = node("ReduceMax", [outside], "worst", axes=[1, 2, 3], keepdims=0)
    worst = node("Reshape", [worst, node("Shape", [raw], "score_shape")], "worst_like_score")  # [N] -> [N, 1]
    pixels_ok = node("Less", [worst, g("half")], "pixels_ok")
    finite = node("Less", [node("Abs", [raw], "score_abs"), g("huge")], "score_finite")
    ok = node("And", [finite, pixels_ok], "ok")
    clipped = node("Clip", [raw, g("zero"), g("one")], "clipped")
    nodes.append(helper.make_node("Where", [ok, clipped, g("nan")], [SCORE], name=f"{GUARD}where"))
    graph.node.extend(nodes)
    return model


def guard_onnx(path: str | Path) -> Path:
    """add_score_guard on a file, in place, checked."""
    import onnx

    path = Path(path)
    # Shapes and types for the new tensors: the FP16 copy reads them to place its casts.
    model = onnx.shape_inference.infer_shapes(add_score_guard(onnx.load(path)))
    onnx.checker.check_model(model, full_check=True)
    _save_atomic(model, path)
    return path


def export_onnx(model, out_path: str | Path, opset: int = MIN_OPSET, fp16: bool = False) -> Path:
    """Export a SwinScorer to ONNX (dynamic batch), clean and check it. fp16: see convert_to_fp16."""
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} < {MIN_OPSET}: LayerNormalization needs opset 17 "
                         "(TensorRT overflows a decomposed FP16 LayerNorm)")
    import onnx
    import torch

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    cfg = getattr(model, "config", None)
    size = getattr(cfg, "img_size", CROP)
    model = model.eval()
    dummy = torch.zeros(1, 3, size, size, dtype=torch.float32)
    tmp = _tmp_path(out_path)
    try:
        log.info("exporting opset %d, input [N,3,%d,%d]", opset, size, size)
        with torch.no_grad(), warnings.catch_warnings():
            # Known noise: the legacy-exporter notice (dynamo=False is deliberate) and timm's
            # shape asserts, which trace to constants because H and W are fixed.
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
            torch.onnx.export(
                model, (dummy,), str(tmp), opset_version=opset, dynamo=False,
                input_names=[PIXELS], output_names=[SCORE],
                dynamic_axes={PIXELS: {0: "N"}, SCORE: {0: "N"}},
            )
        clean_onnx(tmp)
        guard_onnx(tmp)
        if fp16:
            convert_to_fp16(tmp, tmp)
        onnx.checker.check_model(str(tmp), full_check=True)
        tmp.replace(out_path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("checked: %s", out_path)
    return out_path


def export_checkpoint(checkpoint_path: str | Path, out_path: str | Path, opset: int = MIN_OPSET,
                      fp16: bool = False) -> Path:
    from sampleiqa.training.checkpoint import load_scorer

    model, _ = load_scorer(checkpoint_path)
    return export_onnx(model, out_path, opset=opset, fp16=fp16)


def convert_to_fp16(src: str | Path, dst: str | Path, keep_fp32_ops: tuple[str, ...] = FP32_OPS,
                    keep_fp32_scopes: tuple[str, ...] = FP32_SCOPES) -> Path:
    """FP16 copy of an FP32 ONNX graph for TensorRT's strongly-typed mode.

    - float32 initializers / Constant values become float16; Cast(to=FLOAT) becomes FLOAT16.
    - The graph inputs and outputs stay FLOAT32 (PIXELS, SCORE: Triton configs don't change),
      with a Cast at each boundary.
    - LayerNormalization stays FP32: its input is cast up, its scale/bias stay float32 and
      its output is cast back to FP16. The mean/variance then cannot overflow FP16, whatever
      TensorRT does with the normalization layer's compute precision.
    - Nodes under `keep_fp32_scopes` stay FP32 with their constants; they read graph inputs
      directly, get a Cast up from FP16 tensors, and their results are cast down for the rest.
    - Not handled (absent from the Swin scorer): ops with a float dtype attribute
      (RandomNormal, EyeLike, ...), control-flow subgraphs.
    `src` and `dst` may be the same path. The result passes strict shape inference and the
    full checker.
    """
    import onnx
    import onnx_graphsurgeon as gs

    src, dst = Path(src), Path(dst)
    f16, f32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    model = onnx.load(src)
    ir_version = model.ir_version
    graph = gs.import_onnx(model)
    keep = set(keep_fp32_ops)

    def scoped(node) -> bool:
        return node.name.startswith(keep_fp32_scopes)

    # A Cast into float that feeds a kept scope (the model's `x.float()` before the
    # statistics) stays FP32: turned FP16 it would round what the scope reads.
    kept_casts = {id(n) for n in graph.nodes if n.op == "Cast" and n.attrs.get("to") == f32 and not scoped(n)
                  and any(scoped(c) for t in n.outputs for c in t.outputs)}

    def fp32_node(node) -> bool:
        return scoped(node) or id(node) in kept_casts

    def needs_fp32(node, tensor) -> bool:
        if scoped(node):
            return True
        idx = [i for i, t in enumerate(node.inputs) if t is tensor]
        if node.op in keep:
            return any(i > 0 for i in idx)  # scale / bias; input 0 gets a Cast
        return any((node.op, i) in _FP32_INPUTS for i in idx)

    # Weights and folded constants.
    for tensor in list(graph.tensors().values()):
        if not isinstance(tensor, gs.Constant) or tensor.dtype != np.float32:
            continue
        users = list(tensor.outputs)
        fp32_users = [n for n in users if needs_fp32(n, tensor)]
        if not fp32_users:
            tensor.values = tensor.values.astype(np.float16)
            continue
        others = [n for n in users if n not in fp32_users]
        if others:  # shared with FP16 consumers: give them their own half copy
            half = gs.Constant(f"{tensor.name}__fp16", tensor.values.astype(np.float16))
            for n in others:
                for i, t in enumerate(n.inputs):
                    if t is tensor and not needs_fp32(n, t):
                        n.inputs[i] = half

    # Values held in node attributes, and casts into float.
    for node in graph.nodes:
        if fp32_node(node):
            continue
        if node.op == "Cast" and node.attrs.get("to") == f32:
            node.attrs["to"] = f16
        if node.op in ("Constant", "ConstantOfShape"):
            value = node.attrs.get("value")
            if isinstance(value, gs.Constant) and value.dtype == np.float32:
                value.values = value.values.astype(np.float16)

    def cast(inp, out, to, name):
        graph.nodes.append(gs.Node("Cast", name=name, attrs={"to": to}, inputs=[inp], outputs=[out]))

    # FP32 islands.
    for node in [n for n in graph.nodes if n.op in keep]:
        x, y = node.inputs[0], node.outputs[0]
        x32 = gs.Variable(f"{node.name}__in_fp32", dtype=np.float32)
        y32 = gs.Variable(f"{node.name}__out_fp32", dtype=np.float32)
        node.inputs[0] = x32
        node.outputs[0] = y32
        cast(x, x32, f32, f"{node.name}__cast_in")
        cast(y32, y, f16, f"{node.name}__cast_out")

    # FP32 scopes: cast FP16 tensors up on the way in and results down on the way out.
    graph_inputs = set(map(id, graph.inputs))
    up: dict[str, gs.Variable] = {}
    for node in [n for n in graph.nodes if fp32_node(n)]:
        for i, t in enumerate(node.inputs):
            if (isinstance(t, gs.Variable) and t.dtype == np.float32 and id(t) not in graph_inputs
                    and not any(fp32_node(p) for p in t.inputs)):
                if t.name not in up:
                    up[t.name] = gs.Variable(f"{t.name}__fp32", dtype=np.float32)
                    cast(t, up[t.name], f32, f"{t.name}__cast_fp32")
                node.inputs[i] = up[t.name]
        for t in node.outputs:
            outside = [n for n in t.outputs if not fp32_node(n)]
            if outside and t.dtype == np.float32:
                down = gs.Variable(f"{t.name}__fp16", dtype=np.float16)
                cast(t, down, f16, f"{t.name}__cast_fp16")
                for n in outside:
                    for j, x in enumerate(n.inputs):
                        if x is t:
                            n.inputs[j] = down

    # Boundary: float32 in and out.
    for inp in graph.inputs:
        if inp.dtype != np.float32:
            continue
        half = gs.Variable(f"{inp.name}__fp16", dtype=np.float16, shape=inp.shape)
        for node in [n for n in inp.outputs if not fp32_node(n)]:
            for i, t in enumerate(node.inputs):
                if t is inp:
                    node.inputs[i] = half
        cast(inp, half, f16, f"{inp.name}__cast_fp16")
    for out in graph.outputs:
        if out.dtype != np.float32:
            continue
        half = gs.Variable(f"{out.name}__fp16", dtype=np.float16)
        for node in list(out.inputs):  # the producer
            node.outputs[node.outputs.index(out)] = half
        for node in list(out.outputs):  # internal consumers of an output, if any
            for i, t in enumerate(node.inputs):
                if t is out:
                    node.inputs[i] = half
        cast(half, out, f32, f"{out.name}__cast_fp32")

    # Intermediate dtypes are stale now: drop them and let shape inference redo them.
    io = {t.name for t in graph.inputs + graph.outputs}
    for t in graph.tensors().values():
        if isinstance(t, gs.Variable) and t.name not in io:
            t.dtype, t.shape = None, None
    graph.cleanup().toposort()
    out_model = gs.export_onnx(graph)
    out_model.ir_version = ir_version
    del out_model.graph.value_info[:]
    out_model = onnx.shape_inference.infer_shapes(out_model, check_type=True, strict_mode=True)
    onnx.checker.check_model(out_model, full_check=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    _save_atomic(out_model, dst)
    n_fp32 = sum(1 for n in out_model.graph.node if n.op_type in keep)
    log.info("fp16: %s (%d %s kept fp32)", dst, n_fp32, "/".join(sorted(keep)) or "ops")
    return dst
