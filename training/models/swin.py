"""The pixel family: a timm Swin backbone at 448x448 trained from scratch with a regression
head, optionally fused with the in-graph statistics (training/models/stats.py). Trained by
the pixel pipeline (training/pixel/); its configs register in training/models/registry.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from sampleiqa.runtime.contracts import CROP

from .registry import register, register_family


@dataclass(frozen=True)
class ScorerConfig:
    name: str
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    patch_size: int = 4
    window_size: int = 7
    img_size: int = CROP
    drop_path_rate: float = 0.1
    head_hidden: int = 0  # 0: a single linear layer on the pooled features
    stats: bool = False  # fuse fixed image statistics into the head (training/models/stats.py)
    stats_hidden: int = 256
    stats_heads: int = 5  # an ensemble of MLPs on the statistics, averaged
    stats_dropout: float = 0.3
    notes: str = field(default="", compare=False)

    def to_dict(self) -> dict:
        return asdict(self)


class SwinScorer(nn.Module):
    """One branch: image [N,3,448,448] (normalised) -> score [N,1].

    Training works on standardised scores (`forward_z`), so losses and learning rates do not
    depend on a dataset's score scale; `forward` maps back to that scale with the buffers
    `score_mean` / `score_std`, so the exported model returns scores on the label scale.
    With `stats`, the score is the statistics head's plus the backbone head's, which starts
    at zero and learns what the statistics miss.
    """

    def __init__(self, cfg: ScorerConfig):
        super().__init__()
        from timm.models.swin_transformer import SwinTransformer

        self.config = cfg
        self.backbone = SwinTransformer(
            img_size=cfg.img_size,
            patch_size=cfg.patch_size,
            window_size=cfg.window_size,
            embed_dim=cfg.embed_dim,
            depths=cfg.depths,
            num_heads=cfg.num_heads,
            drop_path_rate=cfg.drop_path_rate,
            num_classes=0,
        )
        width = self.backbone.num_features
        if cfg.head_hidden:
            self.head = nn.Sequential(nn.Linear(width, cfg.head_hidden), nn.GELU(), nn.Linear(cfg.head_hidden, 1))
        else:
            self.head = nn.Linear(width, 1)
        self.stats = None
        if cfg.stats:
            from .stats import QualityStats, StatsHead

            self.stats = QualityStats()
            self.stats_head = StatsHead(self.stats.num_features, cfg.stats_hidden, cfg.stats_heads, cfg.stats_dropout)
            # The backbone's head starts at zero: it learns what the statistics' score misses.
            last = self.head[-1] if cfg.head_hidden else self.head
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        self.register_buffer("score_mean", torch.zeros(()))
        self.register_buffer("score_std", torch.ones(()))

    def forward_z(self, x: torch.Tensor, member: torch.Tensor | None = None) -> torch.Tensor:
        """Standardised score [N, 1]. `member` [N] (training only) scores image n with
        statistics MLP member[n] alone instead of their mean: after a cross-fitted `stats`
        stage, the one MLP that never saw that image."""
        score = self.head(self.backbone(x))
        if self.stats is not None:
            # FP32 under autocast too: the head was fitted on FP32 statistics, and logs of
            # small energies lose their meaning in FP16.
            with torch.autocast(x.device.type, enabled=False):
                features = self.stats(x.float())
                stats_score = (
                    self.stats_head(features)
                    if member is None
                    else self.stats_head.each(features).gather(1, member.view(-1, 1))
                )
                score = score.float() + stats_score
        return score

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_z(x) * self.score_std + self.score_mean

    def half_backbone(self) -> SwinScorer:
        """FP16 weights for the backbone and its head; the statistics and their head stay FP32,
        as in the FP16 ONNX copy (logs of small energies need FP32)."""
        self.half()
        if self.stats is not None:
            self.stats.float()
            self.stats_head.float()
        return self


@register_family(ScorerConfig, pipeline="pixel", stages=("mos", "synthetic", "stats"))
def build_swin(cfg: ScorerConfig, pretrained: bool = True) -> SwinScorer:
    """The from-scratch pixel family (trained by training/pixel/); nothing is pretrained."""
    return SwinScorer(cfg)


# The previous shipped model (until the pretrained prior, lite0_swin): a from-scratch Swin
# at patch 8 (a 56x56 token grid for a 448 crop, as Swin-T at 224) plus the in-graph quality
# statistics and their head of 10 MLPs (5 cross-fitted, 5 on every photo with a cross_fit = 5
# stats stage). biq2021_stats.toml and biq2021_gpu.toml train it.
register(
    ScorerConfig(
        "swin_compact_stats",
        embed_dim=40,
        depths=(2, 2, 6, 2),
        num_heads=(2, 4, 8, 16),
        patch_size=8,
        stats=True,
        stats_heads=10,
        notes="the previous default: fused statistics + Swin from scratch, ~1.7 GFLOP/img at 448",
    )
)
# A few-kFLOP network for the test suite's end-to-end training runs.
register(
    ScorerConfig(
        "swin_test_micro",
        embed_dim=8,
        depths=(1, 1, 1, 1),
        num_heads=(1, 1, 1, 1),
        patch_size=8,
        stats=True,
        stats_hidden=8,
        stats_heads=3,
        drop_path_rate=0.0,
        notes="tests only",
    )
)
# timm's standard size at 448 (timm weight names: swin_tiny_patch4_window7_224);
# piq23_overall_scene.toml trains it.
register(ScorerConfig("swin_tiny_448", 96, (2, 2, 6, 2), (3, 6, 12, 24), drop_path_rate=0.2, notes="~36 GFLOP/img"))

# Retired: no config or shipped checkpoint uses them (they still build, with a FutureWarning).
register(
    ScorerConfig(
        "swin_compact",
        embed_dim=40,
        depths=(2, 2, 6, 2),
        num_heads=(2, 4, 8, 16),
        patch_size=8,
        notes="swin_compact_stats without the statistics, ~1.7 GFLOP/img at 448",
    ),
    deprecated="swin_compact_stats",
)
register(
    ScorerConfig(
        "swin_compact_p4",
        embed_dim=32,
        depths=(2, 2, 6, 2),
        num_heads=(1, 2, 4, 8),
        notes="finer tokens (patch 4), ~4.3 GFLOP/img at 448",
    ),
    deprecated="swin_compact_stats",
)
register(
    ScorerConfig("swin_small_448", 96, (2, 2, 18, 2), (3, 6, 12, 24), drop_path_rate=0.3, notes="~70 GFLOP/img"),
    deprecated="swin_tiny_448",
)
register(
    ScorerConfig("swin_base_448", 128, (2, 2, 18, 2), (4, 8, 16, 32), drop_path_rate=0.5, notes="~124 GFLOP/img"),
    deprecated="swin_tiny_448",
)
