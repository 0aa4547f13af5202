"""Triton python-backend model `scorer` for the gpu-torch target: PIXELS -> SCORE in PyTorch.

A gpu-torch repository's scorer/1/model.py imports it, beside the checkpoint (model.pt).
The work is sampleiqa.build.torch_runner.TorchScorer (FP16 weights, CUDA graphs per batch
bucket, pinned staging): the one import from outside sampleiqa.runtime, declared in
tests/test_architecture.py, since the runner loads the training checkpoint's network (so a
gpu-torch repository needs sampleiqa installed, with the train extra, where Triton runs).
Its inputs stay where Triton has them: on a GPU instance the config sets
FORCE_CPU_ONLY_INPUT_TENSORS "no", so PIXELS made on the GPU (the GPU preprocessing) arrive
through DLPack without a trip to the host, and host ones as numpy views. Requests are scored
as one batch and split back. A request holding an item with no finite score fails with
`[non_finite]`, as the CPU scorer does.
"""

import json
import os
from contextlib import nullcontext

import torch
import triton_python_backend_utils as pb_utils

from sampleiqa.build.torch_runner import TorchScorer

from ..admission import CropCredits, limit_from
from ..contracts import PIXELS
from ..scores import split_responses


def request_tensors(requests) -> list:
    """Each request's PIXELS: a torch tensor where Triton holds it on the GPU, else numpy."""
    tensors = [pb_utils.get_input_tensor_by_name(r, PIXELS) for r in requests]
    return [t.as_numpy() if t.is_cpu() else torch.from_dlpack(t.to_dlpack()) for t in tensors]


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        limit = limit_from(config.get("parameters", {}))
        self.credits = CropCredits(limit) if limit else None  # given back to preprocess (sampleiqa.runtime.admission)
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        gpu = args["model_instance_kind"] == "GPU"
        device = f"cuda:{args['model_instance_device_id']}" if gpu else "cpu"
        path = os.path.join(args["model_repository"], args["model_version"], "model.pt")
        self.scorer = TorchScorer(
            path,
            device=device,
            fp16=parameters.get("precision", "fp16") == "fp16",
            cuda_graphs=parameters.get("cuda_graphs", "1") == "1",
            max_batch=max(1, int(parameters.get("run_batch", config.get("max_batch_size", 64)))),
            compile_mode=parameters.get("torch_compile") or None,
        )

    def execute(self, requests):
        batches = request_tensors(requests)
        with self.credits.scoring() if self.credits else nullcontext():
            scores = self.scorer(batches)
            if self.credits:
                self.credits.give_back(sum(len(b) for b in batches))
        return split_responses(pb_utils, batches, scores)

    def finalize(self):
        self.scorer = None
        if self.credits:
            self.credits.close()
