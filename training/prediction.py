"""Scores of a model over a crop cache's served crops, in batches (any family: the served
graph takes the crop)."""

from __future__ import annotations

import numpy as np
import torch

from sampleiqa.progress import Progress
from sampleiqa.runtime.preprocessing import to_tensor

from .data.cache import CachedSet


def batch_to_tensor(crops: list[np.ndarray]) -> torch.Tensor:
    out = np.empty((len(crops), 3, crops[0].shape[0], crops[0].shape[1]), dtype=np.float32)
    for i, c in enumerate(crops):
        to_tensor(c, out[i])
    return torch.from_numpy(out)


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
    scorer: torch.nn.Module, data: CachedSet, batch_size: int = 32, device=None, progress: bool = False
) -> np.ndarray:
    """Scores of the served crops (exactly what the `preprocess` model produces)."""
    scorer.eval()
    device = device or next(scorer.parameters()).device
    out = [
        scorer(x.to(device)).float().view(-1).cpu().numpy()
        for _, x in eval_batches(data, range(len(data)), batch_size, "evaluating" if progress else None)
    ]
    return np.concatenate(out) if out else np.zeros(0, np.float32)
