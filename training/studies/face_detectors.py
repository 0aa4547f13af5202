"""Compare face detectors and their settings: accuracy on marked faces, recall and speed.

    python -m sampleiqa.training.studies.face_detectors [--data ../shared/data] \
        [--out training/results/face_detectors.md]

- Marked faces: `samples/faces_marked.csv` (boxes marked by hand or checked by eye, and
  photos with no face). A detection is a hit when its centre lies in the marked box and
  IoU >= 0.3; a box on a no-face photo is a false positive.
- Recall proxy: how many of `--count` BIQ2021 `ss03` photos (many portraits) get a face.
- Speed: single-threaded ms per 512x512 photo over the same photos, copy and detection.
"""

from __future__ import annotations

import argparse
import csv
import random
import time
from pathlib import Path

import cv2

from sampleiqa.paths import REPO_ROOT, SAMPLES, SHARED_DATA
from sampleiqa.runtime.preprocessing import Box, create_detector, decode_bgr, find_face
from sampleiqa.runtime.preprocessing.faces import box_iou

MARKED = SAMPLES / "faces_marked.csv"

# (label, detector name, settings); the first YuNet row is the shipped default.
CANDIDATES = [
    ("Haar alt2, 200 px (before)", "haar", {}),
    ("YuNet-s, 160 px", "yunet", {"max_side": 160}),
    ("YuNet-s, 256 px, score 0.7", "yunet", {"score_threshold": 0.7}),
    ("YuNet-s, 256 px, score 0.6 (shipped)", "yunet", {}),
    ("YuNet-s, 256 px, score 0.5", "yunet", {"score_threshold": 0.5}),
    ("YuNet-s, 320 px", "yunet", {"max_side": 320}),
    ("YuNet-s, 512 px", "yunet", {"max_side": 512}),
]


def on_face(box, face) -> bool:
    """A detected box lies on a marked face: centre inside it and IoU >= 0.3."""
    cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
    fx, fy, fw, fh = face
    return fx <= cx <= fx + fw and fy <= cy <= fy + fh and box_iou(box, face) >= 0.3


def marked_faces(data: Path, marks: Path = MARKED) -> dict[Path, Box | None]:
    """Marked photo -> its face box (None: no face). `samples/` rows are in this repository,
    the others under `data`; photos that are not there are left out."""
    out = {}
    with open(marks, newline="") as f:
        for r in csv.DictReader(f):
            path = (REPO_ROOT if r["image"].startswith("samples/") else data) / r["image"]
            if path.is_file():
                out[path] = Box(*(int(r[k]) for k in "xywh")) if r["x"] else None
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(SHARED_DATA))
    p.add_argument("--count", type=int, default=600, help="ss03 photos for the recall proxy and the timing")
    p.add_argument("--out", default="training/results/face_detectors.md")
    args = p.parse_args(argv)
    cv2.setNumThreads(1)
    marks = marked_faces(Path(args.data))
    marked = {path: decode_bgr(path.read_bytes()) for path in marks}
    paths = sorted((Path(args.data) / "biq2021" / "images").glob("ss03*.jpg"))
    random.Random(1).shuffle(paths)
    photos = [decode_bgr(path.read_bytes()) for path in paths[: args.count]]
    n_faces = sum(b is not None for b in marks.values())
    lines = [
        f"# Face detectors: {n_faces} marked faces, {len(marks) - n_faces} marked photos without one, "
        f"{len(photos)} BIQ2021 ss03 photos",
        "",
        f"Marks: `{MARKED.relative_to(REPO_ROOT)}`. Speed: one thread, mean over the ss03 photos "
        "(512x512), copy + detection.",
        "",
        "| detector | marked faces hit | false positives on no-face photos | ss03 photos with a face | ms/photo |",
        "|---|---|---|---|---|",
    ]
    for label, name, settings in CANDIDATES:
        det = create_detector(name, **settings)
        found = {path: find_face(img, det) for path, img in marked.items()}
        hits = sum(
            b is not None and face is not None and on_face(b, face) for b, face in ((found[p], marks[p]) for p in marks)
        )
        false = sum(found[p] is not None for p in marks if marks[p] is None)
        find_face(photos[0], det)  # load the model outside the timing
        t0 = time.perf_counter()
        with_face = sum(find_face(img, det) is not None for img in photos)
        ms = (time.perf_counter() - t0) / max(1, len(photos)) * 1000
        lines.append(
            f"| {label} | {hits}/{n_faces} | {false}/{len(marks) - n_faces} | {with_face}/{len(photos)} | {ms:.1f} |"
        )
        print(lines[-1], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
