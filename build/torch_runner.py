"""The scorer in PyTorch for the `gpu-torch` target: PIXELS [N,3,448,448] UINT8 -> SCORE [N,1].

Triton's python backend runs it (build/torch_scorer_model.py) where no TensorRT or ONNX
Runtime backend is at hand, e.g. the Triton 2.51 of the nvidia-pytriton wheel on a GPU host
that has PyTorch. On CUDA:
- FP16 through autocast; what the model keeps FP32 under autocast (the statistics, the
  prior's pooled moments) stays FP32, as in training;
- one CUDA graph per batch bucket (1, 2, 4, ... max_batch): a batch is padded up to its
  bucket and replayed, so a small batch costs one graph launch, not hundreds of kernels.
On CPU (the dry run of perf/gpu_run.py) it is the plain FP32 model.

It runs the module the ONNX export traces (build/pixels.py: normalisation, then the network)
and the output guard the ONNX graph carries (build/export_onnx.add_score_guard): NaN for an
item whose raw score is not finite; every other score clipped to [0, 1].
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .pixels import PixelsScorer

log = logging.getLogger(__name__)


def guard(raw: torch.Tensor) -> torch.Tensor:
    """The ONNX graph's guard, in torch. `|x| < huge` is false for NaN, as in the graph."""
    return torch.where(raw.abs() < 1e30, raw.clamp(0.0, 1.0), torch.full_like(raw, float("nan")))


def buckets(max_batch: int) -> list[int]:
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return sizes + [max_batch]


class TorchScorer:
    """A loaded checkpoint, ready to score numpy PIXELS on one device."""

    def __init__(self, checkpoint: str | Path, device: str = "cuda", fp16: bool = True, cuda_graphs: bool = True,
                 max_batch: int = 64):
        from sampleiqa.training.checkpoint import load_scorer

        self.device = torch.device(device)
        model, _ = load_scorer(checkpoint)
        self.model = PixelsScorer(model).to(self.device).eval().float()
        on_gpu = self.device.type == "cuda"
        self.fp16 = fp16 and on_gpu
        self.max_batch = max_batch
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        if on_gpu and cuda_graphs:
            self._capture()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.fp16):
            raw = self.model(x).float()  # normalised in FP32 first: autocast leaves elementwise ops be
        return guard(raw)

    @torch.inference_mode()
    def _capture(self) -> None:
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for size in buckets(self.max_batch):
                static_in = torch.zeros(size, 3, *self._hw(), dtype=torch.uint8, device=self.device)
                for _ in range(2):  # warm-up: cuDNN/cuBLAS pick their kernels outside the capture
                    self._forward(static_in)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=stream):
                    static_out = self._forward(static_in)
                self.graphs[size] = (graph, static_in, static_out)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        log.info("captured CUDA graphs for batches %s", sorted(self.graphs))

    def _hw(self) -> tuple[int, int]:
        size = getattr(getattr(self.model, "config", None), "img_size", 448)
        return size, size

    @torch.inference_mode()
    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """PIXELS uint8 [N,3,H,W] -> float32 [N,1]; N may exceed max_batch (scored in chunks)."""
        out = []
        for start in range(0, len(pixels), self.max_batch):
            chunk = torch.from_numpy(np.ascontiguousarray(pixels[start:start + self.max_batch]))
            n = len(chunk)
            bucket = next((b for b in sorted(self.graphs) if b >= n), None)
            if bucket is None:
                out.append(self._forward(chunk.to(self.device, non_blocking=True)).cpu())
                continue
            graph, static_in, static_out = self.graphs[bucket]
            static_in[:n].copy_(chunk, non_blocking=True)
            static_in[n:].zero_()  # padding: zeros are valid pixels, their scores are dropped
            graph.replay()
            out.append(static_out[:n].cpu())
        return torch.cat(out).numpy().astype(np.float32)
