"""Safe decoding of encoded image bytes to 8-bit BGR (OpenCV order; RGB is taken when normalising).

Checks run before the decoder allocates anything: byte limit, a header probe for the
pixel count (decompression bombs), and end-marker checks so that a truncated file is an
error rather than a half-grey partial decode (libjpeg pads missing data silently).
"""

from __future__ import annotations

import os
import struct

from ..contracts import MAX_BYTES, MAX_PIXELS

# OpenCV's own pixel guard, as a backstop for formats the header probe does not parse.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_PIXELS))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from .errors import PreprocessError  # noqa: E402

cv2.setNumThreads(1)  # one request per core scales better than threads inside one decode

_JPEG = b"\xff\xd8\xff"
_PNG = b"\x89PNG\r\n\x1a\n"
# ISO-BMFF brands of HEIF/AVIF photos (phones save them, uploads rename them to .jpg).
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif", b"avis"}


def sniff(data: bytes) -> str | None:
    head = data[:16]
    if head.startswith(_JPEG):
        return "jpeg"
    if head.startswith(_PNG):
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:2] == b"BM":
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return "heif"
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    n = len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        # SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC).
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return w, h
        i += 2 + length
    return None


def probe_size(data: bytes, kind: str) -> tuple[int, int] | None:
    """(width, height) from the header alone, or None where the format is not parsed."""
    try:
        if kind == "png" and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if kind == "jpeg":
            return _jpeg_size(data)
        if kind == "gif":
            return struct.unpack("<HH", data[6:10])
        if kind == "bmp":
            w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)
        if kind == "webp":
            chunk = data[12:16]
            if chunk == b"VP8X":
                w = int.from_bytes(data[24:27], "little") + 1
                h = int.from_bytes(data[27:30], "little") + 1
                return w, h
            if chunk == b"VP8 ":
                w, h = struct.unpack("<HH", data[26:30])
                return w & 0x3FFF, h & 0x3FFF
            if chunk == b"VP8L":
                b = int.from_bytes(data[21:25], "little")
                return (b & 0x3FFF) + 1, ((b >> 14) & 0x3FFF) + 1
    except struct.error:
        return None
    return None


def _is_complete(data: bytes, kind: str) -> bool:
    if kind == "jpeg":
        # The end-of-image marker must follow the last start-of-scan: an EOI earlier in
        # the file belongs to the EXIF thumbnail.
        return data.rfind(b"\xff\xd9") > data.rfind(b"\xff\xda") > 0
    if kind == "png":
        return data.rfind(b"IEND") > data.rfind(b"IDAT") > 0
    if kind == "webp":
        (riff_size,) = struct.unpack("<I", data[4:8])
        return len(data) >= riff_size + 8
    if kind == "gif":
        return data.rstrip(b"\x00").endswith(b";")
    if kind == "bmp":
        (file_size,) = struct.unpack("<I", data[2:6])
        return len(data) >= file_size
    return True  # TIFF: offsets point anywhere; the decoder itself fails on missing strips


def decode_bgr(data: bytes, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES) -> np.ndarray:
    """Encoded bytes -> HxWx3 uint8 BGR, EXIF orientation applied.

    Grayscale, palette, alpha (dropped, not composited), CMYK and 16-bit inputs all come
    out as 8-bit colour. Animated GIFs give their first frame. Raises PreprocessError.
    """
    if not data:
        raise PreprocessError("empty", "the input has zero bytes")
    if len(data) > max_bytes:
        raise PreprocessError("too_large", f"{len(data)} bytes exceeds the limit of {max_bytes}")
    kind = sniff(data)
    if kind is None:
        raise PreprocessError("not_an_image", "not a JPEG, PNG, WebP, BMP, TIFF or GIF file")
    if kind == "heif":
        raise PreprocessError("unsupported", "HEIC/HEIF/AVIF images are not supported: convert to JPEG or PNG")
    size = probe_size(data, kind)
    if size is not None and size[0] * size[1] > max_pixels:
        raise PreprocessError(
            "too_many_pixels", f"{kind} header declares {size[0]}x{size[1]} pixels, over the limit of {max_pixels}"
        )
    if not _is_complete(data, kind):
        raise PreprocessError("truncated", f"the {kind} data ends before its end marker")
    if kind == "gif":
        return _first_gif_frame(data)
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        # IMREAD_COLOR applies EXIF orientation and converts depth/channels to 8-bit BGR.
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error as exc:  # e.g. OpenCV's own pixel limit
        raise PreprocessError("decode_failed", f"{kind} decoder error: {str(exc).strip().splitlines()[-1]}") from None
    if bgr is None or bgr.size == 0:
        raise PreprocessError("decode_failed", f"the {kind} decoder could not read the data")
    return bgr


def _first_gif_frame(data: bytes) -> np.ndarray:
    """The pip OpenCV wheels are built without a GIF decoder, so Pillow reads the first frame."""
    import io

    try:
        from PIL import Image
    except ImportError:
        raise PreprocessError("unsupported", "GIF decoding needs Pillow, which is not installed") from None
    try:
        with Image.open(io.BytesIO(data)) as im:
            rgb = np.asarray(im.convert("RGB"))  # frame 0; palette and transparency resolved
    except Exception as exc:  # Pillow raises many types for bad data (OSError, SyntaxError, ...)
        raise PreprocessError("decode_failed", f"gif decoder error: {exc}") from None
    return np.ascontiguousarray(rgb[:, :, ::-1])
