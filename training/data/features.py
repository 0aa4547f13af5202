"""Frozen-trunk features of every labelled photo, computed once and kept per photo.

A prior model's trunk (training/models/prior.py) never trains, so its outputs are a pure
function of the crop. Per photo this keeps `views` crops' outputs:
- view 0: the served crop (exactly what the `preprocess` model gives, from the crop cache);
- views 1..: random 448 crops that hold the whole face (the crop policy's `random_plan`,
  as the pixel loop draws them), flipped at random, drawn from a seed and the photo's path.
The trunk runs through ONNX Runtime (about 10x faster than torch's CPU depthwise
convolutions), exported from the same torch module; tests check the two agree.

Files are per photo (`<key>.npz`: tokens FP16 [views,C,28,28], pooled FP32 [views,D]), keyed
on the photo (resolved path, size, mtime), the preprocessing code and the trunk's weights,
so train/val/leave-one-out sets share them and a killed build resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sampleiqa.progress import Progress
from sampleiqa.runtime import environment
from sampleiqa.runtime.contracts import CROP
from sampleiqa.runtime.onnx_runtime import cpu_session
from sampleiqa.runtime.preprocessing import to_tensor

from .cache import CachedSet, preprocessing_fingerprint
from .train_crops import random_face_crop

FEATURES_VERSION = 1


def default_root() -> Path:
    base = Path(os.environ.get(environment.CACHE, Path.home() / ".cache" / "sampleiqa" / "crops"))
    return base.parent / "features"


@dataclass
class FeatureSet:
    """Trunk outputs of a labelled set's readable photos, in memory."""

    tokens: np.ndarray  # float16 [N, views, C, g, g]
    pooled: np.ndarray  # float32 [N, views, D]
    scores: np.ndarray  # float32 [N]
    scenes: list[str | None]
    paths: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices) -> FeatureSet:
        idx = np.asarray(indices)
        return FeatureSet(
            self.tokens[idx],
            self.pooled[idx],
            self.scores[idx],
            [self.scenes[i] for i in idx],
            [self.paths[i] for i in idx],
        )


def _trunk_fingerprint(trunk) -> str:
    h = hashlib.sha1()
    for k, v in trunk.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _photo_key(path: str, trunk_key: str, views: int, seed: int) -> str:
    p = Path(path)
    st = p.stat()
    h = hashlib.sha1(
        f"v{FEATURES_VERSION} {trunk_key} views{views} seed{seed}\0{p.resolve()}\0{st.st_size}\0"
        f"{st.st_mtime_ns}".encode()
    )
    h.update(preprocessing_fingerprint())
    return h.hexdigest()[:20]


def _views(data: CachedSet, i: int, views: int, seed: int) -> np.ndarray:
    """[views, 3, 448, 448] normalised crops of photo i: the served one, then random ones."""
    rng = np.random.default_rng([seed, zlib.crc32(data.paths[i].encode())])
    crops = [np.asarray(data.eval_crop(i))]
    crops += [random_face_crop(data.train_image(i), data.faces[i], rng) for _ in range(views - 1)]
    out = np.empty((views, 3, *crops[0].shape[:2]), dtype=np.float32)
    for v, c in enumerate(crops):
        to_tensor(c, out[v])
    return out


class TrunkRunner:
    """The frozen trunk as an ONNX Runtime session (exported from the torch module)."""

    def __init__(self, trunk, folder: Path, threads: int = 0):
        import torch

        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "trunk.onnx"
        if not path.exists():
            tmp = folder / f".trunk.{os.getpid()}.onnx"
            x = torch.zeros(1, 3, CROP, CROP)
            torch.onnx.export(
                trunk.eval(),
                x,
                tmp,
                input_names=["x"],
                output_names=["tokens", "pooled"],
                opset_version=17,
                dynamo=False,
                dynamic_axes={"x": {0: "N"}, "tokens": {0: "N"}, "pooled": {0: "N"}},
            )
            tmp.replace(path)
        self.session = cpu_session(path, threads or os.cpu_count() or 1)

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tokens, pooled = self.session.run(None, {"x": x})
        return tokens, pooled


def build_features(
    data: CachedSet, trunk, views: int = 3, seed: int = 0, root: Path | None = None, label: str = "features"
) -> FeatureSet:
    """Trunk outputs for every photo of a crop cache; computes only the photos not yet kept."""
    trunk_key = _trunk_fingerprint(trunk)
    folder = Path(root or default_root()) / trunk_key
    keys = [_photo_key(p, trunk_key, views, seed) for p in data.paths]
    todo = [i for i, k in enumerate(keys) if not (folder / f"{k}.npz").exists()]
    if todo:
        runner = TrunkRunner(trunk, folder)
        bar = Progress(len(todo), f"{label}: trunk on {views} crops of {len(todo)} photos")
        for i in todo:
            tokens, pooled = runner(_views(data, i, views, seed))
            tmp = folder / f".{keys[i]}.{os.getpid()}.npz"
            with open(tmp, "wb") as f:
                np.savez(f, tokens=tokens.astype(np.float16), pooled=pooled.astype(np.float32))
            tmp.replace(folder / f"{keys[i]}.npz")
            bar.update()
        bar.close()
    tokens = pooled = None
    for i, k in enumerate(keys):
        with np.load(folder / f"{k}.npz") as z:
            if tokens is None:  # sized by the first photo's arrays
                tokens = np.empty((len(keys), *z["tokens"].shape), np.float16)
                pooled = np.empty((len(keys), *z["pooled"].shape), np.float32)
            tokens[i], pooled[i] = z["tokens"], z["pooled"]
    os.utime(folder)
    return FeatureSet(tokens, pooled, data.scores, list(data.scenes), list(data.paths))
