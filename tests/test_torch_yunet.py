"""YuNet in torch (sampleiqa/runtime/preprocessing/torch_yunet.py) against ONNX Runtime on the shipped
ONNX, and against OpenCV's cv2.FaceDetectorYN (faces.YuNetFaceDetector) on real photos."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from sampleiqa.runtime.preprocessing.faces import YUNET_MODEL, YuNetFaceDetector, create_detector, find_face

from .helpers import BIQ, FACES, NO_FACE, REPO_ROOT, SAMPLES, biq_images, iou

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from sampleiqa.runtime.preprocessing.torch_yunet import OnnxYuNet, TorchYuNetDetector  # noqa: E402


@pytest.fixture(scope="module")
def det():
    return TorchYuNetDetector()


@pytest.fixture(scope="module")
def ref():
    return YuNetFaceDetector()


def _photos() -> list:
    """The repository's samples, the hand-marked photos, and 40 Unsplash (ss03) and 10
    personal (ss01) BIQ2021 photos."""
    paths = sorted(SAMPLES.glob("*.jpg")) + sorted(FACES) + sorted(NO_FACE)
    if (BIQ / "labels.csv").exists():
        biq = biq_images(10_000)
        paths += [p for p in biq if p.name.startswith("ss03")][:40] + [p for p in biq if p.name.startswith("ss01")][:10]
    return list(dict.fromkeys(paths))


def _small(bgr: np.ndarray, side: int = 256) -> np.ndarray:
    h, w = bgr.shape[:2]
    f = min(1.0, side / max(h, w))
    return bgr if f == 1 else cv2.resize(bgr, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)


def _tensor(bgr: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(bgr)).permute(2, 0, 1)


def test_network_equals_onnx_runtime_at_640():
    ort = pytest.importorskip("onnxruntime")
    x = cv2.resize(cv2.imread(str(SAMPLES / "astronaut.jpg")), (640, 640)).transpose(2, 0, 1)[None]
    x = np.ascontiguousarray(x, dtype=np.float32)
    sess = ort.InferenceSession(str(YUNET_MODEL), providers=["CPUExecutionProvider"])
    want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x})))
    with torch.inference_mode():
        got = OnnxYuNet().eval()(torch.from_numpy(x))
    assert set(got) == set(want)
    for name, value in want.items():
        assert got[name].shape == value.shape, name
        diff = float(np.abs(got[name].numpy() - value).max())
        # measured: cls/obj <= 7e-7, bbox <= 5e-6, kps <= 8e-6
        assert diff < (1e-5 if name[:3] in ("cls", "obj") else 1e-4), (name, diff)


def test_network_takes_any_batch_and_multiple_of_32():
    net = OnnxYuNet().eval()
    with torch.inference_mode():
        out = net(torch.rand(3, 3, 96, 160) * 255)
    anchors = {s: (96 // s) * (160 // s) for s in (8, 16, 32)}
    for s, a in anchors.items():
        assert out[f"cls_{s}"].shape == (3, a, 1) and out[f"bbox_{s}"].shape == (3, a, 4)
        assert out[f"kps_{s}"].shape == (3, a, 10)


def test_unhandled_op_is_refused(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Softmax", ["input"], ["out"], name="sm")],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 32, 32])],
    )
    path = tmp_path / "softmax.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(ValueError, match="Softmax"):
        OnnxYuNet(path)


@pytest.mark.slow
def test_find_face_matches_opencv_on_real_photos(det, ref):
    paths = _photos()
    if len(paths) < 40:
        pytest.skip(f"BIQ2021 data not found under {BIQ}")
    found, ious = 0, []
    for path in paths:
        bgr = cv2.imread(str(path))
        got, want = find_face(bgr, det), find_face(bgr, ref)
        assert (got is None) == (want is None), (path, got, want)
        if want is not None:
            found += 1
            ious.append(iou(got, want))
            assert ious[-1] >= 0.95, (path, got, want)
        assert det.detect(_small(bgr)) == ref.detect(_small(bgr)), path  # every box (measured: all equal)
    assert found >= 15, f"only {found} of {len(paths)} photos had a face: the comparison says little"
    assert np.median(ious) == 1.0


@pytest.mark.slow
def test_batch_of_different_sizes_equals_one_by_one_and_opencv(det, ref):
    """Crops of real photos in many sizes (each padded to its own multiple of 32, as OpenCV
    pads it: a larger pad changes the network's outputs everywhere, not only at the border)."""
    photos = [
        cv2.imread(str(p))
        for p in [SAMPLES / "astronaut.jpg", SAMPLES / "grace_hopper.jpg", SAMPLES / "chelsea.jpg"] + sorted(FACES)[:6]
    ]
    sizes = [(256, 256), (256, 192), (200, 256), (256, 170), (97, 133), (64, 64), (256, 256), (33, 250), (250, 40)]
    crops = []
    for bgr, (h, w) in zip(photos * 2, sizes):
        bgr = _small(bgr, 256)
        crops.append(np.ascontiguousarray(bgr[: min(h, bgr.shape[0]), : min(w, bgr.shape[1])]))
    batch = det.detect_batch([_tensor(c) for c in crops])
    assert sum(map(len, batch)) >= 3
    for crop, boxes in zip(crops, batch):
        assert boxes == det.detect_batch([_tensor(crop)])[0] == ref.detect(crop), crop.shape
    floats = det.detect_batch([_tensor(c).float() for c in crops])
    assert floats == batch


def test_tiny_gray_and_batch_of_one(det, ref):
    rng = np.random.default_rng(0)
    tiny = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(15, 300), (300, 15), (1, 1), (15, 15)]]
    assert det.detect_batch([_tensor(t) for t in tiny]) == [[], [], [], []]
    assert all(det.detect(t) == [] for t in tiny)
    assert det.detect_batch([]) == []
    bgr = cv2.imread(str(SAMPLES / "astronaut.jpg"))
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    assert find_face(gray, det) == find_face(gray, ref) is not None
    small = _small(gray)
    assert (
        det.detect_batch([torch.from_numpy(small)])
        == det.detect_batch([torch.from_numpy(small)[None]])
        == [ref.detect(small)]
    )
    one = det.detect_batch([_tensor(_small(bgr))])
    assert len(one) == 1 and one[0] == ref.detect(_small(bgr)) != []
    mixed = det.detect_batch([_tensor(tiny[0]), _tensor(_small(bgr))])
    assert mixed == [[], one[0]]


@pytest.mark.slow
def test_half_precision_weights_find_the_same_face():
    d = TorchYuNetDetector()
    d.net.half()
    assert all(b.dtype == torch.float16 for b in d.net.buffers())
    bgr = cv2.imread(str(SAMPLES / "astronaut.jpg"))
    got, want = find_face(bgr, d), find_face(bgr, YuNetFaceDetector())
    assert iou(got, want) >= 0.95


def test_registered_lazily_without_torch_at_import():
    assert isinstance(create_detector("yunet-torch"), TorchYuNetDetector)
    code = "import sys, sampleiqa.runtime.preprocessing.faces; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)
