"""Two reference points every model must beat, measured on the same photos.

- `laplacian_variance`: the variance of the Laplacian of the grey image, a sharpness
  measure with no learning.
- `stats_gbm`: gradient boosting (scikit-learn) on cheap whole-image statistics: the basic
  group of the statistics the scorer fuses (training/models/stats.py: multi-scale
  Laplacian/gradient energies, noise floor, brightness, contrast, clipping, saturation,
  colourfulness), plus the file size. Fitted on the training split.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from sampleiqa.progress import Progress
from sampleiqa.runtime.preprocessing import PreprocessError, decode_bgr, to_tensor

from .data.datasets import LabelledSet


def laplacian_variance(bgr: np.ndarray) -> float:
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def image_features(paths: list[Path], label: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """[N, F] statistics and [N] Laplacian variances of whole images (NaN rows: unreadable)."""
    import torch

    from .models.stats import BASIC_NAMES, QualityStats

    stats = QualityStats()
    feats = np.full((len(paths), len(BASIC_NAMES) + 1), np.nan, dtype=np.float64)
    lapvar = np.full(len(paths), np.nan)
    bar = Progress(len(paths), label)
    for i, p in enumerate(paths):
        try:
            data = p.read_bytes()
            bgr = decode_bgr(data)
        except (OSError, PreprocessError):
            bar.update(unreadable=1)
            continue
        with torch.no_grad():
            feats[i, :-1] = stats.basic(torch.from_numpy(to_tensor(bgr))[None]).numpy()[0]
        feats[i, -1] = math.log(len(data))
        lapvar[i] = laplacian_variance(bgr)
        bar.update()
    bar.close()
    return feats, lapvar


def run_baselines(train: LabelledSet, test: LabelledSet, seed: int = 0) -> dict[str, np.ndarray]:
    """Predictions of both baselines on `test` (NaN where an image is unreadable)."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    x_train, _ = image_features([s.path for s in train.samples], f"baseline features {train.name}")
    x_test, lapvar = image_features([s.path for s in test.samples], f"baseline features {test.name}")
    ok = ~np.isnan(x_train).any(1)
    gbm = HistGradientBoostingRegressor(max_iter=300, learning_rate=0.05, random_state=seed)
    gbm.fit(x_train[ok], np.asarray(train.scores)[ok])
    pred = np.full(len(test.samples), np.nan)
    good = ~np.isnan(x_test).any(1)
    pred[good] = gbm.predict(x_test[good])
    return {"laplacian_variance": lapvar, "stats_gbm": pred}
