"""Triton python-backend model `preprocess`: IMAGE bytes -> PIXELS, FACE_BOX, FACE_FOUND.

All the work is sampleiqa.runtime.preprocessing, the code training evaluates with. A bad item
fails only its own request, with a "[code] message" error; the others in the batch go on.
With `crops_in_flight` set, a batch first takes a credit per item and waits while the
scorer has that many crops to score (sampleiqa.runtime.admission): the back-pressure that makes
Triton refuse work at this model's queue instead of holding every crop in memory.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from ..admission import CropCredits, limit_from
from ..contracts import CROP, FACE_BOX, FACE_FOUND, IMAGE, PIXELS
from ..preprocessing import PreprocessError, preprocess_bytes


class TritonPythonModel:
    def initialize(self, args):
        limit = limit_from(json.loads(args["model_config"]).get("parameters", {}))
        self.credits = CropCredits(limit) if limit else None

    def execute(self, requests):
        # One batch over every item of every request: a single output buffer, then
        # per-request views of it.
        items = [pb_utils.get_input_tensor_by_name(r, IMAGE).as_numpy().reshape(-1) for r in requests]
        total = sum(len(i) for i in items)
        if self.credits:
            self.credits.take(total)
        pixels = np.empty((total, 3, CROP, CROP), dtype=np.uint8)
        boxes = np.zeros((total, 4), dtype=np.int32)
        found = np.zeros((total, 1), dtype=bool)
        responses = []
        start = 0
        for request_items in items:
            stop = start + len(request_items)
            error = None
            for k, data in enumerate(request_items, start):
                try:
                    result = preprocess_bytes(bytes(data), out=pixels[k])
                except PreprocessError as exc:
                    error = f"item {k - start}: {exc}"
                    break
                except Exception as exc:  # never let one input take the model down
                    error = f"item {k - start}: [decode_failed] {type(exc).__name__}: {exc}"
                    break
                boxes[k] = result.face_box
                found[k, 0] = result.face_found
            if error is None:
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[
                            pb_utils.Tensor(PIXELS, pixels[start:stop]),
                            pb_utils.Tensor(FACE_BOX, boxes[start:stop]),
                            pb_utils.Tensor(FACE_FOUND, found[start:stop]),
                        ]
                    )
                )
            else:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(error)))
                if self.credits:  # the scorer never sees a failed request
                    self.credits.give_back(stop - start)
            start = stop
        return responses

    def finalize(self):
        if self.credits:
            self.credits.close()
