"""Twin losses: MSE on each branch's score plus lambda times a pairwise rank loss.

The rank loss is the fidelity loss on Thurstone probabilities (as in UNIQUE and LIQE):
p_hat = Phi((s_a - s_b) / sqrt(2)) is the predicted chance that a beats b, compared with
the label's p (1, 0, or 0.5 for a tie) by 1 - sqrt(p p_hat) - sqrt((1-p)(1-p_hat)).
We use it rather than a margin hinge because it is bounded and smooth, treats ties
correctly (a hinge with margin pushes tied pairs apart), and needs no margin tuned to a
dataset's score scale (scores are standardised in training). `RANK_LOSSES` holds both;
configs pick one by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _target(ya: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    return (ya > yb).float() + 0.5 * (ya == yb).float()


def fidelity_rank_loss(sa: torch.Tensor, sb: torch.Tensor, ya: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    p = _target(ya, yb)
    p_hat = (0.5 * (1 + torch.erf((sa - sb) / 2.0))).clamp(1e-6, 1 - 1e-6)  # Phi(d / sqrt 2)
    return (1 - torch.sqrt(p * p_hat + 1e-8) - torch.sqrt((1 - p) * (1 - p_hat) + 1e-8)).mean()


def margin_rank_loss(
    sa: torch.Tensor, sb: torch.Tensor, ya: torch.Tensor, yb: torch.Tensor, margin: float = 0.1
) -> torch.Tensor:
    sign = torch.sign(ya - yb)
    keep = sign != 0  # a tie says nothing about the order
    if not keep.any():
        return sa.sum() * 0
    return F.margin_ranking_loss(sa[keep], sb[keep], sign[keep], margin=margin)


RANK_LOSSES = {"fidelity": fidelity_rank_loss, "margin": margin_rank_loss}


def twin_loss(
    sa, sb, ya, yb, rank_weight: float = 1.0, rank: str = "fidelity", mse_weight: float = 1.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """(loss, parts) for standardised predictions and labels of the two branches."""
    sa, sb = sa.float().view(-1), sb.float().view(-1)
    mse = 0.5 * (F.mse_loss(sa, ya) + F.mse_loss(sb, yb)) if mse_weight else sa.sum() * 0
    rank_term = RANK_LOSSES[rank](sa, sb, ya, yb)
    loss = mse_weight * mse + rank_weight * rank_term
    return loss, {"mse": float(mse.detach()), "rank": float(rank_term.detach())}
