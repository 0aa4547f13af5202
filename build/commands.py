"""`sampleiqa build-repository`, `export-onnx` and `build-engine`: the export -> engine ->
repository pipeline behind the flags. Light at import; torch and TensorRT load when run."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from sampleiqa.commands import Command
from sampleiqa.runtime.contracts import CPU_MAX_BATCH, GPU_MAX_BATCH


def add_build_repository_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--target",
        choices=["cpu", "gpu-trt", "gpu-onnx", "gpu-torch"],
        default="cpu",
        help="where the scorer runs (docs/serving.md, docs/gpu.md)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="repository folder to write")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", metavar="FILE.pt", help="training checkpoint (.pt)")
    src.add_argument("--onnx", metavar="FILE.onnx", help="exported scorer (.onnx)")
    src.add_argument("--engine", metavar="FILE.plan", help="built TensorRT engine (.plan, with its .json profile)")
    src.add_argument("--untrained", metavar="MODEL", help="random weights of a named config (smoke tests only)")
    p.add_argument("--seed", type=int, default=0, help="with --untrained: the random weights' seed")
    p.add_argument(
        "--max-batch",
        type=int,
        default=None,
        metavar="N",
        help=f"largest batch of every model (default: {CPU_MAX_BATCH} cpu, {GPU_MAX_BATCH} gpu targets)",
    )
    p.add_argument(
        "--min-batch", type=int, default=1, metavar="N", help="gpu-trt: the profile's smallest batch (must be 1)"
    )
    p.add_argument("--opt-batch", type=int, default=16, metavar="N", help="gpu-trt: the batch TensorRT tunes for")
    p.add_argument(
        "--timing-cache", default=None, metavar="FILE", help="gpu-trt: TensorRT timing cache, read and written back"
    )
    p.add_argument(
        "--preprocess-instances", type=int, default=2, metavar="N", help="preprocess model instances (one core each)"
    )
    p.add_argument(
        "--scorer-instances",
        type=int,
        default=None,
        metavar="N",
        help="scorer model instances (default: 2 on a GPU, so one uploads while the other computes; 1 on CPU)",
    )
    p.add_argument(
        "--ort-threads", type=int, default=2, metavar="N", help="cpu: ONNX Runtime threads per scorer instance"
    )
    _add_back_pressure_arguments(p)
    _add_torch_arguments(p)
    p.add_argument(
        "--no-vendor",
        action="store_true",
        help="do not copy sampleiqa/runtime/ into the repository (sampleiqa must be installed where Triton runs)",
    )


def _add_back_pressure_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("back-pressure and memory (docs/serving.md: Memory under load)")
    g.add_argument(
        "--crops-in-flight",
        type=int,
        default=None,
        metavar="N",
        help="crops preprocessed but not yet scored, at most (default: 48 cpu, 256 gpu-torch; 0: no limit)",
    )
    g.add_argument(
        "--preprocess-max-queue",
        type=int,
        default=64,
        metavar="N",
        help="requests waiting for preprocess; more are refused at once (clients retry)",
    )
    g.add_argument("--scorer-max-queue", type=int, default=128, metavar="N", help="requests waiting for the scorer")
    g.add_argument("--ort-run-batch", type=int, default=4, metavar="N", help="cpu: crops per ONNX Runtime run")


def _add_torch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--torch-device",
        choices=["gpu", "cpu"],
        default="gpu",
        help="gpu-torch: where the scorer runs (cpu: a dry run of the GPU repository)",
    )
    p.add_argument(
        "--preprocess",
        choices=["cpu", "torch"],
        default=None,
        help="gpu targets: 'torch' decodes JPEGs with nvJPEG and finds faces and crops on the GPU "
        "(default for gpu-torch); 'cpu' uses OpenCV on CPU instances (default for gpu-trt, gpu-onnx)",
    )
    p.add_argument(
        "--torch-compile",
        default="",
        metavar="MODE",
        help="gpu-torch: torch.compile the scorer with this mode (default: eager; perf/gpu_run.py measures both)",
    )


def default_scorer_instances(args) -> int:
    on_gpu = args.target != "cpu" and not (args.target == "gpu-torch" and args.torch_device == "cpu")
    return 2 if on_gpu else 1


def cmd_build_repository(args) -> int:
    from sampleiqa.build.repository import build_repository
    from sampleiqa.build.triton_config import RepositorySettings

    max_batch = args.max_batch or (CPU_MAX_BATCH if args.target == "cpu" else GPU_MAX_BATCH)
    settings = RepositorySettings(
        target=args.target,
        max_batch_size=max_batch,
        preprocess_instances=args.preprocess_instances,
        scorer_instances=args.scorer_instances or default_scorer_instances(args),
        ort_threads=args.ort_threads,
        preprocess=args.preprocess,
        torch_compile=args.torch_compile,
        torch_device=args.torch_device,
        crops_in_flight=args.crops_in_flight,
        preprocess_max_queue=args.preprocess_max_queue,
        scorer_max_queue=args.scorer_max_queue,
        ort_run_batch=args.ort_run_batch,
    )
    out = Path(args.out)
    onnx_path, engine = args.onnx, args.engine
    if args.target == "gpu-torch":
        if not args.checkpoint:
            print("sampleiqa build-repository: --target gpu-torch needs --checkpoint", file=sys.stderr)
            return 2
        build_repository(out, settings, checkpoint=args.checkpoint, vendor=not args.no_vendor)
        print(f"wrote the {args.target} repository to {out}", file=sys.stderr)
        return 0
    with tempfile.TemporaryDirectory(prefix="sampleiqa-build-") as scratch:
        if onnx_path is None and engine is None:
            onnx_path = Path(scratch) / "scorer.onnx"
            _export(args, onnx_path)
        if args.target == "gpu-trt" and engine is None:
            from sampleiqa.build.tensorrt_engine import build_engine

            engine = build_engine(
                onnx_path,
                Path(scratch) / "model.plan",
                min_batch=args.min_batch,
                opt_batch=args.opt_batch,
                max_batch=max_batch,
                timing_cache=args.timing_cache,
            )
        build_repository(out, settings, onnx_path=onnx_path, engine_path=engine, vendor=not args.no_vendor)
    print(f"wrote the {args.target} repository to {out}", file=sys.stderr)
    return 0


def _export(args, onnx_path: Path) -> None:
    from sampleiqa.build.export_onnx import export_checkpoint, export_onnx

    if args.checkpoint:
        export_checkpoint(args.checkpoint, onnx_path)
        return
    if not args.untrained:
        raise SystemExit("give --checkpoint, --onnx or --engine (or --untrained MODEL for a random-weight model)")
    import torch

    from sampleiqa.training.models import create_model

    torch.manual_seed(args.seed)
    logging.getLogger("sampleiqa").warning(
        "exporting an UNTRAINED %s (seed %d): scores are meaningless", args.untrained, args.seed
    )
    export_onnx(create_model(args.untrained).eval(), onnx_path)


def add_export_onnx_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="FILE.pt", help="training checkpoint")
    p.add_argument("--out", required=True, metavar="FILE.onnx", help="ONNX file to write")
    p.add_argument("--opset", type=int, default=17, metavar="N", help="ONNX opset (17 or later)")
    p.add_argument("--fp16", action="store_true", help="write the FP16 copy (build/fp16.py) instead")


def cmd_export_onnx(args) -> int:
    from sampleiqa.build.export_onnx import export_checkpoint

    export_checkpoint(args.checkpoint, args.out, opset=args.opset, fp16=args.fp16)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def add_build_engine_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--onnx", required=True, metavar="FILE.onnx", help="exported scorer")
    p.add_argument("--out", required=True, metavar="FILE.plan", help="engine to write (with FILE.plan.json beside it)")
    p.add_argument("--min-batch", type=int, default=1, metavar="N", help="the profile's smallest batch (must be 1)")
    p.add_argument("--opt-batch", type=int, default=16, metavar="N", help="the batch TensorRT tunes for")
    p.add_argument("--max-batch", type=int, default=GPU_MAX_BATCH, metavar="N", help="the profile's largest batch")
    p.add_argument("--timing-cache", default=None, metavar="FILE", help="TensorRT timing cache, read and written back")


def cmd_build_engine(args) -> int:
    from sampleiqa.build.tensorrt_engine import build_engine

    build_engine(
        args.onnx,
        args.out,
        min_batch=args.min_batch,
        opt_batch=args.opt_batch,
        max_batch=args.max_batch,
        timing_cache=args.timing_cache,
    )
    return 0


COMMANDS = {
    "build-repository": Command(
        "assemble a Triton model repository for a target", add_build_repository_arguments, cmd_build_repository
    ),
    "export-onnx": Command("export a checkpoint's scorer to ONNX", add_export_onnx_arguments, cmd_export_onnx),
    "build-engine": Command(
        "build a TensorRT FP16 engine (GPU host with TensorRT)", add_build_engine_arguments, cmd_build_engine
    ),
}
