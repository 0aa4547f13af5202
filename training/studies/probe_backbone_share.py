"""How much of a checkpoint's score comes from the backbone, and how much from the statistics.

    python -m sampleiqa.training.studies.probe_backbone_share [CHECKPOINT]

On the served crops of BIQ2021 `val`: the spread of the backbone's correction and of the
statistics head's score (standardised units), and SROCC of the statistics head alone, of the
backbone's correction alone and of their sum (the served score). 2026-11-26: the shipped
weights (534 statistics) give correction std 0.045, statistics std 0.847, SROCC 0.775 /
0.282 / 0.781. With the 406 statistics of v1: the weights shipped then 0.055, 0.835, 0.735 /
0.243 / 0.739; the same recipe at 10x the learning rates 0.035, 0.835, 0.735 / 0.197 /
0.737; the weights shipped before (trained with the clipping bug) 0.083, 0.833, 0.736 /
0.261 / 0.746.
"""

import sys

import torch
from scipy.stats import spearmanr

from sampleiqa.training.checkpoint import load_scorer
from sampleiqa.training.data.cache import build_cache
from sampleiqa.training.data.datasets import load_biq2021
from sampleiqa.training.prediction import eval_batches

model, _ = load_scorer(
    sys.argv[1]
    if len(sys.argv) > 1
    else sys.exit(
        "usage: CHECKPOINT of a statistics model (swin_compact_stats; the shipped one until 2026-11-27 is "
        "training/weights/biq2021_default.pt in git history before the prior)"
    )
)
data = build_cache(load_biq2021("../shared/data/biq2021", "val"))
backbone, stats = [], []
with torch.no_grad():
    for _, x in eval_batches(data, range(len(data)), 32, "val"):
        backbone.append(model.head(model.backbone(x)).view(-1))
        stats.append(model.stats_head(model.stats(x)).view(-1))
backbone, stats = torch.cat(backbone).numpy(), torch.cat(stats).numpy()
print(f"std: backbone correction {backbone.std():.3f}, statistics score {stats.std():.3f}")
for name, score in (("statistics alone", stats), ("backbone alone", backbone), ("served sum", stats + backbone)):
    print(f"SROCC {name}: {spearmanr(score, data.scores)[0]:.4f}")
