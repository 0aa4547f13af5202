"""The bad-input corpus, generated here (never committed): name -> bytes, with the outcome
each input must get. tests/test_bad_inputs.py asserts every row through the served ensemble
and the bulk CLI; tests/README.md lists the same table (a test keeps the two in step)."""

from __future__ import annotations

import io
from typing import Callable, NamedTuple

import cv2
import numpy as np
from PIL import Image

from sampleiqa.runtime.contracts import MAX_BYTES

from .helpers import FACES, SAMPLES

PORTRAIT = SAMPLES / "astronaut.jpg"  # one face, marked by hand in helpers.FACES
PORTRAIT_FACE = FACES[PORTRAIT]


class Case(NamedTuple):
    name: str  # file name in the corpus folder (the suffix is what an upload would carry)
    what: str  # the README's description
    outcome: str  # "ok" or the error code
    face: str = ""  # for "ok": "face" (box on the portrait's face), "no face" or "one of the faces"
    make: Callable[[], bytes] | None = None


def _encode(img: np.ndarray, ext: str, params=()) -> bytes:
    ok, buf = cv2.imencode(ext, img, list(params))
    assert ok
    return buf.tobytes()


def _pil(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _portrait() -> np.ndarray:
    return cv2.imread(str(PORTRAIT))


def _truncated(fraction: float) -> bytes:
    data = PORTRAIT.read_bytes()
    return data[: int(len(data) * fraction)]


def _bomb() -> bytes:
    png = _encode(np.zeros((8, 8, 3), np.uint8), ".png")
    return png[:16] + (30000).to_bytes(4, "big") * 2 + png[24:]  # IHDR claims 30000x30000


def _heic() -> bytes:
    """What an iPhone upload renamed to .jpg starts with (an ISO-BMFF ftyp box, brand heic),
    then random bytes where its boxes should be: no image in it."""
    ftyp = b"ftypheic" + b"\x00\x00\x00\x00" + b"mif1heic"
    rng = np.random.default_rng(1)
    return len(ftyp + b"1234").to_bytes(4, "big") + ftyp + rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()


def _animated_gif() -> bytes:
    """Frame 0 is the portrait; the later frames are flat grey (no face in them)."""
    first = Image.open(PORTRAIT).convert("RGB")
    grey = [Image.new("RGB", first.size, (128, 128, 128)) for _ in range(2)]
    return _pil(first, "GIF", save_all=True, append_images=grey, duration=100, loop=0)


def exif_rotated() -> tuple[bytes, tuple[int, int, int, int]]:
    """The portrait stored on its side with EXIF orientation 6 ("rotate 90 CW to display"),
    and where the face is in the *stored* pixels (a decoder that ignored EXIF would find it there)."""
    upright = Image.open(PORTRAIT)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    x, y, w, h = PORTRAIT_FACE
    stored_face = (y, upright.width - x - w, h, w)
    return _pil(stored, "JPEG", exif=exif.tobytes(), quality=95), stored_face


def many_faces() -> tuple[bytes, list[tuple[int, int, int, int]]]:
    """Ten copies of the portrait's face on a grey board, and where each one is."""
    x, y, w, h = PORTRAIT_FACE
    face = _portrait()[max(0, y - 30) : y + h + 30, max(0, x - 30) : x + w + 30]
    fh, fw = face.shape[:2]
    board = np.full((2 * (fh + 20) + 20, 5 * (fw + 20) + 20, 3), 200, np.uint8)
    where = []
    for k in range(10):
        r, c = divmod(k, 5)
        top, left = 20 + r * (fh + 20), 20 + c * (fw + 20)
        board[top : top + fh, left : left + fw] = face
        where.append((left + (x - max(0, x - 30)), top + (y - max(0, y - 30)), w, h))
    return _encode(board, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95]), where


def _panorama() -> bytes:
    """10000x5000 (50 megapixels): a smooth gradient, so the JPEG stays a few MB."""
    ramp = np.linspace(0, 255, 10000, dtype=np.float32)
    img = np.empty((5000, 10000, 3), np.uint8)
    img[:] = ramp[None, :, None].astype(np.uint8)
    return _encode(img, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 80])


def _gif_frame_over_screen() -> bytes:
    """A 75 KB GIF whose logical screen says 1x1 and whose first frame is 10001x10001."""
    data = bytearray(_pil(Image.new("P", (10001, 10001), 0), "GIF"))
    data[6:10] = (1).to_bytes(2, "little") * 2
    return bytes(data)


def _motion_photo() -> bytes:
    """The portrait followed by 1 MB of other data, as phone motion photos carry a video."""
    tail = b"\x00\x00\x00\x20ftypmp42" + np.random.default_rng(7).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    return PORTRAIT.read_bytes() + tail


def _oversize() -> bytes:
    return b"\xff\xd8\xff\xe0" + bytes(MAX_BYTES)  # one JPEG-looking file past the byte limit


CASES = [
    Case("zero_bytes.jpg", "zero bytes", "empty", make=lambda: b""),
    Case(
        "random_bytes.jpg",
        "4 KB of random bytes",
        "not_an_image",
        make=lambda: np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    ),
    Case("text.jpg", "a text file named .jpg", "not_an_image", make=lambda: b"<html>404 Not Found</html>\n" * 20),
    Case(
        "heic_renamed.jpg",
        "a HEIC's ISO-BMFF `ftypheic` header, then random bytes (no image), named .jpg",
        "decode_failed",
        make=_heic,
    ),
    Case("truncated_10.jpg", "a JPEG cut at 10%", "truncated", make=lambda: _truncated(0.1)),
    Case("truncated_50.jpg", "a JPEG cut at 50%", "truncated", make=lambda: _truncated(0.5)),
    Case("truncated_90.jpg", "a JPEG cut at 90%", "truncated", make=lambda: _truncated(0.9)),
    Case(
        "truncated_50.png",
        "a PNG cut at 50%",
        "truncated",
        make=lambda: (lambda d: d[: len(d) // 2])(_encode(_portrait(), ".png")),
    ),
    Case(
        "broken_scan.jpg",
        "JPEG markers around zeros (no valid scan)",
        "decode_failed",
        make=lambda: b"\xff\xd8\xff" + bytes(100) + b"\xff\xda" + bytes(50) + b"\xff\xd9",
    ),
    Case(
        "bomb_30000x30000.png",
        "a PNG whose header claims 30000x30000 (decompression bomb)",
        "too_many_pixels",
        make=_bomb,
    ),
    Case(
        "gif_frame_over_screen.gif",
        "a GIF whose screen says 1x1 and whose first frame is 10001x10001",
        "too_many_pixels",
        make=_gif_frame_over_screen,
    ),
    Case("oversize.jpg", "a JPEG-looking file one header over the 64 MiB byte limit", "too_large", make=_oversize),
    Case("tiny_1x1.png", "1x1 image", "ok", "no face", lambda: _encode(np.full((1, 1, 3), 90, np.uint8), ".png")),
    Case("tiny_8x8.png", "8x8 image", "ok", "no face", lambda: _encode(np.full((8, 8, 3), 90, np.uint8), ".png")),
    Case(
        "strip_20000x50.png",
        "20000x50 strip",
        "ok",
        "no face",
        lambda: _encode(np.tile(np.linspace(0, 255, 20000, dtype=np.uint8)[None, :, None], (50, 1, 3)), ".png"),
    ),
    Case("panorama_50mp.jpg", "10000x5000 (50 MP) panorama", "ok", "no face", _panorama),
    Case(
        "gray.jpg",
        "grayscale JPEG portrait",
        "ok",
        "face",
        lambda: _encode(cv2.cvtColor(_portrait(), cv2.COLOR_BGR2GRAY), ".jpg"),
    ),
    Case(
        "rgba.png",
        "RGBA PNG portrait",
        "ok",
        "face",
        lambda: _encode(cv2.cvtColor(_portrait(), cv2.COLOR_BGR2BGRA), ".png"),
    ),
    Case(
        "palette.png",
        "palette (P mode, 256 colours) PNG portrait",
        "ok",
        "face",
        lambda: _pil(Image.open(PORTRAIT).convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
    ),
    Case(
        "cmyk.jpg",
        "CMYK JPEG portrait",
        "ok",
        "face",
        lambda: _pil(Image.open(PORTRAIT).convert("CMYK"), "JPEG", quality=95),
    ),
    Case(
        "16bit.png",
        "16-bit RGB PNG portrait",
        "ok",
        "face",
        lambda: _encode(_portrait().astype(np.uint16) * 257, ".png"),
    ),
    Case("portrait.tif", "TIFF portrait", "ok", "face", lambda: _encode(_portrait(), ".tiff")),
    Case(
        "animated.gif",
        "animated GIF: frame 0 the portrait, then grey frames (first frame scored)",
        "ok",
        "face",
        _animated_gif,
    ),
    Case(
        "exif_rotated.jpg", "portrait stored on its side, EXIF orientation 6", "ok", "face", lambda: exif_rotated()[0]
    ),
    Case(
        "motion_photo.jpg",
        "the portrait followed by 1 MB of video-like data (a phone motion photo)",
        "ok",
        "face",
        _motion_photo,
    ),
    Case(
        "no_face.jpg",
        "a photo with no face (samples/coffee.jpg)",
        "ok",
        "no face",
        lambda: (SAMPLES / "coffee.jpg").read_bytes(),
    ),
    Case("many_faces.jpg", "ten faces on one board", "ok", "one of the faces", lambda: many_faces()[0]),
]
