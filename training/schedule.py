"""The learning-rate schedule every stage uses: linear warm-up, then cosine decay to zero."""

from __future__ import annotations

import math

from .config import StageConfig


def lr_at(step: int, total: int, stage: StageConfig) -> float:
    if step < stage.warmup_steps:
        return stage.lr * (step + 1) / stage.warmup_steps
    t = (step - stage.warmup_steps) / max(1, total - stage.warmup_steps)
    return stage.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
