"""The crop as the scorer takes it, and the normalisation the scorer applies.

PIXELS travel between the steps as uint8 (0.6 MB a crop, a quarter of float32's); the
served scorer normalises them inside its own graph (build/pixels.py reads SCALE and SHIFT
from here), and training normalises the same way with `to_tensor`: one formula.
"""

import numpy as np

from ..contracts import MEAN, STD

# x_norm = pixel * SCALE + SHIFT, per RGB channel, in float32.
SCALE = (1.0 / (255.0 * np.asarray(STD, dtype=np.float32))).astype(np.float32)
SHIFT = (-np.asarray(MEAN, dtype=np.float32) / np.asarray(STD, dtype=np.float32)).astype(np.float32)


def to_pixels(crop_bgr: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """HxWx3 uint8 BGR -> 3xHxW uint8 RGB: the scorer's PIXELS. Writes into `out` when given
    (a slot of a batch array), so a batch needs no extra copy."""
    h, w = crop_bgr.shape[:2]
    if out is None:
        out = np.empty((3, h, w), dtype=np.uint8)
    for rgb_channel in range(3):
        out[rgb_channel] = crop_bgr[:, :, 2 - rgb_channel]
    return out


def normalize(pixels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 [..., 3, H, W] RGB -> float32, normalised with ImageNet statistics."""
    if out is None:
        out = np.empty(pixels.shape, dtype=np.float32)
    for c in range(3):
        np.multiply(pixels[..., c, :, :], SCALE[c], out=out[..., c, :, :], dtype=np.float32)
        out[..., c, :, :] += SHIFT[c]
    return out


def to_tensor(crop_bgr: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """HxWx3 uint8 BGR -> 3xHxW float32 RGB, normalised: what the network itself sees."""
    return normalize(to_pixels(crop_bgr), out)
