"""The GPU path end to end on one lent GPU host, in one command (perf/gpu_run.sh runs it).

    python -m sampleiqa.perf.gpu_run --out OUT              # on the GPU host, < 8 minutes
    python -m sampleiqa.perf.gpu_run --out OUT --device cpu --quick   # the rehearsal, here

1. the host: GPU, CUDA, torch, cores;
2. builds the gpu-torch repository (python backend + PyTorch FP16 with CUDA graphs, KIND_GPU;
   preprocess instances = cores - 2) from the shipped checkpoint;
3. scores the same photos through the CPU repository (the committed one) and through the
   GPU one, both on the real Triton, and compares scores (FP16 tolerance) and face boxes;
4. `sampleiqa perf` (real perf_analyzer) on the GPU server: the ensemble, preprocess and
   scorer alone;
5. the same scorer in process (TorchScorer: the runner the server uses, CUDA graphs, FP16)
   at the batch sizes Triton formed, for the serving-overhead ratio, and the fraction of
   the card's FP16 peak it reaches;
6. JPEG decoding on the GPU (torchvision.io.decode_jpeg, device="cuda") against OpenCV on one
   core, for the question of a GPU preprocessing variant.
Each step writes what it found into OUT/gpu_run.json and OUT/gpu_run.md at once, so an
outer timeout keeps the steps that finished; a step that fails is recorded and the run goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

from sampleiqa.paths import DEFAULT_REPOSITORY, WEIGHTS

CHECKPOINT = WEIGHTS / "biq2021_default.pt"
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
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cores": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": device}
    if device == "cuda":
        info.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                    memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    return info


def build(out: Path, device: str, preprocess_instances: int, max_batch: int) -> dict:
    from sampleiqa.build.repository import build_repository
    from sampleiqa.build.triton_config import RepositorySettings

    settings = RepositorySettings(target="gpu-torch", torch_device="gpu" if device == "cuda" else "cpu",
                                  preprocess_instances=preprocess_instances, max_batch_size=max_batch)
    build_repository(out, settings, checkpoint=CHECKPOINT, vendor=False)
    return {"repository": str(out), "preprocess_instances": preprocess_instances, "max_batch": max_batch}


def score_through(repository: Path, photos: list[bytes], log: Path) -> list:
    from sampleiqa.clients import ScoringClient
    from sampleiqa.server import TritonServer

    with TritonServer(repository, log_file=log, supervise=False) as server, \
            ScoringClient(server.url, timeout_s=300) as client:
        results = dict(client.score_many(enumerate(photos), concurrency=8))
    return [results[i] for i in range(len(photos))]


def compare(gpu_repo: Path, photos: list[bytes], out: Path) -> dict:
    cpu = score_through(DEFAULT_REPOSITORY, photos, out / "triton-cpu.log")
    gpu = score_through(gpu_repo, photos, out / "triton-gpu.log")
    failed = {i: r.error for i, r in enumerate(gpu) if not r.ok}
    diffs = [abs(a.score - b.score) for a, b in zip(cpu, gpu) if a.ok and b.ok]
    result = {"photos": len(photos), "gpu_errors": failed, "max_abs_diff": max(diffs) if diffs else None,
              "same_face_boxes": all(a.face_box == b.face_box for a, b in zip(cpu, gpu)),
              "tolerance": FP16_TOLERANCE}
    result["same_scores"] = not failed and diffs and max(diffs) <= FP16_TOLERANCE
    return result


def perf(gpu_repo: Path, out: Path, quick: bool, preprocess_instances: int) -> dict:
    """`sampleiqa perf` against the GPU repository's server, in a child process (its own
    embedded server, loopback, shared memory for the scorer's tensors)."""
    concurrency = "1,4" if quick else "1,8,32,64"
    cmd = [sys.executable, "-m", "sampleiqa.cli", "perf", "--repository", str(gpu_repo),
           "--onnx", str(DEFAULT_REPOSITORY / "scorer" / "1" / "model.onnx"),
           "--concurrency", concurrency, "--photos", "16" if quick else "64",
           "--measurement-ms", "1500" if quick else "3000", "--batches", "1,8",
           "--baseline-seconds", "1", "--threads", str(max(1, preprocess_instances)),
           "--name", "gpu_perf", "--out-dir", str(out),
           "--note", "gpu_run: the gpu-torch repository; in-process baselines are ONNX Runtime on CPU"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=420)
    (out / "perf.log").write_text(res.stdout + res.stderr)
    if res.returncode != 0:
        raise RuntimeError(f"sampleiqa perf exited {res.returncode}: {res.stderr[-2000:]}")
    report = json.loads((out / "gpu_perf.json").read_text()) if (out / "gpu_perf.json").exists() else {}
    return {"summary": res.stdout.strip().splitlines()[-12:], "report": "gpu_perf.md", "points": report.get("points")}


def in_process(device: str, batches: list[int], seconds: float) -> dict:
    """TorchScorer (what the server runs) in this process: images/s per batch, and the
    fraction of the card's dense FP16 peak (FLOPs counted once in FP32)."""
    import numpy as np
    import torch

    from sampleiqa.build.torch_runner import TorchScorer

    scorer = TorchScorer(CHECKPOINT, device=device, max_batch=max(batches))
    x = np.random.default_rng(0).uniform(-2, 2.5, (max(batches), 3, 448, 448)).astype(np.float32)
    rates = {}
    for b in batches:
        scorer(x[:b])
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            scorer(x[:b])
            n += b
        rates[b] = n / (time.perf_counter() - start)
    result = {"images_per_s": rates, "cuda_graphs": sorted(scorer.graphs)}
    from .gpu_scorer_bench import flops_per_image, peak_tflops

    flops = flops_per_image(scorer.model, "cpu" if device == "cpu" else device)
    result["gflops_per_image"] = flops / 1e9
    if device == "cuda":
        peak = peak_tflops(torch.cuda.get_device_name(0))
        if peak:
            result["fp16_peak_fraction"] = {b: r * flops / (peak * 1e12) for b, r in rates.items()}
    return result


def jpeg_decode(device: str, photos: list[bytes], seconds: float) -> dict:
    import cv2
    import numpy as np

    def rate(fn) -> float:
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for data in photos:
                fn(data)
            n += len(photos)
        return n / (time.perf_counter() - start)

    cv2.setNumThreads(1)
    result = {"opencv_one_core_per_s": rate(lambda d: cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_COLOR))}
    if device == "cuda":
        import torch
        from torchvision.io import decode_jpeg

        tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in photos]

        def gpu_batch(_):
            decode_jpeg(tensors, device="cuda")
            torch.cuda.synchronize()

        gpu_batch(None)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            gpu_batch(None)
            n += len(tensors)
        result["nvjpeg_batched_per_s"] = n / (time.perf_counter() - start)
    return result


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
    p.add_argument("--images", default=None, help="folder of photos (default: BIQ2021's, as `sampleiqa perf`)")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    run = Run(out, args.budget_s)
    cores = os.cpu_count() or 2
    instances = 2 if args.device == "cpu" else max(2, cores - 2)
    max_batch = 8 if args.quick else 64
    from .inputs import DEFAULT_IMAGES, pick_photos

    photos = [p.read_bytes() for p in pick_photos(args.images or DEFAULT_IMAGES, args.photos)]
    repo = out / "repo_gpu_torch"
    run.step("host", host, args.device)
    run.step("build gpu-torch repository", build, repo, args.device, instances, max_batch)
    run.step("scores: GPU repository against the CPU ensemble", compare, repo, photos, out)
    run.step("perf_analyzer: ensemble, preprocess, scorer", perf, repo, out, args.quick, instances)
    run.step("in-process scorer (TorchScorer)", in_process, args.device, [1, 8] if args.quick else [1, 8, 32, 64],
             1.0 if args.quick else 3.0)
    run.step("JPEG decoding: GPU (nvJPEG) against OpenCV", jpeg_decode, args.device, photos, 1.0 if args.quick else 3.0)
    failed = [n for n, s in run.results["steps"].items() if "error" in s]
    print(f"[gpu_run] wrote {out}/gpu_run.md; failed steps: {failed or 'none'}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
