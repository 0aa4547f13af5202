"""In-process baselines: the same work without Triton, in this one process.

- pipeline: decode + face + crop + normalise (a thread pool of `threads` workers; OpenCV
  and numpy release the GIL) then one ONNX Runtime run per batch with `threads` intra-op
  threads: the same thread budget as the server; the best batch size wins, and at each
  batch the faster of ORT spinning on and off;
- model only: ONNX Runtime on prepared tensors;
- preprocessing alone: one thread, ms per photo.
Any ONNX scorer with one [N,3,448,448] input works: the harness is model-agnostic.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, NamedTuple

import numpy as np

from sampleiqa.runtime.contracts import CROP


def best_of(*results: dict[int, "Rate"]) -> dict[int, "Rate"]:
    """Per batch size, the faster of several measurements (e.g. ORT spinning on and off)."""
    return {b: max((r[b] for r in results), key=lambda rate: rate.images_per_s) for b in results[0]}


class Rate(NamedTuple):
    images_per_s: float
    core_ms_per_image: float  # CPU time of every thread of this process


def images_per_second(step: Callable[[int], int], seconds: float) -> Rate:
    """Call step(i) (which returns the images it handled) until `seconds` pass, after one warm-up."""
    step(0)
    done, i, t0, cpu0 = 0, 1, time.perf_counter(), time.process_time()
    while (elapsed := time.perf_counter() - t0) < seconds or done == 0:
        done += step(i)
        i += 1
    return Rate(done / elapsed, (time.process_time() - cpu0) * 1000 / done)


def preprocess_ms_per_image(photos: list[bytes], seconds: float) -> Rate:
    """(wall-clock images/s, CPU ms per photo) on one thread; the CPU figure holds on a busy machine."""
    from sampleiqa.runtime.preprocessing import preprocess_bytes

    out = np.empty((3, CROP, CROP), np.uint8)

    def step(i: int) -> int:
        preprocess_bytes(photos[i % len(photos)], out=out)
        return 1

    return images_per_second(step, seconds)


def model_only(session, tensors: list[np.ndarray], batch_sizes: list[int], seconds: float) -> dict[int, Rate]:
    """{batch size: rate} of ONNX Runtime on prepared tensors."""
    name = session.get_inputs()[0].name
    result = {}
    for b in batch_sizes:
        batch = np.stack([tensors[k % len(tensors)] for k in range(b)])
        result[b] = images_per_second(lambda i: len(session.run(None, {name: batch})[0]), seconds)
    return result


def pipeline(session, photos: list[bytes], batch_sizes: list[int], threads: int, seconds: float) -> dict[int, Rate]:
    """{batch size: rate} of bytes -> score in this process, preprocessing on `threads` threads."""
    from sampleiqa.runtime.preprocessing import preprocess_bytes

    name = session.get_inputs()[0].name
    result = {}
    with ThreadPoolExecutor(threads) as pool:
        for b in batch_sizes:
            batch = np.empty((b, 3, CROP, CROP), np.uint8)

            def step(i: int, b=b, batch=batch) -> int:
                items = [photos[(i * b + k) % len(photos)] for k in range(b)]
                list(pool.map(lambda k: preprocess_bytes(items[k], out=batch[k]), range(b)))
                return len(session.run(None, {name: batch})[0])

            result[b] = images_per_second(step, seconds)
    return result
