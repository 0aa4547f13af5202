"""The training loop behind `sampleiqa train CONFIG` (a little over 300 lines: the Trainer
keeps setup, resume, the stage loop and checkpoints together, as they share its state; the
batches, distribution, prediction and the statistics stage are in their own modules).

One process per device; with `torchrun` it runs DistributedDataParallel (NCCL on GPUs,
gloo on CPU). Every step sees batch_size/2 pairs drawn from the re-sampled epoch: within a
scene when the labels have scenes (PIQ23 scores are comparable only inside one), otherwise
consecutive images of the shuffled epoch. The epoch order, and every step's crops and
distortions, are pure functions of (seed, stage, epoch, rank, step): `--resume` continues
mid-epoch from the last checkpoint, and batches are loaded ahead in threads.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from sampleiqa.progress import Progress

from .batches import PairBatches, loaded_ahead
from .checkpoint import save_checkpoint
from .config import StageConfig, TrainConfig
from .data.cache import build_cache
from .data.datasets import create_dataset
from .distributed import Distributed
from .ema import WeightAverage
from .losses import twin_loss
from .metrics import evaluate_scores, format_result, headline
from .models import SwinScorer, TwinScorer, create_model
from .plots import plot_history
from .prediction import predict_cached, raw_stats
from .resample import plot_histograms, resample
from .schedule import adamw, lr_at
from .stats_stage import cross_fit_folds, fit_stats, fit_stats_head, fold_count

log = logging.getLogger(__name__)


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


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False):
        self.cfg, self.dist = cfg, Distributed()
        # done[i]: finished epochs of stage i; (stage, step_in_epoch): where an epoch stopped.
        self.state = {"done": [], "stage": 0, "step_in_epoch": 0, "global_step": 0, "best": -math.inf, "history": []}
        torch.manual_seed(cfg.seed)
        if self.dist.device.type == "cpu":
            torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
        self.out = Path(cfg.out_dir)
        self.train_set = create_dataset(cfg.train)
        self.val_set = create_dataset(cfg.val) if cfg.val else None
        if self.dist.main:
            log.info(f"device {self.dist.device}, world size {self.dist.world}")
            self.out.mkdir(parents=True, exist_ok=True)
            for ds in filter(None, (self.train_set, self.val_set)):
                log.info(ds.describe())
        # rank 0 builds the caches first (one barrier on each side); the others then read them
        if not self.dist.main:
            self.dist.barrier()
        self.train_data = build_cache(self.train_set)
        self.val_data = build_cache(self.val_set) if self.val_set else None
        if self.dist.main:
            self.dist.barrier()
        scores = self.train_data.scores
        self.z = ((scores - scores.mean()) / scores.std()).astype(np.float32)
        self.resampled = resample(scores, cfg.resample)
        if self.dist.main:
            log.info(self.resampled.summary())
            plot_histograms(self.resampled, self.out / "resample.png", f"{self.train_set.name}: {cfg.resample.target}")

        self.scorer: SwinScorer = create_model(cfg.model)
        ckpt = self._resume() if resume else None
        loaded = init_weights(self.scorer, cfg.init) if ckpt is None and cfg.init else set()
        self.scorer.to(self.dist.device)
        if ckpt is None:
            # This training set's score scale; the statistics' standardisation unless `init`
            # brought the one its head was trained with.
            self.scorer.score_mean.fill_(float(scores.mean()))
            self.scorer.score_std.fill_(float(scores.std()))
            if "stats.feature_mean" not in loaded:
                fit_stats(self.scorer, self.train_data, cfg.stats_fit_images)
        self.twin = TwinScorer(self.scorer)
        if self.dist.world > 1:
            self.twin = torch.nn.parallel.DistributedDataParallel(
                self.twin, device_ids=[self.dist.local_rank] if self.dist.device.type == "cuda" else None)
        self._ckpt = ckpt
        self.folds = None
        fit = next((s for s in cfg.stages if s.kind == "stats" and s.cross_fit), None)
        if fit is not None:
            folds = fold_count(fit, len(self.scorer.stats_head.mlps))
            self.folds = cross_fit_folds(len(self.train_data), folds, cfg.seed)
        # The stage the run stopped in: self.state (the same dict) moves on as stages start.
        self._ckpt_stage = ckpt["train_state"]["stage"] if ckpt else None

    def _save_last(self, optimizer, scaler, ema) -> None:
        """last.pt with what a resume needs, the weight average included."""
        self._save("last.pt", optimizer, scaler, {"ema": ema.state_dict()} if ema else None)

    def _resume(self) -> dict | None:
        """The last checkpoint's weights and training state, if there is one."""
        last = self.out / "last.pt"
        if not last.exists():
            return None
        ckpt = torch.load(last, map_location="cpu", weights_only=False)
        self.scorer.load_state_dict(ckpt["state_dict"])
        self.state = ckpt["train_state"]
        if self.dist.main:
            s = self.state
            log.info(f"resuming from {last}: epochs done per stage {s['done']}, "
                     f"stage {s['stage']} step {s['step_in_epoch']}")
        return ckpt

    def _optimizer(self, stage: StageConfig) -> torch.optim.Optimizer:
        frozen = tuple(f"{name}." for name in stage.freeze)
        return adamw(((n, p) for n, p in self.scorer.named_parameters() if not n.startswith(frozen)), stage)

    def _save(self, name: str, optimizer, scaler, extra: dict | None = None, model: SwinScorer | None = None) -> None:
        if not self.dist.main:
            return
        save_checkpoint(self.out / name, model or self.scorer, train_state=self.state,
                        optimizer=optimizer.state_dict() if optimizer else None,
                        scaler=scaler.state_dict() if scaler else None, config_file=str(self.cfg.source),
                        **(extra or {}))

    def evaluate(self, model: SwinScorer | None = None) -> dict | None:
        if self.val_data is None:
            return None
        pred = predict_cached(model or self.scorer, self.val_data, self.cfg.eval_batch_size, self.dist.device)
        self.scorer.train()
        return evaluate_scores(pred, self.val_data.scores, self.val_data.scenes)

    def _end_epoch(self, stage: StageConfig, epoch: int, running: dict, history, optimizer, scaler,
                   ema: WeightAverage | None = None) -> dict | None:
        """Validate, log, keep the best checkpoint (on labelled stages) and the last one. With
        `ema`, the average is what is validated and kept as best, and at the stage's end it
        replaces the weights (in the same save, so a resume never sees one without the other)."""
        shown = ema.model if ema else self.scorer
        if ema and epoch + 1 == stage.epochs:
            self.scorer.load_state_dict(ema.model.state_dict())
            ema = None
        result = None
        if self.dist.main:
            result = self.evaluate(shown)
            record = {"stage": stage.name, "epoch": epoch + 1, "step": self.state["global_step"],
                      "loss": running.get("loss"), "mse": running.get("mse"), "rank": running.get("rank"),
                      "seconds": running.get("seconds")}
            if result is not None:
                record.update({f"val_{k}": v for k, v in headline(result).items()})
                log.info(f"[{stage.name} epoch {epoch + 1}] val {self.val_set.name}\n{format_result(result)}")
                if stage.kind != "synthetic" and headline(result)["srocc"] > self.state["best"]:
                    self.state["best"] = headline(result)["srocc"]
                    self._save("best.pt", optimizer, scaler, {"val": result}, model=shown)
                    log.info(f"new best SROCC {self.state['best']:.4f} -> {self.out / 'best.pt'}")
            self.state["history"].append(record)
            history.write(json.dumps(record) + "\n")
            history.flush()
            self._save_last(optimizer, scaler, ema)
            plot_history(self.state["history"], self.out / "training.png")
        self.dist.barrier()
        return result

    def _run_stats_stage(self, stage_index: int, stage: StageConfig, history) -> dict | None:
        """Fit the statistics head on rank 0 and broadcast it: one unit, so `done` jumps to
        `epochs` and the stage reruns whole if a run stops inside it."""
        if self.scorer.stats is None:
            raise ValueError(f"stage {stage.name!r}: model {self.cfg.model} has no statistics head")
        running: dict[str, float] = {}
        started = time.monotonic()
        if self.dist.main:
            raw = raw_stats(self.scorer, self.train_data, range(len(self.train_data)),
                             f"statistics of {self.train_set.name}")
            with torch.no_grad():
                features = self.scorer.stats.standardise(raw)
            folds = torch.from_numpy(self.folds) if stage.cross_fit else None
            running = fit_stats_head(self.scorer, features, torch.from_numpy(self.z), stage, self.cfg.seed, folds=folds)
            running["seconds"] = time.monotonic() - started
        if self.dist.world > 1:
            for p in self.scorer.stats_head.parameters():
                dist.broadcast(p.data, 0)
        self.state["done"][stage_index] = stage.epochs
        self.state["global_step"] += 1
        return self._end_epoch(stage, stage.epochs - 1, running, history, None, None)  # nothing to resume inside it

    def _stage_state(self, stage_index: int, stage: StageConfig, use_amp: bool):
        """(optimizer, grad scaler or None, weight average or None) for a stage, restored from
        the checkpoint when the run stopped inside this stage."""
        optimizer = self._optimizer(stage)
        scaler = torch.amp.GradScaler("cuda") if use_amp else None
        ema = WeightAverage(self.scorer, stage.ema_decay) if stage.ema_decay else None
        stopped_here = self._ckpt if self._ckpt is not None and self._ckpt_stage == stage_index else {}
        if stopped_here.get("optimizer"):
            optimizer.load_state_dict(stopped_here["optimizer"])
            if scaler and stopped_here.get("scaler"):
                scaler.load_state_dict(stopped_here["scaler"])
        if ema and stopped_here.get("ema"):
            ema.load_state_dict(stopped_here["ema"])
        self._ckpt = None
        return optimizer, scaler, ema

    def train_step(self, batch, pairs: np.ndarray, stage: StageConfig, lr: float, optimizer, scaler, ema,
                   use_amp: bool) -> tuple[float, dict]:
        """One optimizer step on a batch of pairs; (loss, its parts)."""
        device = self.dist.device
        a, b, ya, yb = (t.to(device, non_blocking=True) for t in batch)
        members = ((None, None) if self.folds is None else  # the MLP that never saw each image
                   tuple(torch.from_numpy(self.folds[pairs[:, k]]).to(device) for k in (0, 1)))
        for g in optimizer.param_groups:
            g["lr"] = lr
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            sa, sb = self.twin(a, b, *members)
        loss, parts = twin_loss(sa, sb, ya, yb, stage.rank_weight, stage.rank_loss,
                                0.0 if stage.kind == "synthetic" else stage.mse_weight)
        # All of the scorer's gradients, not only the optimizer's: a frozen module's would
        # pile up step after step and swamp the clipping norm below.
        self.scorer.zero_grad(set_to_none=True)
        trained = [p for g in optimizer.param_groups for p in g["params"]]
        if scaler:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(trained, 5.0)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, 5.0)
            optimizer.step()
        if ema:
            ema.update(self.scorer)
        return float(loss.detach()), parts

    def run(self) -> dict:
        cfg, device = self.cfg, self.dist.device
        use_amp = cfg.amp and device.type == "cuda"
        # Loader threads: on a GPU they keep it fed; on a CPU torch needs the cores.
        threads = cfg.loader_threads or (min(16, os.cpu_count() or 1) if device.type == "cuda" else 1)
        history = (self.out / "log.jsonl").open("a") if self.dist.main else None
        result, optimizer, scaler = None, None, None
        done = self.state["done"]
        done += [0] * (len(cfg.stages) - len(done))
        for stage_index, stage in enumerate(cfg.stages):
            if done[stage_index] >= stage.epochs:
                continue
            if self.state["stage"] != stage_index:
                self.state.update(stage=stage_index, step_in_epoch=0)
            if stage.kind == "stats":
                result = self._run_stats_stage(stage_index, stage, history)
                continue
            batches = PairBatches(self.train_data, self.resampled.indices() if stage.kind == "mos"
                                  else np.arange(len(self.train_data)), stage, cfg.seed)
            steps_per_epoch = len(batches.steps(batches.pairs(stage_index, 0), self.dist.world, self.dist.rank))
            total_steps = steps_per_epoch * stage.epochs
            optimizer, scaler, ema = self._stage_state(stage_index, stage, use_amp)
            for epoch in range(done[stage_index], stage.epochs):
                steps = batches.steps(batches.pairs(stage_index, epoch), self.dist.world, self.dist.rank)
                loaded = loaded_ahead(lambda pairs, rng: batches.load(pairs, rng, self.z), steps,
                                       self.state["step_in_epoch"], [cfg.seed, stage_index, epoch, self.dist.rank],
                                       threads, ahead=2 * threads)
                bar = Progress(len(steps), f"{stage.name} {epoch + 1}/{stage.epochs}") if self.dist.main else None
                if bar:
                    bar.done = self.state["step_in_epoch"]
                self.twin.train()
                for name in stage.freeze:
                    getattr(self.scorer, name).eval()
                last_save = started = time.monotonic()
                running: dict[str, float] = {}
                for step, batch in enumerate(loaded, start=self.state["step_in_epoch"]):
                    lr = lr_at(epoch * steps_per_epoch + step, total_steps, stage)
                    loss, parts = self.train_step(batch, steps[step], stage, lr, optimizer, scaler, ema, use_amp)
                    for k, v in {"loss": loss, **parts}.items():
                        running[k] = 0.98 * running.get(k, v) + 0.02 * v
                    self.state["step_in_epoch"] = step + 1
                    self.state["global_step"] += 1
                    if bar:
                        bar.label = (f"{stage.name} {epoch + 1}/{stage.epochs} loss {running['loss']:.3f} "
                                     f"mse {running['mse']:.3f} rank {running['rank']:.3f} lr {lr:.1e}")
                        bar.update()
                    if time.monotonic() - last_save > cfg.checkpoint_every_s:
                        self._save_last(optimizer, scaler, ema)
                        last_save = time.monotonic()
                if bar:
                    bar.close()
                running["seconds"] = time.monotonic() - started
                done[stage_index] = epoch + 1
                self.state["step_in_epoch"] = 0
                result = self._end_epoch(stage, epoch, running, history, optimizer, scaler, ema)
        if self.dist.main:
            history.close()
        self.dist.close()
        return {"best_srocc": self.state["best"], "last": result, "out_dir": str(self.out)}


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    from .models import ScorerConfig, get_config

    if not isinstance(get_config(cfg.model), ScorerConfig):  # a prior model: trains on cached trunk outputs
        from .prior_loop import train_prior

        if resume:
            log.info("note: a prior model's stages take minutes and start over; the trunk cache resumes "
                     "where it stopped")
        return train_prior(cfg)
    return Trainer(cfg, resume).run()

