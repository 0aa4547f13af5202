"""Dataset loaders on the real label files, re-sampling with real CBC, metrics vs scipy."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
from scipy import stats

from .helpers import BIQ, DATA, biq_images

pytest.importorskip("pulp")
from sampleiqa.training.data.datasets import create_dataset, load_biq2021, load_csv, load_piq23  # noqa: E402
from sampleiqa.training.metrics import evaluate_scores, plcc_logistic  # noqa: E402
from sampleiqa.training.resample import ResampleConfig, plot_histograms, resample  # noqa: E402

PIQ = DATA / "piq23-labels"


def test_biq2021_loader_reads_the_fixed_split():
    if not BIQ.exists():
        pytest.skip("no BIQ2021 data")
    train, val = load_biq2021(BIQ, "train"), load_biq2021(BIQ, "val")
    assert (len(train.samples), len(val.samples)) == (6331, 500)  # 4,500 train photos until 2026-11-27
    assert not train.missing and not val.missing
    assert {s.path for s in train.samples}.isdisjoint({s.path for s in val.samples})
    assert all(0 <= s.score <= 1 for s in val.samples)


def test_piq23_loader_reads_the_official_files_and_reports_missing_images(tmp_path):
    if not PIQ.exists():
        pytest.skip("no PIQ23 label files")
    # Generate the image tree the labels point at (Windows paths like Overall\66_Indoor_Scene_0.jpg).
    with open(PIQ / "Test split" / "Scene Split" / "SceneSplit_Test_Scores_Overall.csv", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    jpeg = biq_images(1)[0].read_bytes()
    for r in rows:
        p = tmp_path.joinpath(*r["IMAGE PATH"].split("\\"))
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(jpeg)
    gone = tmp_path.joinpath(*rows[0]["IMAGE PATH"].split("\\"))
    gone.unlink()

    test = load_piq23(PIQ, tmp_path, "Overall", split="scene", part="test")
    assert len(test.samples) == len(rows) - 1
    assert test.missing == [gone]
    assert "1 MISSING" in test.describe()
    scenes = {s.scene for s in test.samples}
    with open(PIQ / "Test split" / "Scene Split.csv", encoding="utf-8-sig") as f:
        official = {r["SCENE"] for r in csv.DictReader(f) if r["SPLIT"] == "Test"}
    assert scenes == official and len(scenes) == 15
    # JOD is relative within a scene: each scene's mean is ~0.
    for scene in list(scenes)[:3]:
        jod = [s.score for s in test.samples if s.scene == scene]
        assert abs(np.mean(jod)) < 0.5
    # The device split's train part names images only (no images here): all reported missing.
    dev = create_dataset(
        {
            "kind": "piq23",
            "labels_root": str(PIQ),
            "image_root": str(tmp_path / "nowhere"),
            "split": "device",
            "part": "train",
            "attribute": "Details",
        }
    )
    assert not dev.samples and len(dev.missing) == 3604


def test_csv_loader_takes_relative_paths_from_the_csv_folder(tmp_path):
    src = biq_images(2)
    for p in src:
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / "labels.csv").write_text(
        "path,score,scene\n" + f"{src[0].name},0.5,a\n{src[1].name},0.7,b\nmissing.jpg,0.1,a\n"
    )
    ds = load_csv(tmp_path / "labels.csv")
    assert [s.score for s in ds.samples] == [0.5, 0.7]
    assert [s.scene for s in ds.samples] == ["a", "b"]
    assert ds.missing == [tmp_path / "missing.jpg"]


def test_resampling_follows_a_gaussian_target_and_is_deterministic(tmp_path):
    rng = np.random.default_rng(0)
    # Many mid scores, few extremes, as in PIQ23.
    scores = np.concatenate([rng.normal(0.5, 0.06, 9000), rng.uniform(0, 1, 1000)])
    cfg = ResampleConfig(target="gaussian", bins=20, min_repeat=0, max_repeat=4, std_scale=2.0)
    a, b = resample(scores, cfg), resample(scores, cfg)
    assert np.array_equal(a.repeats, b.repeats)
    assert a.repeats.sum() == len(scores) and a.repeats.min() >= 0 and a.repeats.max() <= 4
    as_is = np.abs(a.before - a.target).sum()
    assert a.l1 < 0.5 * as_is  # the re-sampled histogram is much closer to the target
    # Repeats are even within a bin (at most 1 apart).
    which = np.clip(np.searchsorted(a.edges, scores, side="right") - 1, 0, 19)
    for bin_ in range(20):
        r = a.repeats[which == bin_]
        assert len(r) == 0 or r.max() - r.min() <= 1
    png = plot_histograms(a, tmp_path / "hist.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resampling_options():
    scores = np.linspace(0, 1, 500) ** 2  # skewed to low scores
    uniform = resample(scores, ResampleConfig(target="uniform", bins=10, max_repeat=5))
    assert uniform.after.std() < uniform.before.std()
    same = resample(scores, ResampleConfig(target="as_is", bins=10))
    assert np.all(same.repeats == 1)
    bigger = resample(scores, ResampleConfig(epoch_size=1000, min_repeat=1, max_repeat=3))
    assert bigger.repeats.sum() == 1000 and bigger.repeats.min() >= 1
    with pytest.raises(ValueError, match="not reachable"):
        resample(scores, ResampleConfig(epoch_size=5000, max_repeat=2))


def test_metrics_match_scipy_and_handle_scenes():
    rng = np.random.default_rng(1)
    mos = rng.uniform(0, 1, 200)
    pred = mos**3 + rng.normal(0, 0.05, 200)  # monotonic but non-linear
    r = evaluate_scores(pred, mos)["overall"]
    assert r["srocc"] == pytest.approx(stats.spearmanr(pred, mos)[0])
    assert r["krcc"] == pytest.approx(stats.kendalltau(pred, mos)[0])
    assert r["plcc"] == pytest.approx(stats.pearsonr(pred, mos)[0])
    assert r["plcc_logistic"] > r["plcc"]  # the logistic fit undoes the non-linearity
    assert plcc_logistic(mos, mos) == pytest.approx(1.0, abs=1e-6)
    # Per scene: scenes offset from each other (as JOD is) do not count against the model.
    scenes = ["a"] * 100 + ["b"] * 100
    shifted = pred + np.r_[np.zeros(100), np.full(100, 10.0)]
    per = evaluate_scores(shifted, mos, scenes)
    expect = np.mean([stats.spearmanr(pred[:100], mos[:100])[0], stats.spearmanr(pred[100:], mos[100:])[0]])
    assert per["scene_mean"]["srocc"] == pytest.approx(expect)
    assert per["scene_median"]["srocc"] == pytest.approx(expect)  # median of two = mean
    assert set(per["per_scene"]) == {"a", "b"}


def test_crop_caches_are_shared_across_spellings_listed_and_pruned(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    from sampleiqa.training.data.cache import build_cache, list_caches, prune_caches

    photos = tmp_path / "photos"
    photos.mkdir()
    for p in biq_images(2):
        shutil.copy(p, photos / p.name)
    (photos / "labels.csv").write_text("path,score\n" + "".join(f"{p.name},0.5\n" for p in biq_images(2)))
    root = tmp_path / "caches"
    first = build_cache(load_csv(photos / "labels.csv"), root=root, workers=1)
    monkeypatch.chdir(tmp_path)
    again = build_cache(load_csv("photos/labels.csv"), root=root, workers=1)  # a relative spelling
    assert again.root == first.root and len(again) == 2

    killed = root / "0123456789abcdef.tmp999999999"  # a build whose process is gone
    (killed / "train").mkdir(parents=True)
    running = root / f"fedcba9876543210.tmp{os.getpid()}"  # a build still running
    (running / "train").mkdir(parents=True)
    (root / "notes").mkdir()  # not a cache: never listed, never pruned
    entries = {e.folder.name: e for e in list_caches(root)}
    assert set(entries) == {first.root.name, killed.name, running.name}
    assert (entries[first.root.name].dataset, entries[first.root.name].images) == ("csv[labels.csv]", 2)
    assert entries[first.root.name].complete and not entries[killed.name].complete

    assert [e.folder for e in prune_caches(1, root)] == [killed]  # used just now: kept
    os.utime(first.root, (0, 0))  # last used long ago
    doomed = prune_caches(1, root, dry_run=True)
    assert [e.folder for e in doomed] == [first.root] and first.root.exists()
    out = subprocess.run(
        [sys.executable, "-m", "sampleiqa.cli", "cache", "--root", str(root), "--prune-older-than", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "deleted 1 cache(s)" in out.stdout, out.stderr
    assert not first.root.exists() and running.exists() and (root / "notes").exists()
