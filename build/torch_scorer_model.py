"""Triton python-backend model `scorer` for the gpu-torch target: PIXELS -> SCORE in PyTorch.

build_repository copies this file to scorer/1/model.py beside the checkpoint (model.pt).
The work is sampleiqa.build.torch_runner.TorchScorer (FP16, CUDA graphs per batch bucket);
requests are concatenated into one batch and split back. A request holding an item with no
finite score fails with `[non_finite]`, as the CPU scorer does.
"""

import json
import os
import site

for _dir in filter(None, os.environ.get("SAMPLEIQA_SITE_DIRS", "").split(os.pathsep)):
    site.addsitedir(_dir)

import numpy as np
import triton_python_backend_utils as pb_utils

from sampleiqa.build.torch_runner import TorchScorer
from sampleiqa.contracts import PIXELS, SCORE


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        gpu = args["model_instance_kind"] == "GPU"
        device = f"cuda:{args['model_instance_device_id']}" if gpu else "cpu"
        path = os.path.join(args["model_repository"], args["model_version"], "model.pt")
        self.scorer = TorchScorer(path, device=device, fp16=parameters.get("precision", "fp16") == "fp16",
                                  cuda_graphs=parameters.get("cuda_graphs", "1") == "1",
                                  max_batch=max(1, int(config.get("max_batch_size", 64))))

    def execute(self, requests):
        batches = [pb_utils.get_input_tensor_by_name(r, PIXELS).as_numpy() for r in requests]
        scores = self.scorer(batches[0] if len(batches) == 1 else np.concatenate(batches))
        responses, start = [], 0
        for b in batches:
            mine = scores[start:start + len(b)]
            bad = np.flatnonzero(~np.isfinite(mine[:, 0]))
            if len(bad):
                error = pb_utils.TritonError(f"item {bad[0]}: [non_finite] no finite score: PIXELS hold NaN, Inf "
                                             "or values outside what a normalised image gives")
                responses.append(pb_utils.InferenceResponse(error=error))
            else:
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(SCORE, mine)]))
            start += len(b)
        return responses

    def finalize(self):
        self.scorer = None
