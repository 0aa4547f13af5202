"""TensorRT FP16 engine (model.plan) for the GPU scorer, with the TensorRT 10.x Python API.

An engine runs only on the TensorRT version and GPU architecture that built it, so build it
on a GPU host inside the same Triton image that serves it:

    docker run --gpus all --rm -it -v $PWD:/w -w /w nvcr.io/nvidia/tritonserver:<yy.mm>-py3
    pip install -e '.[train,tensorrt]' && \\
        sampleiqa build-repository --target gpu-trt --checkpoint CKPT --out model_repository_gpu

(use the `tensorrt` wheel that matches the image's TensorRT, e.g. `pip install tensorrt==<x.y>`,
if the extra pulls a different one). The equivalent with the image's trtexec:

    trtexec --onnx=model.onnx --saveEngine=model.plan --fp16 \\
        --minShapes=PIXELS:1x3x448x448 --optShapes=PIXELS:16x3x448x448 \\
        --maxShapes=PIXELS:64x3x448x448 --timingCacheFile=timing.cache

On TensorRT >= 10.12 (weak typing deprecated; removed in 11) give trtexec the FP16 ONNX from
`export_onnx.convert_to_fp16` with `--stronglyTyped` instead of `--fp16`.

This module imports without TensorRT (it is imported inside the functions), so the CPU test
suite and the repository builder can read engine sidecars anywhere. Nothing here has been
run against a real TensorRT in this project's CI: no machine here has TensorRT or a GPU.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from sampleiqa.contracts import PIXELS, SCORE

log = logging.getLogger(__name__)

GPU_HOST_COMMAND = (
    "pip install -e '.[train,tensorrt]' && sampleiqa build-repository --target gpu-trt "
    "--checkpoint CKPT --out model_repository_gpu"
)
# First TensorRT with weak typing (BuilderFlag.FP16) deprecated: build strongly typed from there.
STRONGLY_TYPED_FROM = (10, 12)
PRECISIONS = ("fp16", "fp32")
_PROFILE_KEYS = ("min_batch", "opt_batch", "max_batch", "precision", "strongly_typed",
                 "tensorrt_version", "input", "output", "img_size")


def tensorrt_available() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:  # ImportError, or a wheel whose CUDA libraries fail to load
        return False
    return True


def _import_tensorrt():
    try:
        import tensorrt as trt
    except Exception as exc:
        raise RuntimeError(
            "TensorRT is not installed here (engines need a GPU host with the serving image's "
            "TensorRT). On the GPU host, inside nvcr.io/nvidia/tritonserver:<yy.mm>-py3, run: "
            f"{GPU_HOST_COMMAND}  (or trtexec, see sampleiqa.build.tensorrt_engine's docstring)"
        ) from exc
    return trt


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for p in version.split(".")[:3]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def _sidecar(plan_path: str | Path) -> Path:
    plan_path = Path(plan_path)
    return plan_path.with_name(plan_path.name + ".json")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_engine_profile(plan_path: str | Path, **fields) -> Path:
    """Write `<plan_path>.json` (the engine's batch range and precision). Returns its path."""
    path = _sidecar(plan_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, (json.dumps(fields, indent=2, sort_keys=True) + "\n").encode())
    return path


def read_engine_profile(plan_path: str | Path) -> dict:
    """The sidecar of an engine: min/opt/max batch, precision, TensorRT version, tensor names."""
    path = _sidecar(plan_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no engine profile {path}: build the engine with sampleiqa.build.tensorrt_engine."
            "build_engine (it writes the plan and this sidecar), or write it with "
            "write_engine_profile() after a trtexec build"
        )
    profile = json.loads(path.read_text())
    if not isinstance(profile, dict) or "max_batch" not in profile:
        raise ValueError(f"{path} is not an engine profile (expected keys: {', '.join(_PROFILE_KEYS)})")
    return profile


def _onnx_has_fp16(onnx_path: Path) -> bool:
    import onnx

    model = onnx.load(onnx_path, load_external_data=False)
    return any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer)


def _make_logger(trt):
    levels = {
        trt.ILogger.Severity.INTERNAL_ERROR: logging.CRITICAL,
        trt.ILogger.Severity.ERROR: logging.ERROR,
        trt.ILogger.Severity.WARNING: logging.WARNING,
        trt.ILogger.Severity.INFO: logging.DEBUG,  # TensorRT's INFO is very chatty
        trt.ILogger.Severity.VERBOSE: logging.DEBUG,
    }

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            log.log(levels.get(severity, logging.INFO), "TensorRT: %s", msg)

    return _Logger()


def build_engine(onnx_path: str | Path, plan_path: str | Path, min_batch: int = 1, opt_batch: int = 16,
                 max_batch: int = 64, precision: str = "fp16", timing_cache: str | Path | None = None,
                 workspace_gib: float = 4.0, strongly_typed: bool | None = None) -> Path:
    """Build a serialized TensorRT engine from the scorer's ONNX; writes the plan and its sidecar.

    strongly_typed=None picks it from the TensorRT version: strongly typed from 10.12 on (an
    FP32 ONNX is first converted to `<plan_stem>.fp16.onnx` with convert_to_fp16), else the
    weakly typed BuilderFlag.FP16. timing_cache: a file read if present and written back after
    the build, so rebuilds on the same GPU skip most tactic timing.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} not in {PRECISIONS}")
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError(f"need 1 <= min_batch <= opt_batch <= max_batch, got {min_batch}, {opt_batch}, {max_batch}")
    trt = _import_tensorrt()

    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(onnx_path)
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    version = trt.__version__
    if strongly_typed is None:
        strongly_typed = _version_tuple(version) >= STRONGLY_TYPED_FROM
    log.info("TensorRT %s, %s, %s", version, precision, "strongly typed" if strongly_typed else "weakly typed")

    if strongly_typed and precision == "fp16" and not _onnx_has_fp16(onnx_path):
        # Strongly typed: the ONNX's own types are the engine's precision.
        from .export_onnx import convert_to_fp16

        fp16_path = plan_path.with_name(plan_path.stem + ".fp16.onnx")
        log.info("converting to fp16: %s", fp16_path)
        onnx_path = convert_to_fp16(onnx_path, fp16_path)

    trt_logger = _make_logger(trt)
    builder = trt.Builder(trt_logger)
    flags = 0
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, trt_logger)
    log.info("parsing %s", onnx_path)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")

    inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    outputs = [network.get_output(i).name for i in range(network.num_outputs)]
    if PIXELS not in inputs or SCORE not in outputs:
        raise RuntimeError(f"{onnx_path}: expected input {PIXELS} and output {SCORE}, "
                           f"got {sorted(inputs)} -> {outputs}")
    shape = tuple(inputs[PIXELS].shape)  # (-1, 3, H, W): only the batch is dynamic
    if len(shape) != 4 or any(d < 0 for d in shape[1:]):
        raise RuntimeError(f"{PIXELS} must be [N,3,H,W] with a static H and W, got {shape}")
    chw = shape[1:]
    img_size = int(chw[-1])

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision == "fp16" and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)  # strongly typed networks reject precision flags
    profile = builder.create_optimization_profile()
    profile.set_shape(PIXELS, (min_batch, *chw), (opt_batch, *chw), (max_batch, *chw))
    config.add_optimization_profile(profile)

    cache_path = Path(timing_cache) if timing_cache else None
    if cache_path is not None:
        blob = cache_path.read_bytes() if cache_path.is_file() else b""
        cache = config.create_timing_cache(blob)
        # ignore_mismatch=False: a cache from another GPU/TensorRT is refused, not silently used.
        if not config.set_timing_cache(cache, ignore_mismatch=False):
            raise RuntimeError(f"TensorRT refused timing cache {cache_path} (other GPU or TensorRT version?); "
                               "delete it to start a fresh one")
        log.info("timing cache: %s (%d bytes)", cache_path, len(blob))

    log.info("building batch %d/%d/%d (can take minutes)", min_batch, opt_batch, max_batch)
    t0 = time.monotonic()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}; see the TensorRT log lines above")
    plan = bytes(memoryview(serialized))
    seconds = time.monotonic() - t0

    _write_atomic(plan_path, plan)
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
    write_engine_profile(
        plan_path, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch, precision=precision,
        strongly_typed=bool(strongly_typed), tensorrt_version=version, input=PIXELS, output=SCORE,
        img_size=img_size,
    )
    log.info("done: %s, %.1f MiB in %.0f s", plan_path, len(plan) / (1 << 20), seconds)
    return plan_path
