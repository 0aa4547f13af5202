"""Which files a bulk run scores, and reading them safely.

- One row per file, whatever its spelling: a file is identified by its device and inode
  (by its resolved path when it cannot be stat'ed), so `a.jpg`, `x/../a.jpg`, a symlink to
  it and the same folder spelled relative or absolute on resume are one file.
- Only regular files are read, and never more than the byte limit: a FIFO, a device or a
  socket gets a `[not_a_file]` row.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterable

from sampleiqa.runtime.contracts import MAX_BYTES

from .protocol import ScoreResult

IMAGE_SUFFIXES = {
    ".jpg",
    ".jpeg",
    ".jpe",
    ".png",
    ".webp",
    ".bmp",
    ".tif",
    ".tiff",
    ".gif",
    ".heic",
    ".heif",
    ".hif",
    ".avif",
}


def identity(path: str) -> tuple:
    """What makes two spellings one file: (device, inode), else the resolved path."""
    try:
        st = os.stat(path)
        return ("inode", st.st_dev, st.st_ino)
    except (OSError, ValueError):
        return ("path", os.path.realpath(path))


def discover(paths: Iterable[str | Path], recursive: bool = False) -> list[str]:
    """Files named directly are taken whatever their suffix; folders give every entry with
    an image suffix (case-insensitive) that is not a folder, sorted, so a FIFO or a broken
    link gets its error row rather than vanishing. Each file appears once (see identity)."""
    found: dict[tuple, str] = {}
    for p in map(Path, paths):
        if p.is_dir():
            walker = p.rglob("*") if recursive else p.iterdir()
            for f in sorted(walker):
                if not f.is_dir() and f.suffix.lower() in IMAGE_SUFFIXES:
                    found.setdefault(identity(str(f)), str(f))
        elif p.exists() or p.is_symlink():
            found.setdefault(identity(str(p)), str(p))
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    return list(found.values())


def not_done(paths: list[str], done: Iterable[str]) -> list[str]:
    """The paths whose file (see identity) is not one of `done`'s."""
    done_ids = {identity(p) for p in done}
    return [p for p in paths if identity(p) not in done_ids]


class FileRefused(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.result = ScoreResult.failure(code, f"[{code}] {message}")


_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a folder"),
)


def read_image_file(path: str, limit: int = MAX_BYTES) -> bytes:
    """A regular file's bytes, never more than `limit`. O_NONBLOCK: opening a FIFO must not
    wait for a writer; the mode is checked on the open descriptor, not on the name."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise FileRefused("unreadable", exc.strerror or str(exc)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            what = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
            raise FileRefused("not_a_file", f"{what}: only regular files are read")
        if st.st_size > limit:  # never read a huge file into memory just to have it refused
            raise FileRefused("too_large", f"{st.st_size} bytes exceeds the limit of {limit}")
        chunks, size = [], 0
        while size <= limit:  # read to EOF, whatever stat said (the file may be growing)
            chunk = os.read(fd, min(1 << 24, limit + 1 - size))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
        raise FileRefused("too_large", f"the file grew past the limit of {limit} bytes while it was read")
    except OSError as exc:
        raise FileRefused("unreadable", exc.strerror or str(exc)) from None
    finally:
        os.close(fd)
