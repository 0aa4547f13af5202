"""The GPU run's served figures (perf/gpu_run.py): the GPU repository's scores against the CPU
path's, and each model through the real Triton and perf_analyzer on one server start."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

from sampleiqa.cuda_pool import cuda_pool_args
from sampleiqa.paths import DEFAULT_REPOSITORY
from sampleiqa.runtime.contracts import ENSEMBLE, PREPROCESS, SCORER
from sampleiqa.runtime.preprocessing.faces import box_iou

FP16_TOLERANCE = 1e-2  # served FP16 scores against the CPU FP32 path, on a 0-1 scale


def exit_timeout_s(instances: int) -> int:
    """Triton unloads a model's python-backend instances one after another, ~1.2 s each (1, 2,
    6 instances: 1.3, 2.4, 7.2 s); past --exit-timeout-secs it exits with stubs still
    running, which the launcher then kills ("left by a killed Triton")."""
    return 10 + 2 * instances


def stop_server(server, log: Path) -> dict:
    """Stop a server and say how it went: seconds, Triton's own lines about its exit, and the
    python-backend stubs the launcher found still running after Triton had gone."""
    warnings: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record):
            warnings.append(record.getMessage())

    grab, logger = Grab(logging.WARNING), logging.getLogger("sampleiqa.server")
    offset = log.stat().st_size if log.exists() else 0
    logger.addHandler(grab)
    start = time.monotonic()
    try:
        server.stop()
    finally:
        logger.removeHandler(grab)
    seconds = time.monotonic() - start
    text = log.read_bytes()[offset:].decode(errors="replace") if log.exists() else ""
    lines = [
        line[line.find("] ") + 2 :] if "] " in line else line
        for line in text.splitlines()
        if re.search(r"Timeout \d+: Found [1-9]|unloaded|Exit timeout|failed to stop|Signal", line)
    ]
    return {
        "stop_s": round(seconds, 1),
        "exit_timeout_s": server.exit_timeout_s,
        "exit_timeout_expired": "Exit timeout expired" in text,
        "stubs_killed_by_launcher": sum("left by a killed Triton" in w for w in warnings),
        "triton_exit_lines": lines[-16:],
    }


def cpu_reference(photos: list[bytes]) -> list[dict]:
    """What the CPU ensemble answers, computed in process with its own parts (OpenCV
    preprocessing, the committed ONNX scorer through ONNX Runtime): no second server start."""
    import numpy as np

    from sampleiqa.runtime.onnx_runtime import cpu_session
    from sampleiqa.runtime.preprocessing import PreprocessError, preprocess_bytes

    session = cpu_session(DEFAULT_REPOSITORY / SCORER / "1" / "model.onnx")
    rows = []
    for data in photos:
        try:
            p = preprocess_bytes(data)
        except PreprocessError as exc:
            rows.append({"error": str(exc)})
            continue
        score = float(np.asarray(session.run(None, {"PIXELS": p.pixels[None]})[0]).reshape(-1)[0])
        rows.append({"score": score, "face_box": tuple(p.face_box), "face_found": p.face_found})
    return rows


class Served:
    """The GPU repository's server: started once, measured, stopped."""

    def __init__(self, repository: Path, out: Path, instances: int):
        self.repository, self.log, self.instances = repository, out / "triton-gpu.log", instances
        self.server = None

    def start(self) -> dict:
        from sampleiqa.server import TritonServer

        start = time.monotonic()
        # Shared memory open: perf_analyzer registers regions for the tensors (loopback only).
        self.server = TritonServer(
            self.repository,
            log_file=self.log,
            supervise=False,
            open_apis=("shared-memory",),
            exit_timeout_s=exit_timeout_s(self.instances),
        ).start(timeout_s=300)
        return {"start_s": round(time.monotonic() - start, 1), "cuda_pool": cuda_pool_args(self.repository)}

    def stop(self) -> dict:
        if self.server is None:
            return {"stopped": "no server was running"}
        server, self.server = self.server, None
        return stop_server(server, self.log)

    def compare(self, photos: list[bytes], reference: list[dict]) -> dict:
        from sampleiqa.clients import ScoringClient

        with ScoringClient(self.server.url, timeout_s=300) as client:
            got = dict(client.score_many(enumerate(photos), concurrency=8))
        diffs, decisions, ious, errors = [], 0, [], {}
        for i, ref in enumerate(reference):
            r = got[i]
            if "error" in ref or not r.ok:
                if ("error" in ref) != (not r.ok):
                    errors[i] = {"cpu": ref.get("error"), "gpu": r.error}
                continue
            diffs.append(abs(r.score - ref["score"]))
            decisions += r.face_found == ref["face_found"]
            if r.face_found and ref["face_found"]:
                ious.append(box_iou(r.face_box, ref["face_box"]))
        scored = len(diffs)
        return {
            "photos": len(photos),
            "mismatched_errors": errors,
            "max_abs_diff": max(diffs, default=None),
            "within_tolerance": sum(d <= FP16_TOLERANCE for d in diffs) / scored if scored else None,
            "same_face_decision": decisions / scored if scored else None,
            "min_face_iou": min(ious, default=None),
            "tolerance": FP16_TOLERANCE,
            "same_scores": bool(scored and not errors and max(diffs) <= FP16_TOLERANCE),
        }

    def figures(self, photos: list[bytes], pixels: list, out: Path, levels: dict[str, int], settings) -> dict:
        """Each model alone and the ensemble, at one level each, with every tensor through
        system shared memory (the steps' own figures, not gRPC's transfer of crops), and the
        batch sizes Triton formed meanwhile. `settings`: perf_analyzer's (AnalyzerSettings)."""
        import tritonclient.grpc as grpcclient

        from .analyzer import Load, measure
        from .batch_stats import batch_executions, executed_between, mean_batch
        from .inputs import write_inputs

        data = write_inputs(out, photos, pixels)
        inputs = {ENSEMBLE: data["image"], PREPROCESS: data["image"], SCORER: data["pixels"]}
        rows = {}
        client = grpcclient.InferenceServerClient(self.server.url)
        try:
            for model, concurrency in levels.items():
                before = batch_executions(client, model)
                m = measure(
                    self.server.url, model, inputs[model], Load(concurrency=concurrency), settings, shared_memory=True
                )
                batches = executed_between(before, batch_executions(client, model))
                rows[model] = {
                    "concurrency": concurrency,
                    "img_s": m.throughput,
                    "p50_ms": m.p50_ms,
                    "p99_ms": m.p99_ms,
                    "server_queue_ms": m.server_queue_ms,
                    "server_compute_ms": m.server_compute_ms,
                    "mean_batch": round(mean_batch(batches), 1),
                }
        finally:
            client.close()
            for path in data.values():
                path.unlink(missing_ok=True)
        steps = [rows[m]["img_s"] for m in (PREPROCESS, SCORER) if m in rows]
        if ENSEMBLE in rows and steps:
            rows["ensemble_over_slowest_step"] = rows[ENSEMBLE]["img_s"] / min(steps)
        return rows
