"""One benchmark run: baselines in process, then perf_analyzer at each load level for each
model, with the executed batch sizes read from Triton's statistics around every level."""

from __future__ import annotations

import math
import os
import shlex
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from sampleiqa.runtime.contracts import ENSEMBLE, PREPROCESS, SCORER

from .analyzer import AnalyzerSettings, Load, Measurement, UnstableMeasurement, measure
from .batch_stats import batch_executions, executed_between, inference_count, mean_batch


@dataclass(frozen=True)
class SweepPlan:
    images: Path
    photos: int
    tensors: int
    models: tuple[str, ...]
    loads: tuple[Load, ...]
    analyzer: AnalyzerSettings
    batches: tuple[int, ...]
    baseline_seconds: float
    threads: int
    repeats: int
    onnx: Path
    shared_memory: bool
    command: str
    note: str = ""

    @classmethod
    def from_args(cls, args) -> "SweepPlan":
        loads = [Load(concurrency=c) for c in args.concurrency] + [Load(rate=r) for r in args.request_rate]
        loopback = not args.url or args.url.rsplit(":", 1)[0] in ("127.0.0.1", "localhost", "[::1]")
        return cls(
            Path(args.images),
            args.photos,
            args.tensors,
            tuple(args.models.split(",")),
            tuple(loads),
            AnalyzerSettings(args.measurement_ms, args.stability, args.max_trials, args.request_count),
            tuple(args.batches),
            args.baseline_seconds,
            args.threads,
            args.repeats,
            Path(args.onnx or Path(args.repository) / SCORER / "1" / "model.onnx"),
            loopback and not args.no_shared_memory,
            "sampleiqa perf " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["perf"] else sys.argv[1:]),
            args.note,
        )


@dataclass(frozen=True)
class Point:
    """One model at one load level, with the batches its batching step executed meanwhile."""

    measurement: Measurement
    batch_model: str
    batches: dict[int, int]
    server_core_ms: float  # server CPU (Triton + stubs) per inference; NaN when the server is not ours


@dataclass(frozen=True)
class Baselines:
    preprocess_ms: float  # one thread, wall-clock ms per photo
    preprocess_core_ms: float  # the same, CPU ms per photo
    model_only: dict[int, float]  # batch size -> images/s
    pipeline: dict[int, float]  # batch size -> images/s
    model_core_ms: dict[int, float]  # batch size -> CPU ms per image
    pipeline_core_ms: dict[int, float]


@dataclass
class RunResult:
    baselines: Baselines
    points: list[Point] = field(default_factory=list)
    load_average: list[float] = field(default_factory=list)  # 1-minute load average, start and end
    left_out: list[str] = field(default_factory=list)  # levels perf_analyzer could not measure stably

    def best(self, model: str) -> float:
        return max(
            (p.measurement.throughput for p in self.points if p.measurement.model == model), default=float("nan")
        )

    def scorer_mean_batch(self, model: str, min_concurrency: int = 4) -> float:
        """Mean executed scorer batch over the levels of `model` with concurrency >= min_concurrency."""
        merged: dict[int, int] = {}
        for p in self.points:
            c = p.measurement.load.concurrency
            if p.measurement.model == model and p.batch_model == SCORER and c is not None and c >= min_concurrency:
                for size, n in p.batches.items():
                    merged[size] = merged.get(size, 0) + n
        return mean_batch(merged) if merged else float("nan")

    def core_ms_at_best(self, model: str) -> float:
        points = [p for p in self.points if p.measurement.model == model]
        return max(points, key=lambda p: p.measurement.throughput).server_core_ms if points else math.nan

    def figures(self) -> dict[str, float]:
        ens, pre, scorer = self.best(ENSEMBLE), self.best(PREPROCESS), self.best(SCORER)
        b = self.baselines
        best_batch = max(b.pipeline, key=b.pipeline.get)
        pipeline = b.pipeline[best_batch]
        ens_cpu, in_process_cpu = self.core_ms_at_best(ENSEMBLE), b.pipeline_core_ms[best_batch]
        steps_cpu = self.core_ms_at_best(PREPROCESS) + self.core_ms_at_best(SCORER)
        slowest = min(pre, scorer) if not math.isnan(pre + scorer) else math.nan
        return {
            "ensemble_img_s": ens,
            "preprocess_alone_img_s": pre,
            "scorer_alone_img_s": scorer,
            "in_process_pipeline_img_s": pipeline,
            "ensemble_over_in_process": ens / pipeline,
            "ensemble_over_slowest_step": ens / slowest,
            # Both steps share the same cores, so their work adds up: 1/(1/pre + 1/scorer).
            "ensemble_over_shared_core_bound": ens * (1 / pre + 1 / scorer),
            "preprocess_ms_per_image": b.preprocess_ms,
            "preprocess_core_ms_per_image": b.preprocess_core_ms,
            "model_ms_per_image": 1000.0 / max(b.model_only.values()),
            "model_core_ms_per_image": b.model_core_ms[max(b.model_only, key=b.model_only.get)],
            "scorer_mean_batch_ensemble_c4plus": self.scorer_mean_batch(ENSEMBLE),
            "scorer_mean_batch_alone_c4plus": self.scorer_mean_batch(SCORER),
            # CPU per image does not depend on what else the shared machine runs.
            "ensemble_core_ms_per_image": ens_cpu,
            "in_process_core_ms_per_image": in_process_cpu,
            "steps_alone_core_ms_per_image": steps_cpu,
            "in_process_cpu_over_ensemble_cpu": in_process_cpu / ens_cpu,
            "steps_cpu_over_ensemble_cpu": steps_cpu / ens_cpu,
        }


def run_baselines(plan: SweepPlan, photos: list[bytes], tensors) -> Baselines:
    from sampleiqa.runtime.onnx_runtime import cpu_session

    from .in_process import best_of, model_only, pipeline, preprocess_ms_per_image

    # The strongest baseline: ORT with its threads spinning between ops (its default) or not.
    sessions = [cpu_session(plan.onnx, plan.threads, spinning) for spinning in (True, False)]
    batches, seconds = list(plan.batches), plan.baseline_seconds
    model = best_of(*(model_only(s, tensors, batches, seconds) for s in sessions))
    pipe = best_of(*(pipeline(s, photos, batches, plan.threads, seconds) for s in sessions))
    pre = preprocess_ms_per_image(photos, seconds)
    return Baselines(
        1000.0 / pre.images_per_s,
        pre.core_ms_per_image,
        {b: r.images_per_s for b, r in model.items()},
        {b: r.images_per_s for b, r in pipe.items()},
        {b: r.core_ms_per_image for b, r in model.items()},
        {b: r.core_ms_per_image for b, r in pipe.items()},
    )


def sweep(
    url: str, plan: SweepPlan, inputs: dict[str, Path], left_out: list[str], server_pid: int | None
) -> list[Point]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    points = []
    try:
        for model in plan.models:
            batch_model = PREPROCESS if model == PREPROCESS else SCORER
            data = inputs["pixels"] if model == SCORER else inputs["image"]
            for load in plan.loads:
                before = batch_executions(client, batch_model)
                cpu0, count0 = _server_cpu_s(server_pid), inference_count(client, model)
                try:
                    m = measure(
                        url, model, data, load, plan.analyzer, shared_memory=plan.shared_memory and model == SCORER
                    )
                except UnstableMeasurement as exc:  # a noisy machine: the level is left out, the sweep goes on
                    print(f"  {model:10s} {load.label:>5s}: left out, {exc}", file=sys.stderr)
                    left_out.append(f"{model} {load.label}")
                    continue
                core_ms = (_server_cpu_s(server_pid) - cpu0) * 1000 / max(1, inference_count(client, model) - count0)
                points.append(
                    Point(m, batch_model, executed_between(before, batch_executions(client, batch_model)), core_ms)
                )
                print(
                    f"  {model:10s} {load.label:>5s}: {m.throughput:7.1f} img/s  p50 {m.p50_ms:7.1f} ms  "
                    f"p99 {m.p99_ms:7.1f} ms  {core_ms:5.1f} server core-ms/img  "
                    f"{batch_model} batches {points[-1].batches}",
                    file=sys.stderr,
                )
    finally:
        client.close()
    return points


def _server_cpu_s(pid: int | None) -> float:
    from .cpu_time import process_tree_cpu_s

    return process_tree_cpu_s(pid) if pid else math.nan


def server_settings(url: str) -> dict[str, dict]:
    """Instance counts, queue delays and parameters of each step, as the server reports them."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        out = {}
        for model in (PREPROCESS, SCORER):
            c = client.get_model_config(model, as_json=True)["config"]
            out[model] = {
                "instances": sum(int(g.get("count", 1)) for g in c.get("instance_group", [])),
                "max_batch_size": int(c.get("max_batch_size", 0)),
                "queue_delay_us": int(c.get("dynamic_batching", {}).get("max_queue_delay_microseconds", 0)),
                "parameters": {k: v.get("string_value") for k, v in c.get("parameters", {}).items()},
            }
        return out
    finally:
        client.close()


@dataclass
class Report:
    plan: SweepPlan
    settings: dict[str, dict]
    runs: list[RunResult]

    def median(self, key: str) -> float:
        return statistics.median(r.figures()[key] for r in self.runs)


def run_sweeps(url: str, plan: SweepPlan, server_pid: int | None = None) -> Report:
    """`server_pid`: the embedded server's process, whose CPU time is read around each level."""
    from .inputs import pick_photos, preprocessed, write_inputs

    photos = [p.read_bytes() for p in pick_photos(plan.images, plan.photos)]
    tensors = preprocessed(photos[: plan.tensors])
    runs = []
    with tempfile.TemporaryDirectory(prefix="sampleiqa-perf-") as scratch:
        inputs = write_inputs(Path(scratch), photos, tensors)
        settings = server_settings(url)
        for k in range(plan.repeats):
            print(f"run {k + 1}/{plan.repeats}: in-process baselines ...", file=sys.stderr)
            run = RunResult(run_baselines(plan, photos, tensors), load_average=[os.getloadavg()[0]])
            run.points = sweep(url, plan, inputs, run.left_out, server_pid)
            run.load_average.append(os.getloadavg()[0])
            runs.append(run)
            print("\n".join(f"  {k}: {v:.3g}" for k, v in run.figures().items()), file=sys.stderr)
    return Report(plan, settings, runs)
