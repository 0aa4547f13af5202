"""Test-time averaging for the shipped scorer (issue 23, part 4): does a mirrored crop, or
several face-holding crops, pay for its cost?

    python -m sampleiqa.training.studies.test_time [--out training/results/test_time.md]

On BIQ2021 `val` (500 photos), through the served preprocessing and the shipped ONNX scorer
(ONNX Runtime): the served crop alone; it averaged with its mirror (2 runs); and five crops
(the served one and four shifted ones that still hold the whole face, `random_plan`),
each with its mirror (10 runs). Only `val`: the shipped model's leave-one-subset-out fold
models are not kept, so this is not held-out evidence (the ridge probe's flip is, in
transfer_study.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from sampleiqa.paths import DEFAULT_REPOSITORY, SHARED_DATA
from sampleiqa.runtime.preprocessing import apply_plan, decode_bgr, find_face, plan_crop, random_plan, to_pixels


def val_set() -> tuple[list[Path], np.ndarray]:
    root = SHARED_DATA / "biq2021"
    rows = [line.strip().split(",") for line in (root / "labels.csv").read_text().splitlines()[1:] if line.strip()]
    rows = sorted(r for r in rows if r[-1] == "val")
    return [root / "images" / r[0] for r in rows], np.array([float(r[1]) for r in rows])


def crops_of(data: bytes, extra: int, rng: np.random.Generator) -> np.ndarray:
    """[1 + extra, 3, 448, 448] uint8: the served crop, then `extra` face-holding ones."""
    bgr = decode_bgr(data)
    face = find_face(bgr)
    h, w = bgr.shape[:2]
    plans = [plan_crop(w, h, face)] + [random_plan(w, h, face, rng) for _ in range(extra)]
    return np.stack([to_pixels(np.ascontiguousarray(apply_plan(bgr, p))) for p in plans])


def study() -> dict:
    from scipy.stats import pearsonr, spearmanr

    from sampleiqa.runtime.onnx_runtime import cpu_session

    session = cpu_session(DEFAULT_REPOSITORY / "scorer" / "1" / "model.onnx", threads=2)
    paths, mos = val_set()
    rng = np.random.default_rng(0)
    scores = []  # per photo: [crops, mirror] scores
    start = time.perf_counter()
    for k, path in enumerate(paths):
        crops = crops_of(path.read_bytes(), 4, rng)
        both = np.concatenate([crops, crops[:, :, :, ::-1]])
        scores.append(session.run(None, {"PIXELS": np.ascontiguousarray(both)})[0].reshape(2, -1).T)
        if k % 100 == 99:
            print(f"[test_time] {k + 1}/{len(paths)} photos, {time.perf_counter() - start:.0f} s", flush=True)
    s = np.stack(scores)  # [N, 5 crops, 2 (as is, mirrored)]
    variants = {
        "served crop (1 run)": s[:, 0, 0],
        "served crop + mirror (2 runs)": s[:, 0].mean(1),
        "5 face-holding crops (5 runs)": s[:, :, 0].mean(1),
        "5 crops + mirrors (10 runs)": s.mean((1, 2)),
    }
    return {
        name: {"srocc": float(spearmanr(v, mos).statistic), "plcc": float(pearsonr(v, mos).statistic)}
        for name, v in variants.items()
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="training/results/test_time.md")
    args = p.parse_args(argv)
    r = study()
    lines = [
        "# Test-time averaging, shipped scorer, BIQ2021 `val` (500 photos)",
        "",
        "`python -m sampleiqa.training.studies.test_time` (served preprocessing, shipped ONNX, ONNX Runtime).",
        "Not held-out evidence: `val` only (see the module's docstring).",
        "",
        "| variant | SROCC | PLCC |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {v['srocc']:.4f} | {v['plcc']:.4f} |" for name, v in r.items()]
    out = Path(args.out)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(r, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
