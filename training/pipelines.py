"""`sampleiqa train CONFIG`: the registered model's family names the pipeline that trains it
(training/models/registry.py): `prior` (training/prior/: the shipped lite0_swin, on its frozen
trunk's cached outputs) or `pixel` (training/pixel/: Swin scorers trained from scratch)."""

from __future__ import annotations

from .config import TrainConfig
from .models import pipeline_of


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Train `cfg.model` by its family's pipeline; {"best_srocc", "last", "out_dir"}."""
    pipeline = pipeline_of(cfg.model)
    if pipeline == "prior":
        from .prior.loop import train_prior

        return train_prior(cfg, resume)
    if pipeline == "pixel":
        from .pixel.loop import train_pixel

        return train_pixel(cfg, resume)
    raise ValueError(f"model {cfg.model!r}: no training pipeline {pipeline!r}")
