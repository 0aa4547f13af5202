"""Generated Triton configs: every one parses into tritonclient's ModelConfig, and the
committed CPU repository is exactly what `sampleiqa build-repository` generates."""

import os
import signal
import struct

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from sampleiqa.build.repository import REGENERATE, WARMUP_PHOTO, build_repository
from sampleiqa.build.tensorrt_engine import write_engine_profile
from sampleiqa.build.triton_config import (
    TARGETS,
    WARMUP_FILE,
    RepositorySettings,
    all_configs,
    parse_pbtxt,
    read_config,
    to_pbtxt,
)
from sampleiqa.runtime.contracts import CROP, ENSEMBLE, IMAGE, PIXELS, PREPROCESS, SCORER
from sampleiqa.server import DEFAULT_REPOSITORY


def test_committed_cpu_repository_matches_the_generator():
    expected = all_configs(RepositorySettings(target="cpu"))
    for name, config in expected.items():
        text = (DEFAULT_REPOSITORY / name / "config.pbtxt").read_text()
        assert parse_pbtxt(text) == config, f"{name}/config.pbtxt was edited by hand or is stale: {REGENERATE}"
    assert (DEFAULT_REPOSITORY / SCORER / "1" / "model.onnx").stat().st_size > 1_000_000
    warmup = (DEFAULT_REPOSITORY / PREPROCESS / "warmup" / WARMUP_FILE).read_bytes()
    assert struct.unpack("<I", warmup[:4])[0] == len(warmup) - 4 and warmup[4:] == WARMUP_PHOTO.read_bytes()


def test_committed_cpu_repository_is_wholly_generated(tmp_path):
    """model_repository/ is build-repository's output for the cpu target (from its own
    model.onnx, unvendored): regenerated elsewhere it gives the same files, byte for byte."""
    out = build_repository(
        tmp_path / "repo",
        RepositorySettings(),
        onnx_path=DEFAULT_REPOSITORY / SCORER / "1" / "model.onnx",
        vendor=False,
    )
    committed, generated = _files(DEFAULT_REPOSITORY), _files(out)
    hint = f"model_repository/ was edited by hand or is stale; regenerate it with `{REGENERATE}`"
    assert committed == generated, f"{hint}: files differ {sorted(committed ^ generated)}"
    differ = [f for f in sorted(generated) if (out / f).read_bytes() != (DEFAULT_REPOSITORY / f).read_bytes()]
    assert not differ, f"{hint}: {differ}"
    assert {f"{PREPROCESS}/1/model.py", f"{SCORER}/1/model.py", f"{ENSEMBLE}/1/.keep"} <= generated


def _files(root) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


@pytest.mark.server
def test_triton_runs_the_warmup_and_refuses_a_model_whose_warmup_fails(tmp_path):
    """The committed repository loads with its warm-up (every server test shows that); the
    same repository with a broken warm-up photo is refused at start, so the warm-up really runs."""
    import shutil

    from sampleiqa.server import ServerError, TritonServer

    repo = shutil.copytree(DEFAULT_REPOSITORY, tmp_path / "repo", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / PREPROCESS / "warmup" / WARMUP_FILE).write_bytes(struct.pack("<I", 9) + b"not a jpg")
    server = TritonServer(repo, log_file=tmp_path / "triton.log", exit_timeout_s=1, supervise=False)
    try:
        with pytest.raises(ServerError):
            server.start(timeout_s=60)
        # Triton 2.51 logs the warm-up's error and exits 1, or (seen here about one start in
        # five) dies of SIGSEGV before the line is flushed, orphaning the stubs it started: the
        # launcher stops those too.
        assert _stubs_serving(repo) == [], "a failed start left python-backend stubs running"
    finally:
        for pid in _stubs_serving(repo):
            os.kill(pid, signal.SIGKILL)
    log = (tmp_path / "triton.log").read_text()
    assert "failed to run warmup sample 'one_photo'" in log or "successfully loaded 'preprocess'" not in log


def _stubs_serving(repo) -> list[int]:
    """The python-backend stubs of this test's repository still running."""
    from sampleiqa.procfs import STUB, all_stats, argv

    found = []
    for pid, fields in all_stats().items():
        args = argv(pid)
        if (
            args
            and args[0].endswith(STUB)
            and len(args) > 1
            and args[1].startswith(os.fsencode(repo))
            and fields[0] != "Z"
        ):
            found.append(pid)
    return found


@pytest.mark.parametrize("target", TARGETS)
def test_generated_configs_parse_and_keep_the_contract(tmp_path, target):
    onnx = tmp_path / "in.onnx"
    onnx.write_bytes(b"onnx")  # only copied here; the server tests load a real one
    engine = tmp_path / "model.plan"
    engine.write_bytes(b"plan")
    write_engine_profile(engine, min_batch=1, opt_batch=8, max_batch=48, precision="fp16")
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"pt")
    out = build_repository(
        tmp_path / "repo", RepositorySettings(target=target), onnx_path=onnx, engine_path=engine, checkpoint=checkpoint
    )
    configs = {name: read_config(out / name) for name in (PREPROCESS, SCORER, ENSEMBLE)}
    for c in configs.values():
        assert isinstance(c, mc.ModelConfig) and c.max_batch_size > 0
    pre, scorer, ens = configs[PREPROCESS], configs[SCORER], configs[ENSEMBLE]
    # gpu-torch preprocesses on the GPU in torch (nvJPEG, YuNet in torch); the others with OpenCV on CPU
    pre_kind = mc.ModelInstanceGroup.KIND_GPU if target == "gpu-torch" else mc.ModelInstanceGroup.KIND_CPU
    assert pre.backend == "python" and pre.instance_group[0].kind == pre_kind
    # each model.py is the one bootstrap, then the target's model from sampleiqa.runtime.triton_models
    preprocess_model = "preprocess_torch" if target == "gpu-torch" else "preprocess"
    assert (
        f"triton_models.{preprocess_model} import TritonPythonModel"
        in (out / PREPROCESS / "1" / "model.py").read_text()
    )
    scorer_model = {"cpu": "scorer_onnx", "gpu-torch": "scorer_torch"}.get(target)
    assert (out / SCORER / "1" / "model.py").exists() == (scorer_model is not None)
    if scorer_model:
        assert f"triton_models.{scorer_model} import" in (out / SCORER / "1" / "model.py").read_text()
    assert [(i.name, i.data_type, list(i.dims)) for i in pre.input] == [("IMAGE", mc.TYPE_STRING, [1])]
    assert [(o.name, list(o.dims)) for o in scorer.input] == [("PIXELS", [3, CROP, CROP])]
    assert {o.name: o.data_type for o in ens.output} == {
        "SCORE": mc.TYPE_FP32,
        "FACE_BOX": mc.TYPE_INT32,
        "FACE_FOUND": mc.TYPE_BOOL,
    }
    assert (out / PREPROCESS / "1" / "sampleiqa" / "runtime" / "preprocessing" / "crops.py").exists()  # vendored
    # Warm-up on each composing model (an ensemble cannot carry it): a real photo, zeros for the scorer.
    assert [w.inputs[IMAGE].input_data_file for w in pre.model_warmup] == [WARMUP_FILE]
    assert (out / PREPROCESS / "warmup" / WARMUP_FILE).read_bytes()[4:] == WARMUP_PHOTO.read_bytes()
    assert [(w.batch_size, w.inputs[PIXELS].zero_data) for w in scorer.model_warmup] == [(1, True)]
    assert not ens.model_warmup
    if target == "cpu":
        assert scorer.backend == "python" and (out / SCORER / "1" / "model.onnx").exists()
        assert (out / SCORER / "1" / "sampleiqa" / "runtime" / "scores.py").exists()  # vendored beside the scorer too
    elif target == "gpu-torch":
        assert scorer.backend == "python" and (out / SCORER / "1" / "model.pt").exists()
        assert scorer.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
        # GPU tensors from the GPU preprocessing reach the scorer through DLPack, not the host
        assert scorer.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value == "no"
    elif target == "gpu-onnx":
        assert scorer.platform == "onnxruntime_onnx"
        assert scorer.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    else:
        assert scorer.platform == "tensorrt_plan" and (out / SCORER / "1" / "model.plan").exists()
        assert (
            scorer.max_batch_size == 48 and not scorer.dynamic_batching.preferred_batch_size
        )  # the batcher fills up to max_batch
        assert scorer.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU


def test_a_hand_typo_is_caught_by_the_parser():
    text = to_pbtxt(all_configs(RepositorySettings())[SCORER]).replace("max_batch_size", "max_batchsize")
    with pytest.raises(Exception):
        parse_pbtxt(text)


def test_settings_are_validated():
    with pytest.raises(ValueError):
        RepositorySettings(target="tpu")
    with pytest.raises(ValueError):
        RepositorySettings(target="cpu", preprocess="torch")
    assert RepositorySettings(target="gpu-trt", preprocess="torch").torch_preprocess
    assert not RepositorySettings(target="gpu-torch", preprocess="cpu").torch_preprocess


def test_cuda_pool_is_sized_for_every_instance_holding_a_full_batch(tmp_path):
    """Triton's 64 MB default holds fewer than two batches of 64 crops; a GPU repository's
    server gets a pool sized from its configs, a CPU one no flag."""
    from sampleiqa.cuda_pool import MIN_POOL, PIXELS_BYTES, cuda_pool_args, pool_bytes

    gpu = all_configs(
        RepositorySettings(target="gpu-torch", max_batch_size=64, preprocess_instances=4, scorer_instances=2)
    ).values()
    assert pool_bytes(list(gpu)) == (4 + 2 + 2) * 64 * PIXELS_BYTES > 64 * 2**20
    assert pool_bytes(list(all_configs(RepositorySettings()).values())) == 0
    assert pool_bytes(list(all_configs(RepositorySettings(target="gpu-torch", max_batch_size=4)).values())) == MIN_POOL
    for name, config in all_configs(RepositorySettings(target="gpu-onnx", max_batch_size=128)).items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.pbtxt").write_text(to_pbtxt(config))
    assert cuda_pool_args(tmp_path) == [f"--cuda-memory-pool-byte-size=0:{(2 + 1 + 2) * 128 * PIXELS_BYTES}"]


def test_vendored_preprocessing_runs_without_the_installed_package(tmp_path):
    """A repository copied into a Triton container imports its vendored copy: run it with
    no site processing (so the editable install is invisible) and compare tensors."""
    import subprocess
    import sys
    import sysconfig

    import numpy as np

    from sampleiqa.runtime.preprocessing import preprocess_file

    from .helpers import SAMPLES

    out = build_repository(
        tmp_path / "repo", RepositorySettings(), onnx_path=DEFAULT_REPOSITORY / SCORER / "1" / "model.onnx"
    )
    version_dir = out / PREPROCESS / "1"
    code = (
        "import sys, numpy as np, sampleiqa.runtime.preprocessing as p; "
        f"assert p.__file__.startswith({str(version_dir)!r}), p.__file__; "
        f"np.save(sys.argv[1], p.preprocess_file({str(SAMPLES / 'astronaut.jpg')!r}).pixels)"
    )
    env = {"PYTHONPATH": f"{version_dir}:{sysconfig.get_paths()['purelib']}"}
    subprocess.run([sys.executable, "-S", "-c", code, str(tmp_path / "px.npy")], check=True, env=env, cwd=tmp_path)
    np.testing.assert_array_equal(np.load(tmp_path / "px.npy"), preprocess_file(SAMPLES / "astronaut.jpg").pixels)
    # The generated model.py itself falls back to the vendored copy (a stand-in for the stub's
    # triton_python_backend_utils, which exists only inside Triton).
    (tmp_path / "stub").mkdir()
    (tmp_path / "stub" / "triton_python_backend_utils.py").write_text("")
    code = (
        "import runpy, sys; m = runpy.run_path(sys.argv[1])['TritonPythonModel']; "
        "f = sys.modules[m.__module__].__file__; "
        f"assert m.__module__ == 'sampleiqa.runtime.triton_models.preprocess' and f.startswith({str(version_dir)!r}), f"
    )
    env = {"PYTHONPATH": f"{tmp_path / 'stub'}:{sysconfig.get_paths()['purelib']}"}
    subprocess.run(
        [sys.executable, "-S", "-c", code, str(version_dir / "model.py")],
        check=True,
        env=env,
        cwd=tmp_path,
    )
