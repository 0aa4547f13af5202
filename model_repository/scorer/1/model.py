"""Triton python-backend model `scorer` for the CPU target: PIXELS -> SCORE with ONNX Runtime.

It has the same name and tensors as the GPU scorers (tensorrt_plan / onnxruntime_onnx), so
clients never know which target is deployed. Requests are concatenated into one ORT run.
The graph answers PIXELS that no image gives (NaN, Inf, |x| > 3) with a NaN score; here
that request fails with a `[non_finite]` error naming the item (the GPU targets return the
NaN, which the clients turn into the same error).
"""

import json
import os
import site
import sys

for _dir in filter(None, os.environ.get("SAMPLEIQA_SITE_DIRS", "").split(os.pathsep)):
    site.addsitedir(_dir)
try:
    import sampleiqa.scores  # noqa: F401  installed package
except ImportError:  # a deployed repository carries a vendored copy beside this file
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from sampleiqa.scores import gather_pixels, split_responses


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
        # ORT's arena keeps the peak of the largest batch for the stub's life (2.4 GB after
        # one batch of 32). Without it every run faults fresh pages in (1.6x slower at batch
        # 8), so keep it, and shrink it back after a batch larger than this.
        self.keep_batch = int(parameters.get("arena_keep_batch", {}).get("string_value", "8"))
        self.shrink = ort.RunOptions()
        self.shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def execute(self, requests):
        batches, pixels = gather_pixels(pb_utils, requests)
        options = self.shrink if len(pixels) > self.keep_batch else None
        scores = self.session.run(None, {self.input_name: pixels}, options)[0]
        return split_responses(pb_utils, batches, scores)

    def finalize(self):
        self.session = None
