#!/usr/bin/env bash
# Here (with a registry): fill .gpu-wheels/ with what perf/gpu_run.sh installs on a lent GPU
# host that reaches no registry. Each device call carries at most 64 MiB, and what a call
# leaves stays while the machine is warm, so the wheels come in groups under 60 MB, one
# group per call (carry=[".gpu-wheels/a"], then b, ...):
#   a/  nvidia-pytriton: the Triton 2.51 binary built with CUDA, python-backend stubs (55 MB)
#   b/  tritonclient[all] with perf_analyzer, grpcio, protobuf, rapidjson, timm, setuptools (for
#       the editable install), onnxruntime (the CPU reference ensemble) (55 MB)
#   c/  opencv-python-headless, pillow (57 MB)     } only where `bash perf/gpu_run.sh --probe`
#   d/  numpy 1.26 (18 MB)                          } says the host lacks them (or has numpy 2)
# Usage: PYVER=3.12 bash perf/gpu_wheels.sh     (PYVER: the host's Python, from the probe)
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER="${PYVER:-3.11}"
get() {  # group, requirements...
    local group="$1"; shift
    .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
        --platform manylinux_2_35_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d ".gpu-wheels/$group" "$@"
}
get a "nvidia-pytriton==0.7.0"
# The versions this project's environment resolves (bootstrap.sh dev), so the host runs what CI tests.
get b "tritonclient[all]==2.51.0" "timm==1.0.31" "setuptools==80.10.2" "grpcio==1.85.3" "protobuf==4.25.9" \
    "python-rapidjson==1.25" "onnxruntime==1.32.0"
get c "opencv-python-headless>=4.10,<4.12" "pillow==13.0.0"
get d "numpy==1.26.4"  # < 2: Triton 2.51's python stub breaks on BYTES tensors under numpy 2
du -sh .gpu-wheels/* >&2
echo "carry one group per device call (README: GPU)" >&2
