"""Compare Haar face-detection settings: ms per photo against agreement with a reference.

    python -m sampleiqa.perf.face_settings [--images DIR] [--out perf/results/haar_settings.md]

The reference is the earlier setting (default cascade on a 320 px copy, minNeighbors 6).
Its detections are not ground truth (some are false positives, and it misses many faces),
so the table also counts new detections on photos where the reference found none; the
hand-marked faces are checked by tests/test_preprocessing.py and tests/test_serving.py.
Timing is single-threaded, over the reference's negatives (no early exit).
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from sampleiqa.preprocessing import decode_bgr, faces
from sampleiqa.preprocessing.faces import HaarFaceDetector, find_face

from .inputs import DEFAULT_IMAGES

REFERENCE = (320, "haarcascade_frontalface_default.xml", 1.2, 6, 0.1)
CANDIDATES = [
    REFERENCE,
    (240, "haarcascade_frontalface_default.xml", 1.2, 6, 0.1),
    (222, "haarcascade_frontalface_default.xml", 1.2, 5, 0.108),
    (222, "haarcascade_frontalface_default.xml", 1.3, 3, 0.108),
    (200, "haarcascade_frontalface_default.xml", 1.2, 4, 0.12),
    (200, "haarcascade_frontalface_alt2.xml", 1.2, 2, 0.12),
    (200, "haarcascade_frontalface_alt2.xml", 1.2, 3, 0.12),  # the shipped setting
    (222, "haarcascade_frontalface_alt2.xml", 1.3, 2, 0.108),
]


def _detect(setting, images):
    side, cascade, scale, neighbors, fraction = setting
    saved, faces.DETECT_MAX_SIDE = faces.DETECT_MAX_SIDE, side
    try:
        det = HaarFaceDetector(cascade, min_neighbors=neighbors, scale_factor=scale, min_size_fraction=fraction)
        return [find_face(img, det) for img in images]
    finally:
        faces.DETECT_MAX_SIDE = saved


def _agrees(box, ref) -> bool:
    cx, cy = box.x + box.w / 2, box.y + box.h / 2
    return ref.x <= cx <= ref.x + ref.w and ref.y <= cy <= ref.y + ref.h


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", default=str(DEFAULT_IMAGES))
    p.add_argument("--count", type=int, default=900, help="photos drawn (portrait subset ss03 when present)")
    p.add_argument("--out", default="perf/results/haar_settings.md")
    args = p.parse_args(argv)
    paths = sorted(Path(args.images).glob("ss03*.jpg")) or sorted(Path(args.images).glob("*.jpg"))
    random.Random(1).shuffle(paths)
    images = [decode_bgr(path.read_bytes()) for path in paths[: args.count]]
    ref = _detect(REFERENCE, images)
    positives = [(img, box) for img, box in zip(images, ref) if box]
    negatives = [img for img, box in zip(images, ref) if not box][:100]
    lines = [f"# Haar settings on {len(images)} photos from {args.images}", "",
             f"Reference: {REFERENCE}; it found a face in {len(positives)} photos.", "",
             "| copy px | cascade | scale | minNeighbors | min face | ms/photo | reference faces kept | new faces on 100 reference negatives |",
             "|---|---|---|---|---|---|---|---|"]
    for setting in CANDIDATES:
        t0 = time.perf_counter()
        new = sum(b is not None for b in _detect(setting, negatives))
        ms = (time.perf_counter() - t0) / max(1, len(negatives)) * 1000
        kept = sum(b is not None and _agrees(b, r) for b, (_, r) in zip(_detect(setting, [i for i, _ in positives]), positives))
        side, cascade, scale, neighbors, fraction = setting
        lines.append(f"| {side} | {cascade.removeprefix('haarcascade_frontalface_').removesuffix('.xml')} | {scale} | "
                     f"{neighbors} | {fraction:.0%} of short side | {ms:.1f} | {kept}/{len(positives)} | {new} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
