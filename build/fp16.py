"""The FP16 copy of the scorer's FP32 ONNX, for TensorRT's strongly typed mode.

- float32 initializers / Constant values become float16; Cast(to=FLOAT) becomes FLOAT16.
- The graph inputs and outputs stay FLOAT32 (PIXELS, SCORE: Triton configs don't change),
  with a Cast at each boundary.
- LayerNormalization stays FP32: its input is cast up, its scale/bias stay float32 and its
  output is cast back to FP16. The mean/variance then cannot overflow FP16, whatever
  TensorRT does with the normalization layer's compute precision.
- Nodes under FP32_SCOPES stay FP32 with their constants; they read graph inputs directly,
  get a Cast up from FP16 tensors, and their results are cast down for the rest. A Cast into
  float that feeds a scope (the model's `x.float()` before the statistics) stays FP32 too.
- Not handled (absent from the scorers): ops with a float dtype attribute (RandomNormal,
  EyeLike, ...), control-flow subgraphs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .onnx_files import save_onnx_atomic

log = logging.getLogger(__name__)

# Ops computed in FP32 inside the FP16 graph (casts around them).
FP32_OPS = ("LayerNormalization",)
# Module scopes (torch's node-name prefixes) kept wholly FP32: the fused quality statistics
# count pixels (448*448 overflows FP16) and take logs of tiny energies, their head was
# fitted on FP32 statistics (training/models/swin.py), the prior's pooled moments square
# deviations up to 1.5e6 (training/models/prior.py), and the output guard compares against
# limits; the uint8 PIXELS are normalised in FP32 first, as in training (build/pixels.py: the
# network is its `model`). build/tensorrt_limits.py finds tensors that would overflow outside these.
FP32_SCOPES = ("/normalize/", "/model/stats/", "/model/stats_head/", "/model/trunk/moments", "/guard/")
# (op, input index) that the ONNX spec requires to stay float32 whatever the data type.
_FP32_INPUTS = {("Resize", 2), ("Upsample", 1)}


def _replace_input(node, old, new) -> None:
    for i, t in enumerate(node.inputs):  # item assignment keeps graphsurgeon's back-links
        if t is old:
            node.inputs[i] = new


class _Conversion:
    """One graph's conversion, phase by phase (each method is one phase, in order)."""

    def __init__(self, graph, keep_ops: tuple[str, ...], scopes: tuple[str, ...]):
        import onnx

        self.graph, self.keep, self.scopes = graph, set(keep_ops), scopes
        self.f16, self.f32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
        self.kept_casts = {
            id(n)
            for n in graph.nodes
            if n.op == "Cast"
            and n.attrs.get("to") == self.f32
            and not self.scoped(n)
            and any(self.scoped(c) for t in n.outputs for c in t.outputs)
        }

    def scoped(self, node) -> bool:
        return node.name.startswith(self.scopes)

    def fp32_node(self, node) -> bool:
        return self.scoped(node) or id(node) in self.kept_casts

    def needs_fp32(self, node, tensor) -> bool:
        if self.scoped(node):
            return True
        idx = [i for i, t in enumerate(node.inputs) if t is tensor]
        if node.op in self.keep:
            return any(i > 0 for i in idx)  # scale / bias; input 0 gets a Cast
        return any((node.op, i) in _FP32_INPUTS for i in idx)

    def cast(self, inp, out, to, name) -> None:
        import onnx_graphsurgeon as gs

        self.graph.nodes.append(gs.Node("Cast", name=name, attrs={"to": to}, inputs=[inp], outputs=[out]))

    def weights(self) -> None:
        """Weights and folded constants; one shared with FP32 users gets a half copy."""
        import onnx_graphsurgeon as gs

        for tensor in list(self.graph.tensors().values()):
            if not isinstance(tensor, gs.Constant) or tensor.dtype != np.float32:
                continue
            users = list(tensor.outputs)
            fp32_users = [n for n in users if self.needs_fp32(n, tensor)]
            if not fp32_users:
                tensor.values = tensor.values.astype(np.float16)
                continue
            others = [n for n in users if n not in fp32_users]
            if others:
                half = gs.Constant(f"{tensor.name}__fp16", tensor.values.astype(np.float16))
                for n in others:
                    for i, t in enumerate(n.inputs):
                        if t is tensor and not self.needs_fp32(n, t):
                            n.inputs[i] = half

    def attributes(self) -> None:
        """Values held in node attributes, and casts into float."""
        import onnx_graphsurgeon as gs

        for node in self.graph.nodes:
            if self.fp32_node(node):
                continue
            if node.op == "Cast" and node.attrs.get("to") == self.f32:
                node.attrs["to"] = self.f16
            if node.op in ("Constant", "ConstantOfShape"):
                value = node.attrs.get("value")
                if isinstance(value, gs.Constant) and value.dtype == np.float32:
                    value.values = value.values.astype(np.float16)

    def islands(self) -> None:
        """FP32_OPS: cast up on the way in, down on the way out."""
        import onnx_graphsurgeon as gs

        for node in [n for n in self.graph.nodes if n.op in self.keep]:
            x, y = node.inputs[0], node.outputs[0]
            x32 = gs.Variable(f"{node.name}__in_fp32", dtype=np.float32)
            y32 = gs.Variable(f"{node.name}__out_fp32", dtype=np.float32)
            node.inputs[0], node.outputs[0] = x32, y32
            self.cast(x, x32, self.f32, f"{node.name}__cast_in")
            self.cast(y32, y, self.f16, f"{node.name}__cast_out")

    def fp32_scopes(self) -> None:
        """Kept scopes: FP16 tensors cast up on the way in, results cast down on the way out."""
        import onnx_graphsurgeon as gs

        graph_inputs = set(map(id, self.graph.inputs))
        up: dict[str, gs.Variable] = {}
        for node in [n for n in self.graph.nodes if self.fp32_node(n)]:
            for i, t in enumerate(node.inputs):
                if (
                    isinstance(t, gs.Variable)
                    and t.dtype == np.float32
                    and id(t) not in graph_inputs
                    and not any(self.fp32_node(p) for p in t.inputs)
                ):
                    if t.name not in up:
                        up[t.name] = gs.Variable(f"{t.name}__fp32", dtype=np.float32)
                        self.cast(t, up[t.name], self.f32, f"{t.name}__cast_fp32")
                    node.inputs[i] = up[t.name]
            for t in node.outputs:
                outside = [n for n in t.outputs if not self.fp32_node(n)]
                if outside and t.dtype == np.float32:
                    down = gs.Variable(f"{t.name}__fp16", dtype=np.float16)
                    self.cast(t, down, self.f16, f"{t.name}__cast_fp16")
                    for n in outside:
                        _replace_input(n, t, down)

    def boundary(self) -> None:
        """Graph inputs and outputs stay float32, with a Cast at each."""
        import onnx_graphsurgeon as gs

        for inp in [t for t in self.graph.inputs if t.dtype == np.float32]:
            half = gs.Variable(f"{inp.name}__fp16", dtype=np.float16, shape=inp.shape)
            for node in [n for n in inp.outputs if not self.fp32_node(n)]:
                _replace_input(node, inp, half)
            self.cast(inp, half, self.f16, f"{inp.name}__cast_fp16")
        for out in [t for t in self.graph.outputs if t.dtype == np.float32]:
            half = gs.Variable(f"{out.name}__fp16", dtype=np.float16)
            for node in list(out.inputs):  # the producer
                node.outputs[node.outputs.index(out)] = half
            for node in list(out.outputs):  # internal consumers of an output, if any
                _replace_input(node, out, half)
            self.cast(half, out, self.f32, f"{out.name}__cast_fp32")

    def forget_types(self) -> None:
        """Intermediate dtypes are stale now: shape inference redoes them."""
        import onnx_graphsurgeon as gs

        io = {t.name for t in self.graph.inputs + self.graph.outputs}
        for t in self.graph.tensors().values():
            if isinstance(t, gs.Variable) and t.name not in io:
                t.dtype, t.shape = None, None
        self.graph.cleanup().toposort()


def convert_to_fp16(
    src: str | Path,
    dst: str | Path,
    keep_fp32_ops: tuple[str, ...] = FP32_OPS,
    keep_fp32_scopes: tuple[str, ...] = FP32_SCOPES,
) -> Path:
    """Write the FP16 copy of `src` to `dst` (they may be the same path). The result passes
    strict shape inference and the full checker."""
    import onnx
    import onnx_graphsurgeon as gs

    src, dst = Path(src), Path(dst)
    model = onnx.load(src)
    conversion = _Conversion(gs.import_onnx(model), keep_fp32_ops, keep_fp32_scopes)
    for phase in (
        conversion.weights,
        conversion.attributes,
        conversion.islands,
        conversion.fp32_scopes,
        conversion.boundary,
        conversion.forget_types,
    ):
        phase()
    out_model = gs.export_onnx(conversion.graph)
    out_model.ir_version = model.ir_version  # older TensorRT parsers reject newer IR versions
    del out_model.graph.value_info[:]
    out_model = onnx.shape_inference.infer_shapes(out_model, check_type=True, strict_mode=True)
    onnx.checker.check_model(out_model, full_check=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_onnx_atomic(out_model, dst)
    kept = sum(1 for n in out_model.graph.node if n.op_type in conversion.keep)
    log.info("fp16: %s (%d %s kept fp32)", dst, kept, "/".join(sorted(conversion.keep)) or "ops")
    return dst
