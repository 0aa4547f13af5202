"""The pixel pipeline's loop: `sampleiqa train CONFIG` for a model trained from scratch on
pixels (the `pixel` family of training/models/registry.py: Swin scorers, with or without the
fused statistics). The Trainer keeps resume, the stage loop and checkpoints together, as they
share its state; what it starts from is prepared by training/pixel/prepare.py, and the
batches, distribution and the statistics stage are in their own modules here.

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
import os
import time

import numpy as np
import torch
import torch.distributed as dist

from sampleiqa.progress import Progress

from ..checkpoint import save_checkpoint
from ..config import StageConfig, StatsStage, TrainConfig, TwinStage
from ..ema import WeightAverage
from ..losses import twin_loss
from ..metrics import evaluate_scores, format_result, headline
from ..models import SwinScorer
from ..plots import plot_history
from ..prediction import predict_cached
from ..schedule import adamw, lr_at
from .batches import PairBatches, loaded_ahead
from .prepare import PixelRun, prepare_run
from .stats_stage import fit_stats_head, raw_stats

log = logging.getLogger(__name__)


class Trainer:
    """A pixel run's stages, from what `prepare_run` made (training/pixel/prepare.py)."""

    def __init__(self, run: PixelRun):
        self.cfg, self.dist, self.out = run.cfg, run.dist, run.out
        self.train_set, self.val_set = run.train_set, run.val_set
        self.train_data, self.val_data = run.train_data, run.val_data
        self.z, self.resampled, self.scorer, self.twin = run.z, run.resampled, run.scorer, run.twin
        self.state, self.folds, self._ckpt = run.state, run.folds, run.ckpt
        # The stage the run stopped in: self.state (the same dict) moves on as stages start.
        self._ckpt_stage = run.ckpt["train_state"]["stage"] if run.ckpt else None

    def _save_last(self, optimizer, scaler, ema) -> None:
        """last.pt with what a resume needs, the weight average included."""
        self._save("last.pt", optimizer, scaler, {"ema": ema.state_dict()} if ema else None)

    def _optimizer(self, stage: TwinStage) -> torch.optim.Optimizer:
        frozen = tuple(f"{name}." for name in stage.freeze)
        return adamw(((n, p) for n, p in self.scorer.named_parameters() if not n.startswith(frozen)), stage)

    def _save(self, name: str, optimizer, scaler, extra: dict | None = None, model: SwinScorer | None = None) -> None:
        if not self.dist.main:
            return
        save_checkpoint(
            self.out / name,
            model or self.scorer,
            train_state=self.state,
            optimizer=optimizer.state_dict() if optimizer else None,
            scaler=scaler.state_dict() if scaler else None,
            config_file=str(self.cfg.source),
            **(extra or {}),
        )

    def evaluate(self, model: SwinScorer | None = None) -> dict | None:
        if self.val_data is None:
            return None
        pred = predict_cached(model or self.scorer, self.val_data, self.cfg.eval_batch_size, self.dist.device)
        self.scorer.train()
        return evaluate_scores(pred, self.val_data.scores, self.val_data.scenes)

    def _end_epoch(
        self,
        stage: StageConfig,
        epoch: int,
        running: dict,
        history,
        optimizer,
        scaler,
        ema: WeightAverage | None = None,
    ) -> dict | None:
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
            record = {
                "stage": stage.name,
                "epoch": epoch + 1,
                "step": self.state["global_step"],
                "loss": running.get("loss"),
                "mse": running.get("mse"),
                "rank": running.get("rank"),
                "seconds": running.get("seconds"),
            }
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

    def _run_stats_stage(self, stage_index: int, stage: StatsStage, history) -> dict | None:
        """Fit the statistics head on rank 0 and broadcast it: one unit, so `done` jumps to
        `epochs` and the stage reruns whole if a run stops inside it."""
        if self.scorer.stats is None:
            raise ValueError(f"stage {stage.name!r}: model {self.cfg.model} has no statistics head")
        running: dict[str, float] = {}
        started = time.monotonic()
        if self.dist.main:
            raw = raw_stats(
                self.scorer, self.train_data, range(len(self.train_data)), f"statistics of {self.train_set.name}"
            )
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

    def _stage_state(self, stage_index: int, stage: TwinStage, use_amp: bool):
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

    def train_step(
        self, batch, pairs: np.ndarray, stage: TwinStage, lr: float, optimizer, scaler, ema, use_amp: bool
    ) -> tuple[float, dict]:
        """One optimizer step on a batch of pairs; (loss, its parts)."""
        device = self.dist.device
        a, b, ya, yb = (t.to(device, non_blocking=True) for t in batch)
        members = (
            (None, None)
            if self.folds is None
            # the MLP that never saw each image
            else tuple(torch.from_numpy(self.folds[pairs[:, k]]).to(device) for k in (0, 1))
        )
        for g in optimizer.param_groups:
            g["lr"] = lr
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            sa, sb = self.twin(a, b, *members)
        loss, parts = twin_loss(
            sa, sb, ya, yb, stage.rank_weight, stage.rank_loss, 0.0 if stage.kind == "synthetic" else stage.mse_weight
        )
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
        result = None
        done = self.state["done"]
        done += [0] * (len(cfg.stages) - len(done))
        for stage_index, stage in enumerate(cfg.stages):
            if done[stage_index] >= stage.epochs:
                continue
            if self.state["stage"] != stage_index:
                self.state.update(stage=stage_index, step_in_epoch=0)
            if stage.kind == "stats":
                result = self._run_stats_stage(stage_index, stage, history)
            else:
                result = self._run_twin_stage(stage_index, stage, history, use_amp, threads)
        if self.dist.main:
            history.close()
        self.dist.close()
        return {"best_srocc": self.state["best"], "last": result, "out_dir": str(self.out)}

    def _run_twin_stage(self, stage_index: int, stage: TwinStage, history, use_amp: bool, threads: int):
        """A `mos` or `synthetic` stage's remaining epochs; the last epoch's validation."""
        cfg, done, result = self.cfg, self.state["done"], None
        indices = self.resampled.indices() if stage.kind == "mos" else np.arange(len(self.train_data))
        batches = PairBatches(self.train_data, indices, stage, cfg.seed)
        steps_per_epoch = len(batches.steps(batches.pairs(stage_index, 0), self.dist.world, self.dist.rank))
        optimizer, scaler, ema = self._stage_state(stage_index, stage, use_amp)
        for epoch in range(done[stage_index], stage.epochs):
            steps = batches.steps(batches.pairs(stage_index, epoch), self.dist.world, self.dist.rank)
            loaded = loaded_ahead(
                lambda pairs, rng: batches.load(pairs, rng, self.z),
                steps,
                self.state["step_in_epoch"],
                [cfg.seed, stage_index, epoch, self.dist.rank],
                threads,
                ahead=2 * threads,
            )
            running = self._run_epoch(stage, epoch, steps, loaded, steps_per_epoch, (optimizer, scaler, ema), use_amp)
            done[stage_index] = epoch + 1
            self.state["step_in_epoch"] = 0
            result = self._end_epoch(stage, epoch, running, history, optimizer, scaler, ema)
        return result

    def _run_epoch(self, stage: TwinStage, epoch: int, steps, loaded, steps_per_epoch: int, opt, use_amp: bool):
        """The rest of one epoch (from state["step_in_epoch"]); its running loss and seconds."""
        optimizer, scaler, ema = opt
        total_steps = steps_per_epoch * stage.epochs
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
                bar.label = (
                    f"{stage.name} {epoch + 1}/{stage.epochs} loss {running['loss']:.3f} "
                    f"mse {running['mse']:.3f} rank {running['rank']:.3f} lr {lr:.1e}"
                )
                bar.update()
            if time.monotonic() - last_save > self.cfg.checkpoint_every_s:
                self._save_last(optimizer, scaler, ema)
                last_save = time.monotonic()
        if bar:
            bar.close()
        running["seconds"] = time.monotonic() - started
        return running


def train_pixel(cfg: TrainConfig, resume: bool = False) -> dict:
    """`sampleiqa train CONFIG` for a pixel model: prepare the run, then its stages."""
    return Trainer(prepare_run(cfg, resume)).run()
