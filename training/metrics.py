"""IQA correlation metrics: PLCC (raw and after the 4-parameter logistic fit), SROCC, KRCC,
and the per-scene summary PIQ23 asks for. A metric is created by name (`METRICS[name]`)."""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from scipy import optimize, stats


def logistic4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """VQEG's 4-parameter logistic: maps predictions onto the subjective scale before PLCC."""
    with np.errstate(over="ignore"):  # exp overflow saturates the curve, which is intended
        return (b1 - b2) / (1.0 + np.exp(-(x - b3) / np.abs(b4))) + b2


def fit_logistic(pred: np.ndarray, mos: np.ndarray) -> np.ndarray:
    pred, mos = np.asarray(pred, float), np.asarray(mos, float)
    p0 = [mos.max(), mos.min(), float(np.mean(pred)), float(np.std(pred)) or 1.0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params, _ = optimize.curve_fit(logistic4, pred, mos, p0=p0, maxfev=20000)
        return logistic4(pred, *params)
    except (RuntimeError, optimize.OptimizeWarning):
        return pred  # no fit found: fall back to the raw predictions


def plcc(pred, mos) -> float:
    return float(stats.pearsonr(pred, mos)[0])


def plcc_logistic(pred, mos) -> float:
    return float(stats.pearsonr(fit_logistic(pred, mos), mos)[0])


def srocc(pred, mos) -> float:
    return float(stats.spearmanr(pred, mos)[0])


def krcc(pred, mos) -> float:
    return float(stats.kendalltau(pred, mos)[0])


METRICS = {"plcc": plcc, "plcc_logistic": plcc_logistic, "srocc": srocc, "krcc": krcc}


def correlations(pred: Sequence[float], mos: Sequence[float]) -> dict[str, float]:
    pred, mos = np.asarray(pred, float), np.asarray(mos, float)
    if len(pred) < 3 or np.ptp(pred) == 0 or np.ptp(mos) == 0:
        return {name: math.nan for name in METRICS}
    return {name: fn(pred, mos) for name, fn in METRICS.items()}


def evaluate_scores(pred: Sequence[float], mos: Sequence[float], scenes: Sequence[str | None] | None = None) -> dict:
    """Overall correlations, plus (with scenes) per-scene ones and their mean and median.

    JOD-style labels are comparable only inside a scene, so with scenes the headline
    figures are the per-scene mean (the PIQ23 maintainers' choice) and median (the dataset
    README's)."""
    result = {"n": len(pred), "overall": correlations(pred, mos)}
    if scenes is None or all(s is None for s in scenes):
        return result
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(scenes):
        groups[str(s)].append(i)
    pred, mos = np.asarray(pred, float), np.asarray(mos, float)
    per_scene = {s: correlations(pred[idx], mos[idx]) for s, idx in sorted(groups.items())}
    result["per_scene"] = per_scene
    for how, fn in (("scene_mean", np.nanmean), ("scene_median", np.nanmedian)):
        result[how] = {m: float(fn([v[m] for v in per_scene.values()])) for m in METRICS}
    return result


def headline(result: dict) -> dict[str, float]:
    """The figures to select and report on: the per-scene mean where scenes exist."""
    return result.get("scene_mean", result["overall"])


def format_result(result: dict) -> str:
    lines = [f"n={result['n']}"]
    for key in ("overall", "scene_mean", "scene_median"):
        if key in result:
            r = result[key]
            lines.append(
                f"{key:>13}: PLCC {r['plcc']:.4f}  PLCC(logistic) {r['plcc_logistic']:.4f}  "
                f"SROCC {r['srocc']:.4f}  KRCC {r['krcc']:.4f}"
            )
    return "\n".join(lines)
