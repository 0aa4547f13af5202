"""The GPU run's figures measured in process (perf/gpu_run.py): the scorer's runner per batch,
its compute apart from its uploads, torch.compile against eager, the GPU preprocessing
against the CPU path, and JPEG decoding on the GPU against OpenCV on one core."""

from __future__ import annotations

import time

from sampleiqa.paths import WEIGHTS

CHECKPOINT = WEIGHTS / "biq2021_default.pt"


def in_process(device: str, batches: list[int], seconds: float, photos: list[bytes]) -> dict:
    """TorchScorer (what the server runs) in this process, per batch, as separate figures:
    - host_input: scorer(numpy) as model.py calls it with host PIXELS (Triton's shared
      memory): copied into the pinned staging buffer, uploaded on the side stream, scores back;
    - gpu_input: scorer(tensor on the device) as model.py calls it with PIXELS from the GPU
      preprocessing (DLPack): a device copy into the graph's input, replay, scores back;
    - compute_only: the CUDA graph replayed on its static input (on CPU the forward);
    - upload_pageable / upload_pinned: the host-to-device copy of the batch alone (pinned
      needs CUDA: skipped on --device cpu, and the output says so).
    PIXELS are real crops from the photos. The FP16 peak fraction is of the compute alone."""
    import numpy as np
    import torch

    from sampleiqa.build.torch_runner import TorchScorer

    from .gpu_scorer_bench import PINNED_SKIPPED, flops_per_image, peak_tflops, rate, upload_rates
    from .inputs import preprocessed

    top = max(batches)
    scorer = TorchScorer(CHECKPOINT, device=device, max_batch=top)
    crops = np.stack(preprocessed(photos[:8]))
    host = np.ascontiguousarray(np.resize(crops, (top, *crops.shape[1:])))  # the crops repeated
    pageable = torch.from_numpy(host)
    on_device = pageable.to(device)
    rows = {}
    for b in batches:
        row = {
            "host_input_img_s": rate(lambda: scorer(host[:b]), b, seconds, device),
            "gpu_input_img_s": rate(lambda: scorer(on_device[:b]), b, seconds, device),
        }
        if b in scorer.graphs:
            graph, static_in, _ = scorer.graphs[b]
            static_in.copy_(on_device[:b])
            row["compute_only_img_s"] = rate(graph.replay, b, seconds, device)
        else:
            with torch.inference_mode():
                row["compute_only_img_s"] = rate(lambda: scorer.forward(on_device[:b]), b, seconds, device)
        uploads = upload_rates(pageable[:b], device, min(seconds, 1.0))
        row.update({f"upload_{k}": v for k, v in uploads.items() if k.startswith(("pageable", "pinned"))})
        rows[b] = row
    result = {
        "pixels": f"{host.dtype} {list(host.shape[1:])}, {host[0].nbytes / 1e6:.2f} MB per image",
        "cuda_graphs": sorted(scorer.graphs),
        "by_batch": rows,
    }
    if device != "cuda":
        result["note"] = (
            f"upload_pinned: {PINNED_SKIPPED}; upload_pageable on CPU is a host-to-host copy, "
            "and compute_only is the forward on a prepared CPU tensor"
        )
    flops = flops_per_image(scorer.model, device, example=on_device[:1])
    result["gflops_per_image"] = flops / 1e9
    if device == "cuda":
        peak = peak_tflops(torch.cuda.get_device_name(0))
        if peak:
            result["fp16_peak_fraction_compute_only"] = {
                b: r["compute_only_img_s"] * flops / (peak * 1e12) for b, r in rows.items()
            }
    return result


def compiled(device: str, batch: int, seconds: float, backend: str = "inductor") -> dict:
    """torch.compile (default mode) against eager, both captured in a CUDA graph at one batch,
    as the served runner replays them (on CPU: the plain forwards). The CPU rehearsal passes
    backend "aot_eager": the same tracing, without minutes of C++ compiling on 2 cores."""
    import torch

    from sampleiqa.build.torch_runner import TorchScorer

    from .gpu_scorer_bench import rate

    result = {"batch": batch, "backend": backend}
    x = torch.randint(0, 256, (batch, 3, 448, 448), dtype=torch.uint8, device=device)
    scorer = TorchScorer(CHECKPOINT, device=device, max_batch=batch, cuda_graphs=False)
    for mode, fn in (("eager", scorer.forward), ("compiled", torch.compile(scorer.forward, backend=backend))):
        start = time.monotonic()
        run = graphed(fn, x) if device == "cuda" else (lambda fn=fn: fn(x))
        with torch.inference_mode():
            run()
            result[f"{mode}_ready_s"] = round(time.monotonic() - start, 1)
            result[f"{mode}_img_s"] = rate(run, batch, seconds, device)
    result["compiled_over_eager"] = result["compiled_img_s"] / result["eager_img_s"]
    return result


def graphed(fn, x):
    import torch

    stream = torch.cuda.Stream()
    with torch.inference_mode(), torch.cuda.stream(stream):
        for _ in range(2):
            fn(x)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            fn(x)
    torch.cuda.synchronize()
    return graph.replay


def gpu_preprocess(device: str, photos: list[bytes], batch: int, seconds: float) -> dict:
    """The GPU preprocessing (TorchPreprocessor: nvJPEG, YuNet in torch, crops on the device)
    against the CPU path on these photos, compared as gpu_preprocess_parity compares the 500
    `val` photos (face decisions, boxes, pixels, scores of the committed ONNX scorer on CPU),
    and its images/s in batches of `batch`, held for `seconds`."""
    from sampleiqa.runtime.preprocessing.torch_pipeline import TorchPreprocessor

    from .gpu_preprocess_parity import compare, run_cpu, run_torch, score
    from .gpu_scorer_bench import rate

    pre = TorchPreprocessor(device=device)
    t, c = run_torch(photos, device, batch, pre), run_cpu(photos)
    r = compare(t, c, score(t["pixels"]), score(c["pixels"]))
    chunk = (photos * (batch // len(photos) + 1))[:batch]
    return {
        **r,
        "compared": r["scored"],
        "same_face_decision": r["same_decision_pct"] / 100,
        "scores_within_1e-2": r["within_1e-2_pct"] / 100,
        "torch_img_s": rate(lambda: pre(chunk), batch, seconds, device),
        "batch": batch,
    }


def jpeg_decode(device: str, photos: list[bytes], seconds: float) -> dict:
    import cv2
    import numpy as np

    def rate(fn) -> float:
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for data in photos:
                fn(data)
            n += len(photos)
        return n / (time.perf_counter() - start)

    cv2.setNumThreads(1)
    result = {"opencv_one_core_per_s": rate(lambda d: cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_COLOR))}
    if device == "cuda":
        import torch
        from torchvision.io import decode_jpeg

        tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in photos]

        def gpu_batch(_):
            decode_jpeg(tensors, device="cuda")
            torch.cuda.synchronize()

        gpu_batch(None)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            gpu_batch(None)
            n += len(tensors)
        result["nvjpeg_batched_per_s"] = n / (time.perf_counter() - start)
    return result
