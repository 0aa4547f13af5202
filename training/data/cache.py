"""Decode and face-detect every labelled image once, then train from memory-mapped pixels.

Face detection and decoding are the slow part of a training step, and they are the same
every epoch. The cache keeps, per sample:
- the eval crop: exactly the served `preprocess` crop (uint8 BGR 448x448), made by the
  serving code (`plan_crop` + `apply_plan`);
- the training image: the photo at the crop policy's scale (so a random 448 crop is a
  slice), cut to the region any face-holding crop can come from (at most 2x448 - face on
  a side; the central 2x448 window when there is no face), and the face box in those
  pixels, for `random_plan`. A 12-megapixel phone photo then costs ~2 MB, not 36.
Unreadable images are reported by the builder and listed in the index, never dropped
silently.

A cache is a few GB per dataset and a new one is made whenever the photos or the
preprocessing code change, so each reuse stamps the folder, and `sampleiqa cache` lists them
and prunes those not used for a while (and leftovers of builds that were killed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np

from sampleiqa.progress import Progress
from sampleiqa.runtime import environment
from sampleiqa.runtime.contracts import CROP
from sampleiqa.runtime.preprocessing import Box, PreprocessError, apply_plan, decode_bgr, find_face, plan_crop
from sampleiqa.runtime.preprocessing.crops import face_crops_region

from .datasets import LabelledSet

log = logging.getLogger(__name__)
CACHE_VERSION = 2
CACHE_NAME = re.compile(r"[0-9a-f]{16}(\.tmp\d+)?")  # `_key`, or a build in progress


def default_root() -> Path:
    return Path(os.environ.get(environment.CACHE, Path.home() / ".cache" / "sampleiqa" / "crops"))


def preprocessing_fingerprint() -> bytes:
    """The preprocessing sources: a change of detector or crop policy invalidates the cache."""
    import sampleiqa.runtime.preprocessing as pre

    h = hashlib.sha1()
    for src in sorted(Path(pre.__file__).parent.glob("*.py")):
        h.update(src.read_bytes())
    return h.digest()


def _key(dataset: LabelledSet) -> str:
    h = hashlib.sha1(f"v{CACHE_VERSION} crop{CROP}".encode())
    h.update(preprocessing_fingerprint())
    for s in dataset.samples:
        st = s.path.stat()
        h.update(f"{s.path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())  # one cache per photo set
    return h.hexdigest()[:16]


def _prepare(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int] | None] | str:
    """(eval crop, training image at crop scale, face in training pixels) or an error text."""
    try:
        bgr = decode_bgr(path.read_bytes())
    except (PreprocessError, OSError) as e:
        return str(e)
    face = find_face(bgr)
    h, w = bgr.shape[:2]
    eval_crop = apply_plan(bgr, plan_crop(w, h, face))
    region = face_crops_region(w, h, face)
    if region.scale != 1.0:
        bgr = cv2.resize(bgr, region.scaled, interpolation=cv2.INTER_AREA if region.scale < 1 else cv2.INTER_LINEAR)
    x0, y0, x1, y1 = region.box
    return eval_crop, bgr[y0:y1, x0:x1], region.face


def _worker_init() -> None:
    cv2.setNumThreads(1)


@dataclass
class CachedSet:
    """Memory-mapped pixels for the readable samples of a dataset."""

    root: Path
    scores: np.ndarray  # float32 [N]
    scenes: list[str | None]
    paths: list[str]
    faces: list[Box | None]  # in training-image pixels
    unreadable: dict[str, str]

    def __len__(self) -> int:
        return len(self.paths)

    def eval_crop(self, i: int) -> np.ndarray:
        return self._eval[i]

    def train_image(self, i: int) -> np.ndarray:
        return np.load(self.root / "train" / f"{i}.npy", mmap_mode="r")

    def __post_init__(self):
        self._eval = np.load(self.root / "eval.npy", mmap_mode="r")


def build_cache(dataset: LabelledSet, root: Path | None = None, workers: int | None = None) -> CachedSet:
    """Build (or reuse) the cache of `dataset` under `root/<key>` (default: $SAMPLEIQA_CACHE
    or ~/.cache/sampleiqa/crops)."""
    if dataset.missing:
        raise FileNotFoundError(f"{dataset.describe()}; fix the paths or remove them from the labels")
    folder = Path(root or default_root()) / _key(dataset)
    index_path = folder / "index.json"
    if not index_path.exists():
        _write(dataset, folder, workers or os.cpu_count() or 1)
    os.utime(folder)  # last use, for `sampleiqa cache --prune-older-than`
    index = json.loads(index_path.read_text())
    return CachedSet(
        folder,
        np.asarray(index["scores"], dtype=np.float32),
        index["scenes"],
        index["paths"],
        [Box(*f) if f else None for f in index["faces"]],
        index["unreadable"],
    )


def _write(dataset: LabelledSet, folder: Path, workers: int) -> None:
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    (tmp / "train").mkdir(parents=True, exist_ok=True)
    n = len(dataset.samples)
    evals = np.lib.format.open_memmap(tmp / "eval.all.npy", mode="w+", dtype=np.uint8, shape=(n, CROP, CROP, 3))
    kept, faces, unreadable = [], [], {}
    progress = Progress(n, f"caching {dataset.name}")
    with get_context("fork").Pool(workers, initializer=_worker_init) as pool:
        for sample, result in zip(dataset.samples, pool.imap(_prepare, [s.path for s in dataset.samples], chunksize=8)):
            if isinstance(result, str):
                unreadable[str(sample.path)] = result
                progress.update(unreadable=1)
                continue
            eval_crop, image, face = result
            j = len(kept)
            evals[j] = eval_crop
            np.save(tmp / "train" / f"{j}.npy", image)
            kept.append(sample)
            faces.append(face)
            progress.update()
    progress.close()
    # Only the readable rows go in the final array.
    np.save(tmp / "eval.npy", np.asarray(evals[: len(kept)]))
    del evals
    (tmp / "eval.all.npy").unlink()
    index = {
        "dataset": dataset.name,
        "paths": [str(s.path) for s in kept],
        "scores": [s.score for s in kept],
        "scenes": [s.scene for s in kept],
        "faces": faces,
        "unreadable": unreadable,
    }
    (tmp / "index.json").write_text(json.dumps(index))
    try:
        tmp.rename(folder)
    except OSError:  # another process finished the same cache first
        shutil.rmtree(tmp)
        return
    if unreadable:
        log.warning("%d unreadable images left out of %s:", len(unreadable), dataset.name)
        for p, err in list(unreadable.items())[:10]:
            log.warning("  %s: %s", p, err)


@dataclass
class CacheEntry:
    folder: Path
    dataset: str  # "?" for caches written before the name was kept
    images: int
    bytes: int
    last_used: float  # epoch seconds
    complete: bool  # False: a build that was killed (or is still running)


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _writer_alive(folder: Path) -> bool:
    pid = folder.name.rpartition(".tmp")[2]
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def list_caches(root: Path | None = None) -> list[CacheEntry]:
    """Every cache under root (default: $SAMPLEIQA_CACHE or ~/.cache/sampleiqa/crops), the
    least recently used first."""
    root = Path(root or default_root())
    if not root.is_dir():
        return []
    entries = []
    for folder in root.iterdir():
        if not (folder.is_dir() and CACHE_NAME.fullmatch(folder.name)):
            continue  # never touch what this module did not make, whatever root points at
        index_path = folder / "index.json"
        complete = ".tmp" not in folder.name and index_path.exists()
        index = json.loads(index_path.read_text()) if complete else {}
        entries.append(
            CacheEntry(
                folder,
                index.get("dataset", "?"),
                len(index.get("paths", ())),
                _size(folder),
                folder.stat().st_mtime,
                complete,
            )
        )
    return sorted(entries, key=lambda e: e.last_used)


def prune_caches(older_than_days: float, root: Path | None = None, dry_run: bool = False) -> list[CacheEntry]:
    """Delete the caches not used for `older_than_days`, and leftovers of builds whose process
    is gone; returns what was (or, with dry_run, would be) deleted."""
    cutoff = time.time() - older_than_days * 86400
    doomed = [
        e
        for e in list_caches(root)
        if (e.complete and e.last_used < cutoff) or (not e.complete and not _writer_alive(e.folder))
    ]
    if not dry_run:
        for e in doomed:
            shutil.rmtree(e.folder, ignore_errors=True)
    return doomed
