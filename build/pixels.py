"""The served scorer in PyTorch: PIXELS uint8 [N,3,H,W] -> the network's raw score.

Every target serves this module: the ONNX export traces it (cpu, gpu-onnx, gpu-trt) and the
gpu-torch runner runs it, so the uint8 crop is normalised the same way everywhere, with the
constants training uses (sampleiqa/runtime/preprocessing/normalize.py). The normalisation is its own
submodule, so its ONNX nodes are named /normalize/... and the FP16 copy keeps them FP32.
"""

from __future__ import annotations

import torch

from sampleiqa.runtime.preprocessing.normalize import SCALE, SHIFT


class Normalize(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.from_numpy(SCALE.copy()).view(1, 3, 1, 1))
        self.register_buffer("shift", torch.from_numpy(SHIFT.copy()).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.float() * self.scale + self.shift


class PixelsScorer(torch.nn.Module):
    """uint8 PIXELS in, the wrapped model's raw score out."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.normalize = Normalize()
        self.model = model
        self.config = getattr(model, "config", None)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(pixels))
