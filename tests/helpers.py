"""What the tests share that is not a fixture: where things are, the hand-marked faces, real
photos, and `sampleiqa` run as a user runs it with its output rows read back.
Fixtures and hooks live in tests/conftest.py."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from sampleiqa.paths import DEFAULT_REPOSITORY, REPO_ROOT, RESULTS, SAMPLES, SHARED_DATA, WEIGHTS  # noqa: F401
from sampleiqa.runtime.contracts import CSV_COLUMNS
from sampleiqa.runtime.preprocessing.faces import box_iou as iou  # noqa: F401
from sampleiqa.training.studies.face_detectors import marked_faces, on_face  # noqa: F401

# Real labelled photos, never copied in (SAMPLEIQA_DATA points elsewhere).
DATA = Path(os.environ.get("SAMPLEIQA_DATA", SHARED_DATA))
BIQ = DATA / "biq2021"

# Faces marked by hand or checked by eye (samples/faces_marked.csv, x, y, w, h in original
# pixels, generous by a few pixels), and photos with no face. A detected box "lies on the
# face" when its centre is inside and IoU >= 0.3 (sampleiqa.training.studies.face_detectors.on_face).
_MARKS = marked_faces(DATA)
FACES = {path: tuple(box) for path, box in _MARKS.items() if box is not None}
NO_FACE = [path for path, box in _MARKS.items() if box is None]

# `sampleiqa` as a user runs it, from this environment.
SAMPLEIQA = [sys.executable, "-m", "sampleiqa.cli"]


def biq_images(n: int, split: str | None = None) -> list[Path]:
    """The first n BIQ2021 photos by name (of one split if given); the test is skipped without them."""
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


def run(args, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """`sampleiqa ARGS...` in a child process, its output captured as text."""
    return subprocess.run(SAMPLEIQA + [str(a) for a in args], capture_output=True, text=True, timeout=timeout, **kw)


def score_cli(*args, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """`sampleiqa score ARGS...` (see run)."""
    return run(["score", *args], timeout=timeout, **kw)


def rows(path: Path) -> list[dict]:
    """The rows of a `sampleiqa score` CSV output, its header checked (names that are not
    UTF-8 come back with surrogates, as os.fsdecode gives them)."""
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames is None or tuple(reader.fieldnames) == CSV_COLUMNS, reader.fieldnames
        return list(reader)


def jsonl_rows(path: Path) -> list[dict]:
    """The rows of a `sampleiqa score` JSONL output."""
    return [json.loads(line) for line in path.read_bytes().split(b"\n") if line.strip()]
