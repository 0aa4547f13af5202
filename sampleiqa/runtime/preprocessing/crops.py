"""The 448x448 crop policy, shared by serving, evaluation and training.

Policy (in the pixels of the EXIF-oriented image):
1. Scale: images with a side under 448 are enlarged so the short side is 448; images whose
   short side is over VIEW_SIDE (512) are brought down so it is 512, the size the model
   learned from (BIQ2021's photos are 512x512), so a 12 MP photo is viewed as a training
   photo is, not through a native 448 patch of 1.7% of its frame (issue 23: at 2x and 4x
   the scores of the same photos dropped 0.13 and 0.20 before). A face larger than 448 on a
   side shrinks the image further until the face fits, unless that would take the short side
   under 448 (then the short side wins and the face is cut).
2. Place: the crop is centred on the face and shifted inside the image, so it holds the
   whole face. With no face it is the centre crop.
3. Resample only the crop region: INTER_AREA when shrinking (no aliasing, which would
   read as lost detail), bilinear when enlarging.

Training draws random crops under the same scale and keeps the first that holds the whole
face (bounded tries, then the centred crop).
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

from ..contracts import CROP
from .faces import Box


class CropPlan(NamedTuple):
    scale: float  # scaled pixels per original pixel
    x: int  # top-left corner of the crop, in scaled pixels
    y: int
    size: int = CROP


VIEW_SIDE = 512  # short side, in pixels, a photo is brought down to before its crop


def crop_scale(width: int, height: int, face: Box | None, size: int = CROP) -> float:
    """Scaled pixels per original pixel: up to fill the crop, down to the training view's
    short side, and further down only to fit the face."""
    floor = size / min(width, height)  # the crop must fit inside the scaled image
    s = max(floor, min(1.0, VIEW_SIDE / min(width, height)))
    if face is not None and max(face.w, face.h) * s > size:
        s = max(floor, size / max(face.w, face.h))
    return s


def scaled_dims(width: int, height: int, s: float, size: int = CROP) -> tuple[int, int]:
    return max(size, round(width * s)), max(size, round(height * s))


class CropRegion(NamedTuple):
    """The part of the scaled image that every crop holding the face lies in (the training
    cache keeps only this), and the face in its pixels (None: no face, the central region)."""

    scale: float
    scaled: tuple[int, int]  # width, height of the whole scaled image
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in scaled pixels
    face: tuple[int, int, int, int] | None  # x, y, w, h inside the region


def face_crops_region(width: int, height: int, face: Box | None, size: int = CROP) -> CropRegion:
    s = crop_scale(width, height, face, size)
    sw, sh = scaled_dims(width, height, s, size)
    if face is None:
        rx, ry = max(0, (sw - 2 * size) // 2), max(0, (sh - 2 * size) // 2)
        return CropRegion(s, (sw, sh), (rx, ry, min(sw, rx + 2 * size), min(sh, ry + 2 * size)), None)
    x0, y0 = round(face.x * s), round(face.y * s)
    x1, y1 = min(sw, round((face.x + face.w) * s)), min(sh, round((face.y + face.h) * s))
    # The face is at most `size` wide once scaled, so a crop holding it starts within `size` of it.
    rx, ry = max(0, x1 - size), max(0, y1 - size)
    return CropRegion(
        s, (sw, sh), (rx, ry, min(sw, x0 + size), min(sh, y0 + size)), (x0 - rx, y0 - ry, x1 - x0, y1 - y0)
    )


def _clamp(v: float, hi: int) -> int:
    return int(min(max(round(v), 0), hi))


def plan_crop(width: int, height: int, face: Box | None, size: int = CROP) -> CropPlan:
    """The deterministic crop: centred on the face (or the image), kept inside the image."""
    s = crop_scale(width, height, face, size)
    sw, sh = scaled_dims(width, height, s, size)
    if face is None:
        cx, cy = sw / 2, sh / 2
    else:
        cx, cy = (face.x + face.w / 2) * s, (face.y + face.h / 2) * s
    return CropPlan(s, _clamp(cx - size / 2, sw - size), _clamp(cy - size / 2, sh - size), size)


def contains_face(plan: CropPlan, face: Box, tolerance: float = 0.5) -> bool:
    """Whether the crop holds the whole face, to within half a scaled pixel of rounding."""
    s, t = plan.scale, tolerance
    return (
        plan.x - t <= face.x * s
        and plan.y - t <= face.y * s
        and (face.x + face.w) * s <= plan.x + plan.size + t
        and (face.y + face.h) * s <= plan.y + plan.size + t
    )


def random_plan(
    width: int, height: int, face: Box | None, rng: np.random.Generator, size: int = CROP, max_tries: int = 50
) -> CropPlan:
    """A uniformly random crop that holds the whole face; redrawn until it does."""
    s = crop_scale(width, height, face, size)
    sw, sh = scaled_dims(width, height, s, size)
    for _ in range(max_tries):
        plan = CropPlan(s, int(rng.integers(0, sw - size + 1)), int(rng.integers(0, sh - size + 1)), size)
        if face is None or contains_face(plan, face):
            return plan
    return plan_crop(width, height, face, size)


def apply_plan(image: np.ndarray, plan: CropPlan) -> np.ndarray:
    """Cut the planned crop out of a full-resolution image, resampling only that region."""
    s, size = plan.scale, plan.size
    if s == 1.0:
        return image[plan.y : plan.y + size, plan.x : plan.x + size]
    h, w = image.shape[:2]
    side = min(round(size / s), w, h)
    x0 = min(round(plan.x / s), w - side)
    y0 = min(round(plan.y / s), h - side)
    region = image[y0 : y0 + side, x0 : x0 + side]
    interp = cv2.INTER_AREA if s < 1.0 else cv2.INTER_LINEAR
    return cv2.resize(region, (size, size), interpolation=interp)
