"""Face detection behind a small interface, so that a better detector can plug in.

A detector says how large a copy it wants (`max_side`, pixels on the long side) and takes
that BGR copy, returning face boxes (x, y, w, h) in its pixels. `find_face` makes the copy
and maps the largest box back to full resolution.

The default is YuNet (Apache-2.0, `models/yunet_s_640_640.onnx`, see `models/README.md`)
through OpenCV's own `cv2.FaceDetectorYN`: on a 256 px copy it finds about 3x more of the
faces in BIQ2021's portraits than the Haar cascade did, in ~3 ms instead of ~8 ms per
512x512 photo (training/results/face_detectors.md, `python -m sampleiqa.training.studies.face_detectors`).
The Haar cascade stays available as `HaarFaceDetector`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import NamedTuple, Protocol

import cv2
import numpy as np

YUNET_MODEL = Path(__file__).resolve().parent / "models" / "yunet_s_640_640.onnx"
MIN_SIDE = 16  # pixels: no face is looked for in a smaller image


class Box(NamedTuple):
    x: int
    y: int
    w: int
    h: int

    @property
    def area(self) -> int:
        return self.w * self.h


class FaceDetector(Protocol):
    max_side: int  # long side, in pixels, of the copy `detect` is given

    def detect(self, bgr: np.ndarray) -> list[Box]: ...


class YuNetFaceDetector:
    """YuNet through `cv2.FaceDetectorYN`. One OpenCV detector per thread: it keeps its
    input size as state, so threads must not share one."""

    def __init__(
        self,
        model: str | Path = YUNET_MODEL,
        max_side: int = 256,
        score_threshold: float = 0.6,
        nms_threshold: float = 0.3,
    ):
        if not hasattr(cv2, "FaceDetectorYN"):
            raise RuntimeError(
                f"OpenCV {cv2.__version__} has no FaceDetectorYN; install "
                "opencv-python-headless>=4.10,<4.12 as pyproject.toml pins it"
            )
        if not Path(model).is_file():
            raise RuntimeError(f"the YuNet model is missing: {model}")
        self.model, self.max_side = str(model), max_side
        self.score_threshold, self.nms_threshold = score_threshold, nms_threshold
        self._local = threading.local()

    def _detector(self, w: int, h: int):
        det = getattr(self._local, "det", None)
        if det is None:
            det = self._local.det = cv2.FaceDetectorYN.create(
                self.model, "", (w, h), self.score_threshold, self.nms_threshold, 50
            )
        det.setInputSize((w, h))
        return det

    def detect(self, bgr: np.ndarray) -> list[Box]:
        h, w = bgr.shape[:2]
        if min(h, w) < MIN_SIDE:  # YuNet's smallest anchors: below this it can return non-finite boxes
            return []
        if bgr.ndim == 2:
            bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
        _, found = self._detector(w, h).detect(np.ascontiguousarray(bgr))
        if found is None:
            return []
        return clip_boxes(found[:, :4], h, w)


def box_iou(a, b) -> float:
    """Intersection over union of two (x, y, w, h) boxes: how the detectors and pipelines are compared."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    return inter / (aw * ah + bw * bh - inter)


def clip_boxes(found, h: int, w: int) -> list[Box]:
    """YuNet's float boxes (x, y, w, h), which may reach past the border, clipped to the
    image and rounded; non-finite ones dropped."""
    boxes = []
    for x, y, bw, bh in found:
        if not np.isfinite((x, y, bw, bh)).all():
            continue
        x0, y0 = max(0, int(round(x))), max(0, int(round(y)))
        x1, y1 = min(w, int(round(x + bw))), min(h, int(round(y + bh)))
        if x1 > x0 and y1 > y0:
            boxes.append(Box(x0, y0, x1 - x0, y1 - y0))
    return boxes


class HaarFaceDetector:
    """OpenCV's frontal-face Haar cascade, shipped inside opencv-python-headless < 5 (the
    detector before YuNet: alt2 on a 200 px copy, training/results/haar_settings.md)."""

    def __init__(
        self,
        cascade: str = "haarcascade_frontalface_alt2.xml",
        min_neighbors: int = 3,
        scale_factor: float = 1.2,
        min_size_fraction: float = 0.12,
        max_side: int = 200,
    ):
        if not hasattr(cv2, "CascadeClassifier"):  # OpenCV 5 dropped the Haar cascades
            raise RuntimeError(
                f"OpenCV {cv2.__version__} has no Haar cascades; install "
                "opencv-python-headless<4.12 as pyproject.toml pins it"
            )
        path = cv2.data.haarcascades + cascade
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise RuntimeError(f"could not load the Haar cascade {path}")
        self.min_neighbors = min_neighbors
        self.scale_factor = scale_factor
        self.min_size_fraction = min_size_fraction
        self.max_side = max_side

    def detect(self, bgr: np.ndarray) -> list[Box]:
        gray = bgr if bgr.ndim == 2 else cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        side = max(8, int(min(gray.shape[:2]) * self.min_size_fraction))
        found = self._cascade.detectMultiScale(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(side, side)
        )
        return [Box(*map(int, b)) for b in found]


def _torch_yunet(**kwargs) -> FaceDetector:
    """YuNet in torch (torch_yunet.py), imported on use and by name: the serving install has no
    torch, and torch_yunet imports this module (an import here would be a cycle)."""
    import importlib

    return importlib.import_module("sampleiqa.runtime.preprocessing.torch_yunet").TorchYuNetDetector(**kwargs)


_DETECTORS = {"yunet": YuNetFaceDetector, "haar": HaarFaceDetector, "yunet-torch": _torch_yunet}
_default: FaceDetector | None = None


def create_detector(name: str = "yunet", **kwargs) -> FaceDetector:
    try:
        return _DETECTORS[name](**kwargs)
    except KeyError:
        raise ValueError(f"unknown face detector {name!r}; known: {', '.join(sorted(_DETECTORS))}") from None


def default_detector() -> FaceDetector:
    global _default
    if _default is None:
        _default = create_detector()
    return _default


def find_face(bgr: np.ndarray, detector: FaceDetector | None = None) -> Box | None:
    """The largest face in a BGR image, in that image's pixels, or None."""
    detector = detector or default_detector()
    h, w = bgr.shape[:2]
    f = min(1.0, detector.max_side / max(h, w))
    small = (
        bgr if f == 1.0 else cv2.resize(bgr, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    )
    return largest_mapped_back(detector.detect(small), f, w, h)


def largest_mapped_back(boxes: list[Box], f: float, w: int, h: int) -> Box | None:
    """The largest box, from the detector's copy (f of full size) to full resolution."""
    if not boxes:
        return None
    b = max(boxes, key=lambda b: b.area)
    x0, y0 = int(b.x / f), int(b.y / f)
    x1, y1 = min(w, int(round((b.x + b.w) / f))), min(h, int(round((b.y + b.h) / f)))
    return Box(x0, y0, x1 - x0, y1 - y0)
