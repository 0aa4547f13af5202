#!/usr/bin/env bash
# Here (with a registry): fill .gpu-wheels/ with what perf/gpu_run.sh installs on a lent GPU
# host that reaches no registry, cut into device calls that each fit the 64 MiB rule.
#
#   bash perf/gpu_wheels.sh [PYVER]     # PYVER: the host's Python, major.minor (default 3.12,
#                                       # ../shared/STACK.md "Lent GPU machines"; --probe says)
#   IMAGES=DIR PHOTOS=64 bash perf/gpu_wheels.sh 3.12     # photos from elsewhere
#
# What the host lacks (STACK.md): numpy 1.26.4 (Triton 2.51's python stub breaks on BYTES
# tensors under numpy 2; the host's cv2, torch and onnxruntime import with it), nvidia-pytriton
# 0.7.0 (the Triton binary and python-backend stubs), tritonclient[all] 2.51.0 (perf_analyzer)
# and python-rapidjson. It keeps its own torch, torchvision, cv2, onnxruntime, timm, pillow,
# grpcio and protobuf. The photos too: ../shared does not travel, so PHOTOS of them (drawn as
# `sampleiqa perf` draws them) go as photos.tar.
#
# The 64 MiB rule: each call carries the tracked and untracked-not-ignored files (~27 MB: the
# ONNX scorer and the weights) plus what it names in `carry`, and a carried path is gone at the
# next call. So:
#   1. every file over 30 MB is cut with `split -b 30M` (nvidia-pytriton: 55 MB -> 2 parts);
#   2. parts and whole files are packed into .gpu-wheels/call1, call2, ... so that each call
#      stays under 64 MiB with what travels anyway, measured now, less a 3 MiB margin;
#   3. each call folder also holds wholes.sha256, parts.sha256 and calls.txt (all calls' files).
# The plan of calls (three for 3.12 today: 35.8, 31.9 and 23.9 MB carried beside 27.2 MB of
# tracked files, 60.1 MiB at most), written to .gpu-wheels/PLAN:
#   call 1..N-1: carry [".gpu-wheels/callK"], command `bash perf/gpu_run.sh --stash .gpu-wheels/callK`
#                (checks each part's sha256 and copies it to /tmp/sampleiqa-gpu/incoming: seconds)
#   call N:      carry [".gpu-wheels/callN"], command
#                `bash perf/gpu_run.sh --stash .gpu-wheels/callN --out $OUT`
#                (stashes, joins the parts with cat, checks every whole file's sha256, installs
#                into the host's Python (perf/gpu_run.sh says why), runs sampleiqa.perf.gpu_run
#                and copies its results to $OUT: at most 8 files)
# The calls must follow each other while the machine is warm (~30 s idle): /tmp is lost with it.
# A call that finds parts missing says which call to repeat.
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER="${1:-${PYVER:-3.12}}"
[[ "$PYVER" =~ ^3\.[0-9]+$ ]] || { echo "PYVER must be like 3.12, not '$PYVER'" >&2; exit 2; }
PHOTOS="${PHOTOS:-64}"
W=.gpu-wheels
rm -rf "$W"
mkdir -p "$W/files" "$W/parts"

# The pip download flags of ../shared/STACK.md (the platforms the host's glibc takes).
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_35_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$W/files" \
    "numpy==1.26.4" "nvidia-pytriton==0.7.0" "tritonclient[all]==2.51.0" "python-rapidjson==1.25"

# The photos gpu_run scores and perf_analyzer sends, drawn as `sampleiqa perf` draws them.
.venv/bin/python - "$W/files/photos.tar" "$PHOTOS" "${IMAGES:-}" <<'PY'
import sys, tarfile
from pathlib import Path
from sampleiqa.perf.inputs import DEFAULT_IMAGES, pick_photos
out, count, images = sys.argv[1], int(sys.argv[2]), sys.argv[3] or DEFAULT_IMAGES
with tarfile.open(out, "w") as tar:
    for path in pick_photos(images, count):
        tar.add(path, arcname=f"photos/{path.name}")
PY

(cd "$W/files" && sha256sum -- * > ../wholes.sha256)
for f in "$W"/files/*; do
    name=$(basename "$f")
    if [ "$(stat -c %s "$f")" -gt $((30 * 1024 * 1024)) ]; then
        split -b 30M -d -a 2 "$f" "$W/parts/$name.part"
    else
        cp "$f" "$W/parts/$name"
    fi
done
(cd "$W/parts" && sha256sum -- * > ../parts.sha256)

# What travels with every call anyway: tracked and untracked-not-ignored files, as of now.
travel=$({ git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null || true; } \
    | awk '{s += $1} END {print s + 0}')
budget=$((64 * 1024 * 1024 - travel - 3 * 1024 * 1024))
.venv/bin/python - "$W" "$budget" "$travel" <<'PY'
import shutil, sys
from pathlib import Path
w, budget, travel = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
parts = sorted((w / "parts").iterdir(), key=lambda p: p.stat().st_size, reverse=True)
calls: list[list[Path]] = []
for part in parts:  # first fit, largest first
    size = part.stat().st_size
    if size > budget:
        sys.exit(f"{part.name} ({size / 1e6:.1f} MB) cannot travel: {budget / 1e6:.1f} MB left per call "
                 f"beside {travel / 1e6:.1f} MB of tracked files")
    fit = next((c for c in calls if sum(p.stat().st_size for p in c) + size <= budget), None)
    if fit is None:
        calls.append(fit := [])
    fit.append(part)
# The call that carries the most goes first: the machine's start is the slow part anyway.
calls.sort(key=lambda c: -sum(p.stat().st_size for p in c))
# Which call carries which part: a call that finds one missing says which call to repeat.
(w / "calls.txt").write_text("".join(f"call{k} {p.name}\n" for k, call in enumerate(calls, 1) for p in call))
plan = [f"# {len(calls)} device calls, back to back (the machine is given back after ~30 s idle).",
        f"# each carries its folder beside {travel / 1e6:.1f} MB of tracked files (64 MiB per call)", ""]
for k, call in enumerate(calls, 1):
    folder = w / f"call{k}"
    folder.mkdir()
    for part in call:
        shutil.move(part, folder / part.name)
    for name in ("wholes.sha256", "parts.sha256", "calls.txt"):
        shutil.copy(w / name, folder / name)
    size = sum(p.stat().st_size for p in folder.iterdir())
    last = k == len(calls)
    command = f"bash perf/gpu_run.sh --stash .gpu-wheels/call{k}" + (" --out $OUT" if last else "")
    plan += [f"call {k}: carry [\".gpu-wheels/call{k}\"], {size / 1e6:.1f} MB carried, "
             f"{(size + travel) / 2**20:.1f} MiB in all"]
    plan += [f"  {p.name} ({p.stat().st_size / 1e6:.1f} MB)" for p in sorted(folder.iterdir())
             if p.name not in ("wholes.sha256", "parts.sha256", "calls.txt")]
    plan += [f"  command: {command}" + ("   (timeout_s 600)" if last else "   (timeout_s 120)"), ""]
(w / "PLAN").write_text("\n".join(plan))
print("\n".join(plan))
PY
rm -rf "$W/files" "$W/parts"
echo "wheels for Python $PYVER; the plan is in $W/PLAN" >&2
