"""The training loop behind `sampleiqa train CONFIG`.

One process per device; with `torchrun` it runs DistributedDataParallel (NCCL on GPUs,
gloo on CPU). Every step sees batch_size/2 pairs drawn from the re-sampled epoch: within a
scene when the labels have scenes (PIQ23 scores are comparable only inside one), otherwise
consecutive images of the shuffled epoch. The epoch order, and every step's crops and
distortions, are pure functions of (seed, stage, epoch, rank, step): `--resume` continues
mid-epoch from the last checkpoint, and batches are loaded ahead in threads.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from sampleiqa.clients.progress import Progress
from sampleiqa.preprocessing import to_tensor

from .checkpoint import save_checkpoint
from .config import StageConfig, TrainConfig
from .data.cache import CachedSet, build_cache
from .data.train_crops import random_face_crop
from .plots import plot_history
from .data.datasets import create_dataset
from .data.synthetic import ranked_pair
from .ema import WeightAverage
from .losses import RANK_LOSSES, twin_loss
from .metrics import evaluate_scores, format_result, headline
from .models import SwinScorer, TwinScorer, create_model
from .resample import plot_histograms, resample
from .pairs import epoch_pairs
from .schedule import adamw, lr_at


class Distributed:
    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = torch.device(f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu")
        if self.world > 1:
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world > 1:
            dist.destroy_process_group()


def _batch_to_tensor(crops: list[np.ndarray]) -> torch.Tensor:
    out = np.empty((len(crops), 3, crops[0].shape[0], crops[0].shape[1]), dtype=np.float32)
    for i, c in enumerate(crops):
        to_tensor(c, out[i])
    return torch.from_numpy(out)


class PairBatches:
    """The batches of one epoch of one stage, as index pairs (deterministic)."""

    def __init__(self, data: CachedSet, epoch_indices: np.ndarray, stage: StageConfig, seed: int):
        self.data, self.epoch_indices, self.stage, self.seed = data, epoch_indices, stage, seed

    def pairs(self, stage_index: int, epoch: int) -> np.ndarray:
        return epoch_pairs(self.epoch_indices, self.data.scenes, np.random.default_rng([self.seed, stage_index, epoch]),
                           self.stage.epoch_size, same_photo=self.stage.kind == "synthetic")

    def steps(self, pairs: np.ndarray, world: int, rank: int) -> list[np.ndarray]:
        per_step = max(1, self.stage.batch_size // 2)
        n_steps = len(pairs) // (per_step * world)
        return [pairs[(s * world + rank) * per_step : (s * world + rank + 1) * per_step] for s in range(n_steps)]

    def load(self, step_pairs: np.ndarray, rng: np.random.Generator, z_scores: np.ndarray):
        """(a, b, score_a, score_b) tensors of one step."""
        a_crops, b_crops = [], []
        for i, j in step_pairs:
            ca = random_face_crop(self.data.train_image(i), self.data.faces[i], rng)
            if self.stage.kind == "synthetic":
                ca, cb = ranked_pair(ca, rng)
            else:
                cb = random_face_crop(self.data.train_image(j), self.data.faces[j], rng)
            a_crops.append(ca)
            b_crops.append(cb)
        if self.stage.kind == "synthetic":  # a (less distorted) beats b
            ya, yb = torch.ones(len(step_pairs)), torch.zeros(len(step_pairs))
        else:
            ya, yb = torch.from_numpy(z_scores[step_pairs[:, 0]]), torch.from_numpy(z_scores[step_pairs[:, 1]])
        return _batch_to_tensor(a_crops), _batch_to_tensor(b_crops), ya.float(), yb.float()


def _loaded_ahead(load, steps: list, first: int, rng_key: list[int], threads: int, ahead: int):
    """Yield load(steps[i], rng_i) for i >= first, computed `ahead` steps early in `threads`
    threads (decoding, cropping and distortions run in OpenCV/NumPy, outside the GIL)."""
    with ThreadPoolExecutor(threads) as pool:
        pending: deque = deque()
        for i in range(first, len(steps)):
            pending.append(pool.submit(load, steps[i], np.random.default_rng([*rng_key, i])))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def eval_batches(data: CachedSet, indices, batch_size: int, label: str | None = None):
    """(indices, tensor) batches of the served crops; with `label`, a progress line."""
    indices = list(indices)
    bar = Progress(len(indices), label) if label else None
    try:
        for start in range(0, len(indices), batch_size):
            idx = indices[start : start + batch_size]
            yield idx, _batch_to_tensor([np.asarray(data.eval_crop(i)) for i in idx])
            if bar:
                bar.update(len(idx))
    finally:
        if bar:
            bar.close()


@torch.no_grad()
def predict_cached(scorer: SwinScorer, data: CachedSet, batch_size: int = 32, device=None,
                   progress: bool = False) -> np.ndarray:
    """Scores of the served crops (exactly what the `preprocess` model produces)."""
    scorer.eval()
    device = device or next(scorer.parameters()).device
    out = [scorer(x.to(device)).float().view(-1).cpu().numpy()
           for _, x in eval_batches(data, range(len(data)), batch_size, "evaluating" if progress else None)]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def _init_weights(scorer: SwinScorer, path: str) -> set[str]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state.get("model", state))
    own = scorer.state_dict()
    # Accept our checkpoints (backbone.*) and plain timm Swin state dicts (no prefix).
    mapped = {k if k in own else f"backbone.{k}": v for k, v in state.items()}
    usable = {k: v for k, v in mapped.items() if k in own and own[k].shape == v.shape}
    scorer.load_state_dict(usable, strict=False)
    print(f"init: loaded {len(usable)}/{len(own)} tensors from {path}", flush=True)
    return set(usable)


def raw_stats(scorer: SwinScorer, data: CachedSet, indices, label: str | None = None) -> torch.Tensor:
    """Raw statistics [len(indices), F] of the served crops, on the scorer's device."""
    device = scorer.stats.mean.device
    with torch.no_grad():
        return torch.cat([scorer.stats.raw(x.to(device)) for _, x in eval_batches(data, indices, 64, label)])


def _fit_stats(scorer: SwinScorer, data: CachedSet, n: int) -> None:
    if scorer.stats is None:
        return
    scorer.stats.fit(raw_stats(scorer, data, np.linspace(0, len(data) - 1, min(n, len(data))).astype(int)))


def cross_fit_folds(n: int, folds: int, seed: int) -> np.ndarray:
    """The fold (= the statistics MLP that never sees it) of each of n training images."""
    return (np.random.default_rng([seed, 7]).permutation(n) % folds).astype(np.int64)


def fold_count(stage: StageConfig, heads: int) -> int:
    """A `stats` stage's number of folds: `cross_fit = true` means one per MLP."""
    folds = heads if stage.cross_fit is True else int(stage.cross_fit)
    if not 2 <= folds <= heads:
        raise ValueError(f"stage {stage.name!r}: cross_fit = {stage.cross_fit!r} needs 2 to {heads} folds "
                         f"(one MLP of the statistics head per fold)")
    return folds


def fit_stats_head(scorer: SwinScorer, features: torch.Tensor, z: torch.Tensor, stage: StageConfig,
                   seed: int, progress: bool = True, folds: torch.Tensor | None = None) -> dict[str, float]:
    """A `stats` stage: train each MLP of the statistics head on standardised statistics of
    the served crops, with MSE + the rank loss over every pair in a batch (statistics are
    fixed, so this takes seconds per epoch, not minutes). With `folds`, MLP k learns nothing
    from the images of fold k; MLPs numbered beyond the last fold learn from every image."""
    head = scorer.stats_head
    head.train()
    device = next(head.parameters()).device
    features, z = features.to(device), z.to(device)
    heads = torch.arange(len(head.mlps), device=device)
    folds = folds.to(device) if folds is not None else torch.full_like(z, -1, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(head.parameters(), lr=stage.lr, weight_decay=stage.weight_decay)
    rank_loss = RANK_LOSSES[stage.rank_loss]
    steps_per_epoch = math.ceil(len(z) / stage.batch_size)
    total = steps_per_epoch * stage.epochs
    bar = Progress(stage.epochs, stage.name) if progress else None
    running: dict[str, float] = {}
    for epoch in range(stage.epochs):
        order = torch.randperm(len(z), generator=gen)
        for step in range(steps_per_epoch):
            j = order[step * stage.batch_size : (step + 1) * stage.batch_size]
            for g in optimizer.param_groups:
                g["lr"] = lr_at(epoch * steps_per_epoch + step, total, stage)
            pred, y = head.each(features[j]), z[j]
            seen = folds[j][:, None] != heads[None]  # [batch, heads]: may MLP h learn from image i
            a, b = torch.triu_indices(len(j), len(j), 1, device=device)
            mse = (((pred - y[:, None]) ** 2) * seen).sum(0).div(seen.sum(0).clamp_min(1)).sum()
            rank = sum(rank_loss(pred[a[k], h], pred[b[k], h], y[a[k]], y[b[k]])
                       for h in range(pred.shape[1]) if (k := seen[a, h] & seen[b, h]).any())
            loss = stage.mse_weight * mse + stage.rank_weight * rank
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for k, v in {"loss": float(loss.detach()), "mse": float(mse.detach()), "rank": float(rank.detach())}.items():
                running[k] = 0.95 * running.get(k, v) + 0.05 * v
        if bar:
            bar.label = f"{stage.name} loss {running['loss']:.3f} mse {running['mse']:.3f} rank {running['rank']:.3f}"
            bar.update()
    if bar:
        bar.close()
    return running


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False):
        self.cfg, self.dist = cfg, Distributed()
        torch.manual_seed(cfg.seed)
        if self.dist.device.type == "cpu":
            torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
        self.out = Path(cfg.out_dir)
        self.train_set = create_dataset(cfg.train)
        self.val_set = create_dataset(cfg.val) if cfg.val else None
        if self.dist.main:
            print(f"device {self.dist.device}, world size {self.dist.world}", flush=True)
            self.out.mkdir(parents=True, exist_ok=True)
            for ds in filter(None, (self.train_set, self.val_set)):
                print(ds.describe(), flush=True)
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
            print(self.resampled.summary(), flush=True)
            plot_histograms(self.resampled, self.out / "resample.png", f"{self.train_set.name}: {cfg.resample.target}")

        self.scorer: SwinScorer = create_model(cfg.model)
        # done[i]: finished epochs of stage i; (stage, step_in_epoch): where an epoch stopped.
        self.state = {"done": [], "stage": 0, "step_in_epoch": 0, "global_step": 0, "best": -math.inf, "history": []}
        last = self.out / "last.pt"
        ckpt = None
        if resume and last.exists():
            ckpt = torch.load(last, map_location="cpu", weights_only=False)
            self.scorer.load_state_dict(ckpt["state_dict"])
            self.state = ckpt["train_state"]
            if self.dist.main:
                s = self.state
                print(f"resuming from {last}: epochs done per stage {s['done']}, "
                      f"stage {s['stage']} step {s['step_in_epoch']}", flush=True)
        loaded = _init_weights(self.scorer, cfg.init) if ckpt is None and cfg.init else set()
        self.scorer.to(self.dist.device)
        if ckpt is None:
            # This training set's score scale; the statistics' standardisation unless `init`
            # brought the one its head was trained with.
            self.scorer.score_mean.fill_(float(scores.mean()))
            self.scorer.score_std.fill_(float(scores.std()))
            if "stats.feature_mean" not in loaded:
                _fit_stats(self.scorer, self.train_data, cfg.stats_fit_images)
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

    def _end_epoch(self, stage: StageConfig, epoch: int, running: dict, log, optimizer, scaler,
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
                print(f"[{stage.name} epoch {epoch + 1}] val {self.val_set.name}\n{format_result(result)}", flush=True)
                if stage.kind != "synthetic" and headline(result)["srocc"] > self.state["best"]:
                    self.state["best"] = headline(result)["srocc"]
                    self._save("best.pt", optimizer, scaler, {"val": result}, model=shown)
                    print(f"new best SROCC {self.state['best']:.4f} -> {self.out / 'best.pt'}", flush=True)
            self.state["history"].append(record)
            log.write(json.dumps(record) + "\n")
            log.flush()
            self._save("last.pt", optimizer, scaler, {"ema": ema.state_dict()} if ema else None)
            plot_history(self.state["history"], self.out / "training.png")
        self.dist.barrier()
        return result

    def _run_stats_stage(self, stage_index: int, stage: StageConfig, log) -> dict | None:
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
        return self._end_epoch(stage, stage.epochs - 1, running, log, None, None)  # nothing to resume inside it

    def run(self) -> dict:
        cfg, device = self.cfg, self.dist.device
        use_amp = cfg.amp and device.type == "cuda"
        # Loader threads: on a GPU they keep it fed; on a CPU torch needs the cores.
        threads = cfg.loader_threads or (min(16, os.cpu_count() or 1) if device.type == "cuda" else 1)
        log = (self.out / "log.jsonl").open("a") if self.dist.main else None
        result, optimizer, scaler = None, None, None
        done = self.state["done"]
        done += [0] * (len(cfg.stages) - len(done))
        for stage_index, stage in enumerate(cfg.stages):
            if done[stage_index] >= stage.epochs:
                continue
            if self.state["stage"] != stage_index:
                self.state.update(stage=stage_index, step_in_epoch=0)
            if stage.kind == "stats":
                result = self._run_stats_stage(stage_index, stage, log)
                continue
            batches = PairBatches(self.train_data, self.resampled.indices() if stage.kind == "mos"
                                  else np.arange(len(self.train_data)), stage, cfg.seed)
            steps_per_epoch = len(batches.steps(batches.pairs(stage_index, 0), self.dist.world, self.dist.rank))
            total_steps = steps_per_epoch * stage.epochs
            optimizer = self._optimizer(stage)
            trained = [p for g in optimizer.param_groups for p in g["params"]]
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
            for epoch in range(done[stage_index], stage.epochs):
                steps = batches.steps(batches.pairs(stage_index, epoch), self.dist.world, self.dist.rank)
                loaded = _loaded_ahead(lambda pairs, rng: batches.load(pairs, rng, self.z), steps,
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
                    a, b, ya, yb = (t.to(device, non_blocking=True) for t in batch)
                    members = ((None, None) if self.folds is None else  # the MLP that never saw each image
                               tuple(torch.from_numpy(self.folds[steps[step][:, k]]).to(device) for k in (0, 1)))
                    lr = lr_at(epoch * steps_per_epoch + step, total_steps, stage)
                    for g in optimizer.param_groups:
                        g["lr"] = lr
                    with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                        sa, sb = self.twin(a, b, *members)
                    loss, parts = twin_loss(sa, sb, ya, yb, stage.rank_weight, stage.rank_loss,
                                            0.0 if stage.kind == "synthetic" else stage.mse_weight)
                    # All of the scorer's gradients, not only the optimizer's: a frozen module's
                    # would pile up step after step and swamp the clipping norm below.
                    self.scorer.zero_grad(set_to_none=True)
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
                    for k, v in {"loss": float(loss.detach()), **parts}.items():
                        running[k] = 0.98 * running.get(k, v) + 0.02 * v
                    self.state["step_in_epoch"] = step + 1
                    self.state["global_step"] += 1
                    if bar:
                        bar.label = (f"{stage.name} {epoch + 1}/{stage.epochs} loss {running['loss']:.3f} "
                                     f"mse {running['mse']:.3f} rank {running['rank']:.3f} lr {lr:.1e}")
                        bar.update()
                    if time.monotonic() - last_save > cfg.checkpoint_every_s:
                        self._save("last.pt", optimizer, scaler, {"ema": ema.state_dict()} if ema else None)
                        last_save = time.monotonic()
                if bar:
                    bar.close()
                running["seconds"] = time.monotonic() - started
                done[stage_index] = epoch + 1
                self.state["step_in_epoch"] = 0
                result = self._end_epoch(stage, epoch, running, log, optimizer, scaler, ema)
        if self.dist.main:
            log.close()
        self.dist.close()
        return {"best_srocc": self.state["best"], "last": result, "out_dir": str(self.out)}


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    from .models import ScorerConfig, get_config

    if not isinstance(get_config(cfg.model), ScorerConfig):  # a prior model: trains on cached trunk outputs
        from .prior_loop import train_prior

        if resume:
            print("note: a prior model's stages take minutes and start over; the trunk cache resumes "
                  "where it stopped", flush=True)
        return train_prior(cfg)
    return Trainer(cfg, resume).run()

