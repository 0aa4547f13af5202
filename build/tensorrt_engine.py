"""TensorRT FP16 engine (model.plan) for the GPU scorer, with the TensorRT 10.x Python API.

An engine runs only on the TensorRT version and GPU architecture that built it, so build it
on a GPU host inside the same Triton image that serves it:

    docker run --gpus all --rm -it -v $PWD:/w -w /w nvcr.io/nvidia/tritonserver:25.01-py3
    pip install -e '.[train,tensorrt]' && \\
        sampleiqa build-repository --target gpu-trt --checkpoint CKPT --out model_repository_gpu

The `tensorrt` extra pins the bindings to the TensorRT of that image (25.01: 10.8.0.43); for
another image pin its version (`installed_tensorrt_version()` reads it from libnvinfer). The
build refuses bindings whose version differs from the image's libnvinfer, and the sidecar
records the version, so `check_engine_version` can refuse a plan the server would reject
("Version tag does not match").

One build path on every TensorRT 10.x: a strongly typed network (NetworkDefinitionCreation
Flag.STRONGLY_TYPED, in TensorRT since 10.0; weak typing is deprecated from 10.12 and gone in
11) from the FP16 copy of the ONNX (`build/fp16.py`), whose FP32 islands
(LayerNormalization, the statistics and their head, the output guard) TensorRT must keep
as typed. TF32 is cleared, so those islands compute in true FP32. The equivalent with the
image's trtexec:

    trtexec --onnx=model.fp16.onnx --saveEngine=model.plan --stronglyTyped --noTF32 \\
        --minShapes=PIXELS:1x3x448x448 --optShapes=PIXELS:16x3x448x448 \\
        --maxShapes=PIXELS:64x3x448x448 --timingCacheFile=timing.cache

`build/tensorrt_limits.py` checks an ONNX against TensorRT's documented limits on CPU, so a
model that cannot build fails in CI, not on a GPU host. This module imports without
TensorRT (it is imported inside the functions); the tests drive the whole builder through a
fake `tensorrt` module that records its calls. No machine here has TensorRT or a GPU: no
real engine has been built by this project.

(Over 300 lines: one builder, from the ONNX checks to the plan and its profile, read in order.)
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from sampleiqa.runtime.contracts import GPU_MAX_BATCH, PIXELS, SCORE

log = logging.getLogger(__name__)

GPU_HOST_COMMAND = (
    "pip install -e '.[train,tensorrt]' && sampleiqa build-repository --target gpu-trt "
    "--checkpoint CKPT --out model_repository_gpu"
)
PRECISIONS = ("fp16", "fp32")
_PROFILE_KEYS = (
    "min_batch",
    "opt_batch",
    "max_batch",
    "precision",
    "strongly_typed",
    "tensorrt_version",
    "input",
    "output",
    "img_size",
)


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


def installed_tensorrt_version() -> str | None:
    """The TensorRT runtime of this host (libnvinfer's getInferLibVersion, no Python bindings
    needed: Triton images ship the library), as "major.minor.patch"; None without one."""
    import ctypes

    for name in ("libnvinfer.so.10", "libnvinfer.so.11", "libnvinfer.so"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        v = int(lib.getInferLibVersion())  # major * 10000 + minor * 100 + patch (TensorRT >= 10)
        return f"{v // 10000}.{v // 100 % 100}.{v % 100}"
    return None


def check_engine_version(plan_path: str | Path, runtime_version: str | None = None) -> None:
    """Refuse a plan built by another TensorRT than the runtime that will load it (Triton
    fails it at load with "Version tag does not match"). `runtime_version`: default, this
    host's libnvinfer; nothing is checked where there is none (a CPU machine)."""
    runtime_version = runtime_version or installed_tensorrt_version()
    built = read_engine_profile(plan_path).get("tensorrt_version")
    if runtime_version is None or built is None:
        return
    if _version_tuple(built)[:3] != _version_tuple(runtime_version)[:3]:
        raise RuntimeError(
            f"{plan_path} was built with TensorRT {built}, but this host's TensorRT is "
            f"{runtime_version}: rebuild it here (engines do not move between versions)"
        )


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


def _check_request(min_batch: int, opt_batch: int, max_batch: int, precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} not in {PRECISIONS}")
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError(f"need 1 <= min_batch <= opt_batch <= max_batch, got {min_batch}, {opt_batch}, {max_batch}")
    if min_batch != 1:
        raise ValueError(
            f"min_batch {min_batch}: Triton sends batches from 1 up, which an engine whose "
            "profile starts higher refuses; keep min_batch=1 (opt_batch sets the tuned size)"
        )


def _check_bindings(version: str) -> None:
    runtime = installed_tensorrt_version()
    if runtime is not None and _version_tuple(runtime)[:3] != _version_tuple(version)[:3]:
        raise RuntimeError(
            f"the tensorrt Python bindings are {version} but this host's libnvinfer is {runtime}: "
            f"pip install tensorrt=={runtime}.* (the engine must match the server's TensorRT)"
        )


def _typed_onnx(onnx_path: Path, plan_path: Path, precision: str) -> Path:
    """The ONNX to parse: strongly typed, its own types are the engine's precision."""
    from .tensorrt_limits import check_onnx

    check_onnx(onnx_path)  # TopK, operators: fail before minutes of building
    if precision != "fp16" or _onnx_has_fp16(onnx_path):
        return onnx_path
    from .fp16 import convert_to_fp16

    fp16_path = plan_path.with_name(plan_path.stem + ".fp16.onnx")
    log.info("converting to fp16: %s", fp16_path)
    return convert_to_fp16(onnx_path, fp16_path)


def _parse(trt, builder, logger, onnx_path: Path):
    """(network, [3, H, W]) of a strongly typed network with PIXELS [N,3,H,W] -> SCORE."""
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    log.info("parsing %s", onnx_path)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    outputs = [network.get_output(i).name for i in range(network.num_outputs)]
    if PIXELS not in inputs or SCORE not in outputs:
        raise RuntimeError(
            f"{onnx_path}: expected input {PIXELS} and output {SCORE}, got {sorted(inputs)} -> {outputs}"
        )
    shape = tuple(inputs[PIXELS].shape)  # (-1, 3, H, W): only the batch is dynamic
    if len(shape) != 4 or any(d < 0 for d in shape[1:]):
        raise RuntimeError(f"{PIXELS} must be [N,3,H,W] with a static H and W, got {shape}")
    return network, shape[1:]


def _builder_config(trt, builder, chw, batches: tuple[int, int, int], workspace_gib: float, cache_path: Path | None):
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    # Strongly typed networks take no precision flags; TF32 (on by default) would round the
    # FP32 islands' matmuls and convolutions to 10 mantissa bits.
    config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    profile.set_shape(PIXELS, *[(b, *chw) for b in batches])
    config.add_optimization_profile(profile)
    if cache_path is not None:
        blob = cache_path.read_bytes() if cache_path.is_file() else b""
        # ignore_mismatch=False: a cache from another GPU/TensorRT is refused, not silently used.
        if not config.set_timing_cache(config.create_timing_cache(blob), ignore_mismatch=False):
            raise RuntimeError(
                f"TensorRT refused timing cache {cache_path} (other GPU or TensorRT version?); "
                "delete it to start a fresh one"
            )
        log.info("timing cache: %s (%d bytes)", cache_path, len(blob))
    return config


def build_engine(
    onnx_path: str | Path,
    plan_path: str | Path,
    min_batch: int = 1,
    opt_batch: int = 16,
    max_batch: int = GPU_MAX_BATCH,
    precision: str = "fp16",
    timing_cache: str | Path | None = None,
    workspace_gib: float = 4.0,
) -> Path:
    """Build a serialized TensorRT engine from the scorer's ONNX; writes the plan and its sidecar.

    Always strongly typed: for fp16 an FP32 ONNX is first converted to `<plan_stem>.fp16.onnx`
    (build/fp16.py, whose FP32 islands the engine then keeps); fp32 builds the FP32 graph as it
    is. TF32 is off. min_batch must be 1: Triton's batcher sends any batch from 1 up, and a
    request outside the profile fails. timing_cache: a file read if present and written back
    after the build, so rebuilds on the same GPU skip most tactic timing.
    """
    _check_request(min_batch, opt_batch, max_batch, precision)
    trt = _import_tensorrt()
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(onnx_path)
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    _check_bindings(trt.__version__)
    log.info("TensorRT %s, %s, strongly typed", trt.__version__, precision)
    onnx_path = _typed_onnx(onnx_path, plan_path, precision)

    logger = _make_logger(trt)
    builder = trt.Builder(logger)
    network, chw = _parse(trt, builder, logger, onnx_path)
    cache_path = Path(timing_cache) if timing_cache else None
    config = _builder_config(trt, builder, chw, (min_batch, opt_batch, max_batch), workspace_gib, cache_path)
    log.info("building batch %d/%d/%d (can take minutes)", min_batch, opt_batch, max_batch)
    t0 = time.monotonic()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}; see the TensorRT log lines above")
    plan = bytes(memoryview(serialized))

    _write_atomic(plan_path, plan)
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
    write_engine_profile(
        plan_path,
        min_batch=min_batch,
        opt_batch=opt_batch,
        max_batch=max_batch,
        precision=precision,
        strongly_typed=True,
        tensorrt_version=trt.__version__,
        input=PIXELS,
        output=SCORE,
        img_size=int(chw[-1]),
    )
    log.info("done: %s, %.1f MiB in %.0f s", plan_path, len(plan) / (1 << 20), time.monotonic() - t0)
    return plan_path
