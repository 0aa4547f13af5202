"""Training end to end on real photos: a tiny config, resume, DDP with 2 gloo processes,
and `sampleiqa evaluate` through a checkpoint, ONNX Runtime and the served ensemble."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .helpers import REPO_ROOT, biq_images

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from sampleiqa.runtime.preprocessing import Box  # noqa: E402
from sampleiqa.server import free_port  # noqa: E402
from sampleiqa.training.data.synthetic import DISTORTIONS, ranked_pair  # noqa: E402
from sampleiqa.training.data.train_crops import random_face_crop  # noqa: E402
from sampleiqa.training.losses import fidelity_rank_loss, margin_rank_loss  # noqa: E402
from sampleiqa.training.models import create_model  # noqa: E402


def _labelled_folder(tmp_path: Path, n: int, name: str) -> Path:
    """A generic CSV of n real BIQ2021 photos with their real opinion scores."""
    import csv

    from .helpers import BIQ

    with open(BIQ / "labels.csv") as f:
        mos = {r["image"]: r["mos"] for r in csv.DictReader(f)}
    rows = [f'"{p}",{mos[p.name]}' for p in biq_images(n)]
    out = tmp_path / f"{name}.csv"
    out.write_text("path,score\n" + "\n".join(rows) + "\n")
    return out


def _config(tmp_path: Path, epochs: int = 1, stages: str = "both") -> Path:
    train = _labelled_folder(tmp_path, 24, "train")
    syn = (
        '[[stages]]\nname = "synthetic"\nkind = "synthetic"\nepochs = 1\nepoch_size = 8\nbatch_size = 8\n'
        "warmup_steps = 1\n"
    )
    fit = (
        '[[stages]]\nname = "stats"\nkind = "stats"\ncross_fit = 2\nepochs = 3\nbatch_size = 8\nwarmup_steps = 1\n'
        "lr = 1e-3\n"
    )
    mos = (
        f'[[stages]]\nname = "mos"\nepochs = {epochs}\nbatch_size = 8\nwarmup_steps = 1\nlr = 1e-3\n'
        'freeze = ["stats_head"]\nema_decay = 0.9\n'
    )
    text = (
        f'model = "swin_test_micro"\nout_dir = "{tmp_path / "run"}"\nseed = 3\nthreads = 1\n'
        f'[data]\ntrain = {{ kind = "csv", path = "{train}" }}\nval = {{ kind = "csv", path = "{train}" }}\n'
        f"[resample]\nbins = 4\nmax_repeat = 2\n" + (syn if stages == "both" else "") + fit + mos
    )
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(text)
    return cfg


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMPLEIQA_CACHE", str(tmp_path / "cache"))


def test_registry_defaults_to_the_shipped_model_names_pipelines_and_warns_on_retired_names():
    import warnings

    from sampleiqa.training import models

    assert models.DEFAULT_MODEL == "lite0_swin"
    ckpt = torch.load(REPO_ROOT / "training" / "weights" / "biq2021_default.pt", map_location="cpu", weights_only=True)
    assert ckpt["config"]["name"] == models.DEFAULT_MODEL  # the default is what ships
    assert models.pipeline_of("lite0_swin") == "prior" and models.pipeline_of("swin_test_micro") == "pixel"
    retired = models.deprecated_models()
    assert {"swin_compact", "swin_compact_p4", "swin_small_448", "swin_base_448"} <= set(retired)
    assert not set(retired) & set(models.list_models())
    assert set(retired) <= set(models.list_models(include_deprecated=True))
    used = {
        line.split('"')[1]
        for c in (REPO_ROOT / "training" / "configs").glob("*.toml")
        for line in c.read_text().splitlines()
        if line.startswith("model = ")
    }
    assert used <= set(models.list_models()), used  # no config trains a retired model
    with pytest.warns(FutureWarning, match="swin_compact_stats"):
        models.create_model("swin_compact")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        models.create_model("swin_test_micro")


def test_a_stage_takes_only_its_kinds_keys(tmp_path):
    from sampleiqa.training.config import PriorStage, StatsStage, TwinStage, load_config

    head = f'model = "swin_test_micro"\nout_dir = "{tmp_path}"\n[data]\ntrain = {{ kind = "csv", path = "x.csv" }}\n'
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        head + '[[stages]]\nname = "a"\nkind = "stats"\ncross_fit = 2\n[[stages]]\nname = "b"\nema_decay = 0.9\n'
        '[[stages]]\nname = "c"\nkind = "prior"\npooled_l2 = 1.0\n'
    )
    stages = load_config(cfg).stages
    assert [type(s) for s in stages] == [StatsStage, TwinStage, PriorStage]
    assert stages[0].cross_fit == 2 and stages[1].kind == "mos" and stages[2].pooled_l2 == 1.0
    cfg.write_text(head + '[[stages]]\nname = "a"\nkind = "mos"\npooled_l2 = 1.0\n')
    with pytest.raises(ValueError, match="pooled_l2"):
        load_config(cfg)
    cfg.write_text(head + '[[stages]]\nname = "a"\nkind = "nope"\n')
    with pytest.raises(ValueError, match="unknown kind"):
        load_config(cfg)


def test_fidelity_loss_orders_pairs_and_treats_ties_as_ties():
    sa = torch.tensor([1.0, 0.0, 0.0], requires_grad=True)
    sb = torch.tensor([0.0, 1.0, 0.0])
    ya, yb = torch.tensor([1.0, 1.0, 0.5]), torch.tensor([0.0, 0.0, 0.5])
    loss = fidelity_rank_loss(sa, sb, ya, yb)
    loss.backward()
    assert sa.grad[0] < 0 and sa.grad[1] < 0  # both pairs want a higher
    # A tie is satisfied by equal scores (no push); a hinge would ignore it.
    tie = fidelity_rank_loss(torch.zeros(1), torch.zeros(1), torch.ones(1), torch.ones(1))
    assert float(tie) == pytest.approx(1 - 2 * 0.5**0.5 * 0.5**0.5, abs=1e-4)
    assert float(margin_rank_loss(torch.zeros(1), torch.zeros(1), torch.ones(1), torch.ones(1))) == 0.0


def test_training_crops_hold_the_face_and_only_flip():
    rng = np.random.default_rng(0)
    # short side between the crop and the training view (448..512): crops are native slices
    img = np.random.default_rng(1).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    face = Box(400, 100, 120, 150)
    for _ in range(50):
        crop = random_face_crop(img, face, rng)
        assert crop.shape == (448, 448, 3)
        # The crop is an exact slice (or its mirror) of the image: no resampling, blur,
        # noise or colour change, and it contains the whole face.
        found = False
        for cand in (crop, crop[:, ::-1]):
            ys, xs = np.nonzero((img[:, :, 0] == cand[0, 0, 0]) & (img[:, :, 1] == cand[0, 0, 1]))
            for y, x in zip(ys, xs):
                if y + 448 <= 480 and x + 448 <= 640 and np.array_equal(img[y : y + 448, x : x + 448], cand):
                    assert x <= face.x and face.x + face.w <= x + 448 and y <= face.y and face.y + face.h <= y + 448
                    found = True
        assert found


def test_synthetic_pairs_rank_by_distortion_level():
    img = np.asarray(__import__("cv2").imread(str(biq_images(1)[0])))[:448, :448]
    rng = np.random.default_rng(0)
    for name, fn in DISTORTIONS.items():
        weak, strong = fn(img, 1, rng), fn(img, 4, rng)
        err = lambda a: float(np.mean((a.astype(float) - img) ** 2))  # noqa: E731
        assert err(weak) < err(strong), name
    better, worse = ranked_pair(img, rng)
    assert better.shape == worse.shape == img.shape


@pytest.mark.slow
def test_stats_fusion_exports_and_scores_on_the_label_scale():
    model = create_model("swin_test_micro").eval()
    model.score_mean.fill_(3.0)
    model.score_std.fill_(2.0)
    x = torch.randn(2, 3, 448, 448)
    with torch.no_grad():
        assert torch.allclose(model(x), model.forward_z(x) * 2 + 3)
        feats = model.stats(x)
    assert feats.shape == (2, model.stats.num_features) and torch.isfinite(feats).all()


@pytest.mark.slow
def test_statistics_move_the_way_each_distortion_should():
    import cv2

    from sampleiqa.runtime.preprocessing import to_tensor
    from sampleiqa.training.models.stats import BASIC_NAMES as BASIC
    from sampleiqa.training.models.stats import FEATURE_NAMES, QualityStats

    img = cv2.imread(str(biq_images(1)[0]))[32:480, 32:480]  # on the JPEG block grid, like the served crop
    blurred = cv2.GaussianBlur(img, (0, 0), 2.5)
    noisy = np.clip(img + np.random.default_rng(0).normal(0, 12, img.shape), 0, 255).astype(np.uint8)
    jpeg = cv2.imdecode(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 8])[1], cv2.IMREAD_COLOR)
    stats = QualityStats()
    with torch.no_grad():
        raw = stats.raw(torch.from_numpy(np.stack([to_tensor(x) for x in (img, blurred, noisy, jpeg)])))
    assert raw.shape == (4, len(FEATURE_NAMES)) and torch.isfinite(raw).all()
    f = {name: raw[:, i] for i, name in enumerate(FEATURE_NAMES)}
    clean, blur, noise, comp = 0, 1, 2, 3
    assert f["dct0_log_energy_27"][blur] < f["dct0_log_energy_27"][clean] - 2  # blur removes high frequencies
    assert f["sharp0_q0.9"][blur] < f["sharp0_q0.9"][clean] - 1
    assert f["s0_log_block_energy_low"][noise] > f["s0_log_block_energy_low"][clean] + 3  # noise lifts the floor
    assert f["dct0_zero_9"][comp] > f["dct0_zero_9"][clean] + 0.5  # coarse quantisation zeroes coefficients
    assert f["rg_mscn_sigma"][noise] > 3 * f["rg_mscn_sigma"][clean]  # chroma noise
    assert f["lbp0_9"][noise] > f["lbp0_9"][clean] + 0.2  # noise breaks local patterns into non-uniform ones
    smooth = [f"grad0_hist_{b}" for b in range(4)]  # gradients under 10^0.25 grey levels
    assert sum(f[n][blur] for n in smooth) > sum(f[n][clean] for n in smooth) + 0.2
    assert torch.allclose(stats.basic(torch.from_numpy(to_tensor(img))[None])[0], raw[0, : len(BASIC)], atol=1e-5)


def test_statistics_of_flat_and_grey_images_are_finite_and_hueless():
    import cv2

    from sampleiqa.runtime.preprocessing import to_tensor
    from sampleiqa.training.models.stats import FEATURE_NAMES, QualityStats

    grey = cv2.cvtColor(
        cv2.cvtColor(cv2.imread(str(biq_images(1)[0]))[32:480, 32:480], cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR
    )
    flat = np.full_like(grey, 128)
    with torch.no_grad():
        raw = QualityStats().raw(torch.from_numpy(np.stack([to_tensor(x) for x in (grey, flat)])))
    assert torch.isfinite(raw).all()  # a flat image has no contrast to normalise by: no NaN reaches the head
    hue = [i for i, n in enumerate(FEATURE_NAMES) if n.startswith("hue_")]
    assert len(hue) == 8 and raw[:, hue].abs().max() == 0


def _run_train(args, cwd=REPO_ROOT, env=None, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "sampleiqa.cli", "train", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.training
def test_train_resume_and_evaluate_agree_on_every_path(tmp_path, server):
    cfg = _config(tmp_path)
    first = _run_train([str(cfg)])
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "run"
    for name in ("best.pt", "last.pt", "log.jsonl", "resample.png", "training.png"):
        assert (run / name).exists(), name
    assert "world size 1" in first.stderr  # training reports through logging
    history = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [h["stage"] for h in history] == ["synthetic", "stats", "mos"]
    assert all(np.isfinite(h["loss"]) for h in history)

    # --resume with a longer schedule continues after the finished epoch instead of restarting.
    longer = cfg.read_text().replace(
        "epochs = 1\nbatch_size = 8\nwarmup_steps = 1\nlr", "epochs = 2\nbatch_size = 8\nwarmup_steps = 1\nlr"
    )
    cfg.write_text(longer)
    again = _run_train([str(cfg), "--resume"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stderr
    history = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [(h["stage"], h["epoch"]) for h in history] == [("synthetic", 1), ("stats", 3), ("mos", 1), ("mos", 2)]

    # The checkpoint, its ONNX export in ONNX Runtime, and the same model served by the real
    # Triton ensemble give the same scores on the same photos.
    data = tmp_path / "train.csv"
    spec = ["kind=csv", f"path={data}"]
    onnx = tmp_path / "m.onnx"
    repo = tmp_path / "repo"
    cli = [sys.executable, "-m", "sampleiqa.cli"]
    subprocess.run(
        cli + ["export-onnx", "--checkpoint", str(run / "best.pt"), "--out", str(onnx)],
        check=True,
        cwd=REPO_ROOT,
        capture_output=True,
    )
    subprocess.run(
        cli + ["build-repository", "--target", "cpu", "--onnx", str(onnx), "--out", str(repo)],
        check=True,
        cwd=REPO_ROOT,
        capture_output=True,
    )
    from sampleiqa.server import TritonServer

    reports = {}
    with TritonServer(repo, log_file=tmp_path / "triton.log") as own:
        for how, extra in (
            ("checkpoint", ["--checkpoint", str(run / "best.pt")]),
            ("onnx", ["--onnx", str(onnx)]),
            ("server", ["--url", own.url]),
        ):
            out = tmp_path / f"{how}.md"
            r = subprocess.run(
                cli + ["evaluate", *extra, "--data", *spec, "--report", str(out)],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert r.returncode == 0, r.stderr[-3000:]
            assert "SROCC" in r.stdout
            reports[how] = json.loads(out.with_suffix(".json").read_text())[0]
    figures = {how: rep["overall"]["srocc"] for how, rep in reports.items()}
    assert figures["checkpoint"] == pytest.approx(figures["onnx"], abs=1e-6), figures
    assert figures["onnx"] == pytest.approx(figures["server"], abs=1e-6), figures
    assert all(rep["n"] == 24 and rep["failed"] == 0 for rep in reports.values())


@pytest.mark.training
def test_ddp_two_gloo_processes(tmp_path):
    cfg = _config(tmp_path, stages="mos")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            "-m",
            "sampleiqa.cli",
            "train",
            str(cfg),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "world size 2" in r.stdout + r.stderr
    history = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [h["stage"] for h in history] == ["stats", "mos"]  # logged once (rank 0), with validation figures
    assert all("val_srocc" in h for h in history)
    ckpt = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=False)
    assert ckpt["train_state"]["done"] == [3, 1]


def test_a_local_timm_weights_file_initialises_the_backbone(tmp_path):
    from timm.models.swin_transformer import SwinTransformer

    from sampleiqa.training.pixel.prepare import init_weights

    scorer = create_model("swin_test_micro")
    cfg = scorer.config
    donor = SwinTransformer(
        img_size=448,
        patch_size=cfg.patch_size,
        window_size=cfg.window_size,
        embed_dim=cfg.embed_dim,
        depths=cfg.depths,
        num_heads=cfg.num_heads,
        num_classes=1000,
    )
    torch.save(donor.state_dict(), tmp_path / "timm.pth")  # a plain timm state dict, no prefix
    init_weights(scorer, str(tmp_path / "timm.pth"))
    own = scorer.backbone.state_dict()
    for k, v in donor.state_dict().items():
        if k in own:
            assert torch.equal(own[k], v), k
    assert not torch.equal(
        scorer.backbone.patch_embed.proj.weight, create_model("swin_test_micro").backbone.patch_embed.proj.weight
    )


def test_cache_keeps_only_the_region_face_crops_come_from(tmp_path):
    import cv2

    from sampleiqa.runtime.preprocessing import find_face
    from sampleiqa.training.data.cache import build_cache
    from sampleiqa.training.data.datasets import load_csv

    from .helpers import FACES

    portrait = next(p for p in FACES if p.exists() and "ss03" in p.name)
    big = cv2.resize(cv2.imread(str(portrait)), (2000, 2000), interpolation=cv2.INTER_CUBIC)  # a "phone photo"
    cv2.imwrite(str(tmp_path / "big.jpg"), big)
    (tmp_path / "labels.csv").write_text("path,score\nbig.jpg,0.5\n")
    data = build_cache(load_csv(tmp_path / "labels.csv"))
    image, face = data.train_image(0), data.faces[0]
    assert face is not None and max(image.shape[:2]) <= 2 * 448 and min(image.shape[:2]) >= 448
    rng = np.random.default_rng(0)
    for _ in range(20):  # every random crop still holds the whole face, at the served scale
        crop = random_face_crop(np.asarray(image), face, rng, hflip_p=0)
        assert crop.shape == (448, 448, 3)
    assert find_face(big) is not None and max(face.w, face.h) <= 448  # a large face is scaled to fit


@pytest.mark.training
def test_stats_stage_fits_the_head_and_a_frozen_head_stays_put(tmp_path):
    import dataclasses

    from sampleiqa.training.config import load_config
    from sampleiqa.training.pixel.loop import Trainer
    from sampleiqa.training.pixel.prepare import prepare_run

    cfg = load_config(_config(tmp_path, stages="mos"))
    assert [s.kind for s in cfg.stages] == ["stats", "mos"]
    first = Trainer(prepare_run(dataclasses.replace(cfg, stages=cfg.stages[:1])))
    initial = {k: v.clone() for k, v in first.scorer.stats_head.state_dict().items()}
    first.run()
    fitted = {k: v.clone() for k, v in first.scorer.stats_head.state_dict().items()}
    assert any(not torch.equal(initial[k], fitted[k]) for k in fitted)  # the stats stage trained the head

    second = Trainer(prepare_run(cfg, resume=True))  # the mos stage (freeze = ["stats_head"]) continues the run
    backbone = second.scorer.backbone.patch_embed.proj.weight.clone()
    second.run()
    for k, v in second.scorer.stats_head.state_dict().items():
        assert torch.equal(v, fitted[k]), k
    assert not torch.equal(backbone, second.scorer.backbone.patch_embed.proj.weight)  # the backbone trained


@pytest.mark.training
def test_cross_fitted_stats_head_never_learns_an_image_with_the_mlp_that_scores_it():
    from sampleiqa.training.config import StatsStage
    from sampleiqa.training.models import create_model
    from sampleiqa.training.pixel.stats_stage import cross_fit_folds, fit_stats_head

    torch.manual_seed(0)
    scorer = create_model("swin_test_micro")
    assert len(scorer.stats_head.mlps) == 3
    folds = cross_fit_folds(40, 2, seed=0)
    assert sorted(np.bincount(folds)) == [20, 20]  # balanced, and a pure function of the seed
    assert np.array_equal(folds, cross_fit_folds(40, 2, seed=0))

    features, z = torch.randn(40, scorer.stats.num_features), torch.randn(40)
    stage = StatsStage("stats", epochs=3, lr=1e-2, weight_decay=0.0, batch_size=8, warmup_steps=1)
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in scorer.stats_head.mlps]
    only_fold_0 = torch.zeros(40, dtype=torch.long)  # every image is held out from MLP 0
    fit_stats_head(scorer, features, z, stage, seed=0, progress=False, folds=only_fold_0)
    after = [m.state_dict() for m in scorer.stats_head.mlps]
    assert all(torch.equal(before[0][k], after[0][k]) for k in after[0])  # MLP 0 saw none of them
    for h in (1, 2):  # MLP 1 (fold 1 is empty here) and MLP 2 (beyond the folds) learned from all
        assert any(not torch.equal(before[h][k], after[h][k]) for k in after[h])

    # Training scores each image with its own MLP; serving averages them.
    scorer.eval()
    x = torch.randn(4, 3, 448, 448)
    member = torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        each = scorer.stats_head.each(scorer.stats(x))
        base = scorer.head(scorer.backbone(x))
        assert torch.allclose(scorer.forward_z(x, member), base + each.gather(1, member[:, None]), atol=1e-5)
        assert torch.allclose(scorer.forward_z(x), base + each.mean(1, keepdim=True), atol=1e-5)


@pytest.mark.slow
def test_half_backbone_keeps_the_statistics_in_fp32_and_scores_like_fp32():
    from sampleiqa.training.models import create_model

    torch.manual_seed(0)
    model = create_model("swin_test_micro").eval()
    torch.nn.init.normal_(model.head.weight, std=0.1)  # the backbone must count in the score
    x = torch.randn(2, 3, 448, 448)
    with torch.no_grad():
        full = model(x)
        half = model.half_backbone()(x.half())
    assert model.backbone.patch_embed.proj.weight.dtype == torch.float16
    assert model.stats.kernels.dtype == torch.float32 and next(model.stats_head.parameters()).dtype == torch.float32
    assert torch.allclose(full, half.float(), atol=2e-2)


def test_weight_average_warms_up_then_follows_the_decay():
    from sampleiqa.training.ema import WeightAverage

    model = torch.nn.Linear(1, 1, bias=False)
    model.register_buffer("steps", torch.zeros((), dtype=torch.long))
    ema = WeightAverage(model, decay=0.9)
    expected = float(model.weight.detach())
    for t in range(1, 30):
        with torch.no_grad():
            model.weight.fill_(float(t))
            model.steps.fill_(t)
        ema.update(model)
        d = min(0.9, (1 + t) / (10 + t))
        expected = d * expected + (1 - d) * t
        assert float(ema.model.weight) == pytest.approx(expected, rel=1e-5)
    assert int(ema.model.steps) == 29  # integer buffers are copied, not averaged
    again = WeightAverage(model, decay=0.9)
    again.load_state_dict(ema.state_dict())
    assert again.updates == 29 and torch.equal(again.model.weight, ema.model.weight)
    with pytest.raises(ValueError):
        WeightAverage(model, decay=1.0)


@pytest.mark.training
def test_a_stage_with_a_weight_average_validates_ships_and_resumes_it_exactly(tmp_path, monkeypatch):
    """The average is what the log's figures describe and what the run ends with; a run that
    dies mid-epoch and resumes ends with the same weights as one that never stopped."""
    import dataclasses

    from sampleiqa.training import ema as ema_module
    from sampleiqa.training.config import load_config
    from sampleiqa.training.metrics import evaluate_scores, headline
    from sampleiqa.training.pixel.loop import Trainer
    from sampleiqa.training.pixel.prepare import prepare_run
    from sampleiqa.training.prediction import predict_cached

    cfg = load_config(_config(tmp_path, epochs=1, stages="mos"))
    assert cfg.stages[-1].ema_decay == 0.9
    cfg = dataclasses.replace(cfg, checkpoint_every_s=0.0)  # a checkpoint after every step
    whole = Trainer(prepare_run(dataclasses.replace(cfg, out_dir=str(tmp_path / "whole"))))
    whole.run()
    final = whole.scorer.state_dict()
    history = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    logged = history[-1]["val_srocc"]
    shipped = evaluate_scores(predict_cached(whole.scorer, whole.val_data), whole.val_data.scores)
    assert headline(shipped)["srocc"] == pytest.approx(logged, abs=1e-9)

    calls = {"n": 0}
    update = ema_module.WeightAverage.update

    def dies_at_step_2(self, model):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed mid-epoch")
        update(self, model)

    monkeypatch.setattr(ema_module.WeightAverage, "update", dies_at_step_2)
    broken = dataclasses.replace(cfg, out_dir=str(tmp_path / "broken"))
    with pytest.raises(KeyboardInterrupt):
        Trainer(prepare_run(broken)).run()
    monkeypatch.setattr(ema_module.WeightAverage, "update", update)
    resumed = Trainer(prepare_run(broken, resume=True))
    assert resumed.state["done"] == [3, 0] and resumed.state["step_in_epoch"] == 1  # mid-epoch
    resumed.run()
    for k, v in resumed.scorer.state_dict().items():
        assert torch.allclose(v, final[k], atol=1e-6), k
