#!/usr/bin/env bash
# The GPU run on a lent GPU host that reaches no registry (README: GPU).
#   bash perf/gpu_run.sh --probe          # what the host has (Python, torch, CUDA, packages)
#   OUT=DIR bash perf/gpu_run.sh          # install the carried wheels, then sampleiqa.perf.gpu_run
# The host's own PyTorch (with CUDA) is used through a venv with --system-site-packages; what
# it lacks comes from .gpu-wheels/*/ (perf/gpu_wheels.sh fills them where a registry is).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV=.gpu-venv
OUT="${OUT:-perf/results/gpu_run}"

probe() {
    "$1" - <<'PY'
import importlib, os, platform, sys
print("python", platform.python_version(), sys.executable, "cores", os.cpu_count())
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu",
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
except Exception as exc:
    print("MISSING torch", exc)
for name in ("numpy", "cv2", "onnxruntime", "PIL", "grpc", "tritonclient.grpc", "pytriton", "timm", "torchvision"):
    try:
        module = importlib.import_module(name)
        print("ok", name, getattr(module, "__version__", ""))
    except Exception as exc:
        print("MISSING", name, type(exc).__name__, exc)
PY
}

if [ "${1:-}" = "--probe" ]; then
    probe "$PY"
    exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv --system-site-packages "$VENV"
shopt -s nullglob
wheels=(.gpu-wheels/*/*.whl)
if [ ${#wheels[@]} -gt 0 ]; then
    "$VENV/bin/python" -m pip install -q --no-index --no-deps "${wheels[@]}"
fi
"$VENV/bin/python" -m pip install -q --no-index --no-deps --no-build-isolation -e .
probe "$VENV/bin/python"
"$VENV/bin/python" -c "from sampleiqa.server import triton_paths; print('triton', triton_paths()[0])"
exec "$VENV/bin/python" -m sampleiqa.perf.gpu_run --out "$OUT" "$@"
