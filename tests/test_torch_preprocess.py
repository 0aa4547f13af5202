"""The torch preprocessing path (sampleiqa/runtime/preprocessing/torch_*.py), run on CPU: its resize is
OpenCV's to a grey level, and TorchPreprocessor gives preprocess_bytes' faces, crops and
errors, item by item, in mixed batches."""

from __future__ import annotations

import csv
import io

import cv2
import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytestmark = pytest.mark.torch

from sampleiqa.runtime.preprocessing import PreprocessError, preprocess_bytes  # noqa: E402
from sampleiqa.runtime.preprocessing.torch_jpeg import orient, route_jpeg  # noqa: E402
from sampleiqa.runtime.preprocessing.torch_pipeline import TorchPreprocessor  # noqa: E402
from sampleiqa.runtime.preprocessing.torch_resize import resize_uint8  # noqa: E402

from .badinputs import CASES, PORTRAIT  # noqa: E402
from .helpers import BIQ, SAMPLES, iou  # noqa: E402

PHOTOS = sorted(SAMPLES.glob("*.jpg"))
# Sizes (w, h): the detector's copy, the crop, both ways odd, an exact 2x, one axis 1 and enlarging.
SIZES = [(256, 256), (448, 448), (255, 171), (97, 131), (13, 512), (1, 1), (700, 900), (600, 600)]


@pytest.fixture(scope="module")
def preprocessor():
    return TorchPreprocessor(device="cpu")


def _cpu(data: bytes):
    try:
        return preprocess_bytes(data), None
    except PreprocessError as exc:
        return None, str(exc)


def _biq_val(per_subset: int) -> list:
    """`per_subset` val photos of each subset (ss03 holds most of the portraits)."""
    if not (BIQ / "labels.csv").exists():
        pytest.skip(f"BIQ2021 data not found under {BIQ}")
    with open(BIQ / "labels.csv", newline="") as f:
        names = sorted(r["image"] for r in csv.DictReader(f) if r["split"] == "val")
    picked = [n for s in ("ss01", "ss02", "ss03") for n in [m for m in names if m.startswith(s)][:per_subset]]
    return [BIQ / "images" / n for n in picked]


def _compare(batch, i: int, ref, err, name: str, stats: list) -> None:
    assert batch.errors[i] == err, (name, batch.errors[i], err)
    if err is not None:
        assert not batch.pixels[i].any() and not batch.found[i], name
        return
    assert bool(batch.found[i]) == ref.face_found, (name, batch.boxes[i], ref.face_box)
    if ref.face_found:
        assert iou(tuple(batch.boxes[i]), ref.face_box) >= 0.9, (name, batch.boxes[i], ref.face_box)
    d = np.abs(batch.pixels[i].numpy().astype(np.int16) - ref.pixels.astype(np.int16))
    stats.append((name, int(d.max()), float(d.mean())))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["area", "linear"])
def test_resize_matches_opencv(mode):
    """Max 1 grey level everywhere; mean under 0.02 (area shrinking) / 0.15 (linear, where
    OpenCV's 11-bit fixed point rounds differently from float32 on ~10% of the pixels)."""
    flag = cv2.INTER_AREA if mode == "area" else cv2.INTER_LINEAR
    photos = PHOTOS + (sorted((BIQ / "images").glob("ss03*.jpg"))[:3] if BIQ.exists() else [])
    diffs = {True: [0, 0], False: [0, 0]}  # shrinking both axes or not: sum of |diff|, values
    for path in photos:
        img = cv2.imread(str(path))
        h, w = img.shape[:2]
        t = torch.from_numpy(img).permute(2, 0, 1)
        for ow, oh in SIZES + [(w // 2, h // 2), (w // 3, h // 3), (w - 1, h - 3)]:
            ref = cv2.resize(img, (ow, oh), interpolation=flag).astype(np.int16)
            got = resize_uint8(t, oh, ow, mode).permute(1, 2, 0).numpy().astype(np.int16)
            d = np.abs(got - ref)
            assert d.max() <= 1, (path, ow, oh, d.max())
            diffs[ow <= w and oh <= h][0] += int(d.sum())
            diffs[ow <= w and oh <= h][1] += d.size
    means = {k: s / n for k, (s, n) in diffs.items()}
    assert means[True] < (0.02 if mode == "area" else 0.15) and means[False] < 0.15, means


def test_resize_is_exact_on_the_detector_copy_of_a_512_photo():
    img = cv2.imread(str(PORTRAIT))  # 512x512: 2x shrink (OpenCV's fast path) and 448 (general path)
    t = torch.from_numpy(img).permute(2, 0, 1)
    for side in (256, 448):
        ref = cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA)
        assert np.array_equal(resize_uint8(t, side, side, "area").permute(1, 2, 0).numpy(), ref)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_opencv_does(orientation):
    from torchvision.io import ImageReadMode, decode_jpeg

    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.open(SAMPLES / "chelsea.jpg").save(buf, "JPEG", exif=exif.tobytes(), quality=90)
    data = buf.getvalue()
    route = route_jpeg(data)
    assert route.device and route.orientation == orientation
    ref = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    raw = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    assert np.array_equal(orient(raw, orientation).permute(1, 2, 0).numpy(), ref)


def test_jpegs_the_torch_decoder_does_not_take_go_to_the_cpu_path():
    data = PORTRAIT.read_bytes()
    sof = data.index(b"\xff\xc0")
    cmyk = io.BytesIO()
    Image.open(PORTRAIT).convert("CMYK").save(cmyk, "JPEG")
    progressive = io.BytesIO()
    Image.open(PORTRAIT).save(progressive, "JPEG", progressive=True)
    assert route_jpeg(data).device and route_jpeg(progressive.getvalue()).device
    assert route_jpeg(cmyk.getvalue()).reason == "4 components"
    assert "12-bit" in route_jpeg(data[: sof + 4] + b"\x0c" + data[sof + 5 :]).reason
    assert "arithmetic" in route_jpeg(data[:sof] + b"\xff\xc9" + data[sof + 2 :]).reason
    assert not route_jpeg(data[:2] + b"\x00" * 50).device


def test_samples_match_the_cpu_path(preprocessor):
    blobs = [p.read_bytes() for p in PHOTOS]
    batch = preprocessor(blobs)
    assert batch.pixels.shape == (len(blobs), 3, 448, 448) and batch.pixels.dtype == torch.uint8
    stats = []
    for i, (path, data) in enumerate(zip(PHOTOS, blobs)):
        _compare(batch, i, *_cpu(data), path.name, stats)
    assert all(f is None for f in batch.fallback)  # plain JPEGs: all decoded by torch
    assert max(s[1] for s in stats) <= 1 and max(s[2] for s in stats) < 0.15, stats


@pytest.mark.slow
def test_biq2021_photos_match_the_cpu_path(preprocessor):
    paths = _biq_val(16)  # 48 photos, 32 per batch
    stats, faces = [], 0
    for k in range(0, len(paths), 32):
        chunk = paths[k : k + 32]
        blobs = [p.read_bytes() for p in chunk]
        batch = preprocessor(blobs)
        for i, (path, data) in enumerate(zip(chunk, blobs)):
            _compare(batch, i, *_cpu(data), path.name, stats)
        faces += int(batch.found.sum())
    assert faces >= 5  # the face path is exercised
    # 512x512 photos: both resizes (to 256, to 448) are exact here; 1 level allows for a tie
    assert max(s[1] for s in stats) <= 1 and np.mean([s[2] for s in stats]) < 0.01, stats


@pytest.mark.slow
def test_a_mixed_batch_gives_the_cpu_paths_errors_and_results(preprocessor):
    """Every bad input of tests/badinputs.py among good ones: the same error strings, and the
    others (PNG, GIF, TIFF, CMYK JPEG, 16-bit PNG, EXIF-rotated JPEG ...) as the CPU path."""
    cases = [c for c in CASES if c.name != "oversize.jpg"] + [c for c in CASES if c.name == "oversize.jpg"]
    blobs = [c.make() for c in cases]
    batch = preprocessor(blobs)
    stats = []
    for i, (case, data) in enumerate(zip(cases, blobs)):
        ref, err = _cpu(data)
        assert (err is None) == (case.outcome == "ok") and (err is None or f"[{case.outcome}]" in err), case.name
        _compare(batch, i, ref, err, case.name, stats)
    routed = {c.name: batch.fallback[i] for i, c in enumerate(cases) if batch.errors[i] is None}
    assert routed["cmyk.jpg"] == "4 components" and routed["16bit.png"] and routed["animated.gif"]
    assert routed["exif_rotated.jpg"] is None and routed["gray.jpg"] is None  # oriented on the device
    assert max(s[1] for s in stats) <= 1 and max(s[2] for s in stats) < 0.15, stats


def test_an_empty_batch_and_a_batch_of_failures(preprocessor):
    assert preprocessor([]).pixels.shape == (0, 3, 448, 448)
    batch = preprocessor([b"", b"not an image"])
    assert batch.errors[0].startswith("[empty]") and batch.errors[1].startswith("[not_an_image]")
    assert not batch.found.any() and batch.boxes.dtype == np.int32


def test_the_serving_path_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys, sampleiqa.runtime.preprocessing as p; p.preprocess_file(sys.argv[1]); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code, str(PORTRAIT)], check=True)
