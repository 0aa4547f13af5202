"""Re-sample a training set so its score histogram follows a target distribution (MILP).

Datasets such as PIQ23 hold many mid scores and few extreme ones, so a regressor learns
to predict the middle. We choose an integer number of repeats r_i in [lo, hi] for every
training image (0 drops it for the epoch) so that the histogram of the re-sampled scores is
as close as possible, in L1, to `epoch_size` draws from the target distribution:

    minimise   sum_b d_b
    subject to d_b >= c_b - t_b,  d_b >= t_b - c_b,  c_b = sum_{i in bin b} r_i,
               sum_i r_i = epoch_size,  f_b <= r_i <= f_b + 1,  lo <= r_i <= hi, integer.

The last line keeps repeats even inside a bin (no image is repeated twice more than a
neighbour with a similar score), which keeps the epoch diverse. Solved by CBC through pulp;
deterministic for the same inputs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pulp


@dataclass(frozen=True)
class ResampleConfig:
    target: str = "gaussian"  # gaussian | uniform | as_is
    bins: int = 20
    min_repeat: int = 0
    max_repeat: int = 4
    epoch_size: int | None = None  # default: the number of images
    std_scale: float = 1.0  # gaussian: width relative to the data's standard deviation
    time_limit_s: float = 30.0


@dataclass
class ResampleResult:
    repeats: np.ndarray  # int [N]
    edges: np.ndarray  # bin edges [B+1]
    before: np.ndarray  # histogram counts of the data
    after: np.ndarray  # histogram counts of the re-sampled epoch
    target: np.ndarray  # target counts (real-valued)
    l1: float
    seconds: float

    def indices(self) -> np.ndarray:
        """The re-sampled epoch as image indices (unshuffled)."""
        return np.repeat(np.arange(len(self.repeats)), self.repeats)

    def summary(self) -> str:
        return (
            f"re-sampled {int(self.before.sum())} images to an epoch of {int(self.after.sum())}: "
            f"L1 to target {self.l1:.1f} "
            f"(as is: {np.abs(self.before * self.after.sum() / self.before.sum() - self.target).sum():.1f}), "
            f"repeats {self.repeats.min()}..{self.repeats.max()}, {int((self.repeats == 0).sum())} left out, "
            f"solved in {self.seconds:.2f}s"
        )


def target_counts(scores: np.ndarray, edges: np.ndarray, cfg: ResampleConfig, total: int) -> np.ndarray:
    if cfg.target == "as_is":
        p = np.histogram(scores, edges)[0].astype(float)
    elif cfg.target == "uniform":
        p = np.ones(len(edges) - 1)
    elif cfg.target == "gaussian":
        mu, sigma = float(np.mean(scores)), float(np.std(scores)) * cfg.std_scale
        cdf = np.array([0.5 * (1 + math.erf((e - mu) / (sigma * math.sqrt(2)))) for e in edges])
        p = np.diff(cdf)  # truncated to the data's range: no mass piles up in the outer bins
    else:
        raise ValueError(f"unknown target {cfg.target!r}: gaussian, uniform or as_is")
    return total * p / p.sum()


def resample(scores, cfg: ResampleConfig = ResampleConfig()) -> ResampleResult:
    scores = np.asarray(scores, dtype=float)
    n = len(scores)
    total = cfg.epoch_size or n
    if not n * cfg.min_repeat <= total <= n * cfg.max_repeat:
        raise ValueError(
            f"epoch_size {total} is not reachable with {n} images and repeats {cfg.min_repeat}..{cfg.max_repeat}"
        )
    edges = np.linspace(scores.min(), scores.max(), cfg.bins + 1)
    which = np.clip(np.searchsorted(edges, scores, side="right") - 1, 0, cfg.bins - 1)
    if cfg.max_repeat < cfg.min_repeat or cfg.min_repeat < 0:
        raise ValueError("need 0 <= min_repeat <= max_repeat")
    target = target_counts(scores, edges, cfg, total)
    start = time.perf_counter()
    if cfg.target == "as_is" and total == n:
        repeats = np.ones(n, dtype=int)
    else:
        repeats = _solve(which, target, cfg, total)
    seconds = time.perf_counter() - start
    after = np.bincount(which, weights=repeats, minlength=cfg.bins)
    return ResampleResult(
        repeats,
        edges,
        np.bincount(which, minlength=cfg.bins).astype(float),
        after,
        target,
        float(np.abs(after - target).sum()),
        seconds,
    )


def _solve(which: np.ndarray, target: np.ndarray, cfg: ResampleConfig, total: int) -> np.ndarray:
    """The per-image program above reduces exactly to integer bin counts k_b: with the
    evenness constraint every k_b in [n_b*lo, n_b*hi] is reachable, and the objective only
    sees k_b. So CBC solves the small program over k_b, and each bin's k_b is then spread
    evenly over its images (the +1s spaced along the bin's score order)."""
    sizes = np.bincount(which, minlength=cfg.bins)
    prob = pulp.LpProblem("resample", pulp.LpMinimize)
    k = [
        pulp.LpVariable(f"k{b}", int(sizes[b]) * cfg.min_repeat, int(sizes[b]) * cfg.max_repeat, cat="Integer")
        for b in range(cfg.bins)
    ]
    dev = [pulp.LpVariable(f"d{b}", 0) for b in range(cfg.bins)]
    prob += pulp.lpSum(dev)
    for b in range(cfg.bins):
        prob += dev[b] >= k[b] - float(target[b])
        prob += dev[b] >= float(target[b]) - k[b]
    prob += pulp.lpSum(k) == total
    status = prob.solve(pulp.PULP_CBC_CMD(msg=0, timeLimit=cfg.time_limit_s))
    if pulp.LpStatus[status] != "Optimal":
        raise RuntimeError(f"re-sampling MILP failed: {pulp.LpStatus[status]}")
    repeats = np.zeros(len(which), dtype=int)
    for b in range(cfg.bins):
        idx = np.flatnonzero(which == b)
        if len(idx) == 0:
            continue
        count = int(round(k[b].value()))
        base, extra = divmod(count, len(idx))
        repeats[idx] = base
        if extra:  # spread the +1s evenly along the bin (idx is in dataset order; deterministic)
            repeats[idx[np.linspace(0, len(idx) - 1, extra).round().astype(int)]] += 1
    return repeats


def plot_histograms(result: ResampleResult, path: str | Path, title: str = "") -> Path:
    """Before/after/target histograms as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centres = (result.edges[:-1] + result.edges[1:]) / 2
    width = (result.edges[1] - result.edges[0]) * 0.4
    scale = result.after.sum() / result.before.sum()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(centres - width / 2, result.before * scale, width, label="before (scaled to epoch size)", color="#999")
    ax.bar(centres + width / 2, result.after, width, label="after re-sampling", color="#1f77b4")
    ax.plot(centres, result.target, "r.-", label="target")
    ax.set_xlabel("score")
    ax.set_ylabel("images per epoch")
    ax.set_title(title or f"re-sampling: L1 {result.l1:.0f}")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
