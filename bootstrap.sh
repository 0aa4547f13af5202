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
case "$profile" in
    serve) extras="serve" ;;
    dev)   extras="dev" ;;
    *) echo "usage: bash bootstrap.sh [serve|dev]" >&2; exit 2 ;;
esac
# Install only when pyproject.toml changed since the last bootstrap of this profile; pip's
# chatter (setuptools notices, resolver notes) goes to .venv/bootstrap.log, shown on failure.
stamp=".venv/.bootstrap-$profile"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    echo "bootstrap: installing the $profile environment into .venv (a few minutes the first time) ..." >&2
    log=.venv/bootstrap.log
    {
        .venv/bin/python -m pip install -q --upgrade pip &&
        .venv/bin/python -m pip install -q -e ".[$extras]" &&
        # The Triton 2.51 server binary. --no-deps: its Python pins conflict with tritonclient
        # 2.51, and only the binary and the python backend are used.
        .venv/bin/python -m pip install -q --no-deps nvidia-pytriton==0.7.0
    } > "$log" 2>&1 || { cat "$log" >&2; echo "bootstrap: pip failed (log above, also in $log)" >&2; exit 1; }
    echo "$want" > "$stamp"
fi
.venv/bin/python -c "from sampleiqa.server import triton_paths; triton_paths()"
echo "bootstrap: .venv ready ($profile)" >&2
