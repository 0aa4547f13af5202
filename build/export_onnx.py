"""ONNX export of the single-branch scorer: PIXELS UINT8 [N,3,448,448] -> SCORE FP32 [N,1].

`export_onnx` traces the served scorer (build/pixels.py: the uint8 crop normalised, then the
network) with the TorchScript exporter (opset >= 17, so LayerNorm is
one LayerNormalization node that TensorRT maps to INormalizationLayer), folds constants with
onnx-graphsurgeon, adds the output guard and runs the full ONNX checker. `fp16=True` makes the
FP16 copy TensorRT's strongly typed build takes (build/fp16.py says what stays FP32).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from sampleiqa.runtime.contracts import CROP, PIXELS, SCORE

from .onnx_files import save_onnx_atomic, tmp_path

log = logging.getLogger(__name__)

MIN_OPSET = 17


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
    save_onnx_atomic(out, path)
    log.info("cleaned: %d -> %d nodes", before, after)
    return {"nodes_before": before, "nodes_after": after}


GUARD = "/guard/"


def add_score_guard(model):
    """SCORE = clip(score, 0, 1) where the network's raw score is finite, else NaN.

    In the graph, so every target (cpu, gpu-onnx, gpu-trt) has it: an item whose raw score
    is not finite gets NaN, which the CPU scorer and the clients turn into a `[non_finite]`
    error (uint8 PIXELS hold no NaN, so the input needs no check). `|x| < huge` is false for
    NaN, so one comparison catches both. Idempotent. Returns the (modified) ModelProto.
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
    consts = {"zero": 0.0, "one": 1.0, "huge": 1e30, "nan": float("nan")}
    nodes = [
        helper.make_node(
            "Constant",
            [],
            [f"{GUARD}{k}"],
            name=f"{GUARD}const_{k}",
            value=helper.make_tensor(f"{GUARD}{k}_value", TensorProto.FLOAT, [], [v]),
        )
        for k, v in consts.items()
    ]

    def node(op, inputs, out, **attrs):
        nodes.append(helper.make_node(op, inputs, [f"{GUARD}{out}"], name=f"{GUARD}{out}", **attrs))
        return f"{GUARD}{out}"

    g = lambda k: f"{GUARD}{k}"  # noqa: E731
    finite = node("Less", [node("Abs", [raw], "score_abs"), g("huge")], "score_finite")
    clipped = node("Clip", [raw, g("zero"), g("one")], "clipped")
    nodes.append(helper.make_node("Where", [finite, clipped, g("nan")], [SCORE], name=f"{GUARD}where"))
    graph.node.extend(nodes)
    return model


def guard_onnx(path: str | Path) -> Path:
    """add_score_guard on a file, in place, checked."""
    import onnx

    path = Path(path)
    # Shapes and types for the new tensors: the FP16 copy reads them to place its casts.
    model = onnx.shape_inference.infer_shapes(add_score_guard(onnx.load(path)))
    onnx.checker.check_model(model, full_check=True)
    save_onnx_atomic(model, path)
    return path


def export_onnx(model, out_path: str | Path, opset: int = MIN_OPSET, fp16: bool = False) -> Path:
    """Export a scorer network to ONNX (uint8 PIXELS in, dynamic batch), clean and check it.
    fp16: the FP16 copy instead (build/fp16.py)."""
    if opset < MIN_OPSET:
        raise ValueError(
            f"opset {opset} < {MIN_OPSET}: LayerNormalization needs opset 17 "
            "(TensorRT overflows a decomposed FP16 LayerNorm)"
        )
    import onnx
    import torch

    from .pixels import PixelsScorer

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    cfg = getattr(model, "config", None)
    size = getattr(cfg, "img_size", CROP)
    model = PixelsScorer(model.eval()).eval()
    dummy = torch.zeros(1, 3, size, size, dtype=torch.uint8)
    tmp = tmp_path(out_path)
    try:
        log.info("exporting opset %d, input [N,3,%d,%d]", opset, size, size)
        with torch.no_grad(), warnings.catch_warnings():
            # Known noise: the legacy-exporter notice (dynamo=False is deliberate) and timm's
            # shape asserts, which trace to constants because H and W are fixed.
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
            torch.onnx.export(
                model,
                (dummy,),
                str(tmp),
                opset_version=opset,
                dynamo=False,
                input_names=[PIXELS],
                output_names=[SCORE],
                dynamic_axes={PIXELS: {0: "N"}, SCORE: {0: "N"}},
            )
        clean_onnx(tmp)
        guard_onnx(tmp)
        if fp16:
            from .fp16 import convert_to_fp16

            convert_to_fp16(tmp, tmp)
        onnx.checker.check_model(str(tmp), full_check=True)
        tmp.replace(out_path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("checked: %s", out_path)
    return out_path


def export_checkpoint(
    checkpoint_path: str | Path, out_path: str | Path, opset: int = MIN_OPSET, fp16: bool = False
) -> Path:
    from sampleiqa.training.checkpoint import load_scorer

    model, _ = load_scorer(checkpoint_path)
    return export_onnx(model, out_path, opset=opset, fp16=fp16)
