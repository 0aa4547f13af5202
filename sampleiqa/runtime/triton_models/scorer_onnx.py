"""Triton python-backend model `scorer` for the CPU target: PIXELS -> SCORE with ONNX Runtime.

It has the same name and tensors as the GPU scorers (tensorrt_plan / onnxruntime_onnx), so
clients never know which target is deployed. The requests' crops are scored in ORT runs of at
most `run_batch` (the memory of a run grows with its batch, its speed per crop does not), and
each run gives its crops' credits back to `preprocess` (sampleiqa.runtime.admission).
PIXELS are the uint8 crops; the graph normalises them. It answers a raw score that is not
finite with NaN; here that request fails with a `[non_finite]` error naming the item (the
GPU targets return the NaN, which the clients turn into the same error). Its ONNX Runtime
session is made as every in-process one is (sampleiqa.runtime.onnx_runtime.cpu_session), with
the threads and spinning of its config.
"""

import json
import os
from contextlib import nullcontext

import triton_python_backend_utils as pb_utils

from ..admission import CropCredits, limit_from
from ..onnx_runtime import cpu_session
from ..scores import ArenaShrinker, request_pixels, score_in_chunks, split_responses


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = config.get("parameters", {})
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        # Spinning threads burn the cores that the preprocess instances need between runs.
        self.session = cpu_session(
            path,
            threads=int(_param(parameters, "intra_op_threads", "0")),
            spinning=_param(parameters, "allow_spinning", "1") == "1",
        )
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
