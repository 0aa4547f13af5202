"""perf_analyzer's JSON input, made from a folder of real photos.

IMAGE (TYPE_STRING) carries the file bytes as base64 of a 4-byte little-endian length
followed by the bytes (perf_analyzer's serialised BYTES form). PIXELS carries real
preprocessed crops, made by sampleiqa.runtime.preprocessing from the same photos, as base64 of
their raw uint8 bytes.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import struct
from pathlib import Path

import numpy as np

from sampleiqa.paths import SHARED_DATA
from sampleiqa.runtime import environment
from sampleiqa.runtime.contracts import IMAGE, PIXELS

DEFAULT_IMAGES = SHARED_DATA / "biq2021" / "images"
BIQ_IMAGES = Path(os.environ.get(environment.DATA, SHARED_DATA)) / "biq2021" / "images"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def pick_photos(folder: str | Path, count: int, seed: int = 0) -> list[Path]:
    """`count` photos drawn at random (fixed seed) from a folder."""
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no photos in {folder}")
    random.Random(seed).shuffle(paths)
    return paths[:count]


def _b64(raw: bytes) -> dict:
    return {"b64": base64.b64encode(raw).decode("ascii")}


def image_entry(data: bytes) -> dict:
    return {IMAGE: {**_b64(struct.pack("<I", len(data)) + data), "shape": [1]}}


def pixels_entry(pixels: np.ndarray) -> dict:
    if pixels.dtype != np.uint8:
        raise TypeError(f"PIXELS are uint8 crops, not {pixels.dtype}")
    return {PIXELS: _b64(np.ascontiguousarray(pixels).tobytes())}


def preprocessed(photos: list[bytes]) -> list[np.ndarray]:
    from sampleiqa.runtime.preprocessing import preprocess_bytes

    return [preprocess_bytes(data).pixels for data in photos]


def write_input_json(path: str | Path, entries: list[dict]) -> Path:
    path = Path(path)
    path.write_text(json.dumps({"data": entries}))
    return path


def write_inputs(folder: Path, photos: list[bytes], tensors: list[np.ndarray]) -> dict[str, Path]:
    """{'image': images.json, 'pixels': pixels.json} for perf_analyzer's --input-data."""
    return {
        "image": write_input_json(folder / "images.json", [image_entry(d) for d in photos]),
        "pixels": write_input_json(folder / "pixels.json", [pixels_entry(t) for t in tensors]),
    }


def copy_photos(dest: Path, count: int, folder: Path = BIQ_IMAGES) -> Path:
    """The first `count` photos of `folder` (sorted by name) copied into a new folder `dest`:
    the same photos in every run, on one filesystem with the run's output."""
    dest.mkdir()
    for photo in sorted(folder.iterdir())[:count]:
        shutil.copyfile(photo, dest / photo.name)
    return dest
