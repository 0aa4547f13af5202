"""Which JPEGs the torch decoders take, and EXIF orientation applied to a decoded tensor.

nvJPEG (torchvision.io.decode_jpeg on a CUDA device) decodes 8-bit baseline and progressive
Huffman JPEGs with 1 or 3 components. Everything else goes to the CPU path (decode_bgr):
CMYK/YCCK (4 components), 12-bit, lossless, hierarchical and arithmetic-coded JPEGs, 3
components stored as RGB (Adobe transform 0, or component ids R, G, B), and JPEGs whose
header or EXIF this walk cannot read. torchvision applies EXIF orientation only on CPU, so
the orientation is read here and applied on the device, the way OpenCV's IMREAD_COLOR does
(tests/test_torch_preprocess.py checks all eight against cv2.imdecode).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import torch

_DEVICE_SOF = {0xC0, 0xC1, 0xC2}  # baseline, extended sequential, progressive (Huffman)
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_ORIENTATION_TAG = 0x0112


class JpegRoute(NamedTuple):
    device: bool  # the torch decoder may take it
    orientation: int  # EXIF orientation (1..8; 1 when absent)
    reason: str  # why it goes to the CPU path ("" when it does not)


def _exif_orientation(tiff: bytes) -> int:
    """The orientation tag of IFD0 in an EXIF TIFF block; 1 when absent. Raises on bad data."""
    order = {b"II": "<", b"MM": ">"}[tiff[:2]]
    (ifd,) = struct.unpack(order + "I", tiff[4:8])
    (count,) = struct.unpack(order + "H", tiff[ifd : ifd + 2])
    for k in range(count):
        entry = tiff[ifd + 2 + 12 * k : ifd + 14 + 12 * k]
        tag, typ, n = struct.unpack(order + "HHI", entry[:8])
        if tag == _ORIENTATION_TAG:
            if typ != 3 or n < 1:
                raise ValueError("orientation is not a SHORT")
            (value,) = struct.unpack(order + "H", entry[8:10])
            return value if 1 <= value <= 8 else 1  # OpenCV ignores values out of range
    return 1


def _segments(data: bytes):
    """(marker, payload) of each segment from SOI up to the first SOS (not included)."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise ValueError("no marker where one must be")
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker == 0xDA or marker == 0xD9:
            return
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        end = i + 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        yield marker, data[i + 4 : end]
        i = end


def route_jpeg(data: bytes) -> JpegRoute:
    """Read the JPEG's header (never its scans) for what the torch decoder can take."""
    sof, adobe, exif, jfif = None, None, None, False
    try:
        for marker, payload in _segments(data):
            if marker in _SOF and sof is None:
                sof = (marker, payload)
            elif marker == 0xEE and payload[:5] == b"Adobe" and len(payload) >= 12:
                adobe = payload[11]
            elif marker == 0xE1 and payload[:6] == b"Exif\x00\x00" and exif is None:
                exif = payload[6:]
            elif marker == 0xE0 and payload[:5] == b"JFIF\x00":
                jfif = True
        orientation = _exif_orientation(exif) if exif is not None else 1
    except (ValueError, KeyError, IndexError, struct.error):
        return JpegRoute(False, 1, "header or EXIF not readable here")
    if sof is None or len(sof[1]) < 6:
        return JpegRoute(False, 1, "no frame header before the first scan")
    marker, frame = sof
    precision, h, w, comps = frame[0], *struct.unpack(">HH", frame[1:5]), frame[5]
    if marker not in _DEVICE_SOF:
        return JpegRoute(False, orientation, f"SOF{marker - 0xC0} (lossless, hierarchical or arithmetic)")
    if precision != 8:
        return JpegRoute(False, orientation, f"{precision}-bit samples")
    if comps not in (1, 3) or h == 0 or w == 0:
        return JpegRoute(False, orientation, f"{comps} components" if comps not in (1, 3) else "no height")
    ids = bytes(frame[6 + 3 * c] for c in range(comps)) if len(frame) >= 6 + 3 * comps else b""
    if comps == 3 and (adobe == 0 or (not jfif and adobe is None and ids == b"RGB")):
        return JpegRoute(False, orientation, "RGB stored without YCbCr")
    return JpegRoute(True, orientation, "")


def orient(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """[C, H, W] as stored -> as displayed, for EXIF orientation 1..8 (as OpenCV applies it)."""
    if orientation in (5, 6, 7, 8):
        img = img.transpose(-1, -2)
    flips = {2: (-1,), 3: (-1, -2), 4: (-2,), 6: (-1,), 7: (-1, -2), 8: (-2,)}.get(orientation)
    return img.flip(flips) if flips else img
