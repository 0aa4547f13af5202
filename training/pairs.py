"""The pairs a twin sees in one epoch, shared by the pixel loop and the cached-feature loop."""

from __future__ import annotations

import numpy as np


def epoch_pairs(
    epoch_indices, scenes: list, rng: np.random.Generator, epoch_size: int | None = None, same_photo: bool = False
) -> np.ndarray:
    """[pairs, 2] indices of the shuffled epoch (cut to `epoch_size` photos): consecutive
    photos, or a partner from the same scene when the labels have scenes (PIQ23 scores compare
    only inside one). `same_photo`: each photo with itself (synthetic stages distort it twice)."""
    anchors = rng.permutation(np.asarray(epoch_indices))
    if epoch_size:
        anchors = anchors[:epoch_size]
    half = len(anchors) // 2
    if same_photo:
        return np.stack([anchors, anchors], 1)
    if not any(s is not None for s in scenes):  # pair across the shuffled epoch
        return np.stack([anchors[:half], anchors[half : 2 * half]], 1)
    names = np.array([str(s) for s in scenes])
    by_scene = {s: np.flatnonzero(names == s) for s in np.unique(names)}
    partners = []
    for a in anchors[:half]:
        group = by_scene[names[a]]
        partners.append(group[rng.integers(len(group))] if len(group) > 1 else a)
    return np.stack([anchors[:half], np.array(partners)], 1)
