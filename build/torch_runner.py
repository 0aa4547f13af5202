"""The scorer in PyTorch for the `gpu-torch` target: PIXELS [N,3,448,448] UINT8 -> SCORE [N,1].

Triton's python backend runs it (sampleiqa/runtime/triton_models/scorer_torch.py) where no TensorRT or ONNX
Runtime backend is at hand, e.g. the Triton 2.51 of the nvidia-pytriton wheel on a GPU host
that has PyTorch. On CUDA:
- FP16 weights at load for every convolution and linear layer outside the FP32 scopes (the
  statistics, the prior's pooled moments keep FP32, as in training and in the FP16 ONNX), so
  autocast's casts of them are no-ops instead of kernels on every replay;
- one CUDA graph per batch bucket (1, 2, 4, 8, then every 8 up to max_batch: batch 33 runs
  as 40, not 64), captured into one shared memory pool;
- inputs come as host arrays (Triton's shared memory) or as tensors already on the GPU
  (DLPack from the GPU preprocessing); host ones go through pinned staging buffers made
  once, uploaded on a side stream that overlaps the previous chunk's compute; no per-batch
  concatenation; the host waits once, for the scores.
On CPU (CI, and `--torch-device cpu`) the same code runs FP32 without streams or graphs.

It runs the module the ONNX export traces (build/pixels.py: normalisation, then the network)
and the output guard the ONNX graph carries (build/export_onnx.add_score_guard): NaN for an
item whose raw score is not finite; every other score clipped to [0, 1].
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Iterator, Sequence, Union

import numpy as np
import torch

from sampleiqa.runtime.contracts import GPU_MAX_BATCH

from .pixels import PixelsScorer

log = logging.getLogger(__name__)

Pixels = Union[np.ndarray, torch.Tensor]
# Module names whose weights stay FP32 (build/fp16.FP32_SCOPES for the ONNX copy).
FP32_MODULES = ("normalize", "model.stats", "model.stats_head", "model.trunk.moments")


def guard(raw: torch.Tensor) -> torch.Tensor:
    """The ONNX graph's guard, in torch. `|x| < huge` is false for NaN, as in the graph."""
    return torch.where(raw.abs() < 1e30, raw.clamp(0.0, 1.0), torch.full_like(raw, float("nan")))


def buckets(max_batch: int, step: int = 8) -> list[int]:
    """Padded batch sizes: powers of two up to `step`, then every `step`, then max_batch."""
    sizes, b = [], 1
    while b < min(step, max_batch):
        sizes.append(b)
        b *= 2
    sizes += list(range(b, max_batch, step))
    return sizes + [max_batch]


def half_weights(model: torch.nn.Module, keep: Sequence[str] = FP32_MODULES) -> torch.nn.Module:
    """FP16 weights for convolutions and linear layers outside `keep`; norms and buffers stay
    FP32 (autocast runs them in FP32)."""
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and not name.startswith(tuple(keep)):
            module.half()
    return model


def chunks(parts: Sequence[Pixels], size: int) -> Iterator[list[tuple[Pixels, int, int]]]:
    """Runs of at most `size` items over the requests' arrays, as (part, start, stop) slices:
    no request is joined to another before its items reach the staging buffer."""
    run, count = [], 0
    for part in parts:
        start = 0
        while start < len(part):
            take = min(size - count, len(part) - start)
            run.append((part, start, start + take))
            count, start = count + take, start + take
            if count == size:
                yield run
                run, count = [], 0
    if run:
        yield run


def as_tensor(part: Pixels) -> torch.Tensor:
    if isinstance(part, torch.Tensor):
        return part
    with warnings.catch_warnings():  # Triton's input arrays are read-only; they are only read
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.ascontiguousarray(part))


class TorchScorer:
    """A loaded checkpoint, ready to score PIXELS on one device."""

    def __init__(
        self,
        checkpoint: str | Path,
        device: str = "cuda",
        fp16: bool = True,
        cuda_graphs: bool = True,
        max_batch: int = GPU_MAX_BATCH,
        compile_mode: str | None = None,
    ):
        from sampleiqa.training.checkpoint import load_scorer

        self.device = torch.device(device)
        model, _ = load_scorer(checkpoint)
        self.model = PixelsScorer(model).to(self.device).eval().float()
        self.on_gpu = self.device.type == "cuda"
        self.fp16 = fp16 and self.on_gpu
        if self.fp16:
            half_weights(self.model)
        self.max_batch = max_batch
        self.forward = torch.compile(self._forward, mode=compile_mode, dynamic=False) if compile_mode else self._forward
        shape = (max_batch, 3, *self._hw())
        # Two slots: the host fills one while the other's upload or compute is in flight.
        self.staging = [torch.empty(shape, dtype=torch.uint8, pin_memory=self.on_gpu) for _ in range(2)]
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        if self.on_gpu:
            self.inputs = [torch.empty(shape, dtype=torch.uint8, device=self.device) for _ in range(2)]
            self.upload_stream = torch.cuda.Stream(self.device)
            self.compute_stream = torch.cuda.Stream(self.device)
            self.uploaded = [torch.cuda.Event() for _ in range(2)]
            self.consumed = [torch.cuda.Event() for _ in range(2)]
            self.scores = torch.empty((max_batch, 1), dtype=torch.float32, pin_memory=True)
            if cuda_graphs:
                self._capture()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.fp16):
            raw = self.model(x).float()  # normalised in FP32 first: autocast leaves elementwise ops be
        return guard(raw)

    @torch.inference_mode()
    def _capture(self) -> None:
        pool = torch.cuda.graph_pool_handle()
        with torch.cuda.stream(self.compute_stream):
            for size in sorted(buckets(self.max_batch), reverse=True):  # the largest first: the rest fit its pool
                static_in = torch.zeros(size, 3, *self._hw(), dtype=torch.uint8, device=self.device)
                for _ in range(2):  # warm-up: cuDNN/cuBLAS (and torch.compile) pick kernels outside the capture
                    self.forward(static_in)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=self.compute_stream):
                    static_out = self.forward(static_in)
                self.graphs[size] = (graph, static_in, static_out)
        self.compute_stream.synchronize()
        log.info("captured CUDA graphs for batches %s", sorted(self.graphs))

    def _hw(self) -> tuple[int, int]:
        size = getattr(getattr(self.model, "config", None), "img_size", 448)
        return size, size

    @torch.inference_mode()
    def __call__(self, pixels: Pixels | Sequence[Pixels]) -> np.ndarray:
        """PIXELS uint8 [N,3,H,W] -> float32 [N,1]. `pixels` is one array or tensor, or one
        per request (host numpy, or tensors on this device); N may exceed max_batch."""
        parts = [pixels] if isinstance(pixels, (np.ndarray, torch.Tensor)) else list(pixels)
        total = sum(len(p) for p in parts)
        if not self.on_gpu:
            return np.concatenate(
                [self._run_cpu(run) for run in chunks(parts, self.max_batch)] or [np.zeros((0, 1), np.float32)]
            )
        if total > len(self.scores):
            self.scores = torch.empty((total, 1), dtype=torch.float32, pin_memory=True)
        done = 0
        for k, run in enumerate(chunks(parts, self.max_batch)):
            n = self._upload(run, k % 2)
            self._compute(k % 2, n, self.scores[done : done + n])
            done += n
        self.compute_stream.synchronize()  # the one wait: for the scores
        return self.scores[:total].numpy().copy()

    def _run_cpu(self, run: list[tuple[Pixels, int, int]]) -> np.ndarray:
        if len(run) == 1:  # one request's slice: scored where it lies
            part, a, b = run[0]
            x = as_tensor(part[a:b])
        else:
            x = self.staging[0][: sum(b - a for _, a, b in run)]
            at = 0
            for part, a, b in run:
                x[at : at + b - a].copy_(as_tensor(part[a:b]))
                at += b - a
        return self.forward(x).numpy().astype(np.float32)

    def _upload(self, run: list[tuple[Pixels, int, int]], slot: int) -> int:
        """Host slices through the slot's pinned buffer, device slices copied on the GPU, all
        on the upload stream."""
        self.uploaded[slot].synchronize()  # the slot's previous upload has read its pinned buffer
        staging, target, at = self.staging[slot], self.inputs[slot], 0
        with torch.cuda.stream(self.upload_stream):
            self.upload_stream.wait_event(self.consumed[slot])  # the compute has taken the slot's last batch
            for part, a, b in run:
                rows = slice(at, at + b - a)
                if isinstance(part, torch.Tensor) and part.is_cuda:
                    target[rows].copy_(part[a:b], non_blocking=True)
                else:
                    staging[rows].copy_(as_tensor(part[a:b]))
                    target[rows].copy_(staging[rows], non_blocking=True)
                at += b - a
            self.uploaded[slot].record(self.upload_stream)
        return at

    def _compute(self, slot: int, n: int, out: torch.Tensor) -> None:
        with torch.cuda.stream(self.compute_stream):
            self.compute_stream.wait_event(self.uploaded[slot])
            bucket = next((b for b in sorted(self.graphs) if b >= n), None)
            if bucket is None:
                result = self.forward(self.inputs[slot][:n])
                self.consumed[slot].record(self.compute_stream)
            else:
                graph, static_in, static_out = self.graphs[bucket]
                static_in[:n].copy_(self.inputs[slot][:n])  # padding rows keep old pixels: valid, and dropped
                self.consumed[slot].record(self.compute_stream)
                graph.replay()
                result = static_out[:n]
            out.copy_(result, non_blocking=True)
