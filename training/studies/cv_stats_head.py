"""Paired 5-fold cross-validation of the statistics head on BIQ2021 `train` (`val`
untouched): which way of training it, and which statistics, generalise to new photos?

    python -m sampleiqa.training.studies.cv_stats_head side        # the `stats` stage as shipped
    python -m sampleiqa.training.studies.cv_stats_head independent # each MLP its own shuffled batches
    python -m sampleiqa.training.studies.cv_stats_head side v1,all # the 406 statistics of v1 against all

Five MLPs, the default `stats` stage's settings, the same folds and seeds for every run;
prints each fold's SROCC and the out-of-fold SROCC / PLCC over all 4,500 photos. 2-core CPU,
about 8 minutes per run after the statistics pass (4 minutes).

- Batches (2026-11-26, v1 statistics): side 0.7105 / 0.7825, independent 0.7092 / 0.7820
  (per fold within ±0.006 of each other). No gain, so the stage kept training its MLPs side
  by side. (Those figures came from this code run on the statistics saved by
  `statistics_study.md`, the same 406 features up to the histogram's pixel stride.)
- Statistics (`side v1,all`, 2026-11-26; `statistics_study.md`, v2): v1 (406) 0.7104 / 0.7825,
  all 534 0.7553 / 0.8092; every fold gains 0.038 to 0.051. The stage uses all 534.
"""

import math
import sys

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr

from sampleiqa.training.config import StatsStage
from sampleiqa.training.data.cache import build_cache
from sampleiqa.training.data.datasets import load_biq2021
from sampleiqa.training.losses import RANK_LOSSES
from sampleiqa.training.models import create_model
from sampleiqa.training.models.stats import FEATURE_NAMES, StatsHead
from sampleiqa.training.pixel.stats_stage import fit_stats_head, raw_stats
from sampleiqa.training.schedule import lr_at

# What v2 added: colour and texture groups, and the third MSCN scale and left/right spreads.
V2_ONLY = ("rg_", "yb_", "hue_", "grad", "gmlog", "lbp", "mscn2_")
FEATURE_SETS = {
    "all": [i for i, _ in enumerate(FEATURE_NAMES)],
    "v1": [i for i, n in enumerate(FEATURE_NAMES) if not n.startswith(V2_ONLY) and not n.endswith(("_left", "_right"))],
}
STAGE = StatsStage("stats", epochs=150, lr=1e-3, weight_decay=1e-2, batch_size=64, warmup_steps=2000)


class _Holder(torch.nn.Module):  # fit_stats_head takes a scorer; it only uses .stats_head
    def __init__(self, head):
        super().__init__()
        self.stats_head = head


def fit_independent(head: StatsHead, x: torch.Tensor, z: torch.Tensor, seed: int) -> None:
    head.train()
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(head.parameters(), lr=STAGE.lr, weight_decay=STAGE.weight_decay)
    steps = math.ceil(len(z) / STAGE.batch_size)
    for epoch in range(STAGE.epochs):
        orders = [torch.randperm(len(z), generator=gen) for _ in head.mlps]
        for step in range(steps):
            for g in optimizer.param_groups:
                g["lr"] = lr_at(epoch * steps + step, steps * STAGE.epochs, STAGE)
            loss = 0
            for mlp, order in zip(head.mlps, orders):
                j = order[step * STAGE.batch_size : (step + 1) * STAGE.batch_size]
                p, y = mlp(x[j]).view(-1), z[j]
                a, b = torch.triu_indices(len(j), len(j), 1)
                loss = loss + ((p - y) ** 2).mean() + RANK_LOSSES[STAGE.rank_loss](p[a], p[b], y[a], y[b])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


variant = sys.argv[1] if len(sys.argv) > 1 else "side"
data = build_cache(load_biq2021("../shared/data/biq2021", "train"))
raw = raw_stats(create_model("swin_compact_stats"), data, range(len(data)), "statistics")
z = torch.from_numpy(((data.scores - data.scores.mean()) / data.scores.std()).astype(np.float32))
folds = np.random.default_rng(123).permutation(len(z)) % 5
for features in (sys.argv[2] if len(sys.argv) > 2 else "all").split(","):
    x = raw[:, FEATURE_SETS[features]]
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-6)
    oof = np.zeros(len(z))
    for k in range(5):
        train, test = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        torch.manual_seed(k)
        head = StatsHead(x.shape[1], 256, heads=5, dropout=0.3)
        if variant == "side":
            fit_stats_head(_Holder(head), x[train], z[train], STAGE, seed=k, progress=False)
        else:
            fit_independent(head, x[train], z[train], seed=k)
        with torch.no_grad():
            oof[test] = head.eval()(x[test]).view(-1).numpy()
        print(f"{variant} {features} fold {k}: SROCC {spearmanr(oof[test], z[test])[0]:.4f}", flush=True)
    print(
        f"{variant} {features} ({x.shape[1]} statistics): out-of-fold SROCC {spearmanr(oof, z)[0]:.4f} "
        f"PLCC {pearsonr(oof, z)[0]:.4f}",
        flush=True,
    )
