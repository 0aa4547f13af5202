"""Face detection behind a small interface, so that a better detector can plug in.

A detector takes an 8-bit grayscale image and returns face boxes (x, y, w, h) in that
image's pixels. `find_face` runs it on a grayscale copy downscaled to 200 px (the cost of
Haar cascades grows with the pixel count) and maps the largest box back to full resolution.
The settings were chosen by measurement (perf/results/haar_settings.md): about 8 ms
instead of 16 ms per 512x512 photo, and the alt2 cascade keeps more real faces than the
default one does on a copy that small.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import cv2
import numpy as np

DETECT_MAX_SIDE = 200  # pixels on the long side of the copy the detector sees


class Box(NamedTuple):
    x: int
    y: int
    w: int
    h: int

    @property
    def area(self) -> int:
        return self.w * self.h


class FaceDetector(Protocol):
    def detect(self, gray: np.ndarray) -> list[Box]: ...


class HaarFaceDetector:
    """OpenCV's frontal-face Haar cascade, shipped inside opencv-python-headless < 5."""

    def __init__(self, cascade: str = "haarcascade_frontalface_alt2.xml", min_neighbors: int = 3,
                 scale_factor: float = 1.2, min_size_fraction: float = 0.12):
        if not hasattr(cv2, "CascadeClassifier"):  # OpenCV 5 dropped the Haar cascades
            raise RuntimeError(f"OpenCV {cv2.__version__} has no Haar cascades; install "
                               "opencv-python-headless<4.12 as pyproject.toml pins it")
        path = cv2.data.haarcascades + cascade
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise RuntimeError(f"could not load the Haar cascade {path}")
        self.min_neighbors = min_neighbors
        self.scale_factor = scale_factor
        self.min_size_fraction = min_size_fraction

    def detect(self, gray: np.ndarray) -> list[Box]:
        side = max(8, int(min(gray.shape[:2]) * self.min_size_fraction))
        found = self._cascade.detectMultiScale(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(side, side)
        )
        return [Box(*map(int, b)) for b in found]


_default: FaceDetector | None = None


def default_detector() -> FaceDetector:
    global _default
    if _default is None:
        _default = HaarFaceDetector()
    return _default


def find_face(bgr: np.ndarray, detector: FaceDetector | None = None) -> Box | None:
    """The largest face in a BGR image, in that image's pixels, or None."""
    detector = detector or default_detector()
    h, w = bgr.shape[:2]
    f = min(1.0, DETECT_MAX_SIDE / max(h, w))
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)  # before resizing: one channel to shrink, not three
    if f != 1.0:
        gray = cv2.resize(gray, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    boxes = detector.detect(gray)
    if not boxes:
        return None
    b = max(boxes, key=lambda b: b.area)
    x0, y0 = int(b.x / f), int(b.y / f)
    x1, y1 = min(w, int(round((b.x + b.w) / f))), min(h, int(round((b.y + b.h) / f)))
    return Box(x0, y0, x1 - x0, y1 - y0)
