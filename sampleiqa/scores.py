"""What the python-backend scorers share (cpu: ONNX Runtime, gpu-torch: PyTorch): every
request's PIXELS in one batch, and the scores split back into one response per request. An
item without a finite score (the graph's guard answers PIXELS no image gives with NaN) fails
its request with `item K: [non_finite] ...`, as a bad image fails `preprocess`, so clients
isolate it. numpy only: repositories vendor it beside the model."""

from __future__ import annotations

import numpy as np

from .contracts import PIXELS, SCORE

NON_FINITE = "[non_finite] no finite score: PIXELS hold NaN, Inf or values outside what a normalised image gives"


def gather_pixels(pb_utils, requests) -> tuple[list[np.ndarray], np.ndarray]:
    """(each request's PIXELS, all of them as one batch)."""
    batches = [pb_utils.get_input_tensor_by_name(r, PIXELS).as_numpy() for r in requests]
    return batches, batches[0] if len(batches) == 1 else np.concatenate(batches)


def split_responses(pb_utils, batches: list[np.ndarray], scores: np.ndarray) -> list:
    responses, start = [], 0
    for batch in batches:
        mine = scores[start:start + len(batch)].astype(np.float32).reshape(-1, 1)
        bad = np.flatnonzero(~np.isfinite(mine[:, 0]))
        if len(bad):
            responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"item {bad[0]}: {NON_FINITE}")))
        else:
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(SCORE, mine)]))
        start += len(batch)
    return responses
