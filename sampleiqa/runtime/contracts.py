"""Names and numbers that clients, the model repository and benchmarks share.

Changing anything here changes the wire contract that clients, the model repository and
the benchmarks share (docs/serving.md: The ensemble contract).
"""

import os

from . import environment

ENSEMBLE = "sampleiqa"
PREPROCESS = "preprocess"
SCORER = "scorer"

# Ensemble / preprocess input.
IMAGE = "IMAGE"  # TYPE_STRING [1]: encoded file bytes
# preprocess -> scorer.
PIXELS = "PIXELS"  # UINT8 [3, CROP, CROP]: the face crop, RGB; the scorer normalises it (MEAN, STD)
# Ensemble outputs.
SCORE = "SCORE"  # FP32 [1], in [0, 1]; NaN only where the network gave no finite score
FACE_BOX = "FACE_BOX"  # INT32 [4]: x, y, w, h in pixels of the EXIF-oriented image
FACE_FOUND = "FACE_FOUND"  # BOOL [1]

CROP = 448
# The largest batch of every model, by default: on CPU larger batches cost memory and gain
# nothing (perf/results/memory-under-load.md); a GPU wants its batches large.
CPU_MAX_BATCH = 32
GPU_MAX_BATCH = 64
# ImageNet statistics: the timm Swin backbones are trained with them.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

# Input limits, read at import from the environment: the server's python stubs inherit it
# (`sampleiqa serve --max-bytes/--max-pixels` set it), and the bulk CLI checks file sizes
# against MAX_BYTES before reading a file into memory.
MAX_BYTES = int(os.environ.get(environment.MAX_BYTES, 64 * 1024 * 1024))
MAX_PIXELS = int(os.environ.get(environment.MAX_PIXELS, 100_000_000))  # decompression bomb guard

# One row per input file, in this order.
CSV_COLUMNS = ("path", "score", "face_found", "face_x", "face_y", "face_w", "face_h", "status", "error")

# Error codes carried at the start of a per-item error message: "[code] message".
ERROR_CODES = {
    "empty": "the input has zero bytes",
    "too_large": "the encoded input exceeds the byte limit",
    "too_many_pixels": "the header declares more pixels than allowed (decompression bomb guard)",
    "not_an_image": "the bytes are not a supported image (JPEG, PNG, WebP, BMP, TIFF, GIF, HEIC/HEIF, AVIF)",
    "unsupported": "a known image format whose decoder is not installed here (Pillow: GIF, AVIF; pillow-heif: HEIC)",
    "truncated": "the file ends before its end marker",
    "decode_failed": "the decoder rejected the data",
    "unreadable": "the file could not be read",
    "not_a_file": "not a regular file (a FIFO, device or socket): never read",
    "non_finite": "the scorer's network gave no finite score for this crop",
    "server": "the server or transport failed",
    "storage": "a transient storage error (throttling, a reset connection) outlasted the retries",
    "timeout": "the request timed out",
}

# Codes that say nothing about the image: the client retries them, and `sampleiqa score
# --resume` scores those files again instead of counting their rows as done.
RETRIED_CODES = frozenset({"server", "timeout", "storage"})
