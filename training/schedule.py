"""The optimizer and learning-rate schedule every stage uses: AdamW, linear warm-up, then
cosine decay to zero."""

from __future__ import annotations

import math

import torch

from .config import StageConfig


def lr_at(step: int, total: int, stage: StageConfig) -> float:
    if step < stage.warmup_steps:
        return stage.lr * (step + 1) / stage.warmup_steps
    t = (step - stage.warmup_steps) / max(1, total - stage.warmup_steps)
    return stage.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def adamw(named_parameters, stage: StageConfig) -> torch.optim.Optimizer:
    """AdamW with the stage's weight decay on weight matrices only (not on biases, norms or
    Swin's relative-position tables)."""
    params = list(named_parameters)
    decay = [p for n, p in params if p.ndim > 1 and "pos" not in n]
    other = [p for n, p in params if not (p.ndim > 1 and "pos" not in n)]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": stage.weight_decay}, {"params": other, "weight_decay": 0.0}], lr=stage.lr
    )
