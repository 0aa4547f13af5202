"""The GPU path end to end on one lent GPU host, in one command (perf/gpu_run.sh runs it).

    python -m sampleiqa.perf.gpu_run --out OUT --images DIR   # on the GPU host (perf/gpu_run.sh)
    python -m sampleiqa.perf.gpu_run --out OUT --device cpu --quick   # the rehearsal, here

1. the host: GPU, CUDA, torch, cores, and perf_analyzer's start (its libraries);
2. builds the gpu-torch repository (python backend + PyTorch FP16 with CUDA graphs, KIND_GPU;
   preprocess instances = cores - 2) from the shipped checkpoint;
3. scores the same photos through the CPU repository (the committed one) and through the
   GPU one, both on the real Triton, and compares scores (FP16 tolerance) and face boxes;
4. on that same GPU server, `preprocess` alone through perf_analyzer twice at one level:
   its outputs (PIXELS) back over gRPC, and through system shared memory, so the second
   figure is the step's own, without the transfer of its crops;
5. `sampleiqa perf` (real perf_analyzer) on a GPU server of its own: the ensemble,
   preprocess and scorer alone;
6. the same scorer in process (TorchScorer: the runner the server uses, CUDA graphs, FP16)
   at the batch sizes Triton forms, as separate figures: as the server calls it (pageable
   numpy in, scores out), the compute alone with the input already on the device, and the
   upload alone from pageable and from pinned memory (pinned needs CUDA: skipped on
   --device cpu, and the output says so); the FP16 peak fraction is of the compute alone;
7. JPEG decoding on the GPU (torchvision.io.decode_jpeg, device="cuda") against OpenCV on one
   core, for the question of a GPU preprocessing variant.
Each server stop is recorded (seconds, Triton's exit lines, stubs the launcher had to kill).
Each step writes what it found into OUT/gpu_run.json and OUT/gpu_run.md at once, so an
outer timeout keeps the steps that finished; a step that fails is recorded and the run goes on.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

from sampleiqa.paths import DEFAULT_REPOSITORY

from .gpu_in_process import CHECKPOINT, in_process, jpeg_decode
FP16_TOLERANCE = 1e-2  # served FP16 scores against the CPU FP32 ensemble, on a 0-1 scale


class Run:
    def __init__(self, out: Path, budget_s: float):
        self.out, self.deadline = out, time.monotonic() + budget_s
        self.results: dict = {"steps": {}}
        out.mkdir(parents=True, exist_ok=True)

    def step(self, name: str, fn, *args):
        left = self.deadline - time.monotonic()
        if left < 20:
            self.results["steps"][name] = {"skipped": f"time budget spent ({left:.0f} s left)"}
            return self.save()
        print(f"[gpu_run] {name} ({left:.0f} s left)", file=sys.stderr, flush=True)
        start = time.monotonic()
        try:
            self.results["steps"][name] = {"result": fn(*args)}
        except Exception as exc:  # one failed step must not cost the others' figures
            self.results["steps"][name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
        self.results["steps"][name]["seconds"] = round(time.monotonic() - start, 1)
        self.save()

    def get(self, name: str):
        return self.results["steps"].get(name, {}).get("result")

    def save(self) -> None:
        (self.out / "gpu_run.json").write_text(json.dumps(self.results, indent=2, default=str) + "\n")
        (self.out / "gpu_run.md").write_text(markdown(self.results))


def host(device: str) -> dict:
    import numpy as np
    import torch

    from .analyzer import check_start, environment

    info = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": device}
    if device == "cuda":
        info.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                    memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    try:  # a missing library shows here, before the perf steps
        info["perf_analyzer"] = check_start()
        info["perf_analyzer_ld_library_path"] = environment()["LD_LIBRARY_PATH"]
    except Exception as exc:
        info["perf_analyzer"] = f"does not start: {exc}"
    return info


def exit_timeout_s(instances: int) -> int:
    """Triton unloads a model's python-backend instances one after another, ~1.2 s each here
    (1, 2, 6 instances: 1.3, 2.4, 7.2 s); past --exit-timeout-secs it exits with stubs
    still running, which the launcher then kills ("left by a killed Triton")."""
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
    lines = [line[line.find("] ") + 2:] if "] " in line else line for line in text.splitlines()
             if re.search(r"Timeout \d+: Found [1-9]|unloaded|Exit timeout|failed to stop|Signal", line)]
    return {"stop_s": round(seconds, 1), "exit_timeout_s": server.exit_timeout_s,
            "exit_timeout_expired": "Exit timeout expired" in text,
            "stubs_killed_by_launcher": sum("left by a killed Triton" in w for w in warnings),
            "triton_exit_lines": lines[-16:]}


def build(out: Path, device: str, preprocess_instances: int, max_batch: int) -> dict:
    from sampleiqa.build.repository import build_repository
    from sampleiqa.build.triton_config import RepositorySettings

    settings = RepositorySettings(target="gpu-torch", torch_device="gpu" if device == "cuda" else "cpu",
                                  preprocess_instances=preprocess_instances, max_batch_size=max_batch)
    build_repository(out, settings, checkpoint=CHECKPOINT, vendor=False)
    return {"repository": str(out), "preprocess_instances": preprocess_instances, "max_batch": max_batch}


def score(server, photos: list[bytes]) -> list:
    from sampleiqa.clients import ScoringClient

    with ScoringClient(server.url, timeout_s=300) as client:
        results = dict(client.score_many(enumerate(photos), concurrency=8))
    return [results[i] for i in range(len(photos))]


class Servers:
    """The GPU repository's server, kept from the score comparison to the preprocess step
    (one start, not two), and stopped before `sampleiqa perf` starts its own."""

    def __init__(self):
        self.gpu = None
        self.log: Path | None = None

    def start_gpu(self, repository: Path, log: Path, instances: int) -> None:
        from sampleiqa.server import TritonServer

        # Shared memory open: perf_analyzer registers regions for preprocess's outputs (loopback only).
        self.log = log
        self.gpu = TritonServer(repository, log_file=log, supervise=False, open_apis=("shared-memory",),
                                exit_timeout_s=exit_timeout_s(instances)).start(timeout_s=300)

    def stop_gpu(self) -> dict:
        if self.gpu is None:
            return {"stopped": "no server was running"}
        server, self.gpu = self.gpu, None
        return stop_server(server, self.log)


def compare(servers: Servers, gpu_repo: Path, photos: list[bytes], out: Path, instances: int) -> dict:
    from sampleiqa.server import TritonServer

    cpu_log = out / "triton-cpu.log"
    cpu_server = TritonServer(DEFAULT_REPOSITORY, log_file=cpu_log, supervise=False).start(timeout_s=300)
    try:
        cpu = score(cpu_server, photos)
    finally:
        cpu_stop = stop_server(cpu_server, cpu_log)
    start = time.monotonic()
    servers.start_gpu(gpu_repo, out / "triton-gpu.log", instances)
    started = time.monotonic() - start
    gpu = score(servers.gpu, photos)
    failed = {i: r.error for i, r in enumerate(gpu) if not r.ok}
    diffs = [abs(a.score - b.score) for a, b in zip(cpu, gpu) if a.ok and b.ok]
    result = {"photos": len(photos), "gpu_errors": failed, "max_abs_diff": max(diffs) if diffs else None,
              "same_face_boxes": all(a.face_box == b.face_box for a, b in zip(cpu, gpu)),
              "tolerance": FP16_TOLERANCE, "gpu_server_start_s": round(started, 1), "cpu_server_stop": cpu_stop}
    result["same_scores"] = bool(not failed and diffs and max(diffs) <= FP16_TOLERANCE)
    return result


def preprocess_outputs(servers: Servers, photos: list[bytes], out: Path, concurrency: int, measurement_ms: int,
                       rounds: int) -> dict:
    """`preprocess` alone at one level, its outputs over gRPC and then through system shared
    memory (inputs too: perf_analyzer's --shared-memory covers both), alternated `rounds`
    times, on the running GPU server. The shared-memory figure is the step's own; the gap is what carrying
    its PIXELS back over gRPC costs."""
    from sampleiqa.contracts import PREPROCESS

    from .analyzer import AnalyzerSettings, Load, largest_output_bytes, measure
    from .inputs import image_entry, write_input_json

    if servers.gpu is None:
        raise RuntimeError("the GPU server is not running (the score comparison failed to start it)")
    url = servers.gpu.url
    data = write_input_json(out / "preprocess-images.json", [image_entry(d) for d in photos])
    settings = AnalyzerSettings(measurement_ms=measurement_ms, stability_percent=25, max_trials=6)
    shm_bytes = max(4096, largest_output_bytes(url, PREPROCESS) or 0)
    load, rows = Load(concurrency=concurrency), []
    try:
        for round_ in range(rounds):
            for shared in (False, True):
                m = measure(url, PREPROCESS, data, load, settings, shared_memory=shared, output_shm_bytes=shm_bytes)
                rows.append({"round": round_, "outputs": "system shared memory" if shared else "gRPC",
                             "img_s": m.throughput, "p50_ms": m.p50_ms, "p99_ms": m.p99_ms,
                             "server_queue_ms": m.server_queue_ms, "server_compute_ms": m.server_compute_ms})
    finally:
        (out / "preprocess-images.json").unlink(missing_ok=True)

    def best(kind: str) -> float:
        return max(r["img_s"] for r in rows if r["outputs"] == kind)

    grpc_best, shm_best = best("gRPC"), best("system shared memory")
    return {"concurrency": concurrency, "output_shared_memory_bytes": shm_bytes, "rows": rows,
            "best_img_s_grpc": grpc_best, "best_img_s_shared_memory": shm_best,
            "shared_memory_over_grpc": shm_best / grpc_best if grpc_best else None}


def perf(gpu_repo: Path, out: Path, quick: bool, preprocess_instances: int, images: Path, timeout_s: float) -> dict:
    """`sampleiqa perf` against the GPU repository's server, in a child process (its own
    embedded server, loopback, shared memory for the scorer's tensors)."""
    concurrency = "1,4" if quick else "1,8,32,64"
    cmd = [sys.executable, "-m", "sampleiqa.cli", "perf", "--repository", str(gpu_repo),
           "--onnx", str(DEFAULT_REPOSITORY / "scorer" / "1" / "model.onnx"), "--images", str(images),
           "--concurrency", concurrency, "--photos", "16" if quick else "64",
           "--measurement-ms", "1500" if quick else "3000", "--batches", "1,8",
           "--baseline-seconds", "1", "--threads", str(max(1, preprocess_instances)),
           "--name", "gpu_perf", "--out-dir", str(out),
           "--note", "gpu_run: the gpu-torch repository; in-process baselines are ONNX Runtime on CPU"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    (out / "perf.log").write_text(res.stdout + res.stderr)
    if res.returncode != 0:
        raise RuntimeError(f"sampleiqa perf exited {res.returncode}: {res.stderr[-2000:]}")
    report = json.loads((out / "gpu_perf.json").read_text()) if (out / "gpu_perf.json").exists() else {}
    killed = (res.stdout + res.stderr).count("left by a killed Triton")
    return {"summary": res.stdout.strip().splitlines()[-12:], "report": "gpu_perf.md", "points": report.get("points"),
            "server_stop": {"stubs_killed_by_launcher": killed, "exit_timeout_s": 10}}


def markdown(results: dict) -> str:
    lines = ["# gpu_run", "", "`python -m sampleiqa.perf.gpu_run` (perf/gpu_run.sh); raw figures in gpu_run.json.", ""]
    for name, step in results["steps"].items():
        lines.append(f"## {name} ({step.get('seconds', 0)} s)")
        lines.append("")
        if "error" in step or "skipped" in step:
            lines += [f"**{'failed' if 'error' in step else 'skipped'}**: {step.get('error') or step.get('skipped')}", ""]
            continue
        lines += ["```", json.dumps(step["result"], indent=2, default=str)[:4000], "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--quick", action="store_true", help="small settings for the CPU rehearsal")
    p.add_argument("--budget-s", type=float, default=450.0, help="steps that would start later are skipped")
    p.add_argument("--photos", type=int, default=32)
    p.add_argument("--images", default=None,
                   help="folder of photos (default: BIQ2021's in ../shared, which a device call does not carry)")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    run = Run(out, args.budget_s)
    cores = os.cpu_count() or 2
    instances = 2 if args.device == "cpu" else max(2, cores - 2)
    max_batch = 8 if args.quick else 64
    from .inputs import DEFAULT_IMAGES, pick_photos

    images = Path(args.images or DEFAULT_IMAGES).resolve()
    photos = [p.read_bytes() for p in pick_photos(images, args.photos)]
    repo = out / "repo_gpu_torch"
    servers = Servers()
    run.step("host", host, args.device)
    run.step("build gpu-torch repository", build, repo, args.device, instances, max_batch)
    try:
        run.step("scores: GPU repository against the CPU ensemble", compare, servers, repo, photos, out, instances)
        run.step("preprocess alone: outputs over gRPC against system shared memory", preprocess_outputs, servers,
                 photos, out, 4 if args.quick else 64, 1500 if args.quick else 2500, 1)
    finally:
        run.step("GPU server stop", servers.stop_gpu)
        if servers.gpu is not None:  # the step was skipped (time budget): stop it all the same
            servers.stop_gpu()
    run.step("perf_analyzer: ensemble, preprocess, scorer", perf, repo, out, args.quick, instances, images,
             max(60.0, min(420.0, run.deadline - time.monotonic())))
    run.step("in-process scorer (TorchScorer)", in_process, args.device, [1, 8] if args.quick else [1, 8, 32, 64],
             1.0 if args.quick else 2.0, photos)
    run.step("JPEG decoding: GPU (nvJPEG) against OpenCV", jpeg_decode, args.device, photos, 1.0 if args.quick else 3.0)
    failed = [n for n, s in run.results["steps"].items() if "error" in s]
    print(f"[gpu_run] wrote {out}/gpu_run.md; failed steps: {failed or 'none'}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
