#!/usr/bin/env bash
# Set up ./.venv for SampleIQA.  Usage: bash bootstrap.sh [serve|dev]
#   serve (default): scoring + the embedded CPU Triton server; no torch.
#   dev:             everything: training/export (torch, timm, onnx), perf_analyzer, tests.
# Safe to rerun; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")"
profile="${1:-serve}"
PY="${PYTHON:-python3}"

need_apt=()
# The Triton python stub links the system libpython3.11; perf_analyzer needs libb64.
ldconfig -p | grep -q 'libpython3.11.so.1.0' || need_apt+=(libpython3.11)
[ "$profile" = dev ] && { ldconfig -p | grep -q 'libb64.so.0d' || need_apt+=(libb64-0d); }
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        echo "bootstrap: please install these system packages: ${need_apt[*]}" >&2
    fi
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
case "$profile" in
    serve) extras="serve" ;;
    dev)   extras="dev" ;;
    *) echo "usage: bash bootstrap.sh [serve|dev]" >&2; exit 2 ;;
esac
.venv/bin/python -m pip install -q -e ".[$extras]" 2>&1 | grep -v -e '^WARNING: Location' -e 'nvidia-pytriton 0.7.0 requires' -e "pip's dependency resolver" || true
# The Triton 2.51 server binary. --no-deps: its Python pins conflict with tritonclient 2.51,
# and only the binary and the python backend are used.
.venv/bin/python -m pip install -q --no-deps nvidia-pytriton==0.7.0 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c "from sampleiqa.clients.server import triton_paths; triton_paths()"
echo "bootstrap: .venv ready ($profile)" >&2
