"""Shared fixtures: real photos, and one real Triton server for the session."""

from __future__ import annotations

import csv
import os
from contextlib import contextmanager
from pathlib import Path

import pytest

from sampleiqa.perf.face_settings import iou, marked_faces, on_face  # noqa: F401  (tests import them from here)

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("SAMPLEIQA_DATA", ROOT.parent / "shared" / "data"))
BIQ = DATA / "biq2021"
SAMPLES = ROOT / "samples"

# Faces marked by hand or checked by eye (samples/faces_marked.csv, x, y, w, h in original
# pixels, generous by a few pixels), and photos with no face. A detected box "lies on the
# face" when its centre is inside and IoU >= 0.3 (sampleiqa.perf.face_settings.on_face).
_MARKS = marked_faces(DATA)
FACES = {path: tuple(box) for path, box in _MARKS.items() if box is not None}
NO_FACE = [path for path, box in _MARKS.items() if box is None]


def biq_images(n: int, split: str | None = None) -> list[Path]:
    if not (BIQ / "labels.csv").exists():
        pytest.skip(f"BIQ2021 data not found under {BIQ}")
    with open(BIQ / "labels.csv") as f:
        rows = [r for r in csv.DictReader(f) if split is None or r["split"] == split]
    return [BIQ / "images" / r["image"] for r in sorted(rows, key=lambda r: r["image"])[:n]]


@contextmanager
def all_running(servers):
    """Triton servers started in turn, and all stopped after (the started ones, on failure)."""
    try:
        for s in servers:
            s.start()
        yield servers
    finally:
        for s in servers:
            s.stop()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """The committed CPU repository served by the real Triton binary on loopback."""
    from sampleiqa.server import DEFAULT_REPOSITORY, TritonServer

    log = tmp_path_factory.mktemp("triton") / "triton.log"
    with TritonServer(DEFAULT_REPOSITORY, log_file=log) as s:
        yield s


@pytest.fixture(scope="session")
def client(server):
    from sampleiqa.clients import ScoringClient

    with ScoringClient(server.url, timeout_s=60) as c:
        yield c
