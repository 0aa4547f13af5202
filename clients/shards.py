"""The output of a distributed run: a folder (local, or any pyarrow.fs URI) of row shards.

    OUT/part-000000.parquet             rows of shard 0, one per file (csv/jsonl on request)
    OUT/_sampleiqa/job.json             what is listed, and how; saved as the listing goes (a
                                        crash resumes the listing), `listed` once it is whole
    OUT/_sampleiqa/manifest/000000.jsonl  the files of shard 0, in order
    OUT/_sampleiqa/done/000000-R-T.json shard 0 is complete: R rows, T of them to retry (the
                                        counts in the name: one listing reads every marker)
    OUT/_sampleiqa/lease.json           the run writing the output (lock.py)
    OUT/_sampleiqa/tmp/                 writes in flight

Exactly once: shard i holds one row for each file of manifest i and nothing else. It is
written whole under a temporary name and moved to its final name (a rename here, an
atomic PUT on an object store), by whichever attempt of its task finishes: a retried task
writes the same rows under the same name. On a local or NFS folder the file is fsynced
before the rename and the folder after it, so a power cut leaves the old shard or the new
one, never an empty file. Object-store calls are retried on transient errors (storage.py).
Parquet, pandas and Spark readers skip names that start with "_".
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Iterable

from sampleiqa.runtime.contracts import CSV_COLUMNS

from .listing import is_uri
from .rows import format_row, header, parse_rows, retried
from .storage import Retries

META = "_sampleiqa"
LEASE = "lease.json"
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
    listed: bool = True  # the listing is whole (job.json files older than streamed listings were)
    last: str = ""  # the last file listed so far: a resumed listing checks it meets it again

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
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.uri = out
        self.retries = Retries()
        self._folders: set[str] = set()  # made by this Output (see _make_folder)

    def _path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def _call(self, fn, what: str, *parts: str):
        return self.retries.call(fn, f"{what} {self.uri}/{'/'.join(parts)}")

    def read(self, *parts: str) -> bytes | None:
        def read():
            with self.fs.open_input_stream(self._path(*parts)) as f:
                return f.read()

        try:
            return self._call(read, "read", *parts)
        except FileNotFoundError:
            return None

    def write(self, data: bytes, *parts: str) -> None:
        """All of `data` under its final name, or nothing there (see the module doc)."""
        tmp = self._path(META, "tmp", f"{uuid.uuid4().hex}.part")
        self._make_folder(self._path(*parts[:-1]))
        self._make_folder(self._path(META, "tmp"))
        if self.local:
            return _write_durably(data, tmp, self._path(*parts))

        def write():
            with self.fs.open_output_stream(tmp) as f:
                f.write(data)
            self.fs.move(tmp, self._path(*parts))

        self._call(write, "write", *parts)

    def delete(self, *parts: str) -> None:
        try:
            self._call(lambda: self.fs.delete_file(self._path(*parts)), "delete", *parts)
        except FileNotFoundError:
            pass

    def _make_folder(self, path: str) -> None:
        """Once per folder and Output: on an object store each call is a request."""
        if path not in self._folders:
            self._call(lambda: self.fs.create_dir(path), "create", path)
            self._folders.add(path)

    def names(self, *parts: str) -> list[str]:
        selector = self.pafs.FileSelector(self._path(*parts), allow_not_found=True)
        infos = self._call(lambda: self.fs.get_file_info(selector), "list", *parts)
        return sorted(i.base_name for i in infos if i.type == self.pafs.FileType.File)

    def shard_names(self) -> list[str]:
        return [name for name in self.names() if name.startswith("part-")]

    def has_rows(self) -> bool:
        return bool(self.shard_names()) or self.read(META, "job.json") is not None

    def _is_folder(self, *parts: str) -> bool:
        return self.fs.get_file_info(self._path(*parts)).type == self.pafs.FileType.Directory

    def clear(self) -> None:
        """--overwrite: drop the shards and the run's bookkeeping (nothing else in the folder;
        the lease stays: this run holds it)."""
        for name in self.shard_names():
            self.delete(name)
        selector = self.pafs.FileSelector(self._path(META), allow_not_found=True)
        for info in self._call(lambda: self.fs.get_file_info(selector), "list", META):
            if info.type == self.pafs.FileType.Directory:
                self._call(lambda: self.fs.delete_dir(info.path), "delete", info.path)
            elif info.base_name != LEASE:
                self.delete(META, info.base_name)
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

    def write_listing(
        self,
        job: Job,
        entries: Iterable[tuple[str, str]],
        on_file=lambda: None,
        on_shard=lambda shard: None,
        save_s: float = 5.0,
    ) -> Job:
        """Writes the manifest shard by shard as the listing streams in, calling on_shard(i)
        once shard i's manifest is written. job.json is saved with the listing's progress
        every `save_s` and once whole; an empty listing is not a job (listed again next time)."""
        shard: list[tuple[str, str]] = []
        saved = float("-inf")
        job.listed = False
        for entry in entries:
            shard.append(entry)
            on_file()
            if len(shard) == job.shard_size:
                self._write_manifest(job, shard)
                on_shard(job.shards - 1)
                if time.monotonic() - saved > save_s:
                    self._save(job)
                    saved = time.monotonic()
        if shard:
            self._write_manifest(job, shard)
            on_shard(job.shards - 1)
        job.listed = True
        if job.files:
            self._save(job)
        return job

    def _save(self, job: Job) -> None:
        self.write(json.dumps(asdict(job), indent=1).encode(), META, "job.json")

    def _write_manifest(self, job: Job, shard: list[tuple[str, str]]) -> None:
        text = "".join(json.dumps(entry) + "\n" for entry in shard)  # ASCII: any file name round-trips
        self.write(text.encode(), META, "manifest", f"{job.shards:06d}.jsonl")
        job.shards += 1
        job.files += len(shard)
        job.last = shard[-1][0]
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

    def write_rows(self, shard: int, fmt: str, rows: list[dict], retry: int, replaces: list[dict] = ()) -> None:
        """The shard's rows, then its done marker. The marker of the rows they replace goes
        first: a crash in between leaves no marker, and the shard is scored again whole."""
        if replaces:
            self.delete(META, "done", _marker(shard, len(replaces), sum(map(retried, replaces))))
            self.delete(META, "done", f"{shard:06d}.json")  # written before the counts went into names
        self.write(encode_rows(rows, fmt), shard_name(shard, fmt))
        self.write(
            json.dumps({"rows": len(rows), "retry": retry}).encode(), META, "done", _marker(shard, len(rows), retry)
        )

    def done(self) -> dict[int, dict]:
        """{shard: its counts} for every shard whose rows are whole: one listing. Should a
        shard have two markers, the one with more rows to retry counts (it is scored again)."""
        done: dict[int, dict] = {}
        for name in self.names(META, "done"):
            fields = name.split(".")[0].split("-")
            if len(fields) == 3:
                counts = {"rows": int(fields[1]), "retry": int(fields[2])}
            else:
                counts = json.loads(self.read(META, "done", name))
            shard = int(fields[0])
            if shard not in done or counts["retry"] > done[shard]["retry"]:
                done[shard] = counts
        return done


def _marker(shard: int, rows: int, retry: int) -> str:
    return f"{shard:06d}-{rows}-{retry}.json"


def _write_durably(data: bytes, tmp: str, final: str) -> None:
    """A local (or NFS) write that a power cut cannot leave empty: the data is on disk before
    the rename makes it visible, and the rename is on disk before we call the shard done."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    folder = os.open(os.path.dirname(final), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def shard_name(shard: int, fmt: str) -> str:
    return f"part-{shard:06d}.{fmt}"


def _schema():
    import pyarrow as pa

    types = {
        "score": pa.float64(),
        "face_found": pa.bool_(),
        "status": pa.string(),
        "error": pa.string(),
        "path": pa.string(),
        **{c: pa.int32() for c in ("face_x", "face_y", "face_w", "face_h")},
    }
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
