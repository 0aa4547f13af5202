"""Triton model configs, generated as `model_config_pb2.ModelConfig` messages.

Every config.pbtxt in a SampleIQA repository is written from here, so tensor names,
shapes and batch sizes are set in one place (sampleiqa.runtime.contracts) for every target.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from sampleiqa.runtime.admission import PARAMETER as CROPS_IN_FLIGHT
from sampleiqa.runtime.contracts import (
    CPU_MAX_BATCH,
    CROP,
    ENSEMBLE,
    FACE_BOX,
    FACE_FOUND,
    IMAGE,
    PIXELS,
    PREPROCESS,
    SCORE,
    SCORER,
)

TARGETS = ("cpu", "gpu-trt", "gpu-onnx", "gpu-torch")
# Warm-up: one batch of 1 per instance before the model reports READY, so the first client
# request does not pay for lazy initialisation (ONNX Runtime's arena, TensorRT's context,
# YuNet's first run). Ensembles cannot carry it; each composing model does. Triton refuses to
# load a model whose warm-up fails, so a broken input or model is caught at start.
WARMUP_FILE = "IMAGE"  # preprocess/warmup/IMAGE: a real photo (repository.write_warmup_inputs)


@dataclass(frozen=True)
class RepositorySettings:
    target: str = "cpu"
    max_batch_size: int = CPU_MAX_BATCH  # gpu-trt: taken from the engine profile
    preprocess_instances: int = 2
    scorer_instances: int = 1
    ort_threads: int = 2  # cpu scorer: ONNX Runtime intra-op threads per instance
    ort_spinning: bool = (
        False  # cpu scorer: busy-waiting ORT threads burn the cores preprocess needs (perf/results/tuning.md)
    )
    # scorers on CPU (ORT; torch with torch_device cpu): crops per run; memory grows with it, speed per crop does not
    ort_run_batch: int = 4
    ort_arena_keep_batch: int = 1  # cpu scorer: ORT's arena is shrunk back after a larger run (memory bound) ...
    ort_arena_shrink_after_s: float = (
        5.0  # ... once none has run for this long (not after each: perf/results/arena-under-load.md)
    )
    torch_device: str = (
        "gpu"  # torch models (gpu-torch scorer, torch preprocess): "cpu" runs them on CPU (CI, dry runs)
    )
    cuda_graphs: bool = True  # gpu-torch: one CUDA graph per batch bucket
    torch_compile: str = ""  # gpu-torch: a torch.compile mode for the scorer ("" eager: perf/gpu_run.py measures both)
    # "torch": the GPU preprocessing model (nvJPEG, YuNet in torch, crops on the device; PIXELS
    # stay on the GPU for the scorer); "cpu": OpenCV in CPU instances. None: torch for gpu-torch
    # (torch is there already), cpu elsewhere (a Triton container need not have torch).
    preprocess: str | None = None
    preprocess_queue_delay_us: int = 0
    scorer_queue_delay_us: int = 2000
    preferred_batch_sizes: tuple[int, ...] = ()
    # Back-pressure (perf/results/memory-under-load.md). Crops that preprocess may have made and
    # the scorer not yet scored (sampleiqa.runtime.admission); None: the target's default, 0: no limit
    # (gpu-trt and gpu-onnx scorers are not python models and cannot give credits back).
    crops_in_flight: int | None = None
    preprocess_max_queue: int = (
        64  # requests waiting for preprocess; more are refused at once (UNAVAILABLE); 0: no bound
    )
    scorer_max_queue: int = 128  # requests waiting for the scorer: a bound for direct callers and gpu-trt/onnx
    # preprocess takes small batches, so that its credits come a few at a time (a request of
    # more images still goes as one batch); 0: as large as the queue allows
    preprocess_preferred_batch: int = 4

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, not {self.target!r}")
        if self.preprocess not in (None, "cpu", "torch"):
            raise ValueError(f"preprocess must be 'cpu' or 'torch', not {self.preprocess!r}")
        if self.target == "cpu" and self.preprocess == "torch":
            raise ValueError("the cpu target preprocesses with OpenCV; --preprocess torch is for the gpu targets")
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be positive")
        if (
            self.ort_run_batch < 1
            or min(
                self.preprocess_max_queue,
                self.scorer_max_queue,
                self.preprocess_preferred_batch,
                self.crops_in_flight or 0,
            )
            < 0
        ):
            raise ValueError(
                "the ORT run batch must be positive; queue bounds, preferred batch and crops in flight >= 0"
            )

    @property
    def torch_preprocess(self) -> bool:
        return (self.preprocess or ("torch" if self.target == "gpu-torch" else "cpu")) == "torch"

    @property
    def torch_kind(self) -> int:
        return mc.ModelInstanceGroup.KIND_GPU if self.torch_device == "gpu" else mc.ModelInstanceGroup.KIND_CPU

    @property
    def credits(self) -> int:
        """The crops-in-flight limit in force: 48 on CPU (16 cost a sixth of the throughput at 64
        requests in flight, 96 gained nothing: perf/results/memory-under-load.md), 256 for the
        gpu-torch scorer's larger batches."""
        if self.target in ("gpu-trt", "gpu-onnx"):
            return 0
        return self.crops_in_flight if self.crops_in_flight is not None else {"cpu": 48, "gpu-torch": 256}[self.target]

    @property
    def scorer_preferred(self) -> tuple[int, ...]:
        """cpu: Triton batches of two ORT runs (as fast as up to 32, with a quarter of the crops
        copied into the scorer's shared memory per batch)."""
        if self.preferred_batch_sizes or self.target != "cpu":
            return self.preferred_batch_sizes
        return (min(2 * self.ort_run_batch, self.max_batch_size),)


def _tensor(name: str, dtype: int, dims: list[int]):
    return {"name": name, "data_type": dtype, "dims": dims}


def _io(message, inputs, outputs):
    for t in inputs:
        message.input.add(**t)
    for t in outputs:
        message.output.add(**t)


_IMAGE = _tensor(IMAGE, mc.TYPE_STRING, [1])
_PIXELS = _tensor(PIXELS, mc.TYPE_UINT8, [3, CROP, CROP])
_SCORE = _tensor(SCORE, mc.TYPE_FP32, [1])
_FACE_BOX = _tensor(FACE_BOX, mc.TYPE_INT32, [4])
_FACE_FOUND = _tensor(FACE_FOUND, mc.TYPE_BOOL, [1])


def preprocess_config(s: RepositorySettings) -> mc.ModelConfig:
    c = mc.ModelConfig(name=PREPROCESS, backend="python", max_batch_size=s.max_batch_size)
    _io(c, [_IMAGE], [_PIXELS, _FACE_BOX, _FACE_FOUND])
    kind = s.torch_kind if s.torch_preprocess else mc.ModelInstanceGroup.KIND_CPU
    c.instance_group.add(count=s.preprocess_instances, kind=kind)
    c.dynamic_batching.max_queue_delay_microseconds = s.preprocess_queue_delay_us
    if s.preprocess_preferred_batch:
        c.dynamic_batching.preferred_batch_size.append(min(s.preprocess_preferred_batch, s.max_batch_size))
    c.dynamic_batching.default_queue_policy.max_queue_size = s.preprocess_max_queue
    if s.credits:
        c.parameters[CROPS_IN_FLIGHT].string_value = str(s.credits)
    warm = c.model_warmup.add(name="one_photo", batch_size=1)
    warm.inputs[IMAGE].data_type = mc.TYPE_STRING
    warm.inputs[IMAGE].dims.append(1)
    warm.inputs[IMAGE].input_data_file = WARMUP_FILE
    return c


def scorer_config(s: RepositorySettings) -> mc.ModelConfig:
    c = mc.ModelConfig(name=SCORER, max_batch_size=s.max_batch_size)
    _io(c, [_PIXELS], [_SCORE])
    if s.target == "cpu":
        # Python backend running ONNX Runtime: Triton has no ORT backend on CPU-only hosts here.
        c.backend = "python"
        c.instance_group.add(count=s.scorer_instances, kind=mc.ModelInstanceGroup.KIND_CPU)
        c.parameters["intra_op_threads"].string_value = str(s.ort_threads)
        c.parameters["allow_spinning"].string_value = "1" if s.ort_spinning else "0"
        c.parameters["run_batch"].string_value = str(s.ort_run_batch)
        c.parameters["arena_keep_batch"].string_value = str(s.ort_arena_keep_batch)
        c.parameters["arena_shrink_after_s"].string_value = f"{s.ort_arena_shrink_after_s:g}"
    elif s.target == "gpu-trt":
        c.platform = "tensorrt_plan"
        c.default_model_filename = "model.plan"
        c.instance_group.add(count=s.scorer_instances, kind=mc.ModelInstanceGroup.KIND_GPU)
    elif s.target == "gpu-torch":
        # Python backend running PyTorch (build/torch_runner.py): FP16 and CUDA graphs on the GPU.
        c.backend = "python"
        gpu = s.torch_device == "gpu"
        c.instance_group.add(count=s.scorer_instances, kind=s.torch_kind)
        c.parameters["precision"].string_value = "fp16" if gpu else "fp32"
        c.parameters["cuda_graphs"].string_value = "1" if gpu and s.cuda_graphs else "0"
        if s.torch_compile:
            c.parameters["torch_compile"].string_value = s.torch_compile
        if gpu:  # PIXELS made on the GPU reach the model there (DLPack), not through the host
            c.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value = "no"
        else:  # on CPU, torch's activations grow with the run as ORT's do
            c.parameters["run_batch"].string_value = str(s.ort_run_batch)
    else:
        c.platform = "onnxruntime_onnx"
        c.default_model_filename = "model.onnx"
        c.instance_group.add(count=s.scorer_instances, kind=mc.ModelInstanceGroup.KIND_GPU)
    c.dynamic_batching.max_queue_delay_microseconds = s.scorer_queue_delay_us
    c.dynamic_batching.preferred_batch_size.extend(s.scorer_preferred)
    c.dynamic_batching.default_queue_policy.max_queue_size = s.scorer_max_queue
    if s.credits:
        c.parameters[CROPS_IN_FLIGHT].string_value = str(s.credits)
    # Zeros pass the scorer's guard (a flat grey crop scores like any other image).
    warm = c.model_warmup.add(name="zero_crop", batch_size=1)
    warm.inputs[PIXELS].data_type = mc.TYPE_UINT8
    warm.inputs[PIXELS].dims.extend([3, CROP, CROP])
    warm.inputs[PIXELS].zero_data = True
    return c


def ensemble_config(s: RepositorySettings) -> mc.ModelConfig:
    c = mc.ModelConfig(name=ENSEMBLE, platform="ensemble", max_batch_size=s.max_batch_size)
    _io(c, [_IMAGE], [_SCORE, _FACE_BOX, _FACE_FOUND])
    pre = c.ensemble_scheduling.step.add(model_name=PREPROCESS, model_version=-1)
    pre.input_map[IMAGE] = IMAGE
    pre.output_map[PIXELS] = "pixels"
    pre.output_map[FACE_BOX] = FACE_BOX
    pre.output_map[FACE_FOUND] = FACE_FOUND
    score = c.ensemble_scheduling.step.add(model_name=SCORER, model_version=-1)
    score.input_map[PIXELS] = "pixels"
    score.output_map[SCORE] = SCORE
    return c


def all_configs(s: RepositorySettings) -> dict[str, mc.ModelConfig]:
    return {PREPROCESS: preprocess_config(s), SCORER: scorer_config(s), ENSEMBLE: ensemble_config(s)}


HEADER = "# Generated by `sampleiqa build-repository` (build/triton_config.py). Do not edit by hand.\n"


def to_pbtxt(config: mc.ModelConfig) -> str:
    return HEADER + text_format.MessageToString(config)


def parse_pbtxt(text: str) -> mc.ModelConfig:
    """Parse a config.pbtxt strictly: an unknown field or bad value raises ParseError."""
    return text_format.Parse(text, mc.ModelConfig())


def read_config(model_dir: str | Path) -> mc.ModelConfig:
    return parse_pbtxt((Path(model_dir) / "config.pbtxt").read_text())
