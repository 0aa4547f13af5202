"""OpenCV's cv2.resize (INTER_AREA, INTER_LINEAR) on uint8 images, as two matmuls in torch.

A resize is separable: out = Wy @ img @ Wx^T, with one weight matrix per axis built on the
host the way OpenCV builds its tables (modules/imgproc/src/resize.cpp), so that the torch
path (on a GPU, or on CPU in CI) gives OpenCV's pixels to within one grey level:

- INTER_AREA, shrinking (both axes out <= in): a box filter with fractional coverage at the
  cell edges (computeResizeAreaTab, coverages under 1e-3 dropped). With an exact integer
  factor OpenCV takes its "fast" path: the same weights, but a 2x2 cell rounds half up
  ((sum + 2) >> 2) while every other path rounds half to even (cvRound); `resize` does the same.
- INTER_AREA where an axis grows: OpenCV falls back to bilinear with "area mode" offsets.
- INTER_LINEAR: half-pixel centres, taps clamped at the border, coefficients in 11-bit fixed
  point (INTER_RESIZE_COEF_BITS) as OpenCV uses for 8-bit images.

The matmuls run in float32: keep TF32 off for them on a GPU (torch's default).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

COEF_SCALE = 2048  # OpenCV's INTER_RESIZE_COEF_SCALE (1 << 11)


def _inv_scale(in_len: int, out_len: int) -> tuple[float, float]:
    inv = out_len / in_len  # OpenCV: inv_scale = dsize / ssize, scale = 1 / inv_scale
    return 1.0 / inv, inv


def area_weights(in_len: int, out_len: int) -> np.ndarray:
    """[out_len, in_len] float64 INTER_AREA weights for shrinking (out_len <= in_len)."""
    if out_len > in_len:
        raise ValueError(f"area_weights shrinks only ({in_len} -> {out_len}); see resize()")
    scale, _ = _inv_scale(in_len, out_len)
    w = np.zeros((out_len, in_len), np.float64)
    for dx in range(out_len):
        fsx1 = dx * scale
        fsx2 = fsx1 + scale
        cell = min(scale, in_len - fsx1)
        sx2 = min(math.floor(fsx2), in_len - 1)
        sx1 = min(math.ceil(fsx1), sx2)
        if sx1 - fsx1 > 1e-3:
            w[dx, sx1 - 1] = np.float32((sx1 - fsx1) / cell)
        w[dx, sx1:sx2] = np.float32(1.0 / cell)
        if fsx2 - sx2 > 1e-3:
            w[dx, sx2] = np.float32(min(min(fsx2 - sx2, 1.0), cell) / cell)
    return w


def _two_tap(in_len: int, out_len: int, area_mode: bool) -> np.ndarray:
    scale, inv = _inv_scale(in_len, out_len)
    w = np.zeros((out_len, in_len), np.float64)
    for dx in range(out_len):
        if area_mode:
            sx = math.floor(dx * scale)
            fx = float(np.float32((dx + 1) - (sx + 1) * inv))
            fx = 0.0 if fx <= 0 else fx - math.floor(fx)
        else:
            fx = float(np.float32((dx + 0.5) * scale - 0.5))  # OpenCV computes fx in float
            sx = math.floor(fx)
            fx -= sx
        if sx < 0:
            fx, sx = 0.0, 0
        if sx >= in_len - 1:
            fx, sx = 0.0, in_len - 1
        # OpenCV rounds each coefficient to short on its own (cvRound: half to even)
        c0 = float(np.rint(np.float32(1.0 - np.float32(fx)) * COEF_SCALE))
        c1 = float(np.rint(np.float32(fx) * COEF_SCALE))
        w[dx, sx] += c0 / COEF_SCALE
        w[dx, min(sx + 1, in_len - 1)] += c1 / COEF_SCALE
    return w


def linear_weights(in_len: int, out_len: int) -> np.ndarray:
    """[out_len, in_len] float64 INTER_LINEAR weights (half-pixel centres, border clamp)."""
    return _two_tap(in_len, out_len, area_mode=False)


@lru_cache(maxsize=256)
def _host_weights(in_len: int, out_len: int, kind: str) -> torch.Tensor:
    if kind == "area":
        w = area_weights(in_len, out_len)
    elif kind == "area_linear":
        w = _two_tap(in_len, out_len, area_mode=True)
    else:
        w = linear_weights(in_len, out_len)
    return torch.from_numpy(w.astype(np.float32))


@lru_cache(maxsize=256)
def weights(in_len: int, out_len: int, kind: str, device: str) -> torch.Tensor:
    """The float32 weight matrix of one axis on `device` (cached: a batch repeats sizes)."""
    return _host_weights(in_len, out_len, kind).to(device)


def _fast_area_factor(in_h: int, in_w: int, out_h: int, out_w: int) -> int | None:
    """OpenCV's is_area_fast: both scales integers (to DBL_EPSILON); the factor when both are 2."""
    sx, _ = _inv_scale(in_w, out_w)
    sy, _ = _inv_scale(in_h, out_h)
    ix, iy = round(sx), round(sy)
    if abs(sx - ix) < np.finfo(float).eps and abs(sy - iy) < np.finfo(float).eps:
        return ix if ix == iy else 0
    return None


def resize(img: torch.Tensor, out_h: int, out_w: int, mode: str = "area") -> torch.Tensor:
    """[..., C, H, W] image (uint8 or float, values 0..255) -> float32 [..., C, out_h, out_w],
    cv2.resize's values before rounding. `to_uint8` rounds them as OpenCV does for `mode`."""
    in_h, in_w = img.shape[-2:]
    x = img if img.dtype == torch.float32 else img.float()
    if (in_h, in_w) == (out_h, out_w):
        return x  # cv2.resize copies when the size does not change
    if mode == "area":
        kind = "area" if out_h <= in_h and out_w <= in_w else "area_linear"
    elif mode == "linear":
        kind = "linear"
    else:
        raise ValueError(f"unknown resize mode {mode!r}: 'area' or 'linear'")
    dev = str(x.device)
    wy = weights(in_h, out_h, kind, dev)
    wx = weights(in_w, out_w, kind, dev)
    # The cheaper order first: both contract the larger axis in the first product.
    if out_h * in_w <= in_h * out_w:
        return torch.matmul(torch.matmul(wy, x), wx.T)
    return torch.matmul(wy, torch.matmul(x, wx.T))


def to_uint8(x: torch.Tensor, half_up: bool = False) -> torch.Tensor:
    """Round (half to even, as cvRound; half up when `half_up`) and saturate to uint8."""
    r = torch.floor(x + 0.5) if half_up else torch.round(x)
    return r.clamp_(0, 255).to(torch.uint8)


def resize_uint8(img: torch.Tensor, out_h: int, out_w: int, mode: str = "area") -> torch.Tensor:
    """cv2.resize(img, (out_w, out_h), interpolation=INTER_AREA | INTER_LINEAR) on a [..., C, H, W]
    uint8 tensor, to within one grey level."""
    in_h, in_w = img.shape[-2:]
    if (in_h, in_w) == (out_h, out_w):
        return img.clone() if img.dtype == torch.uint8 else to_uint8(img.float())
    half_up = mode == "area" and _fast_area_factor(in_h, in_w, out_h, out_w) == 2
    return to_uint8(resize(img, out_h, out_w, mode), half_up)
