"""What the python-backend scorers share (cpu: ONNX Runtime, gpu-torch: PyTorch): every
request's PIXELS in one batch, and the scores split back into one response per request. An
item without a finite score (the graph's guard answers a non-finite raw score with NaN) fails
its request with `item K: [non_finite] ...`, as a bad image fails `preprocess`, so clients
isolate it. numpy only (ONNX Runtime where the CPU scorer uses ArenaShrinker): repositories
vendor it beside the model."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import numpy as np

from .contracts import CROP, PIXELS, SCORE

NON_FINITE = "[non_finite] the scorer's network gave no finite score for this crop"


def request_pixels(pb_utils, requests) -> list[np.ndarray]:
    return [pb_utils.get_input_tensor_by_name(r, PIXELS).as_numpy() for r in requests]


def score_in_chunks(run, batches: list[np.ndarray], size: int, done=None) -> np.ndarray:
    """run(pixels [n<=size,...]) -> scores, over the requests' PIXELS taken `size` at a time,
    without first joining the whole batch; done(n) after each run. The memory of a run
    (ONNX Runtime's arena keeps the largest) grows with its batch: 3.6 GB at 32 crops, 0.5 GB
    at 4, for the same time per crop (perf/results/memory-under-load.md)."""
    scores, pending, count = [], [], 0
    for batch in batches:
        start = 0
        while start < len(batch):
            take = min(size - count, len(batch) - start)
            pending.append(batch[start : start + take])
            count, start = count + take, start + take
            if count == size:
                scores.append(_run_one(run, pending, done))
                pending, count = [], 0
    if pending:
        scores.append(_run_one(run, pending, done))
    return np.concatenate(scores) if scores else np.zeros((0, 1), np.float32)


def _run_one(run, parts: list[np.ndarray], done) -> np.ndarray:
    pixels = parts[0] if len(parts) == 1 else np.concatenate(parts)
    out = np.asarray(run(pixels), dtype=np.float32).reshape(-1, 1)
    if done is not None:
        done(len(pixels))
    return out


def split_responses(pb_utils, batches: list[np.ndarray], scores: np.ndarray) -> list:
    responses, start = [], 0
    for batch in batches:
        mine = scores[start : start + len(batch)].astype(np.float32).reshape(-1, 1)
        bad = np.flatnonzero(~np.isfinite(mine[:, 0]))
        if len(bad):
            responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"item {bad[0]}: {NON_FINITE}")))
        else:
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(SCORE, mine)]))
        start += len(batch)
    return responses


class ArenaShrinker:
    """Gives ONNX Runtime's arena back once the load is over. The arena keeps the working set
    of the largest batch it ran; shrinking it after each large batch makes every large batch
    fault its pages in again. Here a batch over `keep_batch` only marks the arena as grown,
    and a thread shrinks it (one batch-1 run with ORT's shrinkage option, between runs)
    once `after_s` have passed without another."""

    def __init__(self, session, keep_batch: int, after_s: float):
        import onnxruntime as ort

        self.session, self.keep_batch, self.after_s = session, keep_batch, after_s
        self.options = ort.RunOptions()
        self.options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self.grown_at: float | None = None
        self.shrinks = 0
        self._busy = threading.Lock()  # one run at a time: the model's, or the shrink
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="sampleiqa-arena", daemon=True)
        self._thread.start()

    @contextmanager
    def run(self, batch: int):
        with self._busy:
            yield
            if batch > self.keep_batch:
                self.grown_at = time.monotonic()

    def _watch(self) -> None:
        while not self._stopping.wait(min(0.5, self.after_s)):
            with self._busy:
                if self.grown_at is not None and time.monotonic() - self.grown_at >= self.after_s:
                    name = self.session.get_inputs()[0].name
                    self.session.run(None, {name: np.zeros((1, 3, CROP, CROP), np.uint8)}, self.options)
                    self.grown_at = None
                    self.shrinks += 1

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
