#!/usr/bin/env bash
# The GPU run on a lent GPU host that reaches no registry (docs/gpu.md; ../shared/STACK.md,
# "Lent GPU machines"). Here first: `bash perf/gpu_wheels.sh 3.12` cuts what the host lacks
# into .gpu-wheels/call1..N and writes the plan of device calls to .gpu-wheels/PLAN, today:
#   call 1..N-1  carry [".gpu-wheels/callK"]:  bash perf/gpu_run.sh --stash .gpu-wheels/callK
#   call N       carry [".gpu-wheels/callN"]:  bash perf/gpu_run.sh --stash .gpu-wheels/callN --out $OUT
# back to back (the machine goes back after ~30 s idle, and /tmp with it).
#
#   bash perf/gpu_run.sh --probe              # what the host has (Python, torch, CUDA, packages)
#   bash perf/gpu_run.sh --stash DIR ...      # a carried call folder: each part's sha256 checked,
#                                             # copied to $STAGE/incoming (a carried path is gone
#                                             # at the next call; /tmp stays while the machine is warm)
#   bash perf/gpu_run.sh [--stash DIR] --out OUT [gpu_run args]   # stash, join, install, run
#   bash perf/gpu_run.sh [--stash DIR] --check                     # stash, join, install, check only
#   python3.12 -m venv /tmp/host && PYTHON=/tmp/host/bin/python STAGE=/tmp/x \
#       bash perf/gpu_run.sh --stash .gpu-wheels/call1 ...   # a rehearsal here, in a venv of its own
#
# Join: the parts of each file (split -b 30M) are put back with cat, and every whole file is
# checked against wholes.sha256; photos.tar is unpacked to $STAGE/photos (--images for gpu_run).
# Install: into the host's Python itself (pip --no-index --no-deps; the project editable).
# - Not a venv: the host's python3 is itself a venv (/opt/torch/.venv), and a `venv
#   --system-site-packages` made from it sees /usr's site-packages, not its torch.
# - Not a `pip install --target` folder on PYTHONPATH either: Triton's python-backend stubs
#   embed libpython and do not read PYTHONPATH (rehearsed with Python 3.12 here: sys.path
#   without it, so the host's numpy 2 won and the stub broke on BYTES). The stubs' model.py
#   adds the launcher's own site-packages (server.py: SAMPLEIQA_SITE_DIRS), so what they
#   need must be there: numpy 1.26.4 replaces the host's numpy 2 (its torch, cv2 5 and
#   onnxruntime import with it: ../shared/STACK.md), the rest is added. The host's torch,
#   torchvision, cv2, onnxruntime, timm, grpcio and protobuf stay as they are.
# perf_analyzer lands beside the interpreter; its libb64.so.0d and libcudart.so.12 are found by
# sampleiqa.perf.analyzer.environment() (links under the plain sonames to the hashed files in
# the pytriton wheel's nvidia_pytriton.libs, on LD_LIBRARY_PATH: no root, no ldconfig).
# Run: sampleiqa.perf.gpu_run writes into $STAGE/run; then at most 8 files go to OUT (what a
# device call brings back): gpu_run.{md,json}, the console log, and
# gpu_run_all.tar.gz (everything else: logs, plots, the servers' logs; not the built repository).
# Without carried wheels (none stashed), $PYTHON's own packages are used as they are.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
STAGE="${STAGE:-/tmp/sampleiqa-gpu}"
OUT="${OUT:-}"

die() { echo "gpu_run.sh: $*" >&2; exit 1; }

probe() {
    "$PY" - <<'PY'
import importlib, importlib.util, os, platform, sys
print("python", platform.python_version(), sys.executable, "prefix", sys.prefix, "cores", os.cpu_count())
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu",
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
except Exception as exc:
    print("MISSING torch", exc)
spec = importlib.util.find_spec("pytriton")  # only its Triton binary is used: the package is not imported
print("ok" if spec else "MISSING", "pytriton (Triton binary)", list(spec.submodule_search_locations) if spec else "")
for name in ("numpy", "cv2", "onnxruntime", "PIL", "grpc", "tritonclient.grpc", "timm", "torchvision", "sampleiqa"):
    try:
        module = importlib.import_module(name)
        print("ok", name, getattr(module, "__version__", ""), os.path.dirname(getattr(module, "__file__", "") or ""))
    except Exception as exc:
        print("MISSING", name, type(exc).__name__, exc)
PY
}

stash() {  # a carried call folder -> $STAGE/incoming, each part checked against parts.sha256
    local dir="$1" f name tag
    [ -d "$dir" ] || die "$dir is not here: name it in the call's carry"
    [ -f "$dir/parts.sha256" ] || die "$dir has no parts.sha256: not a folder from perf/gpu_wheels.sh"
    # Wheels built for another Python than this host's: say so in the first call, not the last.
    tag=$("$PY" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
    if grep -q -- "-cp3[0-9]*-" "$dir/wholes.sha256" && ! grep -q -- "-$tag-" "$dir/wholes.sha256"; then
        die "the wheels in $dir are not for this host's Python ($tag): bash perf/gpu_wheels.sh $("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])') here"
    fi
    mkdir -p "$STAGE/incoming"
    cp "$dir/wholes.sha256" "$dir/parts.sha256" "$dir/calls.txt" "$STAGE/"
    (cd "$dir" && sha256sum --quiet --check --ignore-missing parts.sha256) || die "a part in $dir is damaged: carry it again"
    for f in "$dir"/*; do
        name=$(basename "$f")
        case "$name" in wholes.sha256|parts.sha256|calls.txt) continue ;; esac
        cp "$f" "$STAGE/incoming/$name"
        echo "stashed $name" >&2
    done
}

missing_parts() {  # the names of parts.sha256 not yet in $STAGE/incoming, each with its call
    local sum name
    while read -r sum name; do
        [ -f "$STAGE/incoming/$name" ] || echo "$name ($(awk -v n="$name" '$2 == n {print $1}' "$STAGE/calls.txt"))"
    done < "$STAGE/parts.sha256"
}

join_parts() {  # $STAGE/incoming -> $STAGE/wheels (whole files, checked) and $STAGE/photos
    local sum name missing
    missing=$(missing_parts)
    [ -z "$missing" ] || die "parts missing (the machine was given back between calls, or a call was skipped):
$missing
repeat those calls, then this one"
    rm -rf "$STAGE/wheels" && mkdir -p "$STAGE/wheels"
    while read -r sum name; do
        if [ -f "$STAGE/incoming/$name" ]; then
            cp "$STAGE/incoming/$name" "$STAGE/wheels/$name"
        else
            cat "$STAGE/incoming/$name".part* > "$STAGE/wheels/$name"  # split's suffixes sort in order
        fi
    done < "$STAGE/wholes.sha256"
    (cd "$STAGE/wheels" && sha256sum --quiet --check ../wholes.sha256) || die "a joined file does not match wholes.sha256"
    if [ -f "$STAGE/wheels/photos.tar" ]; then
        rm -rf "$STAGE/photos" && tar -xf "$STAGE/wheels/photos.tar" -C "$STAGE"
    fi
}

install() {  # the wheels, then the project (editable), into $PY's own site-packages
    local stamp wheels
    case "$("$PY" -c 'import sys; print(sys.prefix)')" in
        "$PWD/.venv") die "$PY is this checkout's own venv: rehearse with a venv of your own (see above)" ;;
    esac
    stamp="$STAGE/.installed-$(sha256sum "$STAGE/wholes.sha256" | cut -c1-16)"
    shopt -s nullglob
    wheels=("$STAGE"/wheels/*.whl)
    shopt -u nullglob
    if [ ! -e "$stamp" ] && [ ${#wheels[@]} -gt 0 ]; then
        "$PY" -m pip list --format=freeze 2>/dev/null | grep -i -E "^(numpy|nvidia-pytriton|tritonclient|python-rapidjson)==" \
            | sed 's/^/before: /' >&2 || true
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "${wheels[@]}"
        touch "$stamp"
    fi
    # The project every time: its editable finder names this checkout's path.
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir -e . \
        > "$STAGE/pip-project.log" 2>&1 || { cat "$STAGE/pip-project.log" >&2; die "the project's editable install failed"; }
}

preflight() {  # what the run needs, each said once, before any server starts
    "$PY" - <<'PY'
import numpy, sys
import tritonclient.grpc  # noqa: F401
from sampleiqa.perf.analyzer import check_start, environment, perf_analyzer_binary
from sampleiqa.server import triton_paths
print("numpy", numpy.__version__, numpy.__file__)
if int(numpy.__version__.split(".")[0]) >= 2:
    sys.exit("numpy 2 first on the path: Triton 2.51's python stub breaks on BYTES tensors under it")
print("tritonserver", triton_paths()[0])
print("perf_analyzer", perf_analyzer_binary(), "->", check_start())
print("LD_LIBRARY_PATH for it:", environment()["LD_LIBRARY_PATH"])
PY
}

collect() {  # $STAGE/run -> OUT: at most 8 files (what a device call brings back)
    local out="$1" run="$STAGE/run" f logs
    mkdir -p "$out"
    for f in gpu_run.md gpu_run.json; do
        if [ -f "$run/$f" ]; then cp "$run/$f" "$out/"; fi
    done
    cp "$STAGE/console.log" "$out/gpu_run_console.log"
    tar -czf "$out/gpu_run_all.tar.gz" -C "$STAGE" --exclude=run/repo_gpu_torch run
    echo "results in $out: $(cd "$out" && ls | tr '\n' ' ')" >&2
}

PROBE=0 CHECK=0 RUN=0
STASHED=()
ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --probe) PROBE=1 ;;
        --stash) [ $# -ge 2 ] || die "--stash needs a folder"; STASHED+=("$2"); shift ;;
        --out) [ $# -ge 2 ] || die "--out needs a folder"; OUT="$2"; RUN=1; shift ;;
        --check) CHECK=1 ;;
        *) ARGS+=("$1") ;;
    esac
    shift
done
if [ "$PROBE" = 1 ]; then
    probe
    exit 0
fi
for dir in "${STASHED[@]}"; do stash "$dir"; done
if [ ${#STASHED[@]} -gt 0 ] && [ "$RUN" = 0 ] && [ "$CHECK" = 0 ] && [ ${#ARGS[@]} -eq 0 ]; then
    missing=$(missing_parts)
    echo "stashed in $STAGE; still to come: ${missing:-nothing}" | tr '\n' ' ' >&2
    echo >&2
    exit 0
fi
if [ -f "$STAGE/wholes.sha256" ]; then
    join_parts
    install
elif [ ${#STASHED[@]} -gt 0 ]; then
    die "nothing to install in $STAGE"
fi
mkdir -p "$STAGE"
{ probe; preflight; } 2>&1 | tee "$STAGE/console.log"  # pipefail: a failed preflight stops here
[ "$CHECK" = 1 ] && exit 0

OUT="${OUT:-perf/results/gpu_run}"
images=()
[ -d "$STAGE/photos" ] && images=(--images "$STAGE/photos")  # gpu_run args after it win
rm -rf "$STAGE/run" && mkdir -p "$STAGE/run" && touch "$STAGE/run-started"
set +e
# --budget-s 130: the issue's 4 minutes of device time hold the machine's start (~1.5 min),
# the stash calls and the install; the run gets the rest (gpu_run args after it win)
PYTHONUNBUFFERED=1 "$PY" -m sampleiqa.perf.gpu_run --out "$STAGE/run" --budget-s 130 "${images[@]}" "${ARGS[@]}" 2>&1 \
    | tee -a "$STAGE/console.log"
rc=${PIPESTATUS[0]}
set -e
collect "$OUT"
exit "$rc"
