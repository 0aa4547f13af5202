"""The GPU path on one lent GPU host, in one command of at most ~2 minutes (perf/gpu_run.sh runs it).

    python -m sampleiqa.perf.gpu_run --out OUT --images DIR   # on the GPU host (perf/gpu_run.sh)
    python -m sampleiqa.perf.gpu_run --out OUT --device cpu --quick   # the rehearsal, here

Steps, the issue's targets first (a device's minutes are few: ../shared/STACK.md):
1. the host: GPU, CUDA, torch, cores, and perf_analyzer's start (its libraries);
2. builds the gpu-torch repository from the shipped checkpoint: the GPU preprocessing
   (nvJPEG, YuNet in torch, crops on the device) and the scorer (FP16 weights, CUDA graphs,
   pinned staging, 2 instances), PIXELS kept on the GPU between them;
3. the CPU path's answers for the same photos, in process (OpenCV + the committed ONNX on
   ONNX Runtime): the reference, without a second server;
4. one GPU server: its scores against the reference (FP16 tolerance, face decisions and
   boxes), then perf_analyzer on the ensemble, preprocess and scorer alone, every tensor
   through system shared memory, with the batch sizes Triton formed; then its stop, recorded
   (seconds, Triton's exit lines, stubs the launcher had to kill);
5. the scorer in process (TorchScorer, what the server runs) per batch: host input, input
   already on the GPU, the compute alone, uploads from pageable and pinned memory;
6. the GPU preprocessing in process against the CPU path on the photos, and its images/s;
7. JPEG decoding: nvJPEG batched against OpenCV on one core;
8. torch.compile against eager at the largest batch, if the budget still allows (its compile
   takes minutes on some hosts: it goes last, and a skip is recorded as such).
Each step writes what it found into OUT/gpu_run.json and OUT/gpu_run.md at once, so an outer
timeout keeps the steps that finished; a step that fails is recorded and the run goes on. The
top of gpu_run.md is the issue's targets, each with its figure and pass or miss.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

from .gpu_in_process import CHECKPOINT, compiled, gpu_preprocess, in_process, jpeg_decode
from .gpu_served import Served, cpu_reference


class Run:
    def __init__(self, out: Path, budget_s: float):
        self.out, self.deadline = out, time.monotonic() + budget_s
        self.results: dict = {"steps": {}}
        out.mkdir(parents=True, exist_ok=True)

    def step(self, name: str, fn, *args, min_left_s: float = 20):
        left = self.deadline - time.monotonic()
        if left < min_left_s:
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

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": device,
    }
    if device == "cuda":
        info.update(
            gpu=torch.cuda.get_device_name(0),
            cuda=torch.version.cuda,
            memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
        )
    try:  # a missing library shows here, before the perf steps
        info["perf_analyzer"] = check_start()
        info["perf_analyzer_ld_library_path"] = environment()["LD_LIBRARY_PATH"]
    except Exception as exc:
        info["perf_analyzer"] = f"does not start: {exc}"
    return info


def build(out: Path, device: str, preprocess_instances: int, max_batch: int) -> dict:
    from sampleiqa.build.repository import build_repository
    from sampleiqa.build.triton_config import RepositorySettings

    settings = RepositorySettings(
        target="gpu-torch",
        torch_device="gpu" if device == "cuda" else "cpu",
        preprocess_instances=preprocess_instances,
        scorer_instances=2,
        max_batch_size=max_batch,
        preprocess_preferred_batch=max_batch // 2,
    )
    build_repository(out, settings, checkpoint=CHECKPOINT, vendor=False)
    return {
        "repository": str(out),
        "preprocess": "torch",
        "preprocess_instances": preprocess_instances,
        "scorer_instances": 2,
        "max_batch": max_batch,
        "crops_in_flight": settings.credits,
    }


TARGETS = (  # (what, figure's path in the results, target, how it compares)
    ("ensemble end to end, img/s", ("served", "sampleiqa", "img_s"), 3000.0),
    ("served scorer / in-process runner at its batch", ("ratios", "served_scorer_over_in_process"), 0.9),
    ("ensemble / its slowest step", ("served", "ensemble_over_slowest_step"), 0.9),
    ("in-process scorer, input on the GPU, img/s", ("ratios", "in_process_gpu_input_img_s"), 5000.0),
)


def ratios(results: dict) -> dict:
    """The targets that join two steps' figures: the served scorer against the in-process
    runner at the batch Triton formed (the nearest batch measured in process)."""
    served = results["steps"].get("served figures", {}).get("result") or {}
    rows = (results["steps"].get("in-process scorer (TorchScorer)", {}).get("result") or {}).get("by_batch") or {}
    out = {}
    if rows:
        top = max(rows, key=int)
        out["in_process_gpu_input_img_s"] = rows[top]["gpu_input_img_s"]
        if "scorer" in served:
            batch = min(rows, key=lambda b: abs(int(b) - served["scorer"]["mean_batch"]))
            out["served_scorer_over_in_process"] = served["scorer"]["img_s"] / rows[batch]["host_input_img_s"]
            out["in_process_batch_compared"] = int(batch)
    return out


def targets(results: dict) -> list[dict]:
    found = {"served": results["steps"].get("served figures", {}).get("result") or {}, "ratios": ratios(results)}
    rows = []
    for what, path, target in TARGETS:
        value = found
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        rows.append(
            {"what": what, "figure": value, "target": target, "met": None if value is None else value >= target}
        )
    return rows


def markdown(results: dict) -> str:
    lines = [
        "# gpu_run",
        "",
        "`python -m sampleiqa.perf.gpu_run` (perf/gpu_run.sh); raw figures in gpu_run.json.",
        "",
        "| target | figure | wanted | met |",
        "|---|---|---|---|",
    ]
    for t in results.get("targets", []):
        figure = "not measured" if t["figure"] is None else f"{t['figure']:,.2f}"
        met = "" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['what']} | {figure} | >= {t['target']:,g} | {met} |")
    lines.append("")
    for name, step in results["steps"].items():
        lines.append(f"## {name} ({step.get('seconds', 0)} s)")
        lines.append("")
        if "error" in step or "skipped" in step:
            lines += [
                f"**{'failed' if 'error' in step else 'skipped'}**: {step.get('error') or step.get('skipped')}",
                "",
            ]
            continue
        lines += ["```", json.dumps(step["result"], indent=2, default=str)[:4000], "```", ""]
    return "\n".join(lines)


def served_steps(run: Run, served: Served, photos: list[bytes], quick: bool, out: Path) -> None:
    """One GPU server: its scores against the CPU reference, perf_analyzer, its stop."""
    from .analyzer import AnalyzerSettings
    from .inputs import preprocessed

    reference = run.get("CPU reference, in process")
    run.step("GPU server start", served.start)
    try:
        if served.server is not None and reference is not None:
            run.step("scores: GPU repository against the CPU path", served.compare, photos, reference)
            levels = (
                {"sampleiqa": 4, "preprocess": 4, "scorer": 4}
                if quick
                else {"sampleiqa": 256, "preprocess": 256, "scorer": 128}
            )
            # The CPU rehearsal counts requests: on a loaded 2-core host one takes over a second,
            # and a time window can close with none finished.
            settings = AnalyzerSettings(request_count=8) if quick else AnalyzerSettings(2000, max_trials=4)
            run.step("served figures", served.figures, photos, preprocessed(photos[:8]), out, levels, settings)
    finally:
        run.step("GPU server stop", served.stop)
        if served.server is not None:  # the step was skipped (time budget): stop it all the same
            served.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--quick", action="store_true", help="small settings for the CPU rehearsal")
    p.add_argument("--budget-s", type=float, default=130.0, help="steps that would start later are skipped")
    p.add_argument("--photos", type=int, default=32)
    p.add_argument(
        "--images",
        default=None,
        help="folder of photos (default: BIQ2021's in ../shared, which a device call does not carry)",
    )
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    run = Run(out, args.budget_s)
    quick = args.quick
    instances = 1 if args.device == "cpu" else 4  # GPU preprocess instances: the device does the work
    max_batch = 8 if quick else 64
    from .inputs import DEFAULT_IMAGES, pick_photos

    images = Path(args.images or DEFAULT_IMAGES).resolve()
    photos = [p.read_bytes() for p in pick_photos(images, args.photos)]
    repo = out / "repo_gpu_torch"
    served = Served(repo, out, instances + 2)
    run.step("host", host, args.device)
    run.step("build gpu-torch repository", build, repo, args.device, instances, max_batch)
    run.step("CPU reference, in process", cpu_reference, photos)
    served_steps(run, served, photos, quick, out)
    run.step(
        "in-process scorer (TorchScorer)",
        in_process,
        args.device,
        [1, 4] if quick else [8, 32, 64],
        0.5 if quick else 1.0,
        photos,
    )
    run.step(
        "GPU preprocessing against the CPU path",
        gpu_preprocess,
        args.device,
        photos,
        8 if quick else 64,
        0.5 if quick else 1.5,
    )
    run.step("JPEG decoding: GPU (nvJPEG) against OpenCV", jpeg_decode, args.device, photos, 0.5 if quick else 1.5)
    run.step(
        "torch.compile against eager",
        compiled,
        args.device,
        2 if quick else max_batch,
        0.5 if quick else 1.5,
        "aot_eager" if args.device == "cpu" else "inductor",
        min_left_s=20 if quick else 60,
    )
    run.results["targets"] = targets(run.results)
    run.save()
    failed = [n for n, s in run.results["steps"].items() if "error" in s]
    print(f"[gpu_run] wrote {out}/gpu_run.md; failed steps: {failed or 'none'}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
