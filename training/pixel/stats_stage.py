"""The statistics models' stage: standardising the fused statistics on the training set and
fitting their head (cross-fitted: each image's head never saw it)."""

from __future__ import annotations

import math

import numpy as np
import torch

from sampleiqa.progress import Progress

from ..config import StageConfig, StatsStage
from ..data.cache import CachedSet
from ..losses import RANK_LOSSES
from ..models import SwinScorer
from ..prediction import eval_batches
from ..schedule import lr_at


def raw_stats(scorer: SwinScorer, data: CachedSet, indices, label: str | None = None) -> torch.Tensor:
    """Raw statistics [len(indices), F] of the served crops, on the scorer's device."""
    device = scorer.stats.mean.device
    with torch.no_grad():
        return torch.cat([scorer.stats.raw(x.to(device)) for _, x in eval_batches(data, indices, 64, label)])


def fit_stats(scorer: SwinScorer, data: CachedSet, n: int) -> None:
    if scorer.stats is None:
        return
    scorer.stats.fit(raw_stats(scorer, data, np.linspace(0, len(data) - 1, min(n, len(data))).astype(int)))


def cross_fit_folds(n: int, folds: int, seed: int) -> np.ndarray:
    """The fold (= the statistics MLP that never sees it) of each of n training images."""
    return (np.random.default_rng([seed, 7]).permutation(n) % folds).astype(np.int64)


def fold_count(stage: StatsStage, heads: int) -> int:
    """A `stats` stage's number of folds: `cross_fit = true` means one per MLP."""
    folds = heads if stage.cross_fit is True else int(stage.cross_fit)
    if not 2 <= folds <= heads:
        raise ValueError(
            f"stage {stage.name!r}: cross_fit = {stage.cross_fit!r} needs 2 to {heads} folds "
            f"(one MLP of the statistics head per fold)"
        )
    return folds


def fit_stats_head(
    scorer: SwinScorer,
    features: torch.Tensor,
    z: torch.Tensor,
    stage: StageConfig,
    seed: int,
    progress: bool = True,
    folds: torch.Tensor | None = None,
) -> dict[str, float]:
    """A `stats` stage: train each MLP of the statistics head on standardised statistics of
    the served crops, with MSE + the rank loss over every pair in a batch (statistics are
    fixed, so this takes seconds per epoch, not minutes). With `folds`, MLP k learns nothing
    from the images of fold k; MLPs numbered beyond the last fold learn from every image."""
    head = scorer.stats_head
    head.train()
    device = next(head.parameters()).device
    features, z = features.to(device), z.to(device)
    heads = torch.arange(len(head.mlps), device=device)
    folds = folds.to(device) if folds is not None else torch.full_like(z, -1, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(head.parameters(), lr=stage.lr, weight_decay=stage.weight_decay)
    rank_loss = RANK_LOSSES[stage.rank_loss]
    steps_per_epoch = math.ceil(len(z) / stage.batch_size)
    total = steps_per_epoch * stage.epochs
    bar = Progress(stage.epochs, stage.name) if progress else None
    running: dict[str, float] = {}
    for epoch in range(stage.epochs):
        order = torch.randperm(len(z), generator=gen)
        for step in range(steps_per_epoch):
            j = order[step * stage.batch_size : (step + 1) * stage.batch_size]
            for g in optimizer.param_groups:
                g["lr"] = lr_at(epoch * steps_per_epoch + step, total, stage)
            pred, y = head.each(features[j]), z[j]
            seen = folds[j][:, None] != heads[None]  # [batch, heads]: may MLP h learn from image i
            a, b = torch.triu_indices(len(j), len(j), 1, device=device)
            mse = (((pred - y[:, None]) ** 2) * seen).sum(0).div(seen.sum(0).clamp_min(1)).sum()
            rank = sum(
                rank_loss(pred[a[k], h], pred[b[k], h], y[a[k]], y[b[k]])
                for h in range(pred.shape[1])
                if (k := seen[a, h] & seen[b, h]).any()
            )
            loss = stage.mse_weight * mse + stage.rank_weight * rank
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for k, v in {
                "loss": float(loss.detach()),
                "mse": float(mse.detach()),
                "rank": float(rank.detach()),
            }.items():
                running[k] = 0.95 * running.get(k, v) + 0.05 * v
        if bar:
            bar.label = f"{stage.name} loss {running['loss']:.3f} mse {running['mse']:.3f} rank {running['rank']:.3f}"
            bar.update()
    if bar:
        bar.close()
    return running
