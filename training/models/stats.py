"""Cheap, fixed image statistics computed inside the network, fused into the scorer's head.

Sharpness, noise and exposure explain much of perceived quality, and a transformer trained
from scratch on a few thousand photos learns them slowly. These statistics are computed
from the same normalised crop the backbone sees, with ops that export to ONNX (conv,
pooling, TopK), so the served model stays one graph with one input. Nothing here is
learned; a standardisation fitted on the training set is kept in buffers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sampleiqa.contracts import MEAN, STD

SCALES = 3  # 448, 224, 112
BLOCK = 16  # block size for the distribution of local detail energy
TAIL = 0.1  # fraction of blocks in the "flattest" and "most detailed" tails
EPS = 1e-6

FEATURE_NAMES = tuple(
    [f"s{s}_{n}" for s in range(SCALES) for n in
     ("log_lap_energy", "log_grad_mean", "log_block_energy_mean", "log_block_energy_low", "log_block_energy_high")]
    + ["luma_mean", "luma_std", "clip_dark", "clip_bright", "sat_mean", "sat_std", "colourfulness", "local_contrast"]
)


class QualityStats(nn.Module):
    """Normalised image [N,3,H,W] -> standardised statistics [N, len(FEATURE_NAMES)]."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))
        self.register_buffer("luma", torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1))
        lap = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
        sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 4
        self.register_buffer("kernels", torch.stack([lap, sobel_x, sobel_x.T]).unsqueeze(1))
        n = len(FEATURE_NAMES)
        self.register_buffer("feature_mean", torch.zeros(n))
        self.register_buffer("feature_std", torch.ones(n))

    @property
    def num_features(self) -> int:
        return len(FEATURE_NAMES)

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        rgb = (x * self.std + self.mean).clamp(0, 1)
        gray = (rgb * self.luma).sum(1, keepdim=True)
        feats = []
        g = gray
        for _ in range(SCALES):
            r = F.conv2d(g, self.kernels)  # [N,3,h,w]: laplacian, gx, gy
            lap2 = r[:, :1] ** 2
            grad = torch.sqrt(r[:, 1:2] ** 2 + r[:, 2:3] ** 2 + EPS)
            blocks = torch.log(F.avg_pool2d(lap2, BLOCK).flatten(1) + EPS)  # [N, B]
            k = max(1, int(blocks.shape[1] * TAIL))
            feats += [
                torch.log(lap2.mean((1, 2, 3)) + EPS),
                torch.log(grad.mean((1, 2, 3)) + EPS),
                blocks.mean(1),
                -torch.topk(-blocks, k, dim=1).values.mean(1),  # flattest blocks: the noise floor
                torch.topk(blocks, k, dim=1).values.mean(1),  # most detailed blocks: peak sharpness
            ]
            g = F.avg_pool2d(g, 2)
        luma = gray.flatten(1)
        sat = rgb.amax(1) - rgb.amin(1)
        rg = rgb[:, 0] - rgb[:, 1]
        yb = 0.5 * (rgb[:, 0] + rgb[:, 1]) - rgb[:, 2]
        colourfulness = torch.sqrt(rg.var((1, 2)) + yb.var((1, 2)) + EPS) + 0.3 * torch.sqrt(
            rg.mean((1, 2)) ** 2 + yb.mean((1, 2)) ** 2 + EPS)
        local_mean = F.avg_pool2d(gray, 8)
        local_var = (F.avg_pool2d(gray * gray, 8) - local_mean * local_mean).clamp_min(0)
        feats += [
            luma.mean(1), luma.std(1), (luma < 0.02).float().mean(1), (luma > 0.98).float().mean(1),
            sat.flatten(1).mean(1), sat.flatten(1).std(1), colourfulness,
            torch.sqrt(local_var + EPS).flatten(1).mean(1),
        ]
        return torch.stack(feats, 1)

    @torch.no_grad()
    def fit(self, raw_features: torch.Tensor) -> None:
        """Set the standardisation from raw statistics of training images."""
        self.feature_mean.copy_(raw_features.mean(0))
        self.feature_std.copy_(raw_features.std(0).clamp_min(1e-4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.raw(x) - self.feature_mean) / self.feature_std
