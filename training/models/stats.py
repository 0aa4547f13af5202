"""Fixed image statistics computed inside the network, fused into the scorer's head.

Sharpness, noise, compression and exposure explain much of perceived quality, and a
transformer trained from scratch on a few thousand photos learns them slowly. These
statistics are computed from the same normalised crop the backbone sees, with ops that
export to ONNX (conv, pooling, TopK, Atan2), so the served model stays one graph with one input.
Nothing here is learned; a standardisation fitted on the training set is kept in buffers.

Groups (see `FEATURE_NAMES`):
- basic: multi-scale Laplacian/gradient energy and its spread over 16px blocks, exposure,
  clipping, saturation, colourfulness, local contrast. Any image size; the `stats_gbm`
  baseline uses this group alone.
- dct: log energy and zero fraction of each of the 63 AC coefficients of the 8x8 DCT of the
  luma, at full and half resolution: the spectrum that blur, noise and JPEG quantisation
  reshape (the crop sits on the JPEG block grid when its offset is a multiple of 8).
- mscn: BRISQUE-style moments (spread, shape, skew, left and right spread) of
  mean-subtracted contrast-normalised luma at three scales, and of its products with the
  four neighbours at two: naturalness.
- colour: the same moments of the two opponent chroma channels (chroma noise, bleeding)
  and a hue histogram weighted by chroma (colour grading), at half resolution.
- texture: histograms of log gradient magnitude at three scales, GM-LOG-style histograms of
  jointly normalised gradient and Laplacian responses at two (Xue et al. 2014: local
  structure, contrast-invariant), and rotation-invariant uniform local binary patterns.
- tone: a 16-bin luma histogram, its entropy, luma quantiles, per-channel mean and spread.
- layout: quantiles and a 4x4 map of local sharpness at two scales (depth of field, motion
  blur), saturation levels and a 4x4 brightness map (composition, vignetting).
The dct, tone and layout groups assume the scorer's square CROP input.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sampleiqa.runtime.contracts import MEAN, STD

from .stats_ops import (
    BASIC_NAMES,
    BLOCK,
    EPS,
    FEATURE_NAMES,
    GMLOG_EDGES,
    GRAD_EDGES,
    HIST_BINS,
    HUE_EDGES,
    LBP_NEIGHBOURS,
    LBP_THRESHOLD,
    LUMA_QUANTILES,
    NEIGHBOURS,
    QUANTILE_STRIDE,
    QUANTILES,
    SAT_LEVELS,
    SCALES,
    TAIL,
    Responses,
    dct_basis,
    gaussian_kernel,
    histogram,
    moments,
    opponent,
    pick,
    sorted_rows,
)

__all__ = ["BASIC_NAMES", "FEATURE_NAMES", "QualityStats", "StatsHead"]


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
        self.register_buffer("dct", dct_basis())
        self.register_buffer("gaussian", gaussian_kernel())
        n = len(FEATURE_NAMES)
        self.register_buffer("feature_mean", torch.zeros(n))
        self.register_buffer("feature_std", torch.ones(n))

    @property
    def num_features(self) -> int:
        return len(FEATURE_NAMES)

    def _rgb_gray(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rgb = (x.float() * self.std + self.mean).clamp(0, 1)
        return rgb, (rgb * self.luma).sum(1, keepdim=True)

    def _pyramid(self, gray: torch.Tensor) -> list[torch.Tensor]:
        """The luma at full, half and quarter resolution, shared by every group."""
        grays = [gray]
        for _ in range(SCALES - 1):
            grays.append(F.avg_pool2d(grays[-1], 2))
        return grays

    def _responses(self, grays: list[torch.Tensor]) -> list[Responses]:
        """The Laplacian and Sobel gradient of each scale, computed once for every group."""
        out = []
        for g in grays:
            r = F.conv2d(g, self.kernels)  # [N,3,h,w]: laplacian, gx, gy
            grad2 = r[:, 1:2] ** 2 + r[:, 2:3] ** 2
            out.append(Responses(r[:, :1], grad2, torch.sqrt(grad2 + EPS)))
        return out

    def basic(self, x: torch.Tensor) -> torch.Tensor:
        """The basic group [N, len(BASIC_NAMES)], for any image size."""
        rgb, gray = self._rgb_gray(x)
        grays = self._pyramid(gray)
        return self._basic(rgb, grays, self._responses(grays))[0]

    def _basic(
        self, rgb: torch.Tensor, grays: list[torch.Tensor], responses: list[Responses]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The basic group, and the maps of log Laplacian energy per 16px block at each scale
        [N,1,bh,bw] (the layout group reads them too)."""
        feats, block_maps = [], []
        for r in responses:
            lap2 = r.lap**2
            block_maps.append(torch.log(F.avg_pool2d(lap2, BLOCK) + EPS))
            blocks = block_maps[-1].flatten(1)  # [N, B]
            k = max(1, int(blocks.shape[1] * TAIL))
            feats += [
                torch.log(lap2.mean((1, 2, 3)) + EPS),
                torch.log(r.grad.mean((1, 2, 3)) + EPS),
                blocks.mean(1),
                -torch.topk(-blocks, k, dim=1).values.mean(1),  # flattest blocks: the noise floor
                torch.topk(blocks, k, dim=1).values.mean(1),  # most detailed blocks: peak sharpness
            ]
        gray = grays[0]
        luma = gray.flatten(1)
        sat = rgb.amax(1) - rgb.amin(1)
        rg, yb = opponent(rgb)
        colourfulness = torch.sqrt(rg.var((1, 2, 3)) + yb.var((1, 2, 3)) + EPS) + 0.3 * torch.sqrt(
            rg.mean((1, 2, 3)) ** 2 + yb.mean((1, 2, 3)) ** 2 + EPS
        )
        local_mean = F.avg_pool2d(gray, 8)
        local_var = (F.avg_pool2d(gray * gray, 8) - local_mean * local_mean).clamp_min(0)
        feats += [
            luma.mean(1),
            luma.std(1),
            (luma < 0.02).float().mean(1),
            (luma > 0.98).float().mean(1),
            sat.flatten(1).mean(1),
            sat.flatten(1).std(1),
            colourfulness,
            torch.sqrt(local_var + EPS).flatten(1).mean(1),
        ]
        return torch.stack(feats, 1), block_maps

    def _dct(self, gray: torch.Tensor) -> torch.Tensor:
        c = F.conv2d(gray * 255, self.dct, stride=8)[:, 1:]  # AC coefficients of each 8x8 block
        return torch.cat([torch.log((c * c).mean((2, 3)) + 1e-3), (c.abs() < 0.5).float().mean((2, 3))], 1)

    def _mscn_map(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The MSCN map of one channel [N,1,h,w] and its local deviation."""
        r = self.gaussian.shape[-1] // 2
        n = g.shape[0]  # the batch: stays symbolic in the exported graph
        blurred = F.conv2d(torch.cat([g, g * g], 0), self.gaussian)  # local mean and second moment
        mu, sigma = blurred[:n], (blurred[n:] - blurred[:n] ** 2).clamp_min(0).sqrt()
        return ((g[:, :, r:-r, r:-r] - mu) / (sigma + 1 / 255))[:, :, 1:-1, 1:-1], sigma

    def _mscn(self, grays: list[torch.Tensor]) -> list[torch.Tensor]:
        feats = []
        for s, g in enumerate(grays):
            m = self._mscn_map(g)[0]
            feats += moments(m)
            if s >= 2:
                continue
            h, w = m.shape[2], m.shape[3]
            for dy, dx in NEIGHBOURS:
                p = m[:, :, : h - dy, max(0, -dx) : w - max(0, dx)] * m[:, :, dy:, max(0, dx) : w - max(0, -dx)]
                feats += [p.mean((1, 2, 3)), p.abs().mean((1, 2, 3)), (p * p).mean((1, 2, 3))]
        return feats

    def _tone(self, rgb: torch.Tensor, gray: torch.Tensor) -> list[torch.Tensor]:
        luma = gray.flatten(1)[:, ::7]  # every 7th pixel is plenty for a histogram
        hist = histogram(luma, [i / HIST_BINS for i in range(1, HIST_BINS)])
        entropy = -(hist * torch.log(hist + EPS)).sum(1, keepdim=True)
        # Quantiles from every 56th pixel (3,584 at 448x448): the sort exports as TopK, and
        # TensorRT caps TopK's K at 3,840 (28,672 samples would not build).
        quantiles = pick(sorted_rows(gray.flatten(1)[:, ::QUANTILE_STRIDE]), LUMA_QUANTILES)
        return [hist, entropy, quantiles, rgb.mean((2, 3)), rgb.flatten(2).std(2)]

    def _layout(self, rgb: torch.Tensor, gray: torch.Tensor, block_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        feats = []
        for blocks in block_maps[:2]:
            flat = blocks.flatten(1)
            feats += [
                pick(sorted_rows(flat), QUANTILES),
                F.avg_pool2d(blocks, (int(blocks.shape[2]) // 4, int(blocks.shape[3]) // 4)).flatten(1)[:, :16],
                flat.std(1, keepdim=True),
            ]
        hi, lo = rgb.amax(1), rgb.amin(1)
        sat = ((hi - lo) / (hi + EPS)).flatten(1)
        feats.append(torch.stack([(sat < t).float().mean(1) for t in SAT_LEVELS], 1))
        feats.append(F.avg_pool2d(gray, (int(gray.shape[2]) // 4, int(gray.shape[3]) // 4)).flatten(1)[:, :16])
        return feats

    def _colour(self, rgb: torch.Tensor) -> list[torch.Tensor]:
        rgb = F.avg_pool2d(rgb, 2)  # JPEG keeps chroma at half resolution (4:2:0): nothing is lost
        feats = []
        for c in opponent(rgb):
            m, sigma = self._mscn_map(c)
            feats += moments(m) + [sigma.mean((1, 2, 3))]
        r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
        hue = torch.atan2(math.sqrt(3) * (g - b), 2 * r - g - b).flatten(1)
        chroma = (rgb.amax(1) - rgb.amin(1)).flatten(1)
        chroma = chroma * (chroma > 2 / 255)  # within two levels of grey a pixel has no hue
        return [torch.stack(feats, 1), histogram(hue, HUE_EDGES, weights=chroma)]

    def _texture(self, grays: list[torch.Tensor], responses: list[Responses]) -> list[torch.Tensor]:
        feats = []
        for r in responses:
            feats.append(histogram(torch.log10(torch.sqrt(r.grad2 + 1e-10) * 255 + 1e-2).flatten(1), GRAD_EDGES))
        for r in responses[:2]:
            gm, lap = r.grad, r.lap.abs()
            norm = torch.sqrt(F.avg_pool2d(gm**2 + lap**2, 5, 1, 2)) + 0.2 / 255  # joint adaptive normalisation
            feats += [histogram((gm / norm).flatten(1), GMLOG_EDGES), histogram((lap / norm).flatten(1), GMLOG_EDGES)]
        for g in grays[:2]:
            centre = g[:, :, 1:-1, 1:-1]
            h, w = centre.shape[2], centre.shape[3]
            bits = [
                (g[:, :, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] >= centre + LBP_THRESHOLD).float()
                for dy, dx in LBP_NEIGHBOURS
            ]
            ones = sum(bits)
            transitions = sum((bits[i] - bits[(i + 1) % 8]).abs() for i in range(8))
            code = torch.where(transitions <= 2, ones, torch.full_like(ones, 9)).flatten(1)  # 9: not uniform
            feats.append(torch.stack([(code == k).float().mean(1) for k in range(10)], 1))
        return feats

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        rgb, gray = self._rgb_gray(x)
        grays = self._pyramid(gray)
        responses = self._responses(grays)
        basic, block_maps = self._basic(rgb, grays, responses)
        return torch.cat(
            [
                basic,
                self._dct(grays[0]),
                self._dct(grays[1]),
                torch.stack(self._mscn(grays), 1),
                *self._tone(rgb, gray),
                *self._layout(rgb, gray, block_maps),
                *self._colour(rgb),
                *self._texture(grays, responses),
            ],
            1,
        )

    @torch.no_grad()
    def fit(self, raw_features: torch.Tensor) -> None:
        """Set the standardisation from raw statistics of training images."""
        self.feature_mean.copy_(raw_features.mean(0))
        self.feature_std.copy_(raw_features.std(0).clamp_min(1e-4))

    def standardise(self, raw_features: torch.Tensor) -> torch.Tensor:
        return (raw_features - self.feature_mean) / self.feature_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.standardise(self.raw(x))


class StatsHead(nn.Module):
    """Standardised statistics -> standardised score: the mean of `heads` small MLPs.

    Heads differ in their initialisation and dropout (and, in a cross-fitted `stats` stage,
    in the fold of photos each never sees), so averaging them removes the variance of a
    single MLP fitted on a few thousand photos (+.01-.02 validation SROCC on BIQ2021, see
    training/results)."""

    def __init__(self, num_features: int, hidden: int, heads: int = 1, dropout: float = 0.0):
        super().__init__()
        self.mlps = nn.ModuleList(
            nn.Sequential(
                nn.Dropout(dropout / 3),
                nn.Linear(num_features, hidden),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(hidden, hidden),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(hidden, 1),
            )
            for _ in range(heads)
        )

    def each(self, features: torch.Tensor) -> torch.Tensor:
        """Every head's score [N, heads], for training the heads independently."""
        return torch.cat([mlp(features) for mlp in self.mlps], 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.each(features).mean(1, keepdim=True)
