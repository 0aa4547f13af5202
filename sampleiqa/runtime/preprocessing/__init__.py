"""The single source of truth for turning image bytes into the scorer's input.

The served `preprocess` model, training's evaluation crops and its random crops all call
this package; tests/test_serving.py proves served and in-process tensors match.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from .crops import CropPlan, apply_plan, contains_face, plan_crop, random_plan
from .decode import MAX_BYTES, MAX_PIXELS, decode_bgr
from .errors import PreprocessError
from .faces import Box, FaceDetector, HaarFaceDetector, YuNetFaceDetector, create_detector, default_detector, find_face
from .normalize import normalize, to_pixels, to_tensor

__all__ = [
    "Box",
    "CropPlan",
    "FaceDetector",
    "HaarFaceDetector",
    "PreprocessError",
    "Preprocessed",
    "YuNetFaceDetector",
    "MAX_BYTES",
    "MAX_PIXELS",
    "apply_plan",
    "contains_face",
    "create_detector",
    "decode_bgr",
    "default_detector",
    "find_face",
    "normalize",
    "plan_crop",
    "preprocess_bytes",
    "preprocess_file",
    "random_plan",
    "to_pixels",
    "to_tensor",
]


class Preprocessed(NamedTuple):
    pixels: np.ndarray  # uint8 [3, 448, 448] RGB: the scorer's PIXELS (normalize() gives the network's input)
    face_box: Box  # (0, 0, 0, 0) when no face was found
    face_found: bool


def preprocess_bytes(data: bytes, detector: FaceDetector | None = None, out: np.ndarray | None = None) -> Preprocessed:
    """Encoded image -> face-containing crop, as PIXELS. Raises PreprocessError."""
    bgr = decode_bgr(data)
    face = find_face(bgr, detector)
    h, w = bgr.shape[:2]
    crop = apply_plan(bgr, plan_crop(w, h, face))
    pixels = to_pixels(crop, out)
    return Preprocessed(pixels, face or Box(0, 0, 0, 0), face is not None)


def preprocess_file(path: str | Path, detector: FaceDetector | None = None) -> Preprocessed:
    return preprocess_bytes(Path(path).read_bytes(), detector)
