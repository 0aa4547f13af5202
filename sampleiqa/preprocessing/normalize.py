import numpy as np

from ..contracts import MEAN, STD

# x_norm = pixel * A + B, per RGB channel.
_A = (1.0 / (255.0 * np.asarray(STD, dtype=np.float32))).astype(np.float32)
_B = (-np.asarray(MEAN, dtype=np.float32) / np.asarray(STD, dtype=np.float32)).astype(np.float32)


def to_tensor(crop_bgr: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """HxWx3 uint8 BGR -> 3xHxW float32 RGB, normalised with ImageNet statistics.

    Writes into `out` when given (e.g. a slot of a batch array), so a batch needs no
    extra copy.
    """
    h, w = crop_bgr.shape[:2]
    if out is None:
        out = np.empty((3, h, w), dtype=np.float32)
    for rgb_channel in range(3):
        np.multiply(crop_bgr[:, :, 2 - rgb_channel], _A[rgb_channel], out=out[rgb_channel], dtype=np.float32)
        out[rgb_channel] += _B[rgb_channel]
    return out
