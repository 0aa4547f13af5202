"""The inputs of a distributed run, listed lazily: local files and folders, and any URI that
pyarrow.fs opens (s3://, gs://, hdfs://, file://).

A listing of millions of files never sits in one process's memory: `iter_inputs` yields
(row path, location) one file at a time, and the run writes them to its manifest in shards
(shards.py).

- Local inputs keep the local CLI's promise of one row per file (device and inode, as
  files.discover) without a set of every file seen: a walk yields each name once, so only
  the names that can reach a file a second time are remembered or checked: hard links,
  symlinks, files named directly, and folders given twice or inside another.
- URIs are walked one folder level at a time, sorted: memory is bounded by the largest
  single level (an object store's "folder"), not by the whole listing.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterable, Iterator
from urllib.parse import quote, urlsplit

from .files import IMAGE_SUFFIXES, identity


def is_uri(path: str) -> bool:
    return "://" in str(path)


def iter_inputs(paths: Iterable[str], recursive: bool = False) -> Iterator[tuple[str, str]]:
    """(path as it goes in the row, where a worker reads it) for every input file.
    Local files are read at their absolute path: a Ray worker's working folder is not ours."""
    paths = [str(p) for p in paths]
    local = [p for p in paths if not is_uri(p) or p.startswith("file://")]
    for uri in (p for p in paths if is_uri(p) and not p.startswith("file://")):
        yield from _iter_uri(uri, recursive)
    for path in LocalWalk([urlsplit(p).path if p.startswith("file://") else p for p in local], recursive).files():
        yield path, os.path.abspath(path)


class LocalWalk:
    """Files and folders named on the command line, walked in sorted order."""

    def __init__(self, paths: list[str], recursive: bool):
        self.recursive = recursive
        for p in paths:
            if not os.path.lexists(p):
                raise FileNotFoundError(f"no such file or folder: {p}")
        self.roots, self.folders = self._distinct_folders([p for p in paths if os.path.isdir(p)])
        self.named = [p for p in paths if not os.path.isdir(p)]
        self.seen: set[tuple] = set()  # files another name may reach again (see module doc)

    def _distinct_folders(self, folders: list[str]) -> tuple[list[str], list[str]]:
        """(resolved, as given) for each folder once, and none that another folder's walk
        already covers."""
        kept: dict[str, str] = {}
        for f in folders:
            real = os.path.realpath(f)
            if real not in kept and not self._under_walk(real, kept):
                kept[real] = f
        return list(kept), list(kept.values())

    def _under_walk(self, real: str, roots: Iterable[str]) -> bool:
        parent = os.path.dirname(real)
        return any(parent == r or (self.recursive and parent.startswith(r.rstrip("/") + "/")) for r in roots)

    def _walk_covers(self, name: str) -> bool:
        """Whether the folder walk yields the file that `name` (a symlink or a file named
        directly) resolves to, under the walk's own name for it."""
        real = os.path.realpath(name)
        try:
            plain = stat.S_ISREG(os.lstat(real).st_mode) and os.stat(real).st_nlink == 1
        except OSError:
            return False
        return plain and Path(real).suffix.lower() in IMAGE_SUFFIXES and self._under_walk(real, self.roots)

    def _once(self, path: str, repeatable: bool) -> bool:
        """True the first time a file is met; remembers it only if another name may reach it."""
        if repeatable and self._walk_covers(path):
            return False
        ident = identity(path)
        if ident in self.seen:
            return False
        try:
            repeatable = repeatable or os.stat(path).st_nlink > 1
        except OSError:
            pass
        if repeatable:
            self.seen.add(ident)
        return True

    def files(self) -> Iterator[str]:
        for folder in self.folders:
            yield from self._walk(folder)
        for name in self.named:
            if self._once(name, repeatable=True):
                yield name

    def _walk(self, folder: str) -> Iterator[str]:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            path = os.path.join(folder, entry.name)
            if entry.is_dir():
                if self.recursive and not entry.is_symlink():
                    yield from self._walk(path)
            elif Path(entry.name).suffix.lower() in IMAGE_SUFFIXES and self._once(path, entry.is_symlink()):
                yield path


def _iter_uri(uri: str, recursive: bool) -> Iterator[tuple[str, str]]:
    """(URI without its query, URI with it) for each file under `uri`. The query holds the
    filesystem's options (s3://b/p?endpoint_override=...): a worker needs it, a row does not."""
    import pyarrow.fs as pafs

    fs, base = pafs.FileSystem.from_uri(uri)
    parts = urlsplit(uri)
    query = f"?{parts.query}" if parts.query else ""

    def named(path: str) -> tuple[str, str]:  # the worker's copy quoted: a key may hold " ", "#", "?"
        return f"{parts.scheme}://{path}", f"{parts.scheme}://{quote(path, safe='/')}{query}"

    info = fs.get_file_info(base)
    if info.type == pafs.FileType.File:
        yield named(info.path)
        return
    if info.type != pafs.FileType.Directory:
        raise FileNotFoundError(f"no such file or folder: {uri}")
    pending = [base]
    while pending:
        level = sorted(fs.get_file_info(pafs.FileSelector(pending.pop(), recursive=False)), key=lambda i: i.path)
        folders = []
        for item in level:
            if item.type == pafs.FileType.Directory:
                folders.append(item.path)
            elif Path(item.path).suffix.lower() in IMAGE_SUFFIXES:
                yield named(item.path)
        if recursive:
            pending.extend(reversed(folders))  # depth first, in sorted order
