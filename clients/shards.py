"""The output of a distributed run: a folder (local, or any pyarrow.fs URI) of row shards.

    OUT/part-000000.parquet             rows of shard 0, one per file (csv/jsonl on request)
    OUT/_sampleiqa/job.json             what was listed, and how; written once the listing is whole
    OUT/_sampleiqa/manifest/000000.jsonl  the files of shard 0, in order
    OUT/_sampleiqa/done/000000.json     shard 0 is complete; its row and retry counts
    OUT/_sampleiqa/tmp/                 writes in flight

Exactly once: shard i holds one row for each file of manifest i and nothing else. It is
written whole under a temporary name and moved to its final name (a rename here, an
atomic PUT on an object store), by whichever attempt of its task finishes: a retried task
writes the same rows under the same name. Parquet, pandas and Spark readers skip names
that start with "_".
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass
from typing import Iterable, Iterator

from sampleiqa.contracts import CSV_COLUMNS

from .listing import is_uri
from .rows import format_row, header, parse_rows

META = "_sampleiqa"
FORMATS = ("parquet", "csv", "jsonl")


def escaped(path: str) -> str:
    """A path as every format stores it: bytes that are not UTF-8 (lone surrogates) as
    \\udcXX text. Rows and manifest entries are matched by this form."""
    return path.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass
class Job:
    inputs: list[str]
    recursive: bool
    format: str
    shard_size: int
    shards: int = 0
    files: int = 0

    def same_inputs(self, other: "Job") -> bool:
        return (self.inputs, self.recursive, self.format) == (other.inputs, other.recursive, other.format)


class Output:
    """One run's output folder, through pyarrow.fs (local folders and object stores alike)."""

    def __init__(self, out: str):
        import pyarrow.fs as pafs  # here, not at the top: the clients' base install has no pyarrow

        self.pafs = pafs
        if is_uri(out):
            self.fs, self.root = pafs.FileSystem.from_uri(out)
        else:
            if os.path.isfile(out):
                raise ValueError(f"{out} is a file: a distributed run writes a folder of shards (--out FOLDER)")
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(out)
        self.uri = out
        self._folders: set[str] = set()  # made by this Output (see _make_folder)

    def _path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def read(self, *parts: str) -> bytes | None:
        try:
            with self.fs.open_input_stream(self._path(*parts)) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def write(self, data: bytes, *parts: str) -> None:
        """All of `data` under its final name, or nothing there (see the module doc)."""
        tmp = self._path(META, "tmp", f"{uuid.uuid4().hex}.part")
        self._make_folder(self._path(*parts[:-1]))
        self._make_folder(self._path(META, "tmp"))
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, self._path(*parts))

    def _make_folder(self, path: str) -> None:
        """Once per folder and Output: on an object store each call is a request."""
        if path not in self._folders:
            self.fs.create_dir(path)
            self._folders.add(path)

    def names(self, *parts: str) -> list[str]:
        selector = self.pafs.FileSelector(self._path(*parts), allow_not_found=True)
        return sorted(i.base_name for i in self.fs.get_file_info(selector) if i.type == self.pafs.FileType.File)

    def shard_names(self) -> list[str]:
        return [name for name in self.names() if name.startswith("part-")]

    def has_rows(self) -> bool:
        return bool(self.shard_names()) or self.read(META, "job.json") is not None

    def _is_folder(self, *parts: str) -> bool:
        return self.fs.get_file_info(self._path(*parts)).type == self.pafs.FileType.Directory

    def clear(self) -> None:
        """--overwrite: drop the shards and the run's bookkeeping (nothing else in the folder)."""
        for name in self.shard_names():
            self.fs.delete_file(self._path(name))
        if self._is_folder(META):
            self.fs.delete_dir(self._path(META))
        self._folders.clear()

    def drop_partial_writes(self) -> None:
        """Writes a killed attempt left behind (one run per output at a time: a new run means
        the last one is over)."""
        if self._is_folder(META, "tmp"):
            self.fs.delete_dir_contents(self._path(META, "tmp"))  # the folder stays

    # -- the job and its manifest
    def job(self) -> Job | None:
        data = self.read(META, "job.json")
        return Job(**json.loads(data)) if data else None

    def write_listing(self, job: Job, entries: Iterable[tuple[str, str]], on_file=lambda: None) -> Job:
        """Writes the manifest shard by shard as the listing streams in, then job.json."""
        shard: list[tuple[str, str]] = []
        for entry in entries:
            shard.append(entry)
            on_file()
            if len(shard) == job.shard_size:
                self._write_manifest(job, shard)
        if shard:
            self._write_manifest(job, shard)
        if job.files:  # an empty listing is not a job: listed again next time
            self.write(json.dumps(asdict(job), indent=1).encode(), META, "job.json")
        return job

    def _write_manifest(self, job: Job, shard: list[tuple[str, str]]) -> None:
        text = "".join(json.dumps(entry) + "\n" for entry in shard)  # ASCII: any file name round-trips
        self.write(text.encode(), META, "manifest", f"{job.shards:06d}.jsonl")
        job.shards += 1
        job.files += len(shard)
        shard.clear()

    def manifest(self, shard: int) -> list[tuple[str, str]]:
        data = self.read(META, "manifest", f"{shard:06d}.jsonl")
        if data is None:
            raise FileNotFoundError(f"{self.uri}: the manifest of shard {shard} is missing")
        return [tuple(json.loads(line)) for line in data.decode().splitlines()]

    # -- shards of rows
    def rows(self, shard: int, fmt: str) -> list[dict]:
        data = self.read(shard_name(shard, fmt))
        return [] if data is None else decode_rows(data, fmt, shard_name(shard, fmt))

    def write_rows(self, shard: int, fmt: str, rows: list[dict], retry: int) -> None:
        self.write(encode_rows(rows, fmt), shard_name(shard, fmt))
        self.write(json.dumps({"rows": len(rows), "retry": retry}).encode(), META, "done", f"{shard:06d}.json")

    def done(self) -> Iterator[tuple[int, dict]]:
        """(shard, its counts) for every shard whose rows are whole."""
        for name in self.names(META, "done"):
            yield int(name.split(".")[0]), json.loads(self.read(META, "done", name))


def shard_name(shard: int, fmt: str) -> str:
    return f"part-{shard:06d}.{fmt}"


def _schema():
    import pyarrow as pa

    types = {"score": pa.float64(), "face_found": pa.bool_(), "status": pa.string(), "error": pa.string(),
             "path": pa.string(), **{c: pa.int32() for c in ("face_x", "face_y", "face_w", "face_h")}}
    return pa.schema([(c, types[c]) for c in CSV_COLUMNS])


def encode_rows(rows: list[dict], fmt: str) -> bytes:
    if fmt != "parquet":
        return header(fmt) + b"".join(format_row(r, fmt) for r in rows)
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {c: [escaped(r[c]) if c == "path" else r[c] for r in rows] for c in CSV_COLUMNS}
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns, schema=_schema()), sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def decode_rows(data: bytes, fmt: str, name: str) -> list[dict]:
    if fmt != "parquet":
        return parse_rows(data, fmt, name)
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pq.read_table(pa.BufferReader(data)).to_pylist()
