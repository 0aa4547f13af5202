"""The fused statistics' constants, feature names and tensor helpers (training/models/stats.py
computes them; the names are its output's columns, read by baselines and studies too)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

SCALES = 3  # 448, 224, 112
BLOCK = 16  # block size for the distribution of local detail energy
TAIL = 0.1  # fraction of blocks in the "flattest" and "most detailed" tails
EPS = 1e-6
QUANTILES = (0.02, 0.1, 0.25, 0.5, 0.75, 0.9, 0.98)
LUMA_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
QUANTILE_STRIDE = 56  # luma samples for the quantiles: TopK K = 448*448/56 = 3,584 <= TensorRT's 3,840
HIST_BINS = 16
SAT_LEVELS = (0.1, 0.2, 0.35, 0.5, 0.7)
NEIGHBOURS = ((0, 1), (1, 0), (1, 1), (1, -1))
MOMENTS = ("var", "abs_ratio", "kurtosis", "skew", "left", "right")
# log10 of gradient magnitude in 8-bit levels; jointly normalised GM / |LoG| responses (max 5).
GRAD_EDGES = (-1.0, -0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
GMLOG_EDGES = (0.1, 0.2, 0.35, 0.5, 0.7, 0.9, 1.1, 1.4, 1.8)
HUE_EDGES = tuple(-math.pi + k * math.pi / 4 for k in range(1, 8))
LBP_THRESHOLD = 2 / 255  # a neighbour counts as brighter only past sensor-noise level
LBP_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))  # in circular order

BASIC_NAMES = tuple(
    [
        f"s{s}_{n}"
        for s in range(SCALES)
        for n in (
            "log_lap_energy",
            "log_grad_mean",
            "log_block_energy_mean",
            "log_block_energy_low",
            "log_block_energy_high",
        )
    ]
    + ["luma_mean", "luma_std", "clip_dark", "clip_bright", "sat_mean", "sat_std", "colourfulness", "local_contrast"]
)
FEATURE_NAMES = (
    BASIC_NAMES
    + tuple(f"dct{s}_{kind}_{k}" for s in range(2) for kind in ("log_energy", "zero") for k in range(1, 64))
    + tuple(
        f"mscn{s}_{n}"
        for s in range(SCALES)
        for n in MOMENTS
        + (tuple(f"pair{dy}{dx}_{m}" for dy, dx in NEIGHBOURS for m in ("mean", "abs", "sq")) if s < 2 else ())
    )
    + tuple(f"luma_hist_{i}" for i in range(HIST_BINS))
    + ("luma_entropy",)
    + tuple(f"luma_q{q}" for q in LUMA_QUANTILES)
    + tuple(f"{c}_{m}" for m in ("mean", "std") for c in "rgb")
    + tuple(
        f"sharp{s}_{n}"
        for s in range(2)
        for n in [f"q{q}" for q in QUANTILES] + [f"grid{i}" for i in range(16)] + ["spread"]
    )
    + tuple(f"sat_below_{t}" for t in SAT_LEVELS)
    + tuple(f"luma_grid{i}" for i in range(16))
    + tuple(f"{c}_mscn_{n}" for c in ("rg", "yb") for n in MOMENTS + ("sigma",))
    + tuple(f"hue_{k}" for k in range(len(HUE_EDGES) + 1))
    + tuple(f"grad{s}_hist_{b}" for s in range(SCALES) for b in range(len(GRAD_EDGES) + 1))
    + tuple(f"gmlog{s}_{kind}_{b}" for s in range(2) for kind in ("grad", "lap") for b in range(len(GMLOG_EDGES) + 1))
    + tuple(f"lbp{s}_{k}" for s in range(2) for k in range(10))
)


def dct_basis(n: int = 8) -> torch.Tensor:
    """The n*n 2-D DCT-II basis as conv kernels [n*n, 1, n, n] (orthonormal)."""
    k = torch.arange(n, dtype=torch.float64)
    rows = torch.stack(
        [math.sqrt((1 if u == 0 else 2) / n) * torch.cos((2 * k + 1) * u * math.pi / (2 * n)) for u in range(n)]
    )
    return torch.einsum("ui,vj->uvij", rows, rows).reshape(n * n, 1, n, n).float()


def gaussian_kernel(sigma: float = 7 / 6, size: int = 7) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None]).view(1, 1, size, size)  # one 7x7 conv beats two 1-D passes on CPU


def histogram(values: torch.Tensor, inner_edges, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Share of each row of values [N,P] in each bin [N, len(inner_edges) + 1] (open at both
    ends); with weights [N,P], the share of their total. One comparison per edge: the bins
    are differences of the cumulative shares."""
    if weights is None:
        below = [(values < e).float().mean(1) for e in inner_edges]
        total = torch.ones_like(below[0])
    else:
        below = [((values < e).float() * weights).sum(1) for e in inner_edges]
        total = weights.sum(1)
    cumulative = torch.stack([torch.zeros_like(total)] + below + [total], 1)
    return (cumulative[:, 1:] - cumulative[:, :-1]) / (total[:, None] + (EPS if weights is not None else 0))


def opponent(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The red-green and yellow-blue opponent channels [N,1,H,W] of colourfulness metrics."""
    r, g, b = rgb[:, :1], rgb[:, 1:2], rgb[:, 2:]
    return r - g, 0.5 * (r + g) - b


def moments(m: torch.Tensor) -> list[torch.Tensor]:
    """Spread, shape, skew and left/right spread of an MSCN map [N,1,h,w] (what BRISQUE's
    asymmetric generalised Gaussian fit summarises); finite on a flat image."""
    m2 = (m * m).mean((1, 2, 3))
    neg = (m < 0).float()
    pos = 1 - neg
    return [
        m2,
        m.abs().mean((1, 2, 3)) / (m2 + EPS).sqrt(),
        (m**4).mean((1, 2, 3)) / (m2**2 + EPS),
        (m**3).mean((1, 2, 3)) / (m2**1.5 + EPS),
        torch.sqrt((m * m * neg).sum((1, 2, 3)) / neg.sum((1, 2, 3)).clamp_min(1)),
        torch.sqrt((m * m * pos).sum((1, 2, 3)) / pos.sum((1, 2, 3)).clamp_min(1)),
    ]


class Responses(NamedTuple):
    """Edge responses of one scale of the luma, shared by the basic and texture groups."""

    lap: torch.Tensor  # Laplacian [N,1,h,w]
    grad2: torch.Tensor  # squared Sobel gradient magnitude
    grad: torch.Tensor  # Sobel gradient magnitude, sqrt(grad2 + EPS)


def sorted_rows(rows: torch.Tensor) -> torch.Tensor:
    """Each row in ascending order. torch.sort exports as TopK with K read from the tensor's
    shape at run time; TensorRT wants K constant (and <= 3,840), so K is a Python int here."""
    return torch.topk(rows, int(rows.shape[1]), dim=1, largest=False, sorted=True).values


def pick(sorted_rows: torch.Tensor, quantiles) -> torch.Tensor:
    n = int(sorted_rows.shape[1])  # fixed by the crop size: a constant in the exported graph
    return sorted_rows[:, [round(q * (n - 1)) for q in quantiles]]
