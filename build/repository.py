"""Assemble a complete Triton model repository for one target.

    cpu       preprocess (python) -> scorer (python + ONNX Runtime)   [the default]
    gpu-onnx  preprocess (python) -> scorer (onnxruntime_onnx, KIND_GPU)
    gpu-trt   preprocess (python) -> scorer (tensorrt_plan FP16, KIND_GPU)
    gpu-torch preprocess (python + PyTorch: nvJPEG, YuNet, crops on the GPU)
              -> scorer (python + PyTorch FP16, CUDA graphs, KIND_GPU)

Any gpu target takes the torch preprocess with `preprocess="torch"` (gpu-torch's default);
its PIXELS then stay on the GPU between the steps.

The python models' sources are the ones in this checkout's model_repository/. With
`vendor=True` (the default) the preprocessing package is copied beside preprocess/1/model.py,
so the repository also runs in a Triton container that has no sampleiqa installed (it still
needs numpy<2, opencv-python-headless, Pillow and pillow-heif there: see docs/gpu.md "Deploy on a
GPU host").
"""

from __future__ import annotations

import logging
import shutil
import struct
from pathlib import Path

from sampleiqa.paths import DEFAULT_REPOSITORY, REPO_ROOT, SAMPLES
from sampleiqa.runtime.contracts import ENSEMBLE, PREPROCESS, SCORER

from .triton_config import WARMUP_FILE, RepositorySettings, all_configs, to_pbtxt

log = logging.getLogger(__name__)

SOURCE_REPOSITORY = DEFAULT_REPOSITORY  # the CPU python models' sources
HERE = Path(__file__).resolve().parent  # the torch models' sources
PACKAGE_DIR = REPO_ROOT / "sampleiqa"
# The smallest sample (451x300, 38 KB): a server started with low --max-pixels / --max-bytes
# (the tests use 200,000) still passes its warm-up. No face in it: detection runs, then the crop.
WARMUP_PHOTO = SAMPLES / "chelsea.jpg"
RUNTIME_DIR = PACKAGE_DIR / "runtime"  # what runs inside Triton, and all that is vendored


def _copy(src: Path, dst: Path) -> None:
    if src.resolve() == dst.resolve():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
        shutil.copy2(src, dst)


def vendor_preprocessing(version_dir: Path) -> None:
    _copy(PACKAGE_DIR / "__init__.py", version_dir / "sampleiqa" / "__init__.py")
    _copy(RUNTIME_DIR, version_dir / "sampleiqa" / "runtime")


def write_warmup_inputs(out: Path, photo: Path = WARMUP_PHOTO) -> None:
    """preprocess/warmup/IMAGE: one TYPE_STRING element as Triton reads it from a file,
    a 4-byte little-endian length and then the bytes."""
    data = photo.read_bytes()
    folder = out / PREPROCESS / "warmup"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / WARMUP_FILE).write_bytes(struct.pack("<I", len(data)) + data)


def write_configs(out: Path, settings: RepositorySettings) -> None:
    for name, config in all_configs(settings).items():
        (out / name / "1").mkdir(parents=True, exist_ok=True)
        (out / name / "config.pbtxt").write_text(to_pbtxt(config))


def checked_settings(settings: RepositorySettings, onnx_path, engine_path, checkpoint) -> RepositorySettings:
    """The target's scorer source is given; gpu-trt's max batch is its engine profile's."""
    if settings.target == "gpu-torch":
        if checkpoint is None:
            raise ValueError(
                "the gpu-torch target needs a training checkpoint (e.g. training/weights/biq2021_default.pt)"
            )
    elif settings.target == "gpu-trt":
        if engine_path is None:
            raise ValueError("the gpu-trt target needs a TensorRT engine (model.plan)")
        from .tensorrt_engine import read_engine_profile

        profile = read_engine_profile(engine_path)
        if int(profile.get("min_batch", 1)) != 1:
            raise ValueError(
                f"{engine_path}: its profile starts at batch {profile['min_batch']}; Triton sends "
                "batches from 1 up: rebuild it with min_batch=1"
            )
        # No preferred_batch_size: with one profile, Triton's batcher forms the largest batch
        # it can (up to max_batch) instead of stopping at opt_batch.
        settings = RepositorySettings(**{**settings.__dict__, "max_batch_size": int(profile["max_batch"])})
    elif onnx_path is None:
        raise ValueError(f"the {settings.target} target needs an ONNX scorer")
    return settings


def build_repository(
    out: str | Path,
    settings: RepositorySettings,
    onnx_path: str | Path | None = None,
    engine_path: str | Path | None = None,
    vendor: bool = True,
    checkpoint: str | Path | None = None,
) -> Path:
    """Write a servable repository to `out`. The cpu and gpu-onnx targets take `onnx_path`;
    gpu-trt takes a built `engine_path` (build/tensorrt_engine.py) whose profile sets
    max_batch_size; gpu-torch takes the training `checkpoint` (its scorer needs sampleiqa,
    torch and timm where Triton runs)."""
    out = Path(out)
    settings = checked_settings(settings, onnx_path, engine_path, checkpoint)
    write_configs(out, settings)
    write_warmup_inputs(out)
    preprocess_source = (
        HERE / "torch_preprocess_model.py"
        if settings.torch_preprocess
        else SOURCE_REPOSITORY / PREPROCESS / "1" / "model.py"
    )
    _copy(preprocess_source, out / PREPROCESS / "1" / "model.py")
    if vendor:
        vendor_preprocessing(out / PREPROCESS / "1")
    scorer_dir = out / SCORER / "1"
    if settings.target == "cpu":
        _copy(SOURCE_REPOSITORY / SCORER / "1" / "model.py", scorer_dir / "model.py")
        _copy(Path(onnx_path), scorer_dir / "model.onnx")
        if vendor:
            vendor_preprocessing(scorer_dir)  # sampleiqa.runtime.scores, beside the model
    elif settings.target == "gpu-onnx":
        _copy(Path(onnx_path), scorer_dir / "model.onnx")
    elif settings.target == "gpu-torch":
        _copy(HERE / "torch_scorer_model.py", scorer_dir / "model.py")
        _copy(Path(checkpoint), scorer_dir / "model.pt")
    else:
        _copy(Path(engine_path), scorer_dir / "model.plan")
    (out / ENSEMBLE / "1").mkdir(parents=True, exist_ok=True)
    (out / ENSEMBLE / "1" / ".keep").touch()  # Triton wants a version folder, even an empty one
    log.info("wrote %s repository to %s", settings.target, out)
    return out
