"""Which head or feature treatment on the frozen Lite0 pooled statistics transfers across
BIQ2021's sources (issue 23), under transfer_probe.py's exact protocol.

    OMP_NUM_THREADS=2 .venv/bin/python -m sampleiqa.training.studies.transfer_heads \\
        [--cache /tmp/transfer_study] [--out training/results/transfer_heads.md]

Reads the features transfer_probe.py cached under --cache (feat_lite0_crop.npy, and
feat_lite0_whole.npy for the crop+whole rerun); the photo order and labels are its own
(`create_dataset` over BIQ2021, split None; `val` from split "val"). Folds are
`training/loso.py`'s `folds` (ss01, ss02, ss03 held out; `val` trained on `train`); every
hyper-parameter is chosen by inner leave-one-subset-out on the fold's training photos
(first best of the grid, as transfer_probe), then refitted on all of them. Every statistic
(standardisation, quantiles, PCA, landmarks, label z-scores) comes from the training side.
The baseline must reproduce transfer_probe's "lite0 crop" figures (checked against its .json).
(Over 300 lines: one study, its eleven variants and their one protocol belong together.)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from scipy.linalg import cho_factor, cho_solve, eigh
from scipy.special import ndtri

from ..data.datasets import create_dataset
from ..loso import SUBSETS, folds, subset_of
from ..metrics import srocc
from . import transfer_probe as tp

ALPHAS = tp.ALPHAS
PCA_K = (32, 64, 128, 256, 512, 1024)
RANK_LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1)
KRR_SCALES = (0.5, 1.0, 2.0, 4.0)  # gamma = scale / median squared distance
KRR_ALPHAS = (0.1, 1.0, 10.0, 100.0)
LANDMARKS = 1000
PAIRS_PER_PHOTO = 20
SEED = 0


# ---------------------------------------------------------------- feature and label treatments


def standardiser(x: np.ndarray):
    mean, std = x.mean(0), x.std(0) + 1e-6
    return lambda z: (z - mean) / std


def identity_tf(x: np.ndarray):
    return lambda z: z


def log1p_tf(x: np.ndarray):
    """log1p of the features that are non-negative on the training side (energy-like)."""
    cols = x.min(0) >= 0

    def apply(z):
        z = z.copy()
        z[:, cols] = np.log1p(np.maximum(z[:, cols], 0))
        return z

    return apply


def quantile_tf(x: np.ndarray):
    """Each feature to its training quantile (interpolated, clamped), then to a normal score."""
    ref = np.sort(x, 0)
    n = len(ref)
    probs = (np.arange(n) + 0.5) / n

    def apply(z):
        return ndtri(np.stack([np.interp(z[:, j], ref[:, j], probs) for j in range(z.shape[1])], 1))

    return apply


def zscore_labels(y: np.ndarray, src: np.ndarray) -> np.ndarray:
    out = np.empty_like(y)
    for s in np.unique(src):
        m = src == s
        out[m] = (y[m] - y[m].mean()) / (y[m].std() + 1e-9)
    return out


TRANSFORMS = {"none": identity_tf, "log1p": log1p_tf, "quantile": quantile_tf}


# ---------------------------------------------------------------- heads: fit -> {hp: predict}


def _linear(std, w, b):
    return lambda z: std(z) @ w + b


def ridge_head(x, y, src, grid):
    """ridge_probe's regression (standardised features, intercept = mean label), one solve per alpha."""
    std = standardiser(x)
    xs, ym = std(x), y.mean()
    if len(xs) >= xs.shape[1]:
        gram, rhs = xs.T @ xs, xs.T @ (y - ym)
        ws = {a: cho_solve(cho_factor(gram + a * np.eye(len(gram))), rhs) for a in grid}
    else:
        k = xs @ xs.T
        ws = {a: xs.T @ cho_solve(cho_factor(k + a * np.eye(len(k))), y - ym) for a in grid}
    return {a: _linear(std, w, ym) for a, w in ws.items()}


def pca_ridge_head(x, y, src, grid):
    """Ridge on the top-k principal components of the standardised features (not whitened)."""
    std = standardiser(x)
    xs, ym = std(x), y.mean()
    lam, vec = eigh(xs.T @ xs)
    lam, vec = lam[::-1], vec[:, ::-1]
    proj = vec.T @ (xs.T @ (y - ym))
    out = {}
    for k, a in grid:
        w = vec[:, :k] @ (proj[:k] / (lam[:k] + a))
        out[(k, a)] = _linear(std, w, ym)
    return out


def _pairs(y: np.ndarray, src: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random pairs within each source, ties dropped: (i, j, sign of y_i - y_j)."""
    ii, jj = [], []
    for s in np.unique(src):
        idx = np.flatnonzero(src == s)
        ii.append(rng.choice(idx, PAIRS_PER_PHOTO * len(idx)))
        jj.append(rng.choice(idx, PAIRS_PER_PHOTO * len(idx)))
    i, j = np.concatenate(ii), np.concatenate(jj)
    keep = y[i] != y[j]
    return i[keep], j[keep], np.sign(y[i] - y[j])[keep]


def rank_head(x, y, src, grid):
    """A linear scorer fitted by a logistic loss on score differences of within-source pairs
    (full-batch L-BFGS, float64, seeded pairs), L2 penalty lambda * |w|^2."""
    std = standardiser(x)
    xt = torch.from_numpy(std(x))
    i, j, sign = (torch.from_numpy(a) for a in _pairs(y, src, np.random.default_rng(SEED)))
    out = {}
    for lam in grid:
        w = torch.zeros(xt.shape[1], dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w], max_iter=300, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            s = xt @ w
            loss = torch.nn.functional.softplus(-sign * (s[i] - s[j])).mean() + lam * (w @ w)
            loss.backward()
            return loss

        opt.step(closure)
        out[lam] = _linear(std, w.detach().numpy().copy(), 0.0)
    return out


def _sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T, 0)


def krr_head(x, y, src, grid):
    """RBF kernel ridge through a Nystroem map on LANDMARKS seeded training photos
    (standardised features); gamma = scale / the median landmark-photo squared distance."""
    std = standardiser(x)
    xs, ym = std(x), y.mean()
    marks = xs[np.random.default_rng(SEED).choice(len(xs), min(LANDMARKS, len(xs)), replace=False)]
    d_nm, d_mm = _sqdist(xs, marks), _sqdist(marks, marks)
    med = np.median(d_nm)
    out = {}
    for scale in sorted({s for s, _ in grid}):
        g = scale / med
        lam, vec = eigh(np.exp(-g * d_mm))
        keep = lam > 1e-8 * lam.max()
        root = vec[:, keep] / np.sqrt(lam[keep])  # K_mm^{-1/2} on its range
        phi = np.exp(-g * d_nm) @ root
        pm = phi.mean(0)
        pc = phi - pm
        gram, rhs = pc.T @ pc, pc.T @ (y - ym)
        for a in [a for s, a in grid if s == scale]:
            w = cho_solve(cho_factor(gram + a * np.eye(len(gram))), rhs)
            out[(scale, a)] = _krr_predict(std, marks, g, root, pm, w, ym)
    return out


def _krr_predict(std, marks, g, root, pm, w, ym):
    return lambda z: (np.exp(-g * _sqdist(std(z), marks)) @ root - pm) @ w + ym


HEADS = {
    "ridge": (ridge_head, list(ALPHAS)),
    "pca": (pca_ridge_head, [(k, a) for k in PCA_K for a in ALPHAS]),
    "rank": (rank_head, list(RANK_LAMBDAS)),
    "krr": (krr_head, [(s, a) for s in KRR_SCALES for a in KRR_ALPHAS]),
}


# ---------------------------------------------------------------- the protocol


def fit_predict(spec: dict, x_tr, y_tr, src_tr, grid):
    """Fit the treatment on the training side only; {hp: predict(raw features)}."""
    tf = TRANSFORMS[spec["features"]](x_tr)
    y_fit = zscore_labels(y_tr, src_tr) if spec["labels"] == "z" else y_tr
    head = HEADS[spec["head"]][0]
    preds = head(tf(x_tr), y_fit, src_tr, grid)
    return {hp: (lambda z, p=p: p(tf(z))) for hp, p in preds.items()}


def run_variant(name: str, spec: dict, x: np.ndarray, y: np.ndarray, subsets, fold_idx) -> dict:
    """Every fold: hyper-parameters by inner leave-one-subset-out on the training photos, refit, score."""
    grid = HEADS[spec["head"]][1]
    result, t0 = {"name": name, "spec": spec, "folds": {}}, time.monotonic()
    for fold, (tr, te) in fold_idx.items():
        inner = {hp: [] for hp in grid}
        for s in np.unique(subsets[tr]):
            itr, ite = tr[subsets[tr] != s], tr[subsets[tr] == s]
            for hp, p in fit_predict(spec, x[itr], y[itr], subsets[itr], grid).items():
                inner[hp].append(srocc(p(x[ite]), y[ite]))
        curve = {hp: float(np.mean(v)) for hp, v in inner.items()}
        best = max(curve, key=curve.get)
        pred = fit_predict(spec, x[tr], y[tr], subsets[tr], [best])[best](x[te])
        result["folds"][fold] = {"hp": str(best), "srocc": srocc(pred, y[te]), "inner_best": curve[best]}
        print(f"  {name} {fold}: hp {best} SROCC {result['folds'][fold]['srocc']:.4f}", flush=True)
    result["mean"] = float(np.mean([result["folds"][s]["srocc"] for s in SUBSETS]))
    result["fit_s"] = time.monotonic() - t0
    print(f"{name}: LOSO mean {result['mean']:.4f}, val {result['folds']['val']['srocc']:.4f}", flush=True)
    return result


def load(cache: Path, views: tuple[str, ...]):
    """(features, labels, subsets, folds) in transfer_probe's photo order."""
    data = create_dataset({"kind": "biq2021", "root": tp.ROOT, "split": None})
    paths = [str(s.path) for s in data.samples]
    y = np.asarray([s.score for s in data.samples], dtype=np.float32).astype(np.float64)
    val = {str(s.path) for s in create_dataset({"kind": "biq2021", "root": tp.ROOT, "split": "val"}).samples}
    x = np.concatenate([np.load(cache / f"feat_lite0_{v}.npy") for v in views], 1).astype(np.float64)
    subsets = np.array([subset_of(p) for p in paths])
    return x, y, subsets, folds(SimpleNamespace(paths=paths), val)


# ---------------------------------------------------------------- variants and report

VARIANTS = [
    ("1 baseline ridge", {"features": "none", "labels": "raw", "head": "ridge"}),
    ("2 ridge, per-source z labels", {"features": "none", "labels": "z", "head": "ridge"}),
    ("3a ridge, quantile-normal features", {"features": "quantile", "labels": "raw", "head": "ridge"}),
    ("3b ridge, log1p non-negative features", {"features": "log1p", "labels": "raw", "head": "ridge"}),
    ("4 PCA-k + ridge", {"features": "none", "labels": "raw", "head": "pca"}),
    ("5 pairwise rank head", {"features": "none", "labels": "raw", "head": "rank"}),
    ("6 RBF kernel ridge (Nystroem)", {"features": "none", "labels": "raw", "head": "krr"}),
]
COMBOS = [
    ("7a quantile + z labels + ridge", {"features": "quantile", "labels": "z", "head": "ridge"}),
    ("7b log1p + z labels + ridge", {"features": "log1p", "labels": "z", "head": "ridge"}),
    ("7c quantile + rank head", {"features": "quantile", "labels": "raw", "head": "rank"}),
    ("7d quantile + z labels + RBF kernel ridge", {"features": "quantile", "labels": "z", "head": "krr"}),
]


def check_baseline(r: dict, reference: Path) -> str:
    """Compare the baseline with transfer_probe's stored 'lite0 crop' figures."""
    if not reference.exists():
        return "reference .json missing: not checked"
    ref = next(x for x in json.loads(reference.read_text())["results"] if x["name"] == "lite0 crop")
    diffs = [abs(ref["folds"][f]["chosen"]["srocc"] - r["folds"][f]["srocc"]) for f in (*SUBSETS, "val")]
    ok = max(diffs) < 1e-4 and all(
        float(r["folds"][f]["hp"]) == ref["folds"][f]["chosen_alpha"] for f in (*SUBSETS, "val")
    )
    return f"{'reproduced' if ok else 'NOT reproduced'} (max |diff| {max(diffs):.1e}, same alphas: {ok})"


def write_report(results: list[dict], out: Path, command: str, check: str, conclusion: str) -> None:
    lines = [
        "# Heads and feature treatments on frozen Lite0 pooled statistics (issue 23)",
        "",
        "Protocol of transfer_probe.py: `training/loso.py` folds, hyper-parameters by inner "
        "leave-one-subset-out on each fold's training photos, refit on all of them; SROCC on the "
        "held-out side. All statistics fitted on the training side only. Fit seconds: wall time of "
        "all folds with their inner selection, on a shared 2-core machine.",
        "",
        f"Baseline check against training/results/transfer_study.json 'lite0 crop': {check}.",
        "",
        "| variant | view(s) | ss01 | ss02 | ss03 | LOSO mean | val SROCC | fit seconds "
        "| hp chosen (ss01/ss02/ss03/val) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        f = r["folds"]
        lines.append(
            f"| {r['name']} | {r['views']} | "
            + " | ".join(f"{f[s]['srocc']:.3f}" for s in SUBSETS)
            + f" | **{r['mean']:.3f}** | {f['val']['srocc']:.3f} | {r['fit_s']:.0f} | "
            + " / ".join(f[s]["hp"] for s in (*SUBSETS, "val"))
            + " |"
        )
    lines += ["", "Command:", "", "```", command, "```", "", "## Conclusion", "", conclusion, ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps({"results": results, "baseline_check": check}, indent=1))


def conclude(results: list[dict]) -> str:
    best = max(results, key=lambda r: r["mean"])
    hits = [r for r in results if r["mean"] >= 0.68 and r["folds"]["val"]["srocc"] >= 0.85]
    base = results[0]
    return (
        f"Best LOSO mean: {best['name']} ({best['views']}) {best['mean']:.3f}, val "
        f"{best['folds']['val']['srocc']:.3f}, against the baseline's {base['mean']:.3f} / "
        f"{base['folds']['val']['srocc']:.3f}. "
        + (
            "Variants reaching LOSO >= 0.68 with val >= 0.85: " + ", ".join(r["name"] for r in hits) + "."
            if hits
            else "No variant reaches LOSO >= 0.68 with val >= 0.85."
        )
        + f" ss02 held out stays at {min(r['folds']['ss02']['srocc'] for r in results):.3f}-"
        f"{max(r['folds']['ss02']['srocc'] for r in results):.3f} across variants."
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", default="/tmp/transfer_study")
    p.add_argument("--out", default="training/results/transfer_heads.md")
    p.add_argument("--only", default="", help="comma-separated variant number prefixes (e.g. 1,2,7a)")
    args = p.parse_args(argv)
    torch.set_num_threads(tp.THREADS)
    cache, out = Path(args.cache), Path(args.out)
    command = f"OMP_NUM_THREADS=2 .venv/bin/python -m sampleiqa.training.studies.transfer_heads --out {args.out}"
    x, y, subsets, fold_idx = load(cache, ("crop",))
    print(f"{len(y)} photos, {x.shape[1]} features", flush=True)
    chosen = [v for v in VARIANTS + COMBOS if not args.only or v[0].split()[0] in args.only.split(",")]
    results = []
    for name, spec in chosen:
        results.append({**run_variant(name, spec, x, y, subsets, fold_idx), "views": "crop"})
        check = check_baseline(results[0], Path(tp.__file__).parents[1] / "results" / "transfer_study.json")
        write_report(results, out, command, check, conclude(results))
    best = max(results[1:] or results, key=lambda r: r["mean"])
    x, y, subsets, fold_idx = load(cache, ("crop", "whole"))
    for name, spec in [("1 baseline ridge", VARIANTS[0][1]), (best["name"], best["spec"])]:
        results.append({**run_variant(name, spec, x, y, subsets, fold_idx), "views": "crop+whole"})
        write_report(results, out, command, check, conclude(results))
    print(conclude(results), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
