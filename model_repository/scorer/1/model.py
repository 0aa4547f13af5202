"""Triton python-backend model `scorer` for the CPU target: PIXELS -> SCORE with ONNX Runtime.

It has the same name and tensors as the GPU scorers (tensorrt_plan / onnxruntime_onnx), so
clients never know which target is deployed. Requests are concatenated into one ORT run.
"""

import json
import os
import site

for _dir in filter(None, os.environ.get("SAMPLEIQA_SITE_DIRS", "").split(os.pathsep)):
    site.addsitedir(_dir)

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

PIXELS, SCORE = "PIXELS", "SCORE"


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = config.get("parameters", {})
        threads = int(parameters.get("intra_op_threads", {}).get("string_value", "0"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning threads burn the cores that the preprocess instances need between runs.
        spinning = parameters.get("allow_spinning", {}).get("string_value", "1")
        options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def execute(self, requests):
        batches = [pb_utils.get_input_tensor_by_name(r, PIXELS).as_numpy() for r in requests]
        pixels = batches[0] if len(batches) == 1 else np.concatenate(batches)
        scores = self.session.run(None, {self.input_name: pixels})[0].astype(np.float32).reshape(-1, 1)
        responses, start = [], 0
        for b in batches:
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(SCORE, scores[start : start + len(b)])]))
            start += len(b)
        return responses

    def finalize(self):
        self.session = None
