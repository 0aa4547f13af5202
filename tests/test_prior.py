"""The pretrained prior (training/models/prior.py): packaged ImageNet weights that really
classify, cached trunk outputs equal to the served graph's, the twin trained on them through
`sampleiqa train`, and leave-one-subset-out folds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .helpers import BIQ, REPO_ROOT, SAMPLES, biq_images

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from sampleiqa.runtime.preprocessing import normalize, preprocess_file  # noqa: E402
from sampleiqa.training.models import create_model  # noqa: E402


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMPLEIQA_CACHE", str(tmp_path / "cache" / "crops"))


def test_packaged_lite0_weights_are_imagenet_weights_and_the_trunk_takes_the_served_tensor():
    """The packaged weights, mapped onto timm's module, call the sample cat a cat (ImageNet
    classes 281-285), fed through the served normalisation."""
    from sampleiqa.training.models.prior import Lite0Trunk, load_lite0

    net, trunk = load_lite0(), Lite0Trunk()
    x = torch.from_numpy(normalize(preprocess_file(SAMPLES / "chelsea.jpg").pixels[None]))
    with torch.no_grad():
        probs = net(x * trunk.scale + trunk.shift).softmax(-1)[0]
    assert int(probs.argmax()) in range(281, 286) and float(probs[281:286].sum()) > 0.3  # random weights: ~0.005
    assert float(create_model("lite0_swin", pretrained=False).trunk.stem[0].weight.abs().sum()) != pytest.approx(
        float(trunk.stem[0].weight.abs().sum())
    )  # pretrained=False really starts elsewhere
    assert not any(p.requires_grad for p in trunk.parameters())


@pytest.mark.slow
def test_cached_features_are_the_served_graphs_and_reused(tmp_path):
    """View 0 of the cache is what the exported trunk computes on the served crop; a second
    build computes nothing."""
    from sampleiqa.training.data.cache import build_cache
    from sampleiqa.training.data.datasets import LabelledSet, Sample
    from sampleiqa.training.data.features import build_features

    paths = biq_images(3)
    data = build_cache(LabelledSet("three", [Sample(p, 0.5) for p in paths]))
    model = create_model("lite0_swin").eval()
    root = tmp_path / "features"
    fs = build_features(data, model.trunk, views=2, root=root)
    assert fs.tokens.shape == (3, 2, 112, 28, 28) and fs.pooled.shape == (3, 2, model.trunk.pooled_dim)
    x = torch.from_numpy(normalize(np.stack([preprocess_file(p).pixels for p in paths])))
    with torch.no_grad():
        tokens, pooled = model.trunk(x)
    np.testing.assert_allclose(fs.pooled[:, 0], pooled.numpy(), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(fs.tokens[:, 0].astype(np.float32), tokens.numpy(), rtol=2e-3, atol=2e-2)  # FP16 store
    assert not np.allclose(fs.pooled[:, 0], fs.pooled[:, 1])  # view 1 is another crop
    stamps = {f: f.stat().st_mtime_ns for f in (root).rglob("*.npz")}
    again = build_features(data, model.trunk, views=2, root=root)
    assert {f: f.stat().st_mtime_ns for f in root.rglob("*.npz")} == stamps
    np.testing.assert_array_equal(again.tokens, fs.tokens)


def _labelled(tmp_path: Path, n: int) -> Path:
    import csv

    with open(BIQ / "labels.csv") as f:
        mos = {r["image"]: r["mos"] for r in csv.DictReader(f)}
    out = tmp_path / "train.csv"
    out.write_text("path,score\n" + "\n".join(f'"{p}",{mos[p.name]}' for p in biq_images(n)) + "\n")
    return out


@pytest.mark.training
@pytest.mark.server
def test_prior_model_trains_on_cached_features_and_serves_the_same_scores(tmp_path):
    """`sampleiqa train` on a prior config, then the checkpoint, its ONNX export and the real
    Triton ensemble agree on the same photos; the full model equals the top on cached view 0."""
    data = _labelled(tmp_path, 16)
    cfg = tmp_path / "prior.toml"
    cfg.write_text(
        f'model = "lite0_swin_test"\nout_dir = "{tmp_path / "run"}"\nseed = 1\nthreads = 1\n'
        f'feature_views = 2\n[data]\ntrain = {{ kind = "csv", path = "{data}" }}\n'
        f'val = {{ kind = "csv", path = "{data}" }}\n[resample]\nbins = 4\nmax_repeat = 2\n'
        '[[stages]]\nname = "mos"\nkind = "prior"\nepochs = 2\nbatch_size = 8\nwarmup_steps = 1\n'
        "lr = 1e-3\nema_decay = 0.9\n"
    )
    cli = [sys.executable, "-m", "sampleiqa.cli"]
    env = {"SAMPLEIQA_CACHE": str(tmp_path / "cache" / "crops")}
    import os

    r = subprocess.run(
        cli + ["train", str(cfg)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, **env}
    )
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "run"
    history = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2] and all(np.isfinite(h["loss"]) for h in history)
    assert (run / "training.png").exists() and (run / "resample.png").exists()

    from sampleiqa.training.checkpoint import load_scorer

    model, extra = load_scorer(run / "last.pt")
    assert "val" in extra
    pixels = np.stack([preprocess_file(p).pixels for p in biq_images(4)])  # what the server's scorer gets
    x = torch.from_numpy(normalize(pixels))
    with torch.no_grad():
        full = model(x).view(-1).numpy()
        top = (model.top.forward_z(*model.trunk(x)) * model.score_std + model.score_mean).view(-1).numpy()
    np.testing.assert_allclose(full, top, atol=1e-6)

    onnx_path, repo = tmp_path / "m.onnx", tmp_path / "repo"
    subprocess.run(
        cli + ["export-onnx", "--checkpoint", str(run / "last.pt"), "--out", str(onnx_path)],
        check=True,
        cwd=REPO_ROOT,
        capture_output=True,
    )
    subprocess.run(
        cli + ["build-repository", "--target", "cpu", "--onnx", str(onnx_path), "--out", str(repo)],
        check=True,
        cwd=REPO_ROOT,
        capture_output=True,
    )
    import onnxruntime as ort

    from sampleiqa.runtime.contracts import PIXELS, SCORE

    got = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run([SCORE], {PIXELS: pixels})[0]
    np.testing.assert_allclose(got.reshape(-1), full, atol=1e-4)
    from sampleiqa.clients import ScoringClient
    from sampleiqa.server import TritonServer

    with TritonServer(repo, log_file=tmp_path / "triton.log") as own, ScoringClient(own.url, timeout_s=60) as c:
        served = [c.score(p.read_bytes()).score for p in biq_images(4)]
    np.testing.assert_allclose(served, full, atol=1e-4)


def test_leave_one_subset_out_folds_hold_out_whole_sources():
    from sampleiqa.training.data.features import FeatureSet
    from sampleiqa.training.loso import SUBSETS, folds

    paths = [f"/x/ss0{k % 3 + 1} ({k}).jpg" for k in range(30)]
    data = FeatureSet(
        np.zeros((30, 1, 1, 1, 1), np.float16),
        np.zeros((30, 1, 1), np.float32),
        np.zeros(30, np.float32),
        [None] * 30,
        paths,
    )
    out = folds(data, val_paths=set(paths[:5]))
    for s in SUBSETS:
        train, test = out[s]
        assert {Path(paths[i]).name[:4] for i in test} == {s}
        assert s not in {Path(paths[i]).name[:4] for i in train}
        assert len(train) + len(test) == 30
    assert sorted(out["val"][1]) == list(range(5)) and not set(out["val"][0]) & set(out["val"][1])


def _random_features(n: int, scenes=None, seed: int = 0):
    from sampleiqa.training.data.features import FeatureSet

    rng = np.random.default_rng(seed)
    model = create_model("lite0_swin_test", pretrained=False)
    pooled = rng.normal(size=(n, 2, model.trunk.pooled_dim)).astype(np.float32)
    scores = (0.5 + 0.1 * pooled[:, 0, 0] + 0.02 * rng.normal(size=n)).astype(np.float32)
    return model, FeatureSet(
        rng.random((n, 2, 112, 28, 28)).astype(np.float16),
        pooled,
        scores,
        scenes or [None] * n,
        [f"p{i}.jpg" for i in range(n)],
    )


@pytest.mark.training
def test_shrinkage_penalties_shrink_their_part_of_the_head():
    """`pooled_l2` and `swin_l2` act as ridge penalties on their part of the fused head."""
    from sampleiqa.training.config import PriorStage, StageConfig
    from sampleiqa.training.prior.loop import fit_top, prepare_top

    norms = {}
    for l2 in (0.0, 50.0):
        torch.manual_seed(0)
        model, data = _random_features(32)
        prepare_top(model, data)
        stage = PriorStage("p", epochs=3, batch_size=8, warmup_steps=1, lr=1e-2, pooled_l2=l2, swin_l2=l2)
        top = fit_top(model.top, data, np.arange(32), stage, seed=0)
        norms[l2] = (float(top.pooled_weight().norm()), float(top.swin_weight().norm()))
    assert norms[50.0][0] < 0.5 * norms[0.0][0] and norms[50.0][1] < 0.5 * norms[0.0][1], norms
    with pytest.raises(ValueError, match='kind = "prior"'):
        fit_top(model.top, data, np.arange(32), StageConfig("m", kind="mos"), seed=0)


def test_pairs_stay_inside_a_scene_when_labels_have_scenes():
    from sampleiqa.training.pairs import epoch_pairs

    scenes = [f"s{i % 4}" for i in range(40)]
    pairs = epoch_pairs(np.arange(40), scenes, np.random.default_rng(0))
    assert len(pairs) == 20 and all(scenes[a] == scenes[b] for a, b in pairs)
    plain = epoch_pairs(np.arange(40), [None] * 40, np.random.default_rng(0))
    assert sorted(plain.ravel().tolist()) == list(range(40))  # every photo once across the epoch
