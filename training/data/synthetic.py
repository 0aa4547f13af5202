"""Synthetic quality rankings for self-supervised pre-training (RankIQA-style).

The same crop at increasing levels of one distortion must score in that order. Level 0 is
the untouched crop. The twin learns sensitivity to blur, noise and compression from
unlabelled photos before it sees any opinion score.
"""

from __future__ import annotations

import cv2
import numpy as np

LEVELS = 5  # 0 (none) .. 4 (strongest)
_BLUR_SIGMA = (0.0, 0.8, 1.5, 2.5, 4.0)
_NOISE_STD = (0.0, 4.0, 9.0, 16.0, 28.0)
_JPEG_QUALITY = (100, 50, 30, 18, 8)


def blur(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    return img if level == 0 else cv2.GaussianBlur(img, (0, 0), _BLUR_SIGMA[level])


def noise(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    if level == 0:
        return img
    n = rng.normal(0.0, _NOISE_STD[level], img.shape).astype(np.float32)
    return np.clip(img.astype(np.float32) + n, 0, 255).astype(np.uint8)


def jpeg(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    if level == 0:
        return img
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY[level]])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


DISTORTIONS = {"blur": blur, "noise": noise, "jpeg": jpeg}


def ranked_pair(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(better, worse): one distortion type at two different levels of the same crop."""
    fn = DISTORTIONS[list(DISTORTIONS)[int(rng.integers(len(DISTORTIONS)))]]
    lo, hi = sorted(rng.choice(LEVELS, size=2, replace=False))
    return fn(img, int(lo), rng), fn(img, int(hi), rng)
