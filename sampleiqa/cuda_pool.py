"""Triton's CUDA memory pool, sized from the repository it serves.

GPU tensors that pass between models (the GPU preprocessing's PIXELS to the scorer, through
DLPack) live in this pool. Triton's default, 64 MB per GPU, is below one batch of 64 crops
(38.5 MB of uint8 each, so two batches in flight already exhaust it), and a python model
whose GPU output finds no room in it fails its requests. A repository with no KIND_GPU model
gets no flag at all (the CPU default)."""

from __future__ import annotations

from pathlib import Path

from .runtime.contracts import CROP

MIN_POOL = 256 * 2**20
PIXELS_BYTES = 3 * CROP * CROP  # one uint8 crop


def model_configs(repository: Path) -> list:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    return [text_format.Parse(p.read_text(), mc.ModelConfig()) for p in sorted(Path(repository).glob("*/config.pbtxt"))]


def pool_bytes(configs: list) -> int:
    """One full batch of crops for every model instance (each may hold its batch's outputs
    or inputs at once) and two more in the ensemble's hands; 0 without a GPU model."""
    gpu = [c for c in configs if any(g.kind == g.KIND_GPU for g in c.instance_group)]
    if not gpu:
        return 0
    batch = max(c.max_batch_size for c in configs)
    instances = sum(g.count for c in configs for g in c.instance_group)
    return max(MIN_POOL, (instances + 2) * batch * PIXELS_BYTES)


def cuda_pool_args(repository: str | Path, device: int = 0) -> list[str]:
    size = pool_bytes(model_configs(Path(repository)))
    return [f"--cuda-memory-pool-byte-size={device}:{size}"] if size else []
