"""Triton python-backend model `preprocess` for the gpu targets: IMAGE bytes -> PIXELS,
FACE_BOX, FACE_FOUND, in PyTorch on the instance's device.

A repository's preprocess/1/model.py imports it when its preprocess is "torch"
(build/repository.py). The work is sampleiqa.runtime.preprocessing.torch_pipeline.TorchPreprocessor: the batch's
JPEGs decoded together by nvJPEG, faces found by YuNet in torch, crops cut and resized on the
device with the crop policy of the CPU path (sampleiqa.runtime.preprocessing.crops); whatever nvJPEG
cannot take goes through the CPU path item by item, with its checks and errors. On a GPU
instance PIXELS leave as GPU tensors (DLPack), and the scorer takes them there. A bad item
fails only its own request, with the "[code] message" the CPU model gives; credits
(sampleiqa.runtime.admission) work as in the CPU model.
"""

import json

import torch
import triton_python_backend_utils as pb_utils

from ..admission import CropCredits, limit_from
from ..contracts import FACE_BOX, FACE_FOUND, IMAGE, PIXELS
from ..preprocessing.torch_pipeline import TorchPreprocessor


class TritonPythonModel:
    def initialize(self, args):
        limit = limit_from(json.loads(args["model_config"]).get("parameters", {}))
        self.credits = CropCredits(limit) if limit else None
        self.gpu = args["model_instance_kind"] == "GPU"
        device = f"cuda:{args['model_instance_device_id']}" if self.gpu else "cpu"
        self.preprocessor = TorchPreprocessor(device=device)

    def execute(self, requests):
        items = [pb_utils.get_input_tensor_by_name(r, IMAGE).as_numpy().reshape(-1) for r in requests]
        if self.credits:
            self.credits.take(sum(len(i) for i in items))
        batch = self.preprocessor([bytes(d) for request_items in items for d in request_items])
        if self.gpu:  # the crops are written before Triton hands them to the scorer
            torch.cuda.current_stream(batch.pixels.device).synchronize()
        responses, start = [], 0
        for request_items in items:
            stop = start + len(request_items)
            bad = next((k for k in range(start, stop) if batch.errors[k]), None)
            if bad is None:
                pixels = batch.pixels[start:stop]
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[
                            pb_utils.Tensor.from_dlpack(PIXELS, torch.utils.dlpack.to_dlpack(pixels))
                            if self.gpu
                            else pb_utils.Tensor(PIXELS, pixels.numpy()),
                            pb_utils.Tensor(FACE_BOX, batch.boxes[start:stop]),
                            pb_utils.Tensor(FACE_FOUND, batch.found[start:stop].reshape(-1, 1)),
                        ]
                    )
                )
            else:
                responses.append(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(f"item {bad - start}: {batch.errors[bad]}"))
                )
                if self.credits:  # the scorer never sees a failed request
                    self.credits.give_back(stop - start)
            start = stop
        return responses

    def finalize(self):
        self.preprocessor = None
        if self.credits:
            self.credits.close()
