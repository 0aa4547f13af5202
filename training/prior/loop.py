"""The prior pipeline's loop: `sampleiqa train CONFIG` for a prior model (the `prior` family
of training/models/registry.py, training/models/prior.py; the shipped lite0_swin), on its
frozen trunk's cached outputs.

The trunk never trains, so a step needs only its outputs (training/data/features.py): the
twin runs the Swin and the head on two photos' cached tokens and pooled statistics at once,
with MSE + rank loss on the pair, over the MILP re-sampled epoch, each photo seen through
one of its cached crops (the served crop or a random face-holding one) drawn per step. A
Swin-only auxiliary head learns beside the fused one (`aux_weight`), so the Swin carries
signal of its own. On two CPU cores an epoch over BIQ2021's 6,331 photos takes about a minute.

What ships is the moving average of the weights after the last epoch (not the epoch that
scored best on `val`, so `val` stays an honest figure).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sampleiqa.progress import Progress

from ..checkpoint import save_checkpoint
from ..config import PriorStage, StageConfig, TrainConfig
from ..data.cache import build_cache
from ..data.datasets import create_dataset
from ..data.features import FeatureSet, build_features
from ..ema import WeightAverage
from ..losses import twin_loss
from ..metrics import evaluate_scores, format_result, headline
from ..models import check_stages, create_model
from ..models.prior import PriorSwinScorer, PriorTop
from ..pairs import epoch_pairs
from ..plots import plot_history
from ..resample import ResampleResult, plot_histograms, resample
from ..schedule import adamw, lr_at

log = logging.getLogger(__name__)


class FeatureTwin(nn.Module):
    """The twin over cached trunk outputs: one pass of the shared top over both photos."""

    def __init__(self, top: PriorTop):
        super().__init__()
        self.top = top

    def forward(self, a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]):
        n = a[0].shape[0]
        z, aux = self.top.forward_z(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]]), aux=True)
        return (z[:n], z[n:]), (aux[:n], aux[n:])


def _views(data: FeatureSet, idx: np.ndarray, rng: np.random.Generator | None):
    """(tokens, pooled) tensors of photos idx, each through a random cached crop (or the
    served crop, view 0, when rng is None)."""
    v = np.zeros(len(idx), int) if rng is None else rng.integers(data.tokens.shape[1], size=len(idx))
    return torch.from_numpy(data.tokens[idx, v].astype(np.float32)), torch.from_numpy(data.pooled[idx, v])


@torch.no_grad()
def predict_top(top: PriorTop, data: FeatureSet, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Label-scale scores of the served crops (view 0): the fused head's and the Swin-only
    auxiliary head's, from one pass."""
    top.eval()
    fused, swin_only = [], []
    for start in range(0, len(data), batch_size):
        z, aux = top.forward_z(*_views(data, np.arange(start, min(len(data), start + batch_size)), None), aux=True)
        fused.append((z * top.score_std + top.score_mean).view(-1).numpy())
        swin_only.append((aux * top.score_std + top.score_mean).view(-1).numpy())
    return np.concatenate(fused), np.concatenate(swin_only)


def prior_step(twin: FeatureTwin, train: FeatureSet, z: np.ndarray, pair: np.ndarray, rng, stage: PriorStage):
    """The loss of one step on a batch of pairs (each photo through a random cached crop):
    (total loss, fused head's loss, Swin-only head's loss, the fused loss's parts)."""
    top = twin.top
    a, b = _views(train, pair[:, 0], rng), _views(train, pair[:, 1], rng)
    ya, yb = torch.from_numpy(z[pair[:, 0]]), torch.from_numpy(z[pair[:, 1]])
    (za, zb), (aa, ab) = twin(a, b)
    loss, parts = twin_loss(za, zb, ya, yb, stage.rank_weight, stage.rank_loss, stage.mse_weight)
    aux, _ = twin_loss(aa, ab, ya, yb, stage.rank_weight, stage.rank_loss, stage.mse_weight)
    pooled_w, swin_w = top.pooled_weight(), top.swin_weight()
    penalty = stage.pooled_l2 * pooled_w.square().sum() + stage.swin_l2 * swin_w.square().sum()
    return loss + stage.aux_weight * aux + penalty, loss, aux, parts


def epoch_record(stage: StageConfig, epoch: int, running: dict, seconds: float, top: PriorTop, val) -> dict:
    """The log line of an epoch: its running losses and, with `val`, the validation figures."""
    record = {"stage": stage.name, "epoch": epoch + 1, **running, "seconds": seconds}
    if val is not None and len(val):
        fused, swin = predict_top(top, val)
        result = evaluate_scores(fused, val.scores, val.scenes)
        swin_only = evaluate_scores(swin, val.scores, val.scenes)
        record.update({f"val_{k}": v for k, v in headline(result).items()})
        record["val_swin_only_srocc"] = headline(swin_only)["srocc"]
        log.info(
            f"[{stage.name} epoch {epoch + 1}] val\n{format_result(result)}\n"
            f"  Swin-only head: SROCC {headline(swin_only)['srocc']:.4f}"
        )
    return record


def fit_top(
    top: PriorTop,
    train: FeatureSet,
    epoch_indices: np.ndarray,
    stage: PriorStage,
    seed: int,
    stage_index: int = 0,
    val: FeatureSet | None = None,
    history=None,
) -> PriorTop:
    """One `prior` stage on cached features; returns the moving average of the weights (or
    the weights themselves without `ema_decay`). `val`, when given, is scored every epoch."""
    if stage.kind != "prior":
        raise ValueError(f'stage {stage.name!r}: a prior model trains with kind = "prior" stages, not {stage.kind!r}')
    z = ((train.scores - float(top.score_mean)) / float(top.score_std)).astype(np.float32)
    twin = FeatureTwin(top)
    optimizer = adamw(top.named_parameters(), stage)
    ema = WeightAverage(top, stage.ema_decay) if stage.ema_decay else None
    per_step = max(1, stage.batch_size // 2)
    steps = min(len(epoch_indices), stage.epoch_size or len(epoch_indices)) // 2 // per_step
    for epoch in range(stage.epochs):
        rng = np.random.default_rng([seed, stage_index, epoch])
        pairs = epoch_pairs(epoch_indices, train.scenes, rng, stage.epoch_size)
        bar = Progress(steps, f"{stage.name} {epoch + 1}/{stage.epochs}")
        twin.train()
        running: dict[str, float] = {}
        started = time.monotonic()
        for step in range(steps):
            for g in optimizer.param_groups:
                g["lr"] = lr_at(epoch * steps + step, steps * stage.epochs, stage)
            total, loss, aux, parts = prior_step(
                twin, train, z, pairs[step * per_step : (step + 1) * per_step], rng, stage
            )
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(top.parameters(), 5.0)
            optimizer.step()
            if ema:
                ema.update(top)
            for k, v in {"loss": float(loss.detach()), "aux": float(aux.detach()), **parts}.items():
                running[k] = 0.98 * running.get(k, v) + 0.02 * v
            bar.label = (
                f"{stage.name} {epoch + 1}/{stage.epochs} loss {running['loss']:.3f} "
                f"mse {running['mse']:.3f} rank {running['rank']:.3f} swin-only {running['aux']:.3f}"
            )
            bar.update()
        bar.close()
        record = epoch_record(stage, epoch, running, time.monotonic() - started, ema.model if ema else top, val)
        if history is not None:
            history.write(json.dumps(record) + "\n")
            history.flush()
    return ema.model if ema else top


def prepare_top(scorer: PriorSwinScorer, train: FeatureSet) -> None:
    """The label scale and the pooled statistics' standardisation, from the training set."""
    scorer.top.score_mean.fill_(float(train.scores.mean()))
    scorer.top.score_std.fill_(float(train.scores.std()))
    scorer.top.fit_pooled(torch.from_numpy(train.pooled[:, 0]))


def load_features(spec: dict, scorer: PriorSwinScorer, cfg: TrainConfig, label: str) -> FeatureSet:
    dataset = create_dataset(spec)
    log.info(dataset.describe())
    return build_features(build_cache(dataset), scorer.trunk, cfg.feature_views, cfg.seed, label=label)


@dataclass
class PriorRun:
    """What a prior run starts from: the model, the cached trunk outputs, the re-sampled epoch."""

    cfg: TrainConfig
    out: Path
    scorer: PriorSwinScorer
    train: FeatureSet
    val: FeatureSet | None
    resampled: ResampleResult


def prepare_run(cfg: TrainConfig) -> PriorRun:
    """The model, its trunk's outputs for the training and validation photos (cached),
    re-sampling, the output folder, and the top's label scale and standardisation."""
    check_stages(cfg.model, cfg.stages)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scorer: PriorSwinScorer = create_model(cfg.model)
    train = load_features(cfg.train, scorer, cfg, "train")
    val = load_features(cfg.val, scorer, cfg, "val") if cfg.val else None
    resampled = resample(train.scores, cfg.resample)
    log.info(resampled.summary())
    plot_histograms(resampled, out / "resample.png", f"{cfg.train.get('kind')}: {cfg.resample.target}")
    prepare_top(scorer, train)
    return PriorRun(cfg, out, scorer, train, val, resampled)


def run_stages(run: PriorRun) -> dict:
    """The config's stages, then the checkpoint (`last.pt`), the log's plot and the result."""
    cfg, out, scorer, val = run.cfg, run.out, run.scorer, run.val
    with open(out / "log.jsonl", "a") as history:
        for i, stage in enumerate(cfg.stages):
            trained = fit_top(scorer.top, run.train, run.resampled.indices(), stage, cfg.seed, i, val, history)
            scorer.top.load_state_dict(trained.state_dict())
    result = evaluate_scores(predict_top(scorer.top, val)[0], val.scores, val.scenes) if val else None
    save_checkpoint(out / "last.pt", scorer, config_file=str(cfg.source), **({"val": result} if result else {}))
    history = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    plot_history(history, out / "training.png")
    best = headline(result)["srocc"] if result else -math.inf
    return {"best_srocc": best, "last": result, "out_dir": str(out)}


def train_prior(cfg: TrainConfig, resume: bool = False) -> dict:
    """`sampleiqa train CONFIG` for a prior model: features, re-sampling, stages, checkpoint."""
    if resume:
        log.info("note: a prior model's stages take minutes and start over; the trunk cache resumes where it stopped")
    return run_stages(prepare_run(cfg))
