"""The twin: one scorer with shared weights over two images, for MSE + rank loss."""

from __future__ import annotations

import torch
from torch import nn


class TwinScorer(nn.Module):
    """Two branches with shared weights: (a, b) -> (score_a, score_b), standardised."""

    def __init__(self, scorer: nn.Module):
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
