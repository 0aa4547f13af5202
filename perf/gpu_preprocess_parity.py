"""Parity of the torch preprocessing path (TorchPreprocessor) with the CPU one (preprocess_bytes)
on the 500 BIQ2021 `val` photos: faces, crops and the shipped scorer's scores, and speed.

    python -m sampleiqa.perf.gpu_preprocess_parity --device cpu|cuda [--limit N] [--out perf/results]

Both paths' PIXELS are scored by the shipped ONNX scorer (model_repository/scorer/1/model.onnx)
through ONNX Runtime on CPU. Targets: >= 99% same face decision, IoU >= 0.9 where both found a
face, >= 99% of scores within 1e-2, val SROCC delta <= 0.003. Speed: images/s of each path
over the same bytes (read beforehand), the torch path in batches of --batch, after a warm-up
batch; the CPU path on one thread (as one serving instance runs it). Writes
gpu-preprocess-parity-<device>.md and .json into --out.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

from sampleiqa.paths import DEFAULT_REPOSITORY, RESULTS, SHARED_DATA
from sampleiqa.runtime.onnx_runtime import cpu_session
from sampleiqa.runtime.preprocessing import PreprocessError, preprocess_bytes
from sampleiqa.runtime.preprocessing.faces import box_iou

TARGETS = {"same_decision_pct": 99.0, "iou_min": 0.9, "within_1e-2_pct": 99.0, "srocc_delta": 0.003}


def val_photos(data: Path, limit: int | None) -> tuple[list[Path], np.ndarray]:
    with open(data / "biq2021" / "labels.csv", newline="") as f:
        rows = sorted((r for r in csv.DictReader(f) if r["split"] == "val"), key=lambda r: r["image"])
    rows = rows[:limit] if limit else rows
    return [data / "biq2021" / "images" / r["image"] for r in rows], np.array([float(r["mos"]) for r in rows])


def run_torch(blobs: list[bytes], device: str, batch: int, pre=None) -> dict:
    import torch

    from sampleiqa.runtime.preprocessing.torch_pipeline import TorchPreprocessor

    pre = pre or TorchPreprocessor(device=device)
    pre(blobs[: min(batch, 8)])  # warm-up: model load, kernels, weight caches
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    pixels, boxes, found, errors, fallback = [], [], [], [], []
    sync()
    t0 = time.perf_counter()
    for k in range(0, len(blobs), batch):
        out = pre(blobs[k : k + batch])
        pixels.append(out.pixels.cpu().numpy())  # the host copy is part of the cost (the scorer is on CPU here)
        boxes.append(out.boxes)
        found.append(out.found)
        errors += out.errors
        fallback += out.fallback
        print(f"  torch: {min(k + batch, len(blobs))}/{len(blobs)}", flush=True)
    sync()
    seconds = time.perf_counter() - t0
    return dict(
        pixels=np.concatenate(pixels),
        boxes=np.concatenate(boxes),
        found=np.concatenate(found),
        errors=errors,
        fallback=fallback,
        seconds=seconds,
    )


def run_cpu(blobs: list[bytes]) -> dict:
    import cv2

    cv2.setNumThreads(1)
    preprocess_bytes(blobs[0])  # warm-up: the detector's model
    n = len(blobs)
    pixels = np.zeros((n, 3, 448, 448), np.uint8)
    boxes, found, errors = np.zeros((n, 4), np.int32), np.zeros(n, np.bool_), [None] * n
    t0 = time.perf_counter()
    for i, data in enumerate(blobs):
        try:
            r = preprocess_bytes(data, out=pixels[i])
            boxes[i], found[i] = r.face_box, r.face_found
        except PreprocessError as exc:
            errors[i] = str(exc)
        if (i + 1) % 100 == 0 or i + 1 == n:
            print(f"  cpu: {i + 1}/{n}", flush=True)
    return dict(pixels=pixels, boxes=boxes, found=found, errors=errors, seconds=time.perf_counter() - t0)


def score(pixels: np.ndarray, batch: int = 32) -> np.ndarray:
    session = cpu_session(DEFAULT_REPOSITORY / "scorer" / "1" / "model.onnx")
    return np.concatenate(
        [session.run(None, {"PIXELS": pixels[k : k + batch]})[0][:, 0] for k in range(0, len(pixels), batch)]
    )


def compare(t: dict, c: dict, st: np.ndarray, sc: np.ndarray, mos: np.ndarray | None = None) -> dict:
    """The two paths' outputs side by side; with `mos`, each path's SROCC too."""
    n = len(st)
    ok = np.array([a is None and b is None for a, b in zip(t["errors"], c["errors"])])
    both = ok & t["found"] & c["found"]
    ious = np.array([box_iou(tuple(t["boxes"][i]), tuple(c["boxes"][i])) for i in np.flatnonzero(both)])
    diff = np.abs(st - sc)[ok]
    pix = np.abs(t["pixels"][ok].astype(np.int16) - c["pixels"][ok].astype(np.int16))
    report = {
        "photos": n,
        "scored": int(ok.sum()),
        "same_errors": t["errors"] == c["errors"],
        "faces_cpu": int(c["found"].sum()),
        "faces_torch": int(t["found"].sum()),
        "same_decision_pct": 100.0 * float((t["found"] == c["found"])[ok].mean()),
        "both_found": int(both.sum()),
        "iou_min": float(ious.min()) if len(ious) else None,
        "iou_median": float(np.median(ious)) if len(ious) else None,
        "iou_ge_0.9_pct": 100.0 * float((ious >= 0.9).mean()) if len(ious) else None,
        "within_1e-2_pct": 100.0 * float((diff <= 1e-2).mean()),
        "max_score_diff": float(diff.max()),
        "mean_score_diff": float(diff.mean()),
        "pixels_max_abs_diff": int(pix.max()),
        "pixels_mean_abs_diff": float(pix.mean()),
        "pixels_identical_pct": 100.0 * float((pix.reshape(len(pix), -1).max(1) == 0).mean()),
        "fallback": dict(Counter(f for f in t["fallback"] if f is not None)),
        "images_per_s_torch": n / t["seconds"],
        "images_per_s_cpu": n / c["seconds"],
    }
    if mos is not None:
        from scipy.stats import spearmanr

        s_t, s_c = float(spearmanr(st[ok], mos[ok])[0]), float(spearmanr(sc[ok], mos[ok])[0])
        report.update(srocc_torch=s_t, srocc_cpu=s_c, srocc_delta=abs(s_t - s_c))
    return report


def passed(r: dict) -> dict:
    return {
        "same_decision": r["same_decision_pct"] >= TARGETS["same_decision_pct"],
        "iou": r["iou_min"] is None or r["iou_min"] >= TARGETS["iou_min"],
        "scores": r["within_1e-2_pct"] >= TARGETS["within_1e-2_pct"],
        "srocc": r["srocc_delta"] <= TARGETS["srocc_delta"],
        "errors": r["same_errors"],
    }


def markdown(r: dict, device: str, batch: int) -> str:
    fmt = lambda v, p=3: "n/a" if v is None else f"{v:.{p}f}"  # noqa: E731
    ok = passed(r)
    lines = [
        f"# Torch preprocessing vs the CPU path, device {device}",
        "",
        f"`python -m sampleiqa.perf.gpu_preprocess_parity --device {device}`: {r['photos']} BIQ2021 `val` photos "
        f"({r['scored']} scored by both), TorchPreprocessor in batches of {batch} vs `preprocess_bytes`; both "
        "crops scored by the shipped ONNX scorer (ONNX Runtime, CPU).",
        "",
        "| figure | value | target |",
        "|---|---|---|",
        f"| same face decision | {r['same_decision_pct']:.1f}% ({r['faces_cpu']} faces CPU, {r['faces_torch']} torch) "
        f"| >= 99% {'ok' if ok['same_decision'] else 'MISSED'} |",
        f"| face IoU where both found one ({r['both_found']}) | min {fmt(r['iou_min'])}, "
        f"median {fmt(r['iou_median'])}, "
        f"{fmt(r['iou_ge_0.9_pct'], 1)}% >= 0.9 | >= 0.9 {'ok' if ok['iou'] else 'MISSED'} |",
        f"| scores within 1e-2 | {r['within_1e-2_pct']:.1f}% (max diff {r['max_score_diff']:.2e}, "
        f"mean {r['mean_score_diff']:.2e}) | >= 99% {'ok' if ok['scores'] else 'MISSED'} |",
        f"| val SROCC | torch {r['srocc_torch']:.4f}, CPU {r['srocc_cpu']:.4f}, delta {r['srocc_delta']:.4f} "
        f"| <= 0.003 {'ok' if ok['srocc'] else 'MISSED'} |",
        f"| same per-item errors | {r['same_errors']} | same {'ok' if ok['errors'] else 'MISSED'} |",
        f"| PIXELS abs diff | max {r['pixels_max_abs_diff']}, mean {r['pixels_mean_abs_diff']:.2e}; "
        f"{r['pixels_identical_pct']:.1f}% of crops identical | |",
        f"| sent to the CPU fallback | {r['fallback'] or 'none'} | |",
        f"| images/s | torch {r['images_per_s_torch']:.1f}, CPU path (1 thread) {r['images_per_s_cpu']:.1f} | |",
        "",
    ]
    if device == "cpu":
        lines += [
            "On CPU the torch path exists so that CI checks it; its speed here is not the GPU's "
            "(YuNet's convolutions in torch on CPU take most of its time).",
            "",
        ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--limit", type=int, default=None, help="first N val photos (default all 500)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--data", type=Path, default=SHARED_DATA)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    paths, mos = val_photos(args.data, args.limit)
    blobs = [f.read_bytes() for f in paths]
    print(f"{len(blobs)} val photos; torch path on {args.device}", flush=True)
    t = run_torch(blobs, args.device, args.batch)
    c = run_cpu(blobs)
    print("scoring both with the ONNX scorer ...", flush=True)
    st, sc = score(t["pixels"]), score(c["pixels"])
    report = compare(t, c, st, sc, mos)
    report.update(device=args.device, batch=args.batch, targets=TARGETS, passed=passed(report))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"gpu-preprocess-parity-{args.device.split(':')[0]}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(report, args.device, args.batch))
    print(stem.with_suffix(".md").read_text())
    return 0 if all(report["passed"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
