"""`sampleiqa score` and `sampleiqa serve` as a user runs them: real processes, real server."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from sampleiqa.runtime.contracts import CSV_COLUMNS

from .helpers import SAMPLEIQA, biq_images, rows, run
from .helpers import SAMPLES as SAMPLES_DIR

# Tests that ask for `server` or `client` are marked `server` by conftest; those that start
# Triton themselves (the embedded server of `score` without --url, `serve`) say so here.


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """200 real photos plus three broken files, in one folder (names with spaces and parens)."""
    folder = tmp_path_factory.mktemp("photos")
    for p in biq_images(200):
        os.symlink(p, folder / p.name)
    data = biq_images(1)[0].read_bytes()
    (folder / "zz truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "zz empty.png").write_bytes(b"")
    os.symlink(folder / "deleted.jpg", folder / "zz broken link.jpg")
    (folder / "notes.txt").write_text("not an image: skipped by suffix")
    return folder


def test_folder_gets_one_row_per_file_and_errors_name_their_cause(server, photos, tmp_path):
    out = tmp_path / "scores.csv"
    res = run(["score", photos, "--url", server.url, "--out", out, "--concurrency", 4])
    assert res.returncode == 0, res.stderr
    got = rows(out)
    assert len(got) == 203 and len({r["path"] for r in got}) == 203
    bad = {Path(r["path"]).name: r for r in got if r["status"] == "error"}
    assert set(bad) == {"zz truncated.jpg", "zz empty.png", "zz broken link.jpg"}
    assert bad["zz broken link.jpg"]["error"].startswith("[unreadable]")
    assert bad["zz truncated.jpg"]["error"].startswith("[truncated]") and bad["zz truncated.jpg"]["score"] == ""
    assert bad["zz empty.png"]["error"].startswith("[empty]")
    ok = [r for r in got if r["status"] == "ok"]
    assert all(r["score"] and r["face_found"] in ("True", "False") for r in ok)
    assert "203 files: 200 scored ok" in res.stderr  # the summary


@pytest.mark.server
def test_killed_run_resumes_to_exactly_one_row_per_file(photos, tmp_path):
    """The CLI with its embedded server is SIGKILLed halfway, then rerun with --resume."""
    out = tmp_path / "scores.csv"
    log = tmp_path / "triton.log"
    proc = subprocess.Popen(
        SAMPLEIQA + ["score", str(photos), "--out", str(out), "--concurrency", "2", "--server-log", str(log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if out.exists() and out.read_text().count("\n") > 80:
            break
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    triton = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    proc.kill()
    proc.wait()
    assert triton, "the CLI had no Triton child"
    deadline = time.monotonic() + 60
    while any(Path(f"/proc/{pid}").exists() for pid in triton) and time.monotonic() < deadline:
        time.sleep(0.2)  # Triton drains in-flight work (up to its exit timeout), then exits
    assert not any(Path(f"/proc/{pid}").exists() for pid in triton), "Triton outlived the killed CLI"
    partial = rows(out)
    assert 50 < len(partial) < 203
    res = run(["score", photos, "--out", out, "--resume", "--server-log", log])
    assert res.returncode == 0, res.stderr
    final = rows(out)
    paths = [r["path"] for r in final]
    assert len(paths) == 203 and len(set(paths)) == 203
    assert final[: len(partial)] == partial  # earlier rows untouched


def test_resume_repairs_a_torn_last_line(server, tmp_path):
    photos = biq_images(3)
    out = tmp_path / "scores.csv"
    assert run(["score", *photos[:2], "--url", server.url, "--out", out]).returncode == 0
    with open(out, "a") as f:
        f.write(f"{photos[2]},0.5,Tr")  # a crash in the middle of a line
    assert run(["score", *photos, "--url", server.url, "--out", out, "--resume"]).returncode == 0
    assert sorted(r["path"] for r in rows(out)) == sorted(map(str, photos))


def test_jsonl_output(server, tmp_path):
    import json

    out = tmp_path / "scores.jsonl"
    assert run(["score", *biq_images(3), "--url", server.url, "--out", out]).returncode == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 3 and all(tuple(r) == CSV_COLUMNS and r["status"] == "ok" for r in lines)


def test_existing_output_needs_resume_and_unwritable_output_fails_fast(server, tmp_path):
    out = tmp_path / "scores.csv"
    out.write_text("path,score\n")
    res = run(["score", *biq_images(1), "--url", server.url, "--out", out])
    assert res.returncode == 2 and "--resume" in res.stderr
    start = time.monotonic()
    res = run(["score", *biq_images(1), "--out", "/proc/no/such/dir/scores.csv"])  # no server is started
    assert res.returncode == 2 and "scores.csv" in res.stderr
    assert time.monotonic() - start < 15


def test_server_gone_stops_the_run_nonzero(tmp_path):
    from sampleiqa.server import free_port

    out = tmp_path / "scores.csv"
    res = run(
        [
            "score",
            *biq_images(2),
            "--url",
            f"127.0.0.1:{free_port()}",
            "--out",
            out,
            "--timeout",
            "5",
            "--retry-seconds",
            "2",
        ]
    )
    assert res.returncode == 1 and "STOPPED" in res.stderr and "--resume" in res.stderr
    assert rows(out) == []  # nothing was scored, so no rows: --resume will score them


@pytest.mark.server
def test_serve_stops_triton_on_sigterm(tmp_path):
    import tritonclient.grpc as grpcclient

    from sampleiqa.server import free_port

    port = free_port()
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        SAMPLEIQA + ["serve", "--grpc-port", str(port), "--log-file", str(log)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    c = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if c.is_model_ready("sampleiqa"):
                break
        except Exception:
            pass
        time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("serve never became ready")
    triton_pids = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert triton_pids, "serve has no Triton child"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    for pid in triton_pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert "successfully unloaded" in log.read_text()
    c.close()


@pytest.mark.server
def test_default_command_scores_the_bundled_samples(tmp_path):
    """README command 1 without the setup part: no path, no --url."""
    res = run(["score", "--out", tmp_path / "scores.csv", "--server-log", tmp_path / "t.log"])
    assert res.returncode == 0, res.stderr
    got = rows(tmp_path / "scores.csv")
    names = {Path(r["path"]).name: r for r in got}
    assert set(names) == {"astronaut.jpg", "grace_hopper.jpg", "coffee.jpg", "chelsea.jpg"}
    assert names["astronaut.jpg"]["face_found"] == "True" and names["coffee.jpg"]["face_found"] == "False"


def test_build_repository_cli_makes_a_servable_repository(client, tmp_path):
    """`sampleiqa build-repository` from an ONNX file, served by a second real Triton."""
    from sampleiqa.build.triton_config import read_config
    from sampleiqa.clients import ScoringClient
    from sampleiqa.server import DEFAULT_REPOSITORY, TritonServer

    repo = tmp_path / "repo"
    res = run(
        [
            "build-repository",
            "--target",
            "cpu",
            "--onnx",
            DEFAULT_REPOSITORY / "scorer" / "1" / "model.onnx",
            "--out",
            repo,
            "--preprocess-instances",
            "1",
            "--ort-threads",
            "1",
        ]
    )
    assert res.returncode == 0, res.stderr
    assert read_config(repo / "preprocess").instance_group[0].count == 1
    data = (SAMPLES_DIR / "grace_hopper.jpg").read_bytes()
    with TritonServer(repo, log_file=tmp_path / "t.log") as server, ScoringClient(server.url) as c:
        built = c.score(data)
    reference = client.score(data)
    assert built.ok and built.face_box == reference.face_box
    assert abs(built.score - reference.score) < 1e-5


def test_the_same_command_run_again_has_nothing_to_do(server, tmp_path):
    """README command 1 run twice: the second run says every file is done and exits 0;
    a new file in the folder needs --resume (named), --overwrite starts again."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in biq_images(2):
        (folder / p.name).symlink_to(p)
    out = tmp_path / "scores.csv"
    args = ["score", folder, "--url", server.url, "--out", out]
    assert run(args).returncode == 0
    again = run(args)
    assert again.returncode == 0 and "all 2 files already have a row" in again.stderr, again.stderr
    assert len(rows(out)) == 2
    (folder / "new.jpg").symlink_to(biq_images(3)[2])
    res = run(args)
    assert res.returncode == 2 and "--resume" in res.stderr and "--overwrite" in res.stderr
    res = run(args + ["--overwrite"])
    assert res.returncode == 0 and len(rows(out)) == 3


def test_a_url_with_nothing_listening_says_it_is_waiting_at_once(tmp_path):
    from sampleiqa.server import free_port

    start = time.monotonic()
    proc = subprocess.Popen(
        SAMPLEIQA
        + [
            "score",
            str(biq_images(1)[0]),
            "--url",
            f"127.0.0.1:{free_port()}",
            "--out",
            str(tmp_path / "s.csv"),
            "--retry-seconds",
            "20",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stderr.readline()
        assert "no ready server" in line and "retrying until" in line, line
        assert time.monotonic() - start < 15
    finally:
        proc.kill()
        proc.wait()


def test_a_foreign_output_is_refused_and_overwrite_keeps_rows_when_nothing_is_found(server, tmp_path):
    foreign = tmp_path / "other.csv"
    foreign.write_text("image,mos\na.jpg,0.5\n")
    for extra in ([], ["--resume"]):
        res = run(["score", biq_images(1)[0], "--url", server.url, "--out", foreign, *extra])
        assert res.returncode == 2 and "not a sampleiqa score output" in res.stderr, res.stderr
    assert foreign.read_text() == "image,mos\na.jpg,0.5\n"
    empty = tmp_path / "empty"
    empty.mkdir()
    res = run(["score", empty, "--url", server.url, "--out", foreign, "--overwrite"])
    assert res.returncode == 2 and "no image files" in res.stderr
    assert foreign.read_text() == "image,mos\na.jpg,0.5\n"  # nothing was dropped for nothing
