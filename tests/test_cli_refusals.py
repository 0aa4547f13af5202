"""What the bulk CLI refuses when operators get a run wrong (issue 24), with the local engine:
two runs on one output, a mistyped or empty input with --overwrite, nonsense numbers. Real
processes, real server."""

from __future__ import annotations

import socket
import subprocess

import pytest

from .helpers import SAMPLEIQA, biq_images, rows, run


def test_two_runs_on_one_output_started_together_write_one_row_per_file(server, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in biq_images(30):
        (folder / p.name).symlink_to(p)
    out = tmp_path / "scores.csv"
    args = SAMPLEIQA + ["score", str(folder), "--url", server.url, "--out", str(out), "--resume"]
    runs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=600), p.communicate()[1]) for p in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    winner = next(p for p, (code, _) in zip(runs, results) if code == 0)
    assert f"is being written by another run (pid {winner.pid} on {socket.gethostname()}, started" in refused
    assert "Traceback" not in refused
    got = rows(out)
    assert len(got) == 30 and len({r["path"] for r in got}) == 30 and all(r["status"] == "ok" for r in got)


def test_overwrite_with_a_mistyped_or_empty_input_leaves_the_output_whole(server, tmp_path):
    out = tmp_path / "scores.csv"
    assert run(["score", biq_images(1)[0], "--url", server.url, "--out", out]).returncode == 0
    before = out.read_bytes()
    empty = tmp_path / "empty"
    empty.mkdir()
    for inputs, said in (([tmp_path / "phtos"], "no such file or folder"), ([empty], "no image files")):
        res = run(["score", *inputs, "--url", server.url, "--out", out, "--overwrite"])
        assert res.returncode == 2 and said in res.stderr, res.stderr
        assert out.read_bytes() == before


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--concurrency", "0"),
        ("--batch-size", "-1"),
        ("--shard-size", "0"),
        ("--shard-size", "-5"),
        ("--ray-actors", "0"),
        ("--timeout", "-1"),
    ],
)
def test_nonsense_numbers_are_refused_before_anything_starts(flag, value, tmp_path):
    for engine in ("local", "ray"):
        res = run(["score", biq_images(1)[0], "--engine", engine, "--out", tmp_path / "x", flag, value])
        said = f"{flag} must be at least 1" in res.stderr or f"{flag} cannot be negative" in res.stderr
        assert res.returncode == 2 and said, res.stderr
        assert not (tmp_path / "x").exists() and "Traceback" not in res.stderr
