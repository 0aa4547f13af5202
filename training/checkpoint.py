"""Checkpoints: weights plus the config that built them, so export needs nothing else."""

from __future__ import annotations

from pathlib import Path

import torch

from .models import ScorerConfig, SwinScorer, TwinScorer, create_model, get_config, list_models


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
    config_type = type(get_config(ckpt["config"]["name"])) if ckpt["config"]["name"] in list_models() else ScorerConfig
    cfg = config_type(**{k: tuple(v) if isinstance(v, list) else v for k, v in ckpt["config"].items()})
    extra = {} if config_type is ScorerConfig else {"pretrained": False}  # the checkpoint carries the trunk
    model = create_model(cfg.name, **extra, **{k: v for k, v in cfg.to_dict().items() if k != "name"})
    model.load_state_dict(ckpt["state_dict"])  # FP16 release weights are copied into FP32
    return model.eval(), {k: v for k, v in ckpt.items() if k not in ("config", "state_dict")}


def release_checkpoint(src: str | Path, dst: str | Path, **notes) -> Path:
    """A small checkpoint to ship: FP16 weights, the config, and what the run recorded
    (validation figures, config file); no optimizer or resume state. `load_scorer` reads it
    back into FP32."""
    ckpt = torch.load(Path(src), map_location="cpu", weights_only=False)
    state = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    keep = {k: ckpt[k] for k in ("val", "config_file") if k in ckpt}
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": ckpt["config"], "state_dict": state, **keep, **notes}, dst)
    return dst
