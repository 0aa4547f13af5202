"""The GPU run's figures measured in process (perf/gpu_run.py, steps 6 and 7): the scorer's
runner per batch, its compute apart from its uploads, and JPEG decoding on the GPU against
OpenCV on one core."""

from __future__ import annotations

import time

from sampleiqa.paths import WEIGHTS

CHECKPOINT = WEIGHTS / "biq2021_default.pt"


def in_process(device: str, batches: list[int], seconds: float, photos: list[bytes]) -> dict:
    """TorchScorer (what the server runs) in this process, per batch, as separate figures:
    - served_path: scorer(pixels) as the server's model.py calls it: pageable numpy in (the
      copy to the device inside), scores back on the host;
    - compute_only: the input already on the device (the CUDA graph replayed on its static
      input; on CPU the forward on a prepared tensor);
    - upload_pageable / upload_pinned: the host-to-device copy of the batch alone, from
      pageable and from pinned memory (pinned needs CUDA: skipped on CPU, and said so).
    PIXELS are real crops from the photos, in the contract's dtype. The FP16 peak fraction
    is of the compute alone."""
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
        row = {"served_path_img_s": rate(lambda: scorer(host[:b]), b, seconds, device)}
        if b in scorer.graphs:
            graph, static_in, _ = scorer.graphs[b]
            static_in.copy_(on_device[:b])
            row["compute_only_img_s"] = rate(graph.replay, b, seconds, device)
        else:
            with torch.inference_mode():
                row["compute_only_img_s"] = rate(lambda: scorer._forward(on_device[:b]), b, seconds, device)
        uploads = upload_rates(pageable[:b], device, min(seconds, 1.0))
        row.update({f"upload_{k}": v for k, v in uploads.items() if k.startswith(("pageable", "pinned"))})
        rows[b] = row
    result = {"pixels": f"{host.dtype} {list(host.shape[1:])}, {host[0].nbytes / 1e6:.2f} MB per image",
              "cuda_graphs": sorted(scorer.graphs), "by_batch": rows}
    if device != "cuda":
        result["note"] = (f"upload_pinned: {PINNED_SKIPPED}; upload_pageable on CPU is a host-to-host copy, "
                          "and compute_only is the forward on a prepared CPU tensor")
    flops = flops_per_image(scorer.model, device, example=on_device[:1])
    result["gflops_per_image"] = flops / 1e9
    if device == "cuda":
        peak = peak_tflops(torch.cuda.get_device_name(0))
        if peak:
            result["fp16_peak_fraction_compute_only"] = {b: r["compute_only_img_s"] * flops / (peak * 1e12)
                                                         for b, r in rows.items()}
    return result


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
