"""ONNX Runtime sessions on CPU, made one way (`cpu_session`) for the served CPU scorer
(triton_models/scorer_onnx.py, with its config's threads and spinning) and for every
in-process user (training's trunk cache, `evaluate --onnx`, the perf baselines)."""

from __future__ import annotations

from pathlib import Path


def cpu_session(model: str | Path | bytes, threads: int = 0, spinning: bool = True):
    """threads 0: ONNX Runtime's default (one per core); one inter-op thread; every graph
    optimisation. spinning False: idle threads sleep instead of busy-waiting for work (they
    would burn cores other work needs)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(
        model if isinstance(model, bytes) else str(model), options, providers=["CPUExecutionProvider"]
    )
