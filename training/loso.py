"""Leave-one-subset-out: train on two of BIQ2021's sources, test on the third, beside `val`.

    python -m sampleiqa.training.loso training/configs/biq2021_default.toml \\
        [--models lite0_swin,lite0_swin_only] [--probe] [--out training/results/loso.md]

BIQ2021's subsets come from different sources (`ss01` a photographer's gallery, `ss02`
captures distorted on purpose, `ss03` Unsplash photos), so a model trained on two and tested
on the third is the closest this data gets to photos from elsewhere. Every fold trains the
config's `prior` stages from scratch on the other two subsets (all their labelled photos,
`train` and `val`), with the same re-sampling, seeds and settings as the shipped run; the
`val` column trains on `train` and tests on `val`, as the shipped model does. `--probe` adds a
ridge regression on the trunk's pooled statistics (no Swin): the frozen-feature probe.
Prior models only: every fold reuses the cached trunk outputs (training/data/features.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from .config import TrainConfig, load_config
from .data.datasets import create_dataset
from .data.features import FeatureSet
from .metrics import evaluate_scores, headline
from .models import create_model
from .prior.loop import fit_top, load_features, predict_top, prepare_top
from .resample import resample

log = logging.getLogger(__name__)

SUBSETS = ("ss01", "ss02", "ss03")


def subset_of(path: str) -> str:
    return Path(path).name.split(" ")[0]


def folds(data: FeatureSet, val_paths: set[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fold name -> (train indices, test indices): one per held-out subset, and `val`."""
    subsets = np.array([subset_of(p) for p in data.paths])
    in_val = np.array([p in val_paths for p in data.paths])
    out = {s: (np.flatnonzero(subsets != s), np.flatnonzero(subsets == s)) for s in SUBSETS}
    out["val"] = (np.flatnonzero(~in_val), np.flatnonzero(in_val))
    return out


def ridge_probe(train: FeatureSet, test: FeatureSet, alpha: float = 10_000.0) -> np.ndarray:
    """Ridge regression on the standardised pooled statistics of the served crops. The
    default alpha is the best of a sweep on these folds (training/results/prior_study.md)."""
    x, y = train.pooled[:, 0].astype(np.float64), train.scores.astype(np.float64)
    mean, std = x.mean(0), x.std(0) + 1e-6
    xs = (x - mean) / std
    w = np.linalg.solve(xs.T @ xs + alpha * np.eye(xs.shape[1]), xs.T @ (y - y.mean()))
    return ((test.pooled[:, 0] - mean) / std) @ w + y.mean()


def train_fold(model: str, cfg: TrainConfig, train: FeatureSet):
    """A fresh top of `model`, trained by the config's stages on `train` (cached features)."""
    torch.manual_seed(cfg.seed)
    scorer = create_model(model, pretrained=False)
    prepare_top(scorer, train)
    epoch = resample(train.scores, cfg.resample).indices()
    for i, stage in enumerate(cfg.stages):
        scorer.top.load_state_dict(fit_top(scorer.top, train, epoch, stage, cfg.seed, i).state_dict())
    return scorer.top


def _row(name: str, results: dict[str, dict]) -> str:
    cells = [f"{results[f]['srocc']:.3f} / {results[f]['plcc']:.3f}" for f in (*SUBSETS, "val")]
    mean = np.mean([results[s]["srocc"] for s in SUBSETS])
    row = f"| {name} | " + " | ".join(cells) + f" | **{mean:.3f}** |"
    if all(f"{f} Swin-only head" in results for f in (*SUBSETS, "val")):  # the Swin's own share
        swin = {f: results[f"{f} Swin-only head"] for f in (*SUBSETS, "val")}
        row += "\n" + _row(f"{name}: its Swin-only head", swin)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("--models", default="", help="comma-separated prior models (default: the config's)")
    p.add_argument("--probe", action="store_true", help="add the ridge probe on the pooled statistics")
    p.add_argument("--alpha", type=float, default=10_000.0, help="the ridge probe's penalty")
    p.add_argument("--probe-only", action="store_true", help="the ridge probe alone (seconds; no training)")
    p.add_argument("--folds", default="", help="comma-separated subset of ss01,ss02,ss03,val")
    p.add_argument("--out", default="", help="write a Markdown table (and .json beside it)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cfg = load_config(args.config)
    if cfg.train.get("kind") != "biq2021":
        raise SystemExit("leave-one-subset-out needs BIQ2021 (its file names carry the subset)")
    models = [m for m in args.models.split(",") if m] or [cfg.model]
    args.probe = args.probe or args.probe_only
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    data = load_features({**cfg.train, "split": None}, create_model(models[0]), cfg, "all labelled photos")
    val_paths = {str(s.path) for s in create_dataset({**cfg.train, "split": "val"}).samples}
    chosen = [f for f in args.folds.split(",") if f] or [*SUBSETS, "val"]
    table: dict[str, dict[str, dict]] = {}
    probe = f"ridge probe (pooled statistics, alpha {args.alpha:g})"
    for name in ([probe] if args.probe else []) + ([] if args.probe_only else models):
        table[name] = {}
        for fold, (tr, te) in folds(data, val_paths).items():
            if fold not in chosen:
                continue
            started = time.monotonic()
            train, test = data.subset(tr), data.subset(te)
            if name == probe:
                pred = ridge_probe(train, test, args.alpha)
            else:
                top = train_fold(name, cfg, train)
                pred, swin = predict_top(top, test)
                table[name][f"{fold} Swin-only head"] = headline(evaluate_scores(swin, test.scores, test.scenes))
            table[name][fold] = headline(evaluate_scores(pred, test.scores, test.scenes))
            if args.out:  # after every fold: a stopped run keeps what it measured
                Path(args.out).with_suffix(".json").write_text(json.dumps(table, indent=1))
            log.info(
                f"{name} {fold}: SROCC {table[name][fold]['srocc']:.4f} PLCC {table[name][fold]['plcc']:.4f} "
                f"({len(tr)} -> {len(te)} photos, {time.monotonic() - started:.0f} s)"
            )
    write_report(table, args.out)
    return 0


def write_report(table: dict[str, dict[str, dict]], out: str) -> None:
    """Print the table of the designs whose folds are all done; with `out`, write it (and the
    raw figures as .json beside it)."""
    lines = [
        "| design | ss01 held out | ss02 held out | ss03 held out | val | mean held-out SROCC |",
        "|---|---|---|---|---|---|",
    ]
    lines += [_row(name, res) for name, res in table.items() if all(f in res for f in (*SUBSETS, "val"))]
    print("\n".join(lines))
    if out:
        Path(out).write_text("\n".join(lines) + "\n")
        Path(out).with_suffix(".json").write_text(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
