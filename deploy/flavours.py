"""The two deployments: `cpu` (the embedded Triton of the nvidia-pytriton wheel, python-backend
ONNX Runtime scorer, repository baked into the image) and `gpu` (NVIDIA's Triton 25.01 image,
TensorRT scorer whose engine is built on the pod's own GPU by an init container).

The container arguments are `sampleiqa serve` flags: the pod runs the same launcher as a
laptop (lock-down, supervision of the python stubs, --strict-readiness), so the probes' ports
and the tritonserver flags come from one place. render.py parses them with the real
argument parsers before writing anything."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from sampleiqa import __version__
from sampleiqa.paths import REPO_ROOT
from sampleiqa.runtime import environment

from . import layout


@dataclass(frozen=True)
class Flavour:
    name: str
    image: str
    repository: str
    resources: dict
    startup_budget_s: int  # how long the startup probe lets Triton load (and warm up) models
    shm_size: str  # /dev/shm for the python stubs' tensors (memory-backed: counts in the memory limit)
    min_replicas: int
    max_replicas: int
    queue_target_us: int  # the HPA adds pods above this mean queue wait per image
    env: dict = field(default_factory=dict)
    init_args: tuple[str, ...] = ()  # `sampleiqa build-repository` flags for the init container
    # A new pod is ready before an old one stops, in both flavours: a GPU rollout therefore
    # needs one spare GPU in the node pool (deploy/README.md); without it the rollout waits.
    rolling: dict = field(default_factory=lambda: {"maxSurge": 1, "maxUnavailable": 0})
    tolerations: tuple[dict, ...] = ()

    def serve_args(self) -> list[str]:
        return [
            "serve",
            "--repository",
            self.repository,
            "--host",
            "0.0.0.0",
            "--grpc-port",
            str(layout.GRPC_PORT),
            "--http-port",
            str(layout.HTTP_PORT),
            "--metrics-port",
            str(layout.METRICS_PORT),
            "--log-file",
            layout.LOG_FILE,
        ]


# The CPU pod's memory comes from the measured concurrency sweep of the shipped repository
# (python -m sampleiqa.perf.memory_sweep; tests/test_deploy.py ties the two): its highest peak
# (512x512 photos, clients at 1 to 256 in flight) plus MEMORY_HEADROOM_MIB for what the sweep's
# photos do not show (the measured 12 MP point is in the same report; a 100 MP photo, the
# default --max-pixels, decodes to 300 MB in each preprocess instance), rounded up to 256 MiB.
MEMORY_SWEEP = REPO_ROOT / "perf" / "results" / "memory-under-load.json"
MEMORY_SWEEP_LABEL = "shipped"
MEMORY_HEADROOM_MIB = 1024


def measured_peak_mib(sweep: dict) -> float:
    """The highest whole-server peak (sum of PSS) of the shipped repository in a sweep report."""
    return max(p["peak_mib"]["pss"] for p in sweep[MEMORY_SWEEP_LABEL]["points"])


def memory_limit(peak_mib: float) -> str:
    return f"{math.ceil((peak_mib + MEMORY_HEADROOM_MIB) / 256) * 256}Mi"


CPU_MEMORY = memory_limit(measured_peak_mib(json.loads(MEMORY_SWEEP.read_text())))

CPU = Flavour(
    name="cpu",
    image=f"sampleiqa-cpu:{__version__}",
    repository=layout.CPU_REPOSITORY,
    # The committed repository is tuned for 2 cores (2 preprocess instances, 2 ORT threads).
    # Requests = limits: Guaranteed QoS, so the scorer's latency does not depend on neighbours.
    resources={"requests": {"cpu": "2", "memory": CPU_MEMORY}, "limits": {"cpu": "2", "memory": CPU_MEMORY}},
    startup_budget_s=300,
    shm_size="1Gi",
    min_replicas=2,
    max_replicas=10,
    queue_target_us=50_000,  # ~2 images' worth of work on 2 cores
)

GPU_PREPROCESS_INSTANCES = 6  # one core each; the GPU scorer is rarely the bottleneck

GPU = Flavour(
    name="gpu",
    image=f"sampleiqa-gpu:{__version__}",
    repository=layout.GPU_REPOSITORY,
    resources={
        "requests": {"cpu": "8", "memory": "8Gi"},
        "limits": {"cpu": "8", "memory": "8Gi", "nvidia.com/gpu": "1"},
    },
    startup_budget_s=600,
    shm_size="2Gi",
    # Two at least: with one, a node drain or a lost node stops scoring for the minutes a new pod
    # takes to build its engine, past the clients' 60 s of retries (the PDB lets one go at a time).
    min_replicas=2,
    max_replicas=4,
    queue_target_us=10_000,
    env={environment.TRITONSERVER_DIR: layout.TRITON_DIR},
    # An engine runs only on the GPU architecture and TensorRT that built it: build it on the
    # node that serves it (docker build has no GPU). The timing cache sits beside it, so a
    # restarted pod on the same node rebuilds faster (an emptyDir lives as long as the pod).
    init_args=(
        "build-repository",
        "--target",
        "gpu-trt",
        "--onnx",
        layout.SCORER_ONNX,
        "--out",
        layout.GPU_REPOSITORY,
        "--max-batch",
        "64",
        "--opt-batch",
        "16",
        "--preprocess-instances",
        str(GPU_PREPROCESS_INSTANCES),
        "--timing-cache",
        "/models/trt.cache",
    ),
    tolerations=({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},),
)

FLAVOURS = {f.name: f for f in (CPU, GPU)}
