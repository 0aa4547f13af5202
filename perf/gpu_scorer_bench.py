"""The scorer model on a lent GPU (H100/H200; torch + timm, no Triton, no TensorRT).

    python -m sampleiqa.perf.gpu_scorer_bench                        # installed (perf/gpu_run.sh does it)
    python -m sampleiqa.perf.gpu_scorer_bench --model swin_tiny_448  # the anchor size
    python -m sampleiqa.perf.gpu_scorer_bench --device cpu --batches 1,2 --seconds 1   # a dry run anywhere

Measures the model at 448x448 in torch FP32, torch FP16 and torch.compile FP16 over batch
sizes 1..256: images/s and the achieved fraction of the card's dense FP16 tensor-core
peak, with the input already on the device (made there: no copy in the figure). The
host-to-device uploads of the same batches are measured alone, beside it: from pageable
and from pinned memory, for the PIXELS contract's dtype and the dtypes the modes feed
(pinned memory needs CUDA: on --device cpu that figure is skipped and the output says so).
FLOPs per image are counted by torch.utils.flop_counter on one FP32 forward
(matmuls and convolutions, 2 FLOPs per multiply-add; softmax, LayerNorm and GELU are
not counted). A time budget (default 7.5 min) keeps it under 8 minutes: whatever does
not fit is skipped and says so. Writes <out>/gpu_scorer_<card>_<model>.{md,json,png} after
every point, so a run killed by an outer timeout keeps what it measured.

(Over 300 lines: one benchmark with its anchors, report and plot.)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

from sampleiqa.paths import RESULTS
from sampleiqa.training.models import create_model

from .plots import new_axes, save

# Dense FP16 tensor-core peaks (TFLOP/s, no sparsity) from NVIDIA's datasheets.
PEAK_FP16_TFLOPS = {
    "H200": 989.4,
    "H100 SXM": 989.4,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.4,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
}
ANCHORS = """\
Anchors to compare against:
- FasterTransformer Swin-T FP16 at 224 on A100: ~6,180 img/s at batch 64 (at ~4.5 GFLOP/img
  that is ~28 TFLOP/s, ~9% of the A100's 312).
- Swin-T at 448 is ~36 GFLOP per image, so ~27k img/s is the H100 SXM ceiling (989 TFLOP/s dense FP16).
Run `--model swin_tiny_448` to put this card next to them."""


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_FP16_TFLOPS.items():
        if key in device_name:
            return value
    return None


def flops_per_image(model: torch.nn.Module, device: str, example: torch.Tensor | None = None) -> int:
    """FLOPs of one image through `model`; `example`: a [1, ...] input of the dtype the model
    takes (default: FP32 noise at 448)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = example if example is not None else torch.randn(1, 3, 448, 448, device=device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops()


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def rate(fn, items: int, seconds: float, device: str) -> float:
    """items/s of fn() repeated for `seconds` (3 runs at least) after one warm-up run. The
    device's queue is drained before the clock starts and before it stops, so asynchronous
    work (graph replays, non-blocking copies) is counted once it has run."""
    fn()
    synchronize(device)
    runs, t0 = 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - t0 < seconds:
        fn()
        runs += 1
    synchronize(device)
    return runs * items / (time.perf_counter() - t0)


PINNED_SKIPPED = "skipped: pinned (page-locked) memory needs CUDA (--device cpu)"


def upload_rates(host: torch.Tensor, device: str, seconds: float) -> dict:
    """Host-to-device copies of the batch `host` alone, into a device tensor made once:
    from pageable memory (what torch.from_numpy gives) and from pinned memory. Images/s and
    GB/s. On CPU there is no upload: the pageable figure is then a host-to-host copy, and the
    pinned one is skipped (it needs CUDA), with the reason in its place."""
    batch, image_bytes = len(host), host[0].numel() * host.element_size()
    dst = torch.empty(host.shape, dtype=host.dtype, device=device)
    out = {"dtype": str(host.dtype).removeprefix("torch."), "batch": batch, "mb_per_image": image_bytes / 1e6}
    sources = {"pageable": host}
    if device.startswith("cuda"):
        sources["pinned"] = host.pin_memory()
    else:
        out["pinned"] = PINNED_SKIPPED
    for kind, src in sources.items():
        r = rate(lambda: dst.copy_(src, non_blocking=True), batch, seconds, device)
        out[f"{kind}_img_s"], out[f"{kind}_gb_s"] = r, r * image_bytes / 1e9
    return out


def images_per_second(model, batch: int, dtype, device: str, seconds: float) -> float:
    x = torch.randn(batch, 3, 448, 448, device=device, dtype=dtype)
    with torch.inference_mode():
        for _ in range(3):  # warm-up: cuDNN/cuBLAS choices, compile
            model(x)
        synchronize(device)
        runs, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds or runs < 3:
            model(x)
            runs += 1
            if runs % 8 == 0:
                synchronize(device)
        synchronize(device)
        elapsed = time.perf_counter() - t0
    return runs * batch / elapsed


def variants(name: str, device: str, modes: list[str]):
    """(mode, model, dtype) in the order measured; the compiled one is built last (slowest)."""
    base = create_model(name).eval().to(device)
    for mode in modes:
        if mode == "fp32":
            yield mode, base, torch.float32
        elif mode == "fp16":
            yield mode, create_model(name).eval().to(device).half_backbone().requires_grad_(False), torch.float16
        elif mode == "compile-fp16":
            for limit in ("recompile_limit", "cache_size_limit"):  # one graph per batch size, 9 sizes
                if hasattr(torch._dynamo.config, limit):
                    setattr(torch._dynamo.config, limit, 64)
            half = create_model(name).eval().to(device).half_backbone().requires_grad_(False)
            yield mode, torch.compile(half, dynamic=False), torch.float16
        else:
            raise ValueError(f"unknown mode {mode}")


def measure_uploads(args, device: str, deadline: float, results: dict) -> None:
    """Host-to-device copies per dtype and batch. The served path uploads PIXELS (the
    contract's dtype, uint8); each mode here feeds its own."""
    dtypes = {torch.uint8, *(torch.float32 if m == "fp32" else torch.float16 for m in args.modes)}
    for dtype in sorted(dtypes, key=lambda d: torch.empty(0, dtype=d).element_size()):
        for batch in args.batches if args.upload_seconds > 0 else []:
            if time.monotonic() > deadline:
                results["skipped"].append(f"upload {dtype} batch {batch}: time budget spent")
                continue
            host = torch.zeros(batch, 3, 448, 448, dtype=dtype)
            try:
                results["uploads"].append(upload_rates(host, device, args.upload_seconds))
            except torch.OutOfMemoryError:
                results["skipped"].append(f"upload {dtype} batch {batch}: out of memory")
            del host


def run(args, measured=lambda results: None) -> dict:
    """Measure every (mode, batch); `measured(results)` runs after each point, so a run
    stopped by a caller's timeout keeps what it measured."""
    device = args.device
    card = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    peak = args.peak_tflops or (peak_tflops(card) if device.startswith("cuda") else None)
    deadline = time.monotonic() + args.budget_s
    torch.backends.cuda.matmul.allow_tf32 = False  # FP32 means FP32 here
    flops = flops_per_image(create_model(args.model).eval().to(device), device)
    results = {
        "card": card,
        "model": args.model,
        "flops_per_image": flops,
        "peak_fp16_tflops": peak,
        "torch": torch.__version__,
        "rows": [],
        "uploads": [],
        "skipped": [],
    }
    measure_uploads(args, device, deadline, results)
    if results["uploads"]:
        measured(results)
    for mode, model, dtype in variants(args.model, device, args.modes):
        for batch in args.batches:
            if time.monotonic() > deadline:
                results["skipped"].append(f"{mode} batch {batch}: time budget spent")
                continue
            try:
                ips = images_per_second(model, batch, dtype, device, args.seconds)
            except torch.OutOfMemoryError:
                results["skipped"].append(f"{mode} batch {batch}: out of memory")
                torch.cuda.empty_cache()
                continue
            tflops = ips * flops / 1e12
            row = {
                "mode": mode,
                "batch": batch,
                "img_s": ips,
                "tflops": tflops,
                "fraction_of_fp16_peak": tflops / peak if peak else None,
            }
            results["rows"].append(row)
            print(
                f"{mode:13s} batch {batch:4d}: {ips:10.1f} img/s  {tflops:7.2f} TFLOP/s"
                + (f"  {row['fraction_of_fp16_peak']:.1%} of FP16 peak" if peak else ""),
                flush=True,
            )
            measured(results)
        del model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return results


def markdown(r: dict, command: str) -> str:
    peak = f"{r['peak_fp16_tflops']} TFLOP/s dense FP16" if r["peak_fp16_tflops"] else "unknown (no fraction shown)"
    lines = [
        f"# Scorer `{r['model']}` at 448 on {r['card']}",
        "",
        f"- command: `{command}`; torch {r['torch']}",
        f"- FLOPs per image (torch.utils.flop_counter, matmul/conv, 2 per MAC): {r['flops_per_image'] / 1e9:.2f} GFLOP",
        f"- peak used: {peak}",
        "- the input is made on the device: these figures hold no copy (uploads: below)",
        "",
        "| mode | batch | img/s | TFLOP/s | fraction of FP16 peak |",
        "|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        frac = f"{row['fraction_of_fp16_peak']:.2%}" if row["fraction_of_fp16_peak"] is not None else "n/a"
        lines.append(f"| {row['mode']} | {row['batch']} | {row['img_s']:.1f} | {row['tflops']:.2f} | {frac} |")
    uploads = r.get("uploads") or []
    if uploads:
        lines += [
            "",
            "Host-to-device uploads alone (a batch into a device tensor made once; on CPU a host copy):",
            "",
            "| dtype | batch | MB/image | pageable img/s | pageable GB/s | pinned img/s | pinned GB/s |",
            "|---|---|---|---|---|---|---|",
        ]
        for u in uploads:
            pinned = (
                f"{u['pinned_img_s']:.1f} | {u['pinned_gb_s']:.2f}"
                if "pinned_img_s" in u
                else f"{u.get('pinned', 'n/a')} | n/a"
            )
            lines.append(
                f"| {u['dtype']} | {u['batch']} | {u['mb_per_image']:.2f} | {u['pageable_img_s']:.1f} | "
                f"{u['pageable_gb_s']:.2f} | {pinned} |"
            )
    if r["skipped"]:
        lines += ["", "Skipped: " + "; ".join(r["skipped"])]
    return "\n".join(lines + ["", ANCHORS]) + "\n"


def plot(r: dict, path: Path) -> bool:
    axes = new_axes()
    if axes is None:
        return False
    fig, ax = axes
    for mode in dict.fromkeys(row["mode"] for row in r["rows"]):
        rows = [row for row in r["rows"] if row["mode"] == mode]
        ax.plot([row["batch"] for row in rows], [row["img_s"] for row in rows], marker="o", label=mode)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    save(fig, ax, path, f"{r['model']} @448 on {r['card']}", "batch size", "images/s")
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--model", default="swin_compact", help="a name from the model registry (training/models/registry.py)"
    )
    p.add_argument("--device", default="cuda")
    p.add_argument("--batches", default="1,2,4,8,16,32,64,128,256")
    p.add_argument("--modes", default="fp32,fp16,compile-fp16")
    p.add_argument("--seconds", type=float, default=2.0, help="timed seconds per point")
    p.add_argument(
        "--upload-seconds",
        type=float,
        default=0.3,
        help="timed seconds per upload figure (pageable, pinned); 0: no upload figures",
    )
    p.add_argument("--budget-s", type=float, default=450.0, help="stop measuring after this long")
    p.add_argument("--peak-tflops", type=float, help="override the card's dense FP16 peak")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    args.modes = args.modes.split(",")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m sampleiqa.perf.gpu_scorer_bench " + " ".join(argv if argv is not None else sys.argv[1:])

    def write(r: dict) -> Path:
        stem = out / f"gpu_scorer_{re.sub(r'[^A-Za-z0-9]+', '_', r['card']).strip('_')}_{r['model']}"
        stem.with_suffix(".json").write_text(json.dumps(r, indent=1))
        stem.with_suffix(".md").write_text(markdown(r, command.strip()))
        plot(r, stem.with_suffix(".png"))
        return stem

    stem = write(run(args, measured=write))
    print(f"wrote {stem}.md/.json/.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
