"""Training configuration: a TOML file read into dataclasses (configs are data, not code).

A run is a list of stages; each stage's `kind` picks its class, the fields every kind has
(`StageConfig`) plus its own. A prior model (training/prior/) trains `prior` stages: the twin
on its frozen trunk's cached outputs. A pixel model (training/pixel/) trains the others: a
`synthetic` stage pre-trains the twin on synthetic quality rankings of the training photos
(no labels used); a `stats` stage fits the head on the fixed image statistics of the served
crops (fast: the statistics are computed once); an `mos` stage trains the twin on the labels
with MSE + rank loss. See training/configs/*.toml.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import tomllib

from .resample import ResampleConfig


@dataclass(frozen=True)
class StageConfig:
    """What every kind of stage has; each kind's own fields are in its class (STAGE_KINDS)."""

    name: str
    kind: str = "mos"  # mos | synthetic | stats (pixel models) | prior (prior models)
    epochs: int = 1
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_steps: int = 100
    batch_size: int = 16  # images per step: batch_size / 2 pairs
    rank_loss: str = "fidelity"
    rank_weight: float = 1.0
    mse_weight: float = 1.0


@dataclass(frozen=True)
class TwinStage(StageConfig):
    """`mos` and `synthetic` stages of a pixel model: the twin on pairs of crops (training/pixel/)."""

    epoch_size: int | None = None  # images per epoch; default: the re-sampled epoch / the training set
    freeze: tuple[str, ...] = ()  # scorer modules this stage leaves alone (kept in eval mode), e.g. "stats_head"
    # Evaluate, keep and pass on an exponential moving average of the weights with this decay
    # (0 = off); see training/ema.py.
    ema_decay: float = 0.0


@dataclass(frozen=True)
class StatsStage(StageConfig):
    """A pixel model's `stats` stage: fit the statistics head on the served crops' statistics."""

    kind: str = "stats"
    # The number of folds (0 = off; true = one per MLP). MLP k < folds never trains on fold k
    # of the images, and later stages score each training image with the MLP that did not see
    # it, so the backbone learns the statistics' out-of-fold error, not a memorised one. MLPs
    # beyond the folds learn from every image; serving averages all.
    cross_fit: int = 0


@dataclass(frozen=True)
class PriorStage(StageConfig):
    """A prior model's `prior` stage: the twin on the frozen trunk's cached outputs (training/prior/)."""

    kind: str = "prior"
    epoch_size: int | None = None  # images per epoch; default: the re-sampled epoch
    ema_decay: float = 0.0  # as in TwinStage
    aux_weight: float = 0.5  # weight of the loss of the Swin's own auxiliary head beside the fused one's
    # L2 penalty on the fused head's weights over the pooled statistics (`pooled_l2`) and over
    # the Swin features (`swin_l2`), added to the loss as in a ridge regression (alpha /
    # photos). Strong shrinkage is what transfers to held-out sources
    # (training/results/prior_study.md).
    pooled_l2: float = 0.0
    swin_l2: float = 0.0


STAGE_KINDS: dict[str, type[StageConfig]] = {
    "mos": TwinStage,
    "synthetic": TwinStage,
    "stats": StatsStage,
    "prior": PriorStage,
}


def make_stage(table: dict, where: str = "[[stages]]") -> StageConfig:
    """A `[[stages]]` table as its kind's class (no `kind`: mos); a key of another kind is refused."""
    kind = table.get("kind", "mos")
    if kind not in STAGE_KINDS:
        raise ValueError(f"{where}: unknown kind {kind!r}; known: {sorted(STAGE_KINDS)}")
    return _take(STAGE_KINDS[kind], table, f"{where} (kind = {kind!r})")


@dataclass(frozen=True)
class TrainConfig:
    model: str
    train: dict
    val: dict | None
    stages: tuple[StageConfig, ...]
    out_dir: str = "runs/default"
    seed: int = 0
    init: str | None = None  # a checkpoint, or a timm/torch state dict for the backbone
    resample: ResampleConfig = ResampleConfig()
    amp: bool = True  # mixed precision on GPU; ignored on CPU
    threads: int = 0  # torch threads on CPU; 0 = all cores
    loader_threads: int = 0  # threads loading batches ahead; 0 = up to 16 on a GPU, 1 on a CPU
    checkpoint_every_s: float = 600.0  # mid-epoch checkpoints, so a killed run loses little
    eval_batch_size: int = 32
    stats_fit_images: int = 1000
    feature_views: int = 3  # prior models: trunk outputs kept per photo (the served crop + random ones)
    source: Path | None = field(default=None, compare=False)


def _take(cls, table: dict, where: str):
    known = {f.name for f in fields(cls)}
    unknown = set(table) - known
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    return cls(**table)


def _resolve_paths(spec: dict, base: Path) -> dict:
    spec = dict(spec)
    for key in ("root", "labels_root", "image_root", "path"):
        if key in spec and not Path(spec[key]).is_absolute():
            spec[key] = str((base / spec[key]).resolve())
    return spec


def load_config(path: str | Path, overrides: dict | None = None) -> TrainConfig:
    """Read a TOML config. Relative data paths are taken from the current directory (the
    repository root in the README's commands), `out_dir` too."""
    path = Path(path)
    raw = tomllib.loads(path.read_text())
    raw.update(overrides or {})
    base = Path.cwd()
    stages = tuple(make_stage(s, f"{path}: [[stages]]") for s in raw.pop("stages", []))
    if not stages:
        raise ValueError(f"{path}: no [[stages]]")
    data = raw.pop("data", {})
    resample = _take(ResampleConfig, raw.pop("resample", {}), f"{path}: [resample]")
    cfg = _take(
        TrainConfig,
        {
            **raw,
            "stages": stages,
            "resample": resample,
            "train": _resolve_paths(data["train"], base),
            "val": _resolve_paths(data["val"], base) if "val" in data else None,
        },
        f"{path}",
    )
    return TrainConfig(**{**cfg.__dict__, "source": path})
