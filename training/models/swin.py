"""Swin scorers: a timm Swin backbone at 448x448 with a regression head, and the twin.

Configs are data in a registry; `create_model(name)` is the one entry point (as in timm).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from sampleiqa.runtime.contracts import CROP


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


_REGISTRY: dict[str, ScorerConfig] = {}  # and PriorSwinConfig (training/models/prior.py)


def register(cfg):
    _REGISTRY[cfg.name] = cfg
    return cfg


# The CPU default: patch 8 keeps the token grid at 56x56 for a 448 crop (as Swin-T at 224),
# ~1.7 GFLOP and 4.8M parameters per image.
register(
    ScorerConfig(
        "swin_compact",
        embed_dim=40,
        depths=(2, 2, 6, 2),
        num_heads=(2, 4, 8, 16),
        patch_size=8,
        notes="CPU default, ~1.7 GFLOP/img at 448",
    )
)
# The shipped CPU default: swin_compact plus the in-graph quality statistics and their head
# of 10 MLPs (5 cross-fitted, 5 on every photo with a cross_fit = 5 stats stage).
register(
    ScorerConfig(
        "swin_compact_stats",
        embed_dim=40,
        depths=(2, 2, 6, 2),
        num_heads=(2, 4, 8, 16),
        patch_size=8,
        stats=True,
        stats_heads=10,
        notes="CPU default with fused statistics, ~1.7 GFLOP/img at 448",
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
# Full-resolution tokens (patch 4) at a small width: ~4.3 GFLOP, 3.1M parameters.
register(
    ScorerConfig(
        "swin_compact_p4",
        embed_dim=32,
        depths=(2, 2, 6, 2),
        num_heads=(1, 2, 4, 8),
        notes="finer tokens, ~4.3 GFLOP/img at 448",
    )
)
# timm's standard sizes, at 448 (timm weight names: swin_{tiny,small,base}_patch4_window7_224).
register(ScorerConfig("swin_tiny_448", 96, (2, 2, 6, 2), (3, 6, 12, 24), drop_path_rate=0.2, notes="~36 GFLOP/img"))
register(ScorerConfig("swin_small_448", 96, (2, 2, 18, 2), (3, 6, 12, 24), drop_path_rate=0.3, notes="~70 GFLOP/img"))
register(ScorerConfig("swin_base_448", 128, (2, 2, 18, 2), (4, 8, 16, 32), drop_path_rate=0.5, notes="~124 GFLOP/img"))


def _register_prior_models() -> None:
    from .prior import PriorSwinConfig

    # The shipped default: EfficientNet-Lite0's ImageNet stages (frozen, from a PyPI package)
    # as the patch embedding of two Swin stages, fused with its pooled statistics in one head.
    register(
        PriorSwinConfig("lite0_swin", notes="default: pretrained Lite0 trunk + Swin at 28/14, ~3 GFLOP/img at 448")
    )
    # The same Swin over the same tokens, without the pooled statistics in the head.
    register(PriorSwinConfig("lite0_swin_only", use_pooled=False, notes="Swin over the Lite0 tokens alone"))
    # Larger priors from the same family (issue 23): Lite1 has Lite0's widths, Lite2 its own.
    register(PriorSwinConfig("lite1_swin", prior="lite1", notes="pretrained Lite1 trunk + Swin at 28/14"))
    register(PriorSwinConfig("lite2_swin", prior="lite2", notes="pretrained Lite2 trunk + Swin at 28/14"))
    register(
        PriorSwinConfig(
            "lite0_swin_test", embed_dim=8, depths=(1, 1), num_heads=(1, 1), drop_path_rate=0.0, notes="tests only"
        )
    )


_register_prior_models()


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_config(name: str) -> ScorerConfig:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(list_models())}") from None


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


class TwinScorer(nn.Module):
    """Two branches with shared weights: (a, b) -> (score_a, score_b), for MSE + rank loss."""

    def __init__(self, scorer: SwinScorer):
        super().__init__()
        self.scorer = scorer

    def forward(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        member_a: torch.Tensor | None = None,
        member_b: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised scores of both images (see `SwinScorer.forward_z` for members). One
        pass over the concatenation: same weights, one kernel launch per layer."""
        member = None if member_a is None else torch.cat([member_a, member_b])
        scores = self.scorer.forward_z(torch.cat([a, b], dim=0), member)
        return scores[: a.shape[0]], scores[a.shape[0] :]


def create_model(name: str = "swin_compact", twin: bool = False, pretrained: bool = True, **overrides) -> nn.Module:
    """A scorer by registered name. `pretrained` (prior models only): load the packaged
    ImageNet weights into the trunk; a checkpoint that carries them passes False."""
    cfg = get_config(name)
    if overrides:
        cfg = type(cfg)(**{**cfg.to_dict(), **overrides})
    if isinstance(cfg, ScorerConfig):
        scorer = SwinScorer(cfg)
    else:
        from .prior import PriorSwinScorer

        scorer = PriorSwinScorer(cfg, pretrained=pretrained)
    return TwinScorer(scorer) if twin else scorer
