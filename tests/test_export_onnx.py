"""ONNX export of the scorer: structure, ONNX Runtime parity on real photos, FP16 copy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.torch, pytest.mark.export]  # every test exports a model or converts one
torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from sampleiqa.build.export_onnx import clean_onnx, export_checkpoint, export_onnx  # noqa: E402
from sampleiqa.build.fp16 import convert_to_fp16  # noqa: E402
from sampleiqa.runtime.contracts import CROP, PIXELS, SCORE  # noqa: E402

from .helpers import BIQ  # noqa: E402

IMAGES = BIQ / "images"
PHOTOS = ("ss01 (1).jpg", "ss01 (2).jpg", "ss01 (4).jpg")
# FP32 ONNX vs torch: same math, different kernel order/fusion -> float32 rounding only.
FP32_ATOL = 1e-4
# FP16 weights and activations on scores of order 0.1-1: a few 1e-3 at most is expected.
FP16_ATOL = 1e-2


@pytest.fixture(scope="module", params=["lite0_swin", "swin_compact_stats"])
def model(request):
    """The shipped default (pretrained prior) and the previous one (fused statistics, whose FP32
    scope the FP16 copy keeps)."""
    from sampleiqa.training.models import create_model

    torch.manual_seed(0)
    model = create_model(request.param).eval()
    if request.param.startswith("lite0"):  # as trained: BIQ2021's score scale, a head of small weights
        model.top.score_mean.fill_(0.64)
        model.top.score_std.fill_(0.19)
        torch.nn.init.normal_(model.top.head.weight, std=0.02)
    else:
        torch.nn.init.normal_(model.head.weight, std=0.05)  # zero at init: make the backbone count in parity
        model.score_mean.fill_(0.5)  # on the 0-1 label scale, which the graph's guard clips to
        model.score_std.fill_(0.05)
    return model


@pytest.fixture(scope="module")
def onnx_path(model, tmp_path_factory) -> Path:
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "model.onnx")


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    from sampleiqa.runtime.preprocessing import preprocess_file

    paths = [IMAGES / name for name in PHOTOS]
    if not all(p.is_file() for p in paths):
        pytest.skip(f"photos not found under {IMAGES}")
    return np.stack([preprocess_file(p).pixels for p in paths])  # uint8 [3,3,448,448]


def _torch_scores(model, x: np.ndarray) -> np.ndarray:
    """The network as trained: on the crops normalised by training's own code."""
    from sampleiqa.runtime.preprocessing import normalize

    with torch.no_grad():
        scores = model(torch.from_numpy(normalize(x))).numpy()
    assert ((scores > 0.01) & (scores < 0.99)).all(), scores  # inside the range, so parity is not the clip's
    return scores


def _ort_scores(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run([SCORE], {PIXELS: x})[0]


def test_structure(onnx_path):
    onnx.checker.check_model(str(onnx_path), full_check=True)
    m = onnx.load(onnx_path)
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in m.graph.input] == [PIXELS]
    assert [o.name for o in m.graph.output] == [SCORE]
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].HasField("dim_value")  # dynamic batch
    assert [d.dim_value for d in dims[1:]] == [3, CROP, CROP]
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8  # normalised inside
    assert any(n.op_type == "LayerNormalization" for n in m.graph.node)


def test_parity_real_photos(model, onnx_path, photos):
    for batch in (photos, photos[:1]):
        ref = _torch_scores(model, batch)
        got = _ort_scores(onnx_path, batch)
        assert got.shape == ref.shape == (len(batch), 1)
        diff = float(np.abs(got - ref).max())
        assert diff <= FP32_ATOL, diff


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_clean_does_not_grow(model, tmp_path):
    path = export_onnx(model, tmp_path / "m.onnx")
    counts = clean_onnx(path)  # a second pass on an already clean graph
    assert counts["nodes_after"] <= counts["nodes_before"]
    raw = tmp_path / "raw.onnx"
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, CROP, CROP),),
            str(raw),
            opset_version=17,
            dynamo=False,
            input_names=[PIXELS],
            output_names=[SCORE],
            dynamic_axes={PIXELS: {0: "N"}, SCORE: {0: "N"}},
        )
    counts = clean_onnx(raw)
    assert counts["nodes_after"] <= counts["nodes_before"]
    assert onnx.load(raw).opset_import[0].version == 17


def test_export_checkpoint(model, tmp_path, photos):
    from sampleiqa.training.checkpoint import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "scorer.pt", model, epoch=3)
    path = export_checkpoint(ckpt, tmp_path / "ckpt.onnx")
    diff = float(np.abs(_ort_scores(path, photos) - _torch_scores(model, photos)).max())
    assert diff <= FP32_ATOL, diff


@pytest.mark.parametrize("fp16", [False, True])
def test_guard_gives_nan_for_a_non_finite_raw_score_and_clips_the_score(onnx_path, photos, tmp_path, fp16):
    """A raw score that is not finite -> NaN for that item only; every score in [0, 1]. In
    the graph, so the GPU targets (and the FP16 copy TensorRT builds) have it. uint8 PIXELS
    carry no NaN, so the graph is made to add log(0) to item 1's raw score."""
    path = convert_to_fp16(onnx_path, tmp_path / "g16.onnx") if fp16 else onnx_path
    broken = onnx.load(path)
    h = onnx.helper
    pick = h.make_tensor("pick", onnx.TensorProto.FLOAT, [3, 1], [0.0, 1.0, 0.0])
    one = h.make_tensor("one", onnx.TensorProto.FLOAT, [], [1.0])
    guarded = [n for n in broken.graph.node if n.name in ("/guard/score_abs", "/guard/clipped")]
    src = guarded[0].input[0]  # the raw score, or its FP32 cast in the FP16 copy
    raw_type = onnx.TensorProto.FLOAT if not fp16 or src.endswith("fp32") else onnx.TensorProto.FLOAT16
    added = [
        h.make_node("Constant", [], ["/t/pick"], value=pick),
        h.make_node("Constant", [], ["/t/one"], value=one),
        h.make_node("Sub", ["/t/one", "/t/pick"], ["/t/keep"]),
        h.make_node("Log", ["/t/keep"], ["/t/minus_inf_at_1"]),  # log(1 - [0, 1, 0]) = [0, -inf, 0]
        h.make_node("Cast", ["/t/minus_inf_at_1"], ["/t/bump"], to=raw_type),
        h.make_node("Add", [src, "/t/bump"], ["/t/raw"]),
    ]
    first_guard = next(i for i, n in enumerate(broken.graph.node) if n.name == guarded[0].name)
    for n in guarded:
        n.input[0] = "/t/raw"
    for k, n in enumerate(added):
        broken.graph.node.insert(first_guard + k, n)
    broken_path = tmp_path / "broken.onnx"
    onnx.save(broken, broken_path)
    x = np.concatenate([photos[:1]] * 3)
    got = _ort_scores(broken_path, x)[:, 0]
    assert np.isnan(got[1]) and np.isfinite(got[[0, 2]]).all(), got
    assert got[0] == pytest.approx(_ort_scores(path, photos[:1])[0, 0], abs=1e-6)  # its neighbours do not matter
    m = onnx.load(path)
    assert [n.name for n in m.graph.node if n.name.startswith("/guard/") and n.op_type == "Where"]
    # A raw score far off the scale (x100 and shifted down) comes out clipped to 0 or 1.
    shifted = onnx.load(onnx_path)
    big = onnx.helper.make_tensor("big", onnx.TensorProto.FLOAT, [], [100.0])
    shift = onnx.helper.make_tensor("shift", onnx.TensorProto.FLOAT, [], [-60.0])
    shifted.graph.node.extend(
        [
            onnx.helper.make_node("Constant", [], ["/t/big"], value=big),
            onnx.helper.make_node("Constant", [], ["/t/shift"], value=shift),
            onnx.helper.make_node("Mul", ["/guard/score_raw", "/t/big"], ["/t/scaled"]),
            onnx.helper.make_node("Add", ["/t/scaled", "/t/shift"], ["/t/off_scale"]),
        ]
    )
    clip = next(n for n in shifted.graph.node if n.name == "/guard/clipped")
    clip.input[0] = "/t/off_scale"
    shifted_path = tmp_path / "shifted.onnx"
    onnx.save(shifted, shifted_path)
    clipped = _ort_scores(shifted_path, photos)[:, 0]
    raw = _ort_scores(onnx_path, photos)[:, 0] * 100 - 60
    assert (raw < 0).any() or (raw > 1).any()
    assert np.allclose(clipped, np.clip(raw, 0, 1), atol=2e-3), (clipped, raw)


def test_exported_graphs_are_within_tensorrt_limits(onnx_path, photos):
    """TopK K <= 3840 and constant, TensorRT 10 operators only, no tensor past FP16's range
    outside the FP32 scopes on real photos (build/tensorrt_limits.py)."""
    from sampleiqa.build.tensorrt_limits import check_onnx

    check_onnx(onnx_path, photos)


def _with_outputs(path: Path, names: list[str]) -> bytes:
    m = onnx.load(path)
    m.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    return m.SerializeToString()


def test_fp16_copy_computes_the_fp32_scopes_in_fp32(model, onnx_path, photos, tmp_path):
    """What the kept scopes hand to the rest of the graph (the statistics, the prior's pooled
    moments) is finite in the FP16 copy, and the statistics, which read the pixels, are the
    same as in FP32: nothing on their way in, such as the model's top-level Cast, was turned
    FP16. Before: the statistics moved by up to 0.05 sd."""
    from sampleiqa.build.fp16 import FP32_SCOPES

    dst = convert_to_fp16(onnx_path, tmp_path / "scoped.fp16.onnx")
    graph = onnx.load(onnx_path).graph
    producer = {o: n for n in graph.node for o in n.output}
    handed = sorted(
        {
            i
            for n in graph.node
            if not n.name.startswith(FP32_SCOPES)
            for i in n.input
            if i in producer and producer[i].name.startswith(FP32_SCOPES) and "guard" not in producer[i].name
        }
    )
    assert handed
    runs = [
        ort.InferenceSession(_with_outputs(p, handed), providers=["CPUExecutionProvider"]).run(handed, {PIXELS: photos})
        for p in (onnx_path, dst)
    ]
    for name, a, b in zip(handed, *runs):
        scale = np.abs(a).max() + 1e-6
        assert np.isfinite(b).all(), name  # no overflow inside the scope
        # The statistics read the FP32 pixels: the same to float rounding. The trunk's moments
        # read FP16 stage outputs: the same to FP16 rounding of those.
        tolerance = 1e-5 if name.startswith("/model/stats/") else 2e-2
        assert np.abs(a - b).max() <= tolerance * scale, (name, np.abs(a - b).max(), scale)


def test_fp16_copy(model, onnx_path, photos, tmp_path):
    dst = convert_to_fp16(onnx_path, tmp_path / "model.fp16.onnx")
    onnx.checker.check_model(str(dst), full_check=True)
    m = onnx.load(dst)
    # The boundary keeps its types (uint8 in, FP32 out), so the Triton config is the FP32 model's.
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8  # normalised inside
    assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dtypes = {i.name: i.data_type for i in m.graph.initializer}
    sizes = {i.name: int(np.prod(i.dims)) for i in m.graph.initializer}
    # Every float weight is half except those that only FP32 scopes and LayerNormalization read.
    from sampleiqa.build.fp16 import FP32_SCOPES

    users: dict[str, list] = {}
    for n in m.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    kept = {
        k
        for k in sizes
        if users.get(k) and all(u.name.startswith(FP32_SCOPES) or u.op_type == "LayerNormalization" for u in users[k])
    }
    floats = {k for k in sizes if dtypes[k] in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)}
    assert all(dtypes[k] == onnx.TensorProto.FLOAT16 for k in floats - kept), [
        k for k in floats - kept if dtypes[k] != onnx.TensorProto.FLOAT16
    ][:5]
    assert sum(sizes[k] for k in floats - kept) >= 0.5 * sum(sizes[k] for k in floats)  # the backbone is most of it
    # LayerNormalization is kept FP32: its scale stays float32.
    ln = next(n for n in m.graph.node if n.op_type == "LayerNormalization")
    assert dtypes[ln.input[1]] == onnx.TensorProto.FLOAT
    # ORT CPU runs it (it casts around fp16 ops it has no CPU kernel for), so compare scores.
    ref = _torch_scores(model, photos)
    got = _ort_scores(dst, photos)
    assert got.dtype == np.float32 and got.shape == ref.shape
    diff = float(np.abs(got - ref).max())
    assert diff <= FP16_ATOL, diff


def test_shipped_scorer_fp16_copy_scores_like_fp32(photos, tmp_path):
    """The committed repository's scorer and its FP16 copy (what TensorRT's strongly typed
    build takes) on real photos."""
    from sampleiqa.server import DEFAULT_REPOSITORY

    shipped = Path(DEFAULT_REPOSITORY) / "scorer" / "1" / "model.onnx"
    fp16 = convert_to_fp16(shipped, tmp_path / "shipped.fp16.onnx")
    assert not any(n.op_type == "TopK" for n in onnx.load(shipped).graph.node)  # TensorRT caps TopK at K <= 3840
    diff = float(np.abs(_ort_scores(fp16, photos) - _ort_scores(shipped, photos)).max())
    assert diff <= FP16_ATOL, diff


def test_export_fp16_flag(model, tmp_path):
    path = export_onnx(model, tmp_path / "m16.onnx", fp16=True)
    m = onnx.load(path)
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in m.graph.initializer)
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8  # normalised inside


def test_opset_16_rejected(model, tmp_path):
    with pytest.raises(ValueError):
        export_onnx(model, tmp_path / "old.onnx", opset=16)
    assert not list(tmp_path.iterdir())  # nothing written
