"""What a pixel run starts from (`prepare_run`): the data and its crop caches, the re-sampled
epoch, the model (fresh, initialised from `init`, or resumed from `last.pt`), the output
folder and the cross-fitting folds. The Trainer (training/pixel/loop.py) receives it."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import TrainConfig
from ..data.cache import CachedSet, build_cache
from ..data.datasets import LabelledSet, create_dataset
from ..models import SwinScorer, TwinScorer, check_stages, create_model
from ..resample import ResampleResult, plot_histograms, resample
from .distributed import Distributed
from .stats_stage import cross_fit_folds, fit_stats, fold_count

log = logging.getLogger(__name__)


def fresh_state() -> dict:
    """done[i]: finished epochs of stage i; (stage, step_in_epoch): where an epoch stopped."""
    return {"done": [], "stage": 0, "step_in_epoch": 0, "global_step": 0, "best": -math.inf, "history": []}


@dataclass
class PixelRun:
    cfg: TrainConfig
    dist: Distributed
    out: Path
    train_set: LabelledSet
    val_set: LabelledSet | None
    train_data: CachedSet
    val_data: CachedSet | None
    z: np.ndarray  # the training scores, standardised
    resampled: ResampleResult
    scorer: SwinScorer
    twin: torch.nn.Module  # TwinScorer, inside DistributedDataParallel under torchrun
    ckpt: dict | None = None  # the checkpoint resumed from
    state: dict = field(default_factory=fresh_state)
    folds: np.ndarray | None = None  # each training image's cross-fitting fold


def init_weights(scorer: SwinScorer, path: str) -> set[str]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state.get("model", state))
    own = scorer.state_dict()
    # Accept our checkpoints (backbone.*) and plain timm Swin state dicts (no prefix).
    mapped = {k if k in own else f"backbone.{k}": v for k, v in state.items()}
    usable = {k: v for k, v in mapped.items() if k in own and own[k].shape == v.shape}
    scorer.load_state_dict(usable, strict=False)
    log.info(f"init: loaded {len(usable)}/{len(own)} tensors from {path}")
    return set(usable)


def load_last(scorer: SwinScorer, out: Path, main: bool) -> dict | None:
    """The last checkpoint's weights (loaded into `scorer`) and training state, if there is one."""
    last = out / "last.pt"
    if not last.exists():
        return None
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    scorer.load_state_dict(ckpt["state_dict"])
    if main:
        s = ckpt["train_state"]
        log.info(
            f"resuming from {last}: epochs done per stage {s['done']}, stage {s['stage']} step {s['step_in_epoch']}"
        )
    return ckpt


def load_data(cfg: TrainConfig, dist: Distributed, out: Path):
    """(train set, val set, their crop caches): rank 0 builds the caches first (one barrier on
    each side); the others then read them."""
    train_set = create_dataset(cfg.train)
    val_set = create_dataset(cfg.val) if cfg.val else None
    if dist.main:
        log.info(f"device {dist.device}, world size {dist.world}")
        out.mkdir(parents=True, exist_ok=True)
        for ds in filter(None, (train_set, val_set)):
            log.info(ds.describe())
    if not dist.main:
        dist.barrier()
    train_data = build_cache(train_set)
    val_data = build_cache(val_set) if val_set else None
    if dist.main:
        dist.barrier()
    return train_set, val_set, train_data, val_data


def prepare_model(cfg: TrainConfig, dist: Distributed, out: Path, train_data: CachedSet, resume: bool):
    """(scorer, checkpoint or None): resumed, or fresh on this training set's score scale."""
    scorer: SwinScorer = create_model(cfg.model)
    ckpt = load_last(scorer, out, dist.main) if resume else None
    loaded = init_weights(scorer, cfg.init) if ckpt is None and cfg.init else set()
    scorer.to(dist.device)
    if ckpt is None:
        # This training set's score scale; the statistics' standardisation unless `init`
        # brought the one its head was trained with.
        scorer.score_mean.fill_(float(train_data.scores.mean()))
        scorer.score_std.fill_(float(train_data.scores.std()))
        if "stats.feature_mean" not in loaded:
            fit_stats(scorer, train_data, cfg.stats_fit_images)
    return scorer, ckpt


def prepare_run(cfg: TrainConfig, resume: bool = False, dist: Distributed | None = None) -> PixelRun:
    """Everything a pixel run needs before its first stage (`resume`: from OUT_DIR/last.pt)."""
    check_stages(cfg.model, cfg.stages)
    dist = dist or Distributed()
    torch.manual_seed(cfg.seed)
    if dist.device.type == "cpu":
        torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    out = Path(cfg.out_dir)
    train_set, val_set, train_data, val_data = load_data(cfg, dist, out)
    scores = train_data.scores
    z = ((scores - scores.mean()) / scores.std()).astype(np.float32)
    resampled = resample(scores, cfg.resample)
    if dist.main:
        log.info(resampled.summary())
        plot_histograms(resampled, out / "resample.png", f"{train_set.name}: {cfg.resample.target}")
    scorer, ckpt = prepare_model(cfg, dist, out, train_data, resume)
    twin = TwinScorer(scorer)
    if dist.world > 1:
        twin = torch.nn.parallel.DistributedDataParallel(
            twin, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None
        )
    folds = None
    fit = next((s for s in cfg.stages if s.kind == "stats" and s.cross_fit), None)
    if fit is not None:
        folds = cross_fit_folds(len(train_data), fold_count(fit, len(scorer.stats_head.mlps)), cfg.seed)
    state = ckpt["train_state"] if ckpt else fresh_state()
    return PixelRun(
        cfg, dist, out, train_set, val_set, train_data, val_data, z, resampled, scorer, twin, ckpt, state, folds
    )
