"""Every input of the bad-input corpus (tests/badinputs.py) gets a score or a clear per-item
error, through the real served ensemble (one by one and all in one batch) and through the
bulk CLI, and the server stays up. tests/README.md holds the same table."""

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .badinputs import CASES, PORTRAIT_FACE, exif_rotated, many_faces
from .helpers import on_face

BY_NAME = {c.name: c for c in CASES}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bad inputs")
    for case in CASES:
        (folder / case.name).write_bytes(case.make())
    return folder


def check(name: str, status: str, error: str, face_found, box) -> None:
    """The outcome a user sees for one input, against the corpus table."""
    case = BY_NAME[name]
    if case.outcome != "ok":
        assert status == "error", (name, status, error)
        assert error.startswith(f"[{case.outcome}] ") and len(error) > len(case.outcome) + 10, (name, error)
        return
    assert status == "ok", (name, error)
    assert face_found == (case.face != "no face"), (name, face_found, box)
    if case.face == "face":
        assert on_face(box, PORTRAIT_FACE), (name, box, PORTRAIT_FACE)
    if name == "exif_rotated.jpg":  # the box is in the displayed (rotated) image, not the stored pixels
        assert not on_face(box, exif_rotated()[1]), box
    if name == "many_faces.jpg":
        assert any(on_face(box, f) for f in many_faces()[1]), box


@pytest.mark.parametrize("name", list(BY_NAME))
def test_served_ensemble_outcome(client, corpus, name):
    r = client.score((corpus / name).read_bytes())
    check(name, r.status, r.error, r.face_found, r.face_box)
    if r.ok:
        assert r.score == r.score  # not NaN
    else:
        assert r.error_code == BY_NAME[name].outcome


def test_whole_corpus_in_one_batch_gets_the_same_outcomes(client, corpus, server):
    names = list(BY_NAME)
    results = client.score_batch([(corpus / n).read_bytes() for n in names])
    for name, r in zip(names, results):
        check(name, r.status, r.error, r.face_found, r.face_box)
    assert server.running() and client.is_ready()


def test_bulk_cli_writes_each_outcome_as_a_row(server, client, corpus, tmp_path):
    out = tmp_path / "scores.csv"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "sampleiqa.cli",
            "score",
            str(corpus),
            "--url",
            server.url,
            "--out",
            str(out),
            "--batch-size",
            "4",
            "--concurrency",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    with open(out, newline="") as f:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(f)}
    assert sorted(rows) == sorted(BY_NAME)
    for name, r in rows.items():
        box = tuple(int(r[k]) for k in ("face_x", "face_y", "face_w", "face_h")) if r["face_x"] else None
        face_found = {"True": True, "False": False, "": None}[r["face_found"]]
        check(name, r["status"], r["error"], face_found, box)
    assert server.running() and client.is_ready()  # still up and healthy after all of it


def test_readme_table_is_the_corpus():
    """tests/README.md lists every case with the outcome the tests assert, and nothing else."""
    text = (Path(__file__).parent / "README.md").read_text()
    table = dict(re.findall(r"^\| `([^`]+)` \|[^|]*\| ([^|]+?) \|", text, re.M))
    expected = {c.name: (f"error `{c.outcome}`" if c.outcome != "ok" else f"score, {c.face}") for c in CASES}
    assert {k: v.strip() for k, v in table.items()} == expected
