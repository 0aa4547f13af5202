"""Scores and statistics of a model over a crop cache's served crops, in batches."""

from __future__ import annotations

import numpy as np
import torch

from sampleiqa.progress import Progress

from .batches import batch_to_tensor
from .data.cache import CachedSet
from .models import SwinScorer


def eval_batches(data: CachedSet, indices, batch_size: int, label: str | None = None):
    """(indices, tensor) batches of the served crops; with `label`, a progress line."""
    indices = list(indices)
    bar = Progress(len(indices), label) if label else None
    try:
        for start in range(0, len(indices), batch_size):
            idx = indices[start : start + batch_size]
            yield idx, batch_to_tensor([np.asarray(data.eval_crop(i)) for i in idx])
            if bar:
                bar.update(len(idx))
    finally:
        if bar:
            bar.close()


@torch.no_grad()
def predict_cached(
    scorer: SwinScorer, data: CachedSet, batch_size: int = 32, device=None, progress: bool = False
) -> np.ndarray:
    """Scores of the served crops (exactly what the `preprocess` model produces)."""
    scorer.eval()
    device = device or next(scorer.parameters()).device
    out = [
        scorer(x.to(device)).float().view(-1).cpu().numpy()
        for _, x in eval_batches(data, range(len(data)), batch_size, "evaluating" if progress else None)
    ]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def raw_stats(scorer: SwinScorer, data: CachedSet, indices, label: str | None = None) -> torch.Tensor:
    """Raw statistics [len(indices), F] of the served crops, on the scorer's device."""
    device = scorer.stats.mean.device
    with torch.no_grad():
        return torch.cat([scorer.stats.raw(x.to(device)) for _, x in eval_batches(data, indices, 64, label)])
