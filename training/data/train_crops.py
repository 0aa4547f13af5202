"""Training crops, made by the serving preprocessing code itself (evaluation uses the served
crop, kept by data/cache.py; tests/test_serving.py checks it against the live server).

`random_face_crop` draws a random 448x448 crop that holds the whole face
(sampleiqa.runtime.preprocessing.random_plan) and may flip it: flips keep perceived quality; blur,
noise, JPEG, colour and rescaling do not.
"""

from __future__ import annotations

import numpy as np

from sampleiqa.runtime.preprocessing import Box, apply_plan, random_plan


def random_face_crop(bgr: np.ndarray, face: Box | None, rng: np.random.Generator, hflip_p: float = 0.5) -> np.ndarray:
    """A random 448x448 uint8 crop of a decoded image that holds the whole face box."""
    h, w = bgr.shape[:2]
    crop = apply_plan(bgr, random_plan(w, h, face, rng))
    if rng.random() < hflip_p:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(crop)
