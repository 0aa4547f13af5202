"""`preprocess_bytes` for a batch, in torch: JPEGs decoded by nvJPEG on a GPU (libjpeg on CPU),
faces found and crops cut on the device, with the CPU path's policy and pixels.

Per item, in order: `decode.check_encoded` (the same limits and the same errors as the CPU
path, before anything is decoded); JPEGs the torch decoder takes (torch_jpeg.route_jpeg) go
to ONE batched `torchvision.io.decode_jpeg` call (on failure, one by one); the rest, and any
the decoder refuses, go through `decode_bgr` on the CPU and are uploaded. Then on the device:
the detector's copy (long side 256) resized as cv2.INTER_AREA does (torch_resize.py), the
detector, the largest face mapped back as `faces.find_face` does, `crops.plan_crop` (the one
policy) and the crop cut and resampled as `crops.apply_plan` does. Pixels differ from the
CPU path's by at most a grey level where resampling rounds differently (tests and
perf/gpu_preprocess_parity.py measure it); nvJPEG's IDCT may add its own small differences.

Imported only where torch is installed: the package's __init__ does not import it.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg

from ..contracts import CROP, MAX_BYTES, MAX_PIXELS
from .crops import CropPlan, plan_crop
from .decode import check_encoded, decode_bgr
from .errors import PreprocessError
from .faces import Box, FaceDetector, largest_mapped_back
from .torch_jpeg import orient, route_jpeg
from .torch_resize import resize_uint8

GROUP_PIXELS = 1 << 26  # pixels per batched resize of the detector's copies (x3 channels x4 bytes)


class TorchBatch(NamedTuple):
    pixels: torch.Tensor  # uint8 [N, 3, 448, 448] RGB on the device; rows of failed items are zero
    boxes: np.ndarray  # int32 [N, 4] (x, y, w, h) of the face in the oriented image; zeros when none
    found: np.ndarray  # bool [N]
    errors: list  # per item: None, or "[code] message" as str(PreprocessError) gives
    fallback: list  # per item: None when torch decoded it, else why it went to decode_bgr


class NumpyDetector:
    """A `faces.FaceDetector` (numpy, e.g. the OpenCV YuNet) behind the batch interface."""

    def __init__(self, detector: FaceDetector):
        self.inner, self.max_side = detector, detector.max_side

    def detect_batch(self, images: list[torch.Tensor]) -> list[list[Box]]:
        return [
            self.inner.detect(np.ascontiguousarray(img.to("cpu", torch.uint8).permute(1, 2, 0).numpy()))
            for img in images
        ]


def default_batch_detector(device: str):
    from .torch_yunet import TorchYuNetDetector

    return TorchYuNetDetector(device=device, max_side=256)


def cut(image: torch.Tensor, plan: CropPlan) -> torch.Tensor:
    """`crops.apply_plan` on a [3, H, W] uint8 tensor: the same region, resampled in torch."""
    s, size = plan.scale, plan.size
    if s == 1.0:
        return image[:, plan.y : plan.y + size, plan.x : plan.x + size]
    h, w = image.shape[-2:]
    side = min(round(size / s), w, h)
    x0 = min(round(plan.x / s), w - side)
    y0 = min(round(plan.y / s), h - side)
    region = image[:, y0 : y0 + side, x0 : x0 + side]
    return resize_uint8(region, size, size, "area" if s < 1.0 else "linear")


class TorchPreprocessor:
    """Encoded images -> TorchBatch on `device` ("cuda", "cuda:1", "cpu"). `detector`: an object
    with `max_side` and `detect_batch(list of BGR [3, h, w] tensors)` (default: YuNet in torch),
    or a `faces.FaceDetector`, which is wrapped."""

    def __init__(
        self,
        device: str = "cuda",
        detector=None,
        max_pixels: int = MAX_PIXELS,
        max_bytes: int = MAX_BYTES,
        size: int = CROP,
    ):
        self.device = torch.device(device)
        if detector is None:
            detector = default_batch_detector(str(self.device))
        self.detector = detector if hasattr(detector, "detect_batch") else NumpyDetector(detector)
        self.max_pixels, self.max_bytes, self.size = max_pixels, max_bytes, size

    @torch.inference_mode()
    def __call__(self, items: list[bytes]) -> TorchBatch:
        n = len(items)
        errors: list = [None] * n
        fallback: list = [None] * n
        images: list = [None] * n
        on_device: list[tuple[int, int]] = []  # (item, EXIF orientation)
        for i, data in enumerate(items):
            try:
                kind, _ = check_encoded(data, self.max_pixels, self.max_bytes)
            except PreprocessError as exc:
                errors[i] = str(exc)
                continue
            route = route_jpeg(data) if kind == "jpeg" else None
            if route is not None and route.device:
                on_device.append((i, route.orientation))
            else:
                fallback[i] = route.reason if route is not None else f"{kind}, not a JPEG"
        for (i, orientation), img in zip(on_device, self._decode_jpegs([items[i] for i, _ in on_device])):
            if img is None:
                fallback[i] = "the torch JPEG decoder refused it"
            else:
                images[i] = orient(img, orientation)
        for i in range(n):
            if fallback[i] is not None:
                images[i] = self._decode_on_cpu(items[i], i, errors)
        faces = self._find_faces(images)
        pixels = torch.zeros((n, 3, self.size, self.size), dtype=torch.uint8, device=self.device)
        boxes = np.zeros((n, 4), np.int32)
        found = np.zeros(n, np.bool_)
        for i, img in enumerate(images):
            if img is None:
                continue
            h, w = img.shape[-2:]
            pixels[i] = cut(img, plan_crop(w, h, faces[i], self.size))
            if faces[i] is not None:
                boxes[i], found[i] = faces[i], True
        return TorchBatch(pixels, boxes, found, errors, fallback)

    def _decode_jpegs(self, blobs: list[bytes]) -> list:
        """[3, H, W] uint8 RGB on the device per blob (as stored, no EXIF), None where refused."""
        if not blobs:
            return []
        tensors = [torch.from_numpy(np.frombuffer(b, np.uint8).copy()) for b in blobs]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision 0.29 deprecates its decoders (TorchCodec)
            try:
                return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=self.device))
            except Exception:  # noqa: BLE001  (any refusal: retried one by one below)
                pass
            out = []
            for t in tensors:  # one bad file fails the whole batched call: find which
                try:
                    out.append(decode_jpeg([t], mode=ImageReadMode.RGB, device=self.device)[0])
                except Exception:  # noqa: BLE001
                    out.append(None)
            return out

    def _decode_on_cpu(self, data: bytes, i: int, errors: list):
        try:
            bgr = decode_bgr(data, self.max_pixels, self.max_bytes)
        except PreprocessError as exc:
            errors[i] = str(exc)
            return None
        rgb = torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1])).permute(2, 0, 1)
        return rgb.to(self.device, non_blocking=False)

    def _find_faces(self, images: list) -> list:
        """`faces.find_face` for every decoded image: one detector call for the batch."""
        max_side = self.detector.max_side
        todo = [i for i, img in enumerate(images) if img is not None]
        scale = {i: min(1.0, max_side / max(images[i].shape[-2:])) for i in todo}
        small: dict[int, torch.Tensor] = {}
        groups: dict[tuple[int, int], list[int]] = {}
        for i in todo:
            groups.setdefault(tuple(images[i].shape[-2:]), []).append(i)
        for (h, w), same in groups.items():  # batched resizes per input size, ~64 MP (float) at a time
            f, step = scale[same[0]], max(1, GROUP_PIXELS // (h * w))
            for members in (same[k : k + step] for k in range(0, len(same), step)):
                if f == 1.0:
                    out = [images[i] for i in members]
                else:
                    batch = torch.stack([images[i] for i in members])
                    out = resize_uint8(batch, max(1, round(h * f)), max(1, round(w * f)), "area").unbind(0)
                small.update({i: img.flip(0) for i, img in zip(members, out)})  # RGB -> BGR
        found = self.detector.detect_batch([small[i] for i in todo]) if todo else []
        faces: list = [None] * len(images)
        for i, boxes in zip(todo, found):
            h, w = images[i].shape[-2:]
            faces[i] = largest_mapped_back(boxes, scale[i], w, h)
        return faces
