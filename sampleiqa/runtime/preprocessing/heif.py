"""HEIC/HEIF and AVIF, the formats phones save: their ISO-BMFF boxes walked for the size
they declare (checked before any decoder runs, as decode.py does for the other formats),
and their decoders, pillow-heif (libheif) and Pillow's AVIF plugin (libavif)."""

from __future__ import annotations

import io
import struct

import cv2
import numpy as np

from .errors import PreprocessError

# ISO-BMFF brands of HEIF/AVIF photos (phones save them, uploads rename them to .jpg).
HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif", b"avis"}
_AVIF_BRANDS = {b"avif", b"avis"}
_HEVC_BRANDS = HEIF_BRANDS - _AVIF_BRANDS - {b"mif1", b"msf1"}


def heif_or_avif(data: bytes) -> str:
    """AVIF (AV1) where the ftyp box's major brand says so, or, for the generic major brands
    mif1/msf1, where its compatible brands name AVIF and no HEVC brand; else HEIF (HEVC)."""
    major = data[8:12]
    if major not in (b"mif1", b"msf1"):
        return "avif" if major in _AVIF_BRANDS else "heif"
    end = min(int.from_bytes(data[:4], "big"), len(data), 1024)
    brands = {data[i : i + 4] for i in range(16, end - 3, 4)}
    return "avif" if brands & _AVIF_BRANDS and not brands & _HEVC_BRANDS else "heif"


def _boxes(data: bytes, start: int, end: int) -> tuple[list[tuple[bytes, int, int]], bool]:
    """The ISO-BMFF boxes in data[start:end] as (type, body start, box end), and whether the
    last one runs past `end`. The walk stops at bytes that are not a box header."""
    found, i = [], start
    while i < end:
        if i + 8 > end:
            return found, True
        size, kind, body = int.from_bytes(data[i : i + 4], "big"), data[i + 4 : i + 8], i + 8
        if size == 1:  # a 64-bit size follows the type
            if i + 16 > end:
                return found, True
            size, body = int.from_bytes(data[i + 8 : i + 16], "big"), i + 16
        elif size == 0:  # the box runs to the end
            size = end - i
        if i + size < body or not all(0x20 <= c < 0x7F for c in kind):
            return found, False  # not a box: the decoder says what is wrong
        if i + size > end:
            return found, True
        found.append((kind, body, i + size))
        i += size
    return found, False


def walk_isobmff(data: bytes) -> tuple[tuple[int, int] | None, bool]:
    """HEIF/AVIF: the top-level boxes (ftyp, meta, mdat, ...) to the end of the data, and the
    largest image size that meta's item properties declare (meta > iprp > ipco > ispe): the
    primary image, a grid's output, its tiles and thumbnails each have one."""
    top, truncated = _boxes(data, 0, len(data))

    def inside(parents: list[tuple[int, int]], kind: bytes) -> list[tuple[int, int]]:
        return [(b, e) for start, end in parents for k, b, e in _boxes(data, start, end)[0] if k == kind]

    metas = [(body + 4, end) for kind, body, end in top if kind == b"meta"]  # a full box: version, flags
    sizes = [
        struct.unpack(">II", data[body + 4 : body + 12])
        for body, end in inside(inside(inside(metas, b"iprp"), b"ipco"), b"ispe")
        if end - body >= 12
    ]
    return (max(sizes, key=lambda s: s[0] * s[1]) if sizes else None), truncated  # decode.Layout's fields


def _check_opened(kind: str, size: tuple[int, int], max_pixels: int) -> None:
    """The decoder's own view of the primary image's size, once its boxes are parsed."""
    if size[0] * size[1] > max_pixels:
        raise PreprocessError(
            "too_many_pixels", f"{kind} image is {size[0]}x{size[1]} pixels, over the limit of {max_pixels}"
        )


def decode_heif(data: bytes, max_pixels: int) -> np.ndarray:
    """HEIC/HEIF through pillow-heif (libheif, libde265), which applies the rotation and
    mirror boxes (irot, imir) as it decodes: the image as displayed. An EXIF orientation
    inside is not applied again (the HEIF standard: irot/imir rule)."""
    try:
        import pillow_heif
    except ImportError:
        raise PreprocessError("unsupported", "HEIC/HEIF decoding needs pillow-heif, which is not installed") from None
    pillow_heif.options.DECODE_THREADS = 1  # one request per core, as for OpenCV
    try:
        heif = pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=True, bgr_mode=True)  # boxes only
        _check_opened("heif", heif.size, max_pixels)
        pixels = np.asarray(heif)  # decodes: BGR, BGRA (LA too) or L, 8-bit, read-only
    except PreprocessError:
        raise
    except Exception as exc:  # ValueError, EOFError, SyntaxError, RuntimeError, OSError
        raise PreprocessError("decode_failed", f"heif decoder error: {str(exc).strip()}") from None
    if pixels.ndim == 2:
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(pixels[:, :, :3]) if pixels.shape[2] == 4 else pixels.copy()


def decode_avif(data: bytes, max_pixels: int) -> np.ndarray:
    """AVIF through Pillow's plugin (libavif, dav1d), which gives irot/imir as the EXIF
    orientation (replacing any orientation tag the file carries): applied here, so the
    image is as displayed. The plugin is called directly: Image.open would try every
    format and apply Pillow's own pixel limit instead of ours."""
    try:
        from PIL import AvifImagePlugin, ImageOps

        supported = AvifImagePlugin.SUPPORTED
    except ImportError:  # Pillow < 11.2, or none
        supported = False
    if not supported:
        raise PreprocessError("unsupported", "AVIF decoding needs Pillow >= 11.3 built with libavif")
    AvifImagePlugin.DEFAULT_MAX_THREADS = 1  # one request per core, as for OpenCV
    try:
        with AvifImagePlugin.AvifImageFile(io.BytesIO(data)) as im:  # boxes only
            _check_opened("avif", im.size, max_pixels)
            ImageOps.exif_transpose(im, in_place=True)  # irot/imir, as displayed
            rgb = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))  # alpha dropped
    except PreprocessError:
        raise
    except Exception as exc:  # Pillow raises many types for bad data (OSError, SyntaxError, ...)
        raise PreprocessError("decode_failed", f"avif decoder error: {str(exc).strip()}") from None
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
