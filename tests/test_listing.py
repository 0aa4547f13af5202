"""The Ray engine's lazy listing keeps the local CLI's promise: the same files, each once,
on a tree with every way of naming a file twice; and its manifest round-trips any name."""

from __future__ import annotations

import os

import pytest

from sampleiqa.clients.files import discover, identity
from sampleiqa.clients.listing import iter_inputs

pytest.importorskip("pyarrow")


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "photos"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "b.jpg").write_bytes(b"b")
    (root / "C.PNG").write_bytes(b"c")
    (root / "notes.txt").write_bytes(b"not an image")
    (root / "sub" / "d.jpg").write_bytes(b"d")
    (root / "sub" / "deeper" / "e.webp").write_bytes(b"e")
    os.link(root / "b.jpg", root / "sub" / "hardlink-of-b.jpg")  # one file, two names
    (root / "a-link-to-d.jpg").symlink_to(root / "sub" / "d.jpg")  # met before its target
    (root / "sub" / "z-link-to-c.jpg").symlink_to(root / "C.PNG")  # met after its target
    (root / "broken.jpg").symlink_to(root / "missing.jpg")
    (root / "sub" / "loop").symlink_to(root)  # a folder link: not followed
    os.mkfifo(root / "pipe.jpg")
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(b"o")
    (root / "outside-link.jpg").symlink_to(outside)
    return root


def ids(paths) -> list:
    return [identity(p) for p in paths]


@pytest.mark.parametrize("recursive", [False, True])
@pytest.mark.parametrize("extra", [[], ["sub"], ["b.jpg", "sub/d.jpg"], ["."]])
def test_same_files_as_the_local_cli_each_once(tree, recursive, extra, monkeypatch):
    monkeypatch.chdir(tree)
    args = [".", *extra]
    expected = ids(discover(args, recursive=recursive))
    listed = [path for path, _ in iter_inputs(args, recursive)]
    assert len(ids(listed)) == len(set(ids(listed))), "a file listed twice"
    assert sorted(ids(listed), key=repr) == sorted(expected, key=repr)


def test_locations_are_absolute_and_rows_keep_the_spelling(tree, monkeypatch):
    monkeypatch.chdir(tree.parent)
    pairs = dict(iter_inputs(["photos"], False))
    assert "photos/b.jpg" in pairs and pairs["photos/b.jpg"] == str(tree / "b.jpg")


def test_manifest_round_trips_names_that_are_not_utf8(tmp_path):
    from sampleiqa.clients.shards import Job, Output, decode_rows, encode_rows, escaped

    name = os.fsdecode(b"caf\xe9 \xff.jpg")  # Latin-1 bytes: not UTF-8
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / name).write_bytes(b"x")
    output = Output(str(tmp_path / "out"))
    job = output.write_listing(
        Job([str(tmp_path / "in")], False, "parquet", 10), iter_inputs([str(tmp_path / "in")], False)
    )
    [(path, location)] = output.manifest(0)
    assert job.files == 1 and path.endswith(name) and os.path.exists(location)
    for fmt in ("parquet", "csv", "jsonl"):
        row = {
            "path": path,
            "score": 0.5,
            "face_found": False,
            "face_x": None,
            "face_y": None,
            "face_w": None,
            "face_h": None,
            "status": "ok",
            "error": "",
        }
        [back] = decode_rows(encode_rows([row], fmt), fmt, "shard")
        assert escaped(back["path"]) == escaped(path), fmt


def test_missing_input_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        list(iter_inputs([str(tmp_path / "nope")], False))
