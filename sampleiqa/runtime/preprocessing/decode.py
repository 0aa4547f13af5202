"""Safe decoding of encoded image bytes to 8-bit BGR (OpenCV order; RGB is taken when normalising).

Checks run before the decoder allocates anything: the byte limit, then a walk of the
file's structure (JPEG segments and scans, PNG chunks, GIF blocks, HEIF/AVIF boxes; never
the pixels) for the size the decoder will produce (decompression bombs, GIF frames larger
than their screen) and for its end marker, so that a truncated file is an error rather
than a half-grey partial decode (libjpeg pads missing data silently). Data after the end
marker is ignored. The decoded size is checked again.
"""

from __future__ import annotations

import os
import re
import struct
from typing import NamedTuple

from ..contracts import MAX_BYTES, MAX_PIXELS

# OpenCV's own pixel guard, as a backstop for formats the header probe does not parse.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_PIXELS))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from .errors import PreprocessError  # noqa: E402
from .heif import HEIF_BRANDS, decode_avif, decode_heif, heif_or_avif, walk_isobmff  # noqa: E402

cv2.setNumThreads(1)  # one request per core scales better than threads inside one decode

_JPEG = b"\xff\xd8\xff"
_PNG = b"\x89PNG\r\n\x1a\n"


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
    if head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS:
        return heif_or_avif(data)
    return None


# A marker inside JPEG entropy-coded data: 0xFF followed by a byte that is not a stuffed
# zero, a restart marker (RSTn) or another fill 0xFF.
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOF0..SOF15 but DHT, JPG, DAC


class Layout(NamedTuple):
    """What walking a file's structure found: the size its decoder will produce (None where
    not parsed) and whether the structure ends before its end marker."""

    size: tuple[int, int] | None
    truncated: bool


def _walk_jpeg(data: bytes) -> Layout:
    """Segment by segment from SOI to EOI, skipping each scan's entropy-coded data. Bytes
    after EOI (a phone's motion-photo video, padding) are never looked at; an EXIF
    thumbnail's EOI sits inside its APP1 segment and is skipped with it."""
    size, i, n = None, 2, len(data)
    while i + 1 < n:
        if data[i] != 0xFF:
            return Layout(size, False)  # not a marker where one must be: the decoder says what is wrong
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xD9:  # EOI
            return Layout(size, False)
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        if marker < 0xC0 or i + 4 > n:
            return Layout(size, i + 4 > n and marker >= 0xC0)
        end = i + 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in _SOF and size is None and i + 9 <= n:
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            size = (w, h)
        if marker == 0xDA:  # SOS: entropy-coded data runs to the next real marker
            found = _JPEG_MARKER.search(data, end)
            if found is None:
                return Layout(size, True)
            i = found.start()
        else:
            i = end
    return Layout(size, True)


def _walk_png(data: bytes) -> Layout:
    """Chunk by chunk to IEND; whatever follows IEND is ignored."""
    size = struct.unpack(">II", data[16:24]) if data[12:16] == b"IHDR" and len(data) >= 24 else None
    i, n = 8, len(data)
    while i + 8 <= n:
        length = int.from_bytes(data[i : i + 4], "big")
        if data[i + 4 : i + 8] == b"IEND":
            return Layout(size, False)
        i += 12 + length  # length, type, data, CRC
    return Layout(size, True)


def _walk_gif(data: bytes) -> Layout:
    """Block by block to the trailer. The size is what Pillow decodes for frame 0: the logical
    screen grown to cover the first frame (a 1x1 screen may hold a 13000x13000 frame)."""
    n = len(data)
    if n < 13:
        return Layout(None, True)
    width, height = struct.unpack("<HH", data[6:10])
    i = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    first = True

    def sub_blocks(j: int) -> int:  # skip data sub-blocks up to and past the 0 terminator
        while j < n and data[j]:
            j += 1 + data[j]
        return j + 1

    while i < n:
        block = data[i]
        if block == 0x3B:  # trailer
            return Layout((width, height), False)
        if block == 0x21:  # extension: label, then sub-blocks
            i = sub_blocks(i + 2)
        elif block == 0x2C:  # image descriptor
            if i + 10 > n:
                break
            left, top, w, h = struct.unpack("<HHHH", data[i + 1 : i + 9])
            if first:
                width, height, first = max(width, left + w), max(height, top + h), False
            flags = data[i + 9]
            i += 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
            i = sub_blocks(i + 1)  # LZW minimum code size, then the image data
        else:
            return Layout((width, height), False)  # not a block: the decoder says what is wrong
    return Layout((width, height), True)


def _walk_heif(data: bytes) -> Layout:
    return Layout(*walk_isobmff(data))


def _walk_other(data: bytes, kind: str) -> Layout:
    try:
        if kind == "bmp":
            w, h = struct.unpack("<ii", data[18:26])
            (file_size,) = struct.unpack("<I", data[2:6])
            return Layout((abs(w), abs(h)), len(data) < file_size)
        if kind == "webp":
            (riff_size,) = struct.unpack("<I", data[4:8])
            return Layout(_webp_size(data), len(data) < riff_size + 8)
    except struct.error:
        return Layout(None, True)
    return Layout(None, False)  # TIFF: offsets point anywhere; the decoder fails on missing strips


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8 ":
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L":
        b = int.from_bytes(data[21:25], "little")
        return (b & 0x3FFF) + 1, ((b >> 14) & 0x3FFF) + 1
    return None


def layout(data: bytes, kind: str) -> Layout:
    """Walk the file's structure (never its pixels) for the decoded size and completeness."""
    walker = {"jpeg": _walk_jpeg, "png": _walk_png, "gif": _walk_gif, "heif": _walk_heif, "avif": _walk_heif}.get(kind)
    return walker(data) if walker else _walk_other(data, kind)


def check_encoded(data: bytes, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES) -> tuple[str, Layout]:
    """Every check that runs before decoding (empty, byte limit, format, declared pixels,
    truncation): the format's kind and the file's layout, or PreprocessError. `decode_bgr`
    runs it first, and so does any other decoder of the same bytes (torch_pipeline.py)."""
    if not data:
        raise PreprocessError("empty", "the input has zero bytes")
    if len(data) > max_bytes:
        raise PreprocessError("too_large", f"{len(data)} bytes exceeds the limit of {max_bytes}")
    kind = sniff(data)
    if kind is None:
        raise PreprocessError("not_an_image", "not a JPEG, PNG, WebP, BMP, TIFF, GIF, HEIC/HEIF or AVIF file")
    size, truncated = layout(data, kind)
    if size is not None and size[0] * size[1] > max_pixels:
        raise PreprocessError(
            "too_many_pixels", f"{kind} header declares {size[0]}x{size[1]} pixels, over the limit of {max_pixels}"
        )
    if truncated:
        end = "last box's end" if kind in ("heif", "avif") else "end marker"
        raise PreprocessError("truncated", f"the {kind} data ends before its {end}")
    return kind, Layout(size, truncated)


def decode_bgr(data: bytes, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES) -> np.ndarray:
    """Encoded bytes -> HxWx3 uint8 BGR, EXIF orientation applied.

    Grayscale, palette, alpha (dropped, not composited), CMYK and 16-bit inputs all come
    out as 8-bit colour. Animated GIFs give their first frame, HEIF/AVIF their primary
    image. Raises PreprocessError.
    """
    kind, _ = check_encoded(data, max_pixels, max_bytes)
    if kind == "gif":
        bgr = _first_gif_frame(data, max_pixels)
    elif kind in ("heif", "avif"):
        bgr = decode_heif(data, max_pixels) if kind == "heif" else decode_avif(data, max_pixels)
    else:
        try:
            # IMREAD_COLOR applies EXIF orientation and converts depth/channels to 8-bit BGR.
            bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
        except cv2.error as exc:  # e.g. OpenCV's own pixel limit
            raise PreprocessError(
                "decode_failed", f"{kind} decoder error: {str(exc).strip().splitlines()[-1]}"
            ) from None
    if bgr is None or bgr.size == 0:
        raise PreprocessError("decode_failed", f"the {kind} decoder could not read the data")
    # What was decoded, whatever the header said (TIFF is not walked; OpenCV's own guard
    # bounded the allocation).
    if bgr.shape[0] * bgr.shape[1] > max_pixels:
        raise PreprocessError(
            "too_many_pixels", f"{kind} decoded to {bgr.shape[1]}x{bgr.shape[0]} pixels, over the limit of {max_pixels}"
        )
    return bgr


def _first_gif_frame(data: bytes, max_pixels: int) -> np.ndarray:
    """The pip OpenCV wheels are built without a GIF decoder, so Pillow reads the first frame."""
    import io

    try:
        from PIL import Image
    except ImportError:
        raise PreprocessError("unsupported", "GIF decoding needs Pillow, which is not installed") from None
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > max_pixels:  # Pillow's canvas for frame 0, before any pixel
                raise PreprocessError(
                    "too_many_pixels", f"gif frame 0 is {im.width}x{im.height} pixels, over the limit of {max_pixels}"
                )
            rgb = np.asarray(im.convert("RGB"))  # frame 0; palette and transparency resolved
    except PreprocessError:
        raise
    except Exception as exc:  # Pillow raises many types for bad data (OSError, SyntaxError, ...)
        raise PreprocessError("decode_failed", f"gif decoder error: {exc}") from None
    return np.ascontiguousarray(rgb[:, :, ::-1])
