"""The crop policy and safe decoding, in process (no server)."""

import cv2
import numpy as np
import pytest

from sampleiqa.runtime.contracts import CROP
from sampleiqa.runtime.preprocessing import (
    Box,
    PreprocessError,
    apply_plan,
    contains_face,
    decode_bgr,
    find_face,
    plan_crop,
    preprocess_bytes,
    preprocess_file,
    random_plan,
)

from .helpers import FACES, NO_FACE, SAMPLES, on_face


def encode(img, ext=".png", params=()):
    ok, buf = cv2.imencode(ext, img, list(params))
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize("path", list(FACES), ids=lambda p: p.name)
def test_face_box_lies_on_the_face(path):
    if not path.exists():
        pytest.skip("photo not available")
    r = preprocess_file(path)
    assert r.face_found
    assert on_face(r.face_box, FACES[path]), (r.face_box, FACES[path])


@pytest.mark.parametrize("path", NO_FACE, ids=lambda p: p.name)
def test_no_face_gives_the_centre_crop(path):
    r = preprocess_file(path)
    assert not r.face_found and tuple(r.face_box) == (0, 0, 0, 0)
    bgr = decode_bgr(path.read_bytes())
    h, w = bgr.shape[:2]
    plan = plan_crop(w, h, None)
    assert abs(plan.x - (w * plan.scale - CROP) / 2) <= 1 and abs(plan.y - (h * plan.scale - CROP) / 2) <= 1


def test_pixels_are_uint8_rgb_chw_and_normalise_with_imagenet_statistics():
    from sampleiqa.runtime.preprocessing import normalize, to_tensor

    img = np.zeros((500, 600, 3), np.uint8)
    img[:, :, 2] = 255  # pure red in BGR
    r = preprocess_bytes(encode(img))
    assert r.pixels.shape == (3, CROP, CROP) and r.pixels.dtype == np.uint8
    assert (r.pixels[0] == 255).all() and (r.pixels[1:] == 0).all()  # R channel first
    x = normalize(r.pixels)
    assert x.dtype == np.float32
    np.testing.assert_allclose(x[0], (1 - 0.485) / 0.229, rtol=1e-5)
    np.testing.assert_allclose(x[2], (0 - 0.406) / 0.225, rtol=1e-5)
    crop = np.random.default_rng(0).integers(0, 256, (CROP, CROP, 3), dtype=np.uint8)
    from sampleiqa.runtime.preprocessing import to_pixels

    np.testing.assert_array_equal(to_tensor(crop), normalize(to_pixels(crop)))  # training's input, bit for bit


@pytest.mark.parametrize(
    "w,h,face",
    [
        (512, 512, Box(10, 400, 60, 60)),  # face in a corner: crop shifts, stays inside
        (3000, 2000, Box(2500, 100, 300, 300)),
        (1000, 1200, Box(100, 100, 800, 800)),  # face larger than the crop: image shrinks
        (300, 200, Box(20, 20, 50, 50)),  # small image: enlarged first
        (2000, 500, None),
    ],
)
def test_plan_holds_the_whole_face_and_fits_the_image(w, h, face):
    plan = plan_crop(w, h, face)
    sw, sh = round(w * plan.scale), round(h * plan.scale)
    assert min(sw, sh) >= CROP
    assert 0 <= plan.x <= sw - CROP and 0 <= plan.y <= sh - CROP
    if face is not None:
        assert contains_face(plan, face)
        assert max(face.w, face.h) * plan.scale <= CROP + 1e-6
    crop = apply_plan(np.zeros((h, w, 3), np.uint8), plan)
    assert crop.shape == (CROP, CROP, 3)


def test_random_crops_always_hold_the_face_and_vary():
    rng = np.random.default_rng(0)
    face = Box(900, 300, 200, 200)
    plans = [random_plan(2000, 1500, face, rng) for _ in range(200)]
    assert all(contains_face(p, face) for p in plans)
    assert len({(p.x, p.y) for p in plans}) > 50


def test_exif_orientation_is_applied_and_the_box_follows_it(tmp_path):
    from PIL import Image

    from .helpers import SAMPLES

    upright = Image.open(SAMPLES / "astronaut.jpg")
    # Store the photo rotated on its side, with EXIF saying "rotate 90 CW to display" (6).
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    stored.save(path, exif=exif.tobytes(), quality=95)
    r = preprocess_file(path)
    assert decode_bgr(path.read_bytes()).shape[:2] == (upright.height, upright.width)
    assert r.face_found and on_face(r.face_box, FACES[SAMPLES / "astronaut.jpg"])


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.full((300, 400), 128, np.uint8),  # grayscale
        lambda: np.dstack([np.full((300, 400, 3), 90, np.uint8), np.full((300, 400), 40, np.uint8)]),  # RGBA
        lambda: np.full((300, 400, 3), 40000, np.uint16),  # 16-bit
    ],
    ids=["gray", "rgba", "16bit"],
)
def test_unusual_pixel_formats_become_8bit_colour(make):
    bgr = decode_bgr(encode(make()))
    assert bgr.dtype == np.uint8 and bgr.shape == (300, 400, 3)


@pytest.mark.parametrize("ext", [".jpg", ".png", ".webp", ".bmp", ".tiff"])
def test_supported_formats_decode(ext):
    img = cv2.imread(str(NO_FACE[0]))
    assert preprocess_bytes(encode(img, ext)).pixels.shape == (3, CROP, CROP)


def test_truncated_jpeg_is_an_error_not_a_partial_decode():
    data = NO_FACE[0].read_bytes()
    for fraction in (0.1, 0.5, 0.9, 0.999):
        with pytest.raises(PreprocessError) as e:
            decode_bgr(data[: int(len(data) * fraction)])
        assert e.value.code == "truncated"


def test_decompression_bomb_is_refused_before_decoding():
    png = encode(np.zeros((8, 8, 3), np.uint8))
    # Rewrite the IHDR to claim 30000x30000 (the CRC no longer matters: we never decode).
    bomb = png[:16] + (30000).to_bytes(4, "big") * 2 + png[24:]
    with pytest.raises(PreprocessError) as e:
        decode_bgr(bomb)
    assert e.value.code == "too_many_pixels" and "30000x30000" in str(e.value)


@pytest.mark.parametrize(
    "data,code",
    [
        (b"", "empty"),
        (b"hello, not an image", "not_an_image"),
        (b"\xff\xd8\xff" + bytes(100) + b"\xff\xda" + bytes(50) + b"\xff\xd9", "decode_failed"),
    ],
)
def test_bad_bytes_give_a_coded_error(data, code):
    with pytest.raises(PreprocessError) as e:
        preprocess_bytes(data)
    assert e.value.code == code


def test_yunet_ships_with_its_licence_and_haar_still_plugs_in():
    from sampleiqa.runtime.preprocessing import HaarFaceDetector, YuNetFaceDetector, create_detector, default_detector
    from sampleiqa.runtime.preprocessing.faces import YUNET_MODEL

    assert isinstance(default_detector(), YuNetFaceDetector)
    assert YUNET_MODEL.is_file() and (YUNET_MODEL.parent / "LICENSE.yunet").read_text().count("Apache License") >= 1
    portrait = decode_bgr((SAMPLES / "astronaut.jpg").read_bytes())
    for det in (create_detector("yunet"), HaarFaceDetector()):
        assert on_face(find_face(portrait, det), FACES[SAMPLES / "astronaut.jpg"])
    with pytest.raises(ValueError, match="unknown face detector"):
        create_detector("mtcnn")


def test_yunet_never_fails_on_tiny_images():
    """CI once saw YuNet return a non-finite box for a flat 8x8 PNG in the server: images under
    16 px are not searched, and non-finite boxes are dropped."""
    from sampleiqa.runtime.preprocessing import create_detector

    det = create_detector("yunet")
    portrait = decode_bgr((SAMPLES / "astronaut.jpg").read_bytes())
    for side in (1, 2, 8, 15):
        assert find_face(portrait, det) is not None  # a real detection first: the detector keeps state
        assert find_face(np.full((side, side, 3), 90, np.uint8), det) is None
        assert find_face(cv2.resize(portrait, (side, side), interpolation=cv2.INTER_AREA), det) is None
