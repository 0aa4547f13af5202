"""Triton python-backend model `scorer` for the CPU target: PIXELS -> SCORE with ONNX Runtime.

It has the same name and tensors as the GPU scorers (tensorrt_plan / onnxruntime_onnx), so
clients never know which target is deployed. The requests' crops are scored in ORT runs of at
most `run_batch` (the memory of a run grows with its batch, its speed per crop does not), and
each run gives its crops' credits back to `preprocess` (sampleiqa.runtime.admission).
PIXELS are the uint8 crops; the graph normalises them. It answers a raw score that is not
finite with NaN; here that request fails with a `[non_finite]` error naming the item (the
GPU targets return the NaN, which the clients turn into the same error).
"""

import json
import os
import site
import sys
from contextlib import nullcontext

for _dir in filter(None, os.environ.get("SAMPLEIQA_SITE_DIRS", "").split(os.pathsep)):
    site.addsitedir(_dir)
try:
    import sampleiqa.runtime.scores  # noqa: F401  installed package
except ImportError:  # a deployed repository carries a vendored copy beside this file
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from sampleiqa.runtime.admission import CropCredits, limit_from
from sampleiqa.runtime.scores import ArenaShrinker, request_pixels, score_in_chunks, split_responses


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
        # 8); shrinking it after every large batch costs as much under sustained load (a
        # third of the throughput at 16 requests in flight). So it grows under load and is
        # shrunk back once no batch over arena_keep_batch has run for arena_shrink_after_s.
        self.arena = ArenaShrinker(
            self.session,
            int(_param(parameters, "arena_keep_batch", "1")),
            float(_param(parameters, "arena_shrink_after_s", "5")),
        )
        self.run_batch = max(1, int(_param(parameters, "run_batch", "4")))
        limit = limit_from(parameters)
        self.credits = CropCredits(limit) if limit else None

    def execute(self, requests):
        batches = request_pixels(pb_utils, requests)
        with self.credits.scoring() if self.credits else nullcontext():
            scores = score_in_chunks(
                self._run, batches, self.run_batch, self.credits.give_back if self.credits else None
            )
        return split_responses(pb_utils, batches, scores)

    def _run(self, pixels):
        with self.arena.run(len(pixels)):
            return self.session.run(None, {self.input_name: pixels})[0]

    def finalize(self):
        self.arena.stop()
        self.session = None
        if self.credits:
            self.credits.close()


def _param(parameters, key, default):
    return parameters.get(key, {}).get("string_value", default)
