"""Shared fixtures: real photos, and one real Triton server for the session."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("SAMPLEIQA_DATA", ROOT.parent / "shared" / "data"))
BIQ = DATA / "biq2021"
SAMPLES = ROOT / "samples"

# Faces marked by hand on the photos (x, y, w, h in original pixels), generous by a few
# pixels: a detected box "lies on the face" when its centre is inside and IoU >= 0.3.
FACES = {
    SAMPLES / "astronaut.jpg": (170, 50, 115, 130),
    SAMPLES / "grace_hopper.jpg": (145, 85, 240, 260),
    BIQ / "images" / "ss03 (1024).jpg": (200, 80, 113, 133),
    BIQ / "images" / "ss03 (1036).jpg": (195, 53, 133, 160),
    BIQ / "images" / "ss03 (1100).jpg": (176, 21, 147, 267),
    BIQ / "images" / "ss03 (1041).jpg": (170, 145, 60, 72),
}
NO_FACE = [SAMPLES / "coffee.jpg", SAMPLES / "chelsea.jpg"]


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    return inter / (aw * ah + bw * bh - inter)


def on_face(box, face) -> bool:
    cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
    fx, fy, fw, fh = face
    return fx <= cx <= fx + fw and fy <= cy <= fy + fh and iou(box, face) >= 0.3


def biq_images(n: int, split: str | None = None) -> list[Path]:
    if not (BIQ / "labels.csv").exists():
        pytest.skip(f"BIQ2021 data not found under {BIQ}")
    with open(BIQ / "labels.csv") as f:
        rows = [r for r in csv.DictReader(f) if split is None or r["split"] == split]
    return [BIQ / "images" / r["image"] for r in sorted(rows, key=lambda r: r["image"])[:n]]


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """The committed CPU repository served by the real Triton binary on loopback."""
    from sampleiqa.clients.server import DEFAULT_REPOSITORY, TritonServer

    log = tmp_path_factory.mktemp("triton") / "triton.log"
    with TritonServer(DEFAULT_REPOSITORY, log_file=log) as s:
        yield s


@pytest.fixture(scope="session")
def client(server):
    from sampleiqa.clients import ScoringClient

    with ScoringClient(server.url, timeout_s=60) as c:
        yield c
