"""Ridge probe on the scorer's pooled Swin features (see swin_feature_probe.md).

Run from the repository root: python -m sampleiqa.training.studies.probe_swin_features CHECKPOINT|random
"""

import sys

import numpy as np
import torch
from sklearn.linear_model import Ridge

from sampleiqa.training.checkpoint import load_scorer
from sampleiqa.training.data.cache import build_cache
from sampleiqa.training.data.datasets import load_biq2021
from sampleiqa.training.metrics import correlations
from sampleiqa.training.models import create_model
from sampleiqa.training.prediction import eval_batches

torch.set_num_threads(2)
src = sys.argv[1]
if src == "random":
    torch.manual_seed(0)
    m = create_model("swin_compact_stats").eval()
else:
    m, _ = load_scorer(src)
tr = build_cache(load_biq2021("../shared/data/biq2021", "train"))
va = build_cache(load_biq2021("../shared/data/biq2021", "val"))


def feats(c, n):
    idx = np.linspace(0, len(c) - 1, n).astype(int)
    with torch.no_grad():
        F = [m.backbone(x) for _, x in eval_batches(c, idx, 32)]
    return torch.cat(F).numpy(), c.scores[idx]


ftr, ytr = feats(tr, 1500)
fva, yva = feats(va, 500)
mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
best = max(
    (
        (a, correlations(Ridge(alpha=a).fit((ftr - mu) / sd, ytr).predict((fva - mu) / sd), yva))
        for a in (1, 10, 100, 1000)
    ),
    key=lambda t: t[1]["srocc"],
)
print(src, "ridge probe on Swin features (1500 train photos):", best[0], {k: round(v, 3) for k, v in best[1].items()})
