"""Writing ONNX files whole: a temporary file beside the target, renamed into place."""

from __future__ import annotations

import os
from pathlib import Path


def tmp_path(path: Path) -> Path:
    # Same folder as the target, so the final rename is atomic.
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def save_onnx_atomic(model, path: Path) -> None:
    """onnx.save through a temporary file beside `path`, renamed into place."""
    import onnx

    tmp = tmp_path(path)
    try:
        onnx.save(model, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
