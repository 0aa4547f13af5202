"""How a checkpoint scores training photos against `val` (a memorisation check).

    python -m sampleiqa.training.studies.probe_train_fit [CHECKPOINT]

Scores the served crops of the first 500 BIQ2021 `train` and `val` photos. Before
cross-fitting, the shipped model scored SROCC 0.934 / PLCC 0.974 on `train` against 0.741 /
0.815 on `val` (training/results/gpu_run.md).
"""

import sys

from scipy.stats import pearsonr, spearmanr

from sampleiqa.training.checkpoint import load_scorer
from sampleiqa.training.data.cache import build_cache
from sampleiqa.training.data.datasets import load_biq2021
from sampleiqa.training.prediction import predict_cached

model, _ = load_scorer(
    sys.argv[1]
    if len(sys.argv) > 1
    else sys.exit(
        "usage: CHECKPOINT of a statistics model (swin_compact_stats; the shipped one until 2026-11-27 is "
        "training/weights/biq2021_default.pt in git history before the prior)"
    )
)
for split in ("train", "val"):
    dataset = load_biq2021("../shared/data/biq2021", split)
    dataset.samples = dataset.samples[:500]
    data = build_cache(dataset)
    pred = predict_cached(model, data)
    print(f"{split}: SROCC {spearmanr(pred, data.scores)[0]:.4f} PLCC {pearsonr(pred, data.scores)[0]:.4f}", flush=True)
