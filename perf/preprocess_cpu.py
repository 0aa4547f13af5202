"""CPU time of the whole preprocessing per photo (decode + face + crop + normalise), one
thread, with each face detector: the figure behind "YuNet costs no more than Haar".

    python -m sampleiqa.perf.preprocess_cpu [--images DIR] [--photos 200] [--repeats 5]

Process CPU time (not wall time), median over repeats, so other load on a shared host
moves it little.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import cv2

from sampleiqa.runtime.preprocessing import create_detector, preprocess_bytes

from .inputs import DEFAULT_IMAGES


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", default=str(DEFAULT_IMAGES))
    p.add_argument("--photos", type=int, default=200)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    cv2.setNumThreads(1)
    blobs = [f.read_bytes() for f in sorted(Path(args.images).glob("*.jpg"))[: args.photos]]
    print(f"{len(blobs)} photos from {args.images}, one thread, CPU ms per photo (median of {args.repeats}):")
    results = {}
    for name in ("haar", "yunet"):
        det = create_detector(name)
        preprocess_bytes(blobs[0], det)  # load the model outside the timing
        runs = []
        for _ in range(args.repeats):
            t0 = time.process_time()
            for b in blobs:
                preprocess_bytes(b, det)
            runs.append((time.process_time() - t0) / len(blobs) * 1000)
        results[name] = statistics.median(runs)
        print(f"  {name}: {results[name]:.2f} ms (runs {', '.join(f'{r:.2f}' for r in runs)})")
    print(f"  yunet / haar: {results['yunet'] / results['haar']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
