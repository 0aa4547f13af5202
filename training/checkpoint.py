"""Checkpoints: weights plus the config that built them, so export needs nothing else."""

from __future__ import annotations

from pathlib import Path

import torch

from .models import SwinScorer, TwinScorer, create_model


def save_checkpoint(path: str | Path, model: SwinScorer | TwinScorer, **extra) -> Path:
    scorer = model.scorer if isinstance(model, TwinScorer) else model
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"config": scorer.config.to_dict(), "state_dict": scorer.state_dict(), **extra}, tmp)
    tmp.replace(path)  # never leave a half-written checkpoint
    return path


def load_scorer(path: str | Path) -> tuple[SwinScorer, dict]:
    """A single-branch scorer in eval mode, and the checkpoint's other fields."""
    ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in ckpt["config"].items()}
    # The registered name picks the model family; the checkpoint's fields override its config,
    # and its weights include a prior model's trunk (so no packaged weights are loaded).
    model = create_model(cfg.pop("name"), pretrained=False, **cfg)
    model.load_state_dict(ckpt["state_dict"])  # FP16 release weights are copied into FP32
    return model.eval(), {k: v for k, v in ckpt.items() if k not in ("config", "state_dict")}
