"""Storage as a distributed run meets it: files read locally or behind a URI (pyarrow.fs),
transient errors retried, and reads overlapped.

- Transient errors are the ones Ray Data retries (`DataContext.retried_io_errors`:
  throttling, 503s, network errors), and a few more that a 10M-file job meets (a reset
  connection, an expired session token). They are retried with exponential backoff and
  full jitter; what still fails becomes a `[storage]` row, which `--resume` scores again.
  Any other error is final: a missing object is `[unreadable]`.
- `read_ahead` keeps up to N reads in flight, so an actor waits for one read's latency,
  not the sum of them (50 ms object-store reads: 20 files/s at one at a time).
"""

from __future__ import annotations

import random
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar
from urllib.parse import unquote, urlsplit

from sampleiqa.runtime.contracts import MAX_BYTES

from .files import FileRefused, read_image_file
from .listing import is_uri

T = TypeVar("T")
OBJECT_STORES = ("s3", "gs", "gcs")
# Beyond Ray Data's list: what a long job sees too. Matched as substrings of the message.
MORE_TRANSIENT = (
    "AWS Error NETWORK_CONNECTION",
    "Connection reset",
    "connection reset",
    "ExpiredToken",
    "RequestTimeout",
    "curlCode: 28",
    "curlCode: 52",
    "curlCode: 56",
    "HTTP status 500",
    "HTTP status 502",
    "HTTP status 503",
    "HTTP status 504",
    "Broken pipe",
)


def transient_patterns() -> tuple[str, ...]:
    try:
        from ray.data.context import DataContext

        ray_data = tuple(DataContext.get_current().retried_io_errors)
    except ImportError:  # the ray extra is not installed: Ray Data's defaults, as of 2.60
        ray_data = (
            "AWS Error INTERNAL_FAILURE",
            "AWS Error NETWORK_CONNECTION",
            "AWS Error SLOW_DOWN",
            "AWS Error UNKNOWN (HTTP status 503)",
            "AWS Error SERVICE_UNAVAILABLE",
        )
    return (*ray_data, *MORE_TRANSIENT)


def is_transient(exc: BaseException, patterns: Iterable[str] | None = None) -> bool:
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    text = f"{type(exc).__name__}: {exc}"
    return any(p in text for p in (patterns or transient_patterns()))


class StorageError(OSError):
    """A transient storage error that outlasted the retries."""


class Retries:
    """Exponential backoff with full jitter (AWS's advice for many clients at once). On top of
    the S3 client's own retries: pyarrow's made ~31 requests over ~36 s for one read that
    kept failing here, so 4 tries give a sustained outage ~2.5 minutes per read."""

    def __init__(self, attempts: int = 4, base_s: float = 0.1, max_s: float = 8.0, sleep=time.sleep):
        self.attempts, self.base_s, self.max_s, self.sleep = attempts, base_s, max_s, sleep
        self._patterns: tuple[str, ...] | None = None  # read at the first error: importing Ray Data costs ~100 MiB
        self.retried = 0  # transient errors met (and retried) over this object's life

    @property
    def patterns(self) -> tuple[str, ...]:
        if self._patterns is None:
            self._patterns = transient_patterns()
        return self._patterns

    def call(self, fn: Callable[[], T], what: str) -> T:
        for attempt in range(self.attempts):
            try:
                return fn()
            except (OSError, RuntimeError) as exc:  # pyarrow's ArrowException derives from these
                if isinstance(exc, FileNotFoundError) or not is_transient(exc, self.patterns):
                    raise
                if attempt + 1 == self.attempts:
                    raise StorageError(
                        f"{what}: still failing after {self.attempts} tries: {str(exc).splitlines()[0]}"
                    ) from None
                self.retried += 1
                self.sleep(random.uniform(0, min(self.max_s, self.base_s * 2**attempt)))
        raise AssertionError("unreachable")


class Reader:
    """A file's bytes, local or behind a URI, refused with the local CLI's codes; object-store
    reads retried (see the module doc). Thread-safe: pyarrow filesystems are."""

    def __init__(self, limit: int = MAX_BYTES, retries: Retries | None = None):
        self.limit = limit
        self.retries = retries or Retries()
        self._filesystems: dict[tuple, object] = {}

    def read(self, location: str) -> bytes:
        if not is_uri(location):
            return read_image_file(location, self.limit)
        fs, path = self._filesystem(location)
        try:
            return self.retries.call(lambda: self._read(fs, path), "read")
        except FileRefused:
            raise
        except FileNotFoundError:
            raise FileRefused("unreadable", "no such file") from None
        except StorageError as exc:
            raise FileRefused("storage", str(exc)) from None
        except (OSError, RuntimeError) as exc:
            raise FileRefused("unreadable", str(exc).splitlines()[0]) from None

    def _read(self, fs, path: str) -> bytes:
        with fs.open_input_file(path) as f:
            if f.size() > self.limit:
                raise FileRefused("too_large", f"{f.size()} bytes exceeds the limit of {self.limit}")
            return f.read()

    def _filesystem(self, location: str):
        """(filesystem, path in it): one filesystem (an S3 client, ...) per bucket and options."""
        import pyarrow.fs as pafs

        parts = urlsplit(location)  # listing.py quoted the path
        key = (parts.scheme, parts.netloc, parts.query)
        if key not in self._filesystems:  # a race here makes a second client, never a wrong one
            query = f"?{parts.query}" if parts.query else ""
            self._filesystems[key] = pafs.FileSystem.from_uri(f"{parts.scheme}://{parts.netloc}{query}")[0]
        # Object stores name a file bucket/key; the others by its path.
        path = unquote(parts.netloc + parts.path if parts.scheme in OBJECT_STORES else parts.path)
        return self._filesystems[key], path


def read_ahead(
    read: Callable[[str], bytes], items: Iterable[tuple[str, str]], pool: ThreadPoolExecutor, depth: int
) -> Iterator[tuple[str, bytes | FileRefused]]:
    """(name, bytes or the FileRefused) for each (name, location), in order, with up to
    `depth` reads in flight on `pool`."""

    def one(location: str):
        try:
            return read(location)
        except FileRefused as exc:
            return exc

    window: deque = deque()
    for name, location in items:
        window.append((name, pool.submit(one, location)))
        if len(window) >= max(1, depth):
            name, future = window.popleft()
            yield name, future.result()
    while window:
        name, future = window.popleft()
        yield name, future.result()
