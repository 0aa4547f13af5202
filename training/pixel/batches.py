"""Training batches: one stage's epoch as index pairs (a pure function of seed, stage and
epoch), each step's crops drawn from its own seeded generator, loaded ahead in threads."""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ..config import TwinStage
from ..data.cache import CachedSet
from ..data.synthetic import ranked_pair
from ..data.train_crops import random_face_crop
from ..pairs import epoch_pairs
from ..prediction import batch_to_tensor


class PairBatches:
    """The batches of one epoch of one stage, as index pairs (deterministic)."""

    def __init__(self, data: CachedSet, epoch_indices: np.ndarray, stage: TwinStage, seed: int):
        self.data, self.epoch_indices, self.stage, self.seed = data, epoch_indices, stage, seed

    def pairs(self, stage_index: int, epoch: int) -> np.ndarray:
        return epoch_pairs(
            self.epoch_indices,
            self.data.scenes,
            np.random.default_rng([self.seed, stage_index, epoch]),
            self.stage.epoch_size,
            same_photo=self.stage.kind == "synthetic",
        )

    def steps(self, pairs: np.ndarray, world: int, rank: int) -> list[np.ndarray]:
        per_step = max(1, self.stage.batch_size // 2)
        n_steps = len(pairs) // (per_step * world)
        return [pairs[(s * world + rank) * per_step : (s * world + rank + 1) * per_step] for s in range(n_steps)]

    def load(self, step_pairs: np.ndarray, rng: np.random.Generator, z_scores: np.ndarray):
        """(a, b, score_a, score_b) tensors of one step."""
        a_crops, b_crops = [], []
        for i, j in step_pairs:
            ca = random_face_crop(self.data.train_image(i), self.data.faces[i], rng)
            if self.stage.kind == "synthetic":
                ca, cb = ranked_pair(ca, rng)
            else:
                cb = random_face_crop(self.data.train_image(j), self.data.faces[j], rng)
            a_crops.append(ca)
            b_crops.append(cb)
        if self.stage.kind == "synthetic":  # a (less distorted) beats b
            ya, yb = torch.ones(len(step_pairs)), torch.zeros(len(step_pairs))
        else:
            ya, yb = torch.from_numpy(z_scores[step_pairs[:, 0]]), torch.from_numpy(z_scores[step_pairs[:, 1]])
        return batch_to_tensor(a_crops), batch_to_tensor(b_crops), ya.float(), yb.float()


def loaded_ahead(load, steps: list, first: int, rng_key: list[int], threads: int, ahead: int):
    """Yield load(steps[i], rng_i) for i >= first, computed `ahead` steps early in `threads`
    threads (decoding, cropping and distortions run in OpenCV/NumPy, outside the GIL)."""
    with ThreadPoolExecutor(threads) as pool:
        pending: deque = deque()
        for i in range(first, len(steps)):
            pending.append(pool.submit(load, steps[i], np.random.default_rng([*rng_key, i])))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
