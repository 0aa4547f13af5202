"""One writer per output. Two runs on one output would each write every row (a cron job
firing twice, two terminals), so the second is refused before it starts a server or
touches a row, with a message naming the run that holds the output.

- A local output (`--out FILE`): an advisory `flock` on a lock file beside it,
  `.NAME.lock`. The kernel drops it when the holder exits, however it exits.
- A distributed run's output (a folder or an object-store URI, shards.py): a lease object,
  `_sampleiqa/lease.json`, with its owner and a heartbeat. Object stores have no locks;
  the lease is written, read back after SETTLE_S (two runs that wrote at once both read the
  same last write, so exactly one keeps it), and renewed every BEAT_S. A holder that stops
  renewing is gone after TTL_S, or at once when it ran on this host and its pid is gone.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path


class OutputBusy(RuntimeError):
    """Another run holds the output."""


def _owner() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "run": uuid.uuid4().hex,
    }


def _describe(owner: dict) -> str:
    return f"pid {owner.get('pid')} on {owner.get('host')}, started {owner.get('started')}"


class LocalLock:
    """flock on `.NAME.lock` beside the output, held until release() or the process ends.
    The lock file is never removed: removing it would let a run that opened it before the
    removal and one that opens a new one both hold "the" lock."""

    def __init__(self, out: str | Path):
        out = Path(out)
        self.path = out.with_name(f".{out.name}.lock")
        self.fd: int | None = None

    def acquire(self, what: str) -> "LocalLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _holder(fd)
            os.close(fd)
            raise OutputBusy(
                f"{what} is being written by another run ({owner}); wait for it, or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_owner()).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def _holder(fd: int, wait_s: float = 1.0) -> str:
    """Who holds the lock on `fd`: its name, which a holder writes just after it takes the
    lock (so a run started at the same instant may wait a moment for it)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return _describe(json.loads(os.pread(fd, 4096, 0)))
        except ValueError:
            if time.monotonic() > deadline:
                return "a run that is starting"
            time.sleep(0.02)


class Lease:
    """The lease of a distributed run's output (see the module doc). `lost` is set when
    another run took the lease over (this run stalled past TTL_S): the run must stop. It may
    be an event the run waits on already (its Ctrl-C)."""

    TTL_S = 30.0
    BEAT_S = 5.0
    SETTLE_S = 2.0

    def __init__(self, output, lost: threading.Event | None = None):
        from .shards import LEASE

        self.output, self.name = output, LEASE
        self.owner = _owner()
        self.lost = lost or threading.Event()
        self._stop = threading.Event()
        self._beats: threading.Thread | None = None

    def _read(self) -> dict | None:
        from .shards import META

        data = self.output.read(META, self.name)
        try:
            return json.loads(data) if data else None
        except ValueError:
            return None

    def _write(self) -> None:
        from .shards import META

        self.output.write(json.dumps({**self.owner, "beat": time.time()}).encode(), META, self.name)

    def _live(self, lease: dict | None) -> bool:
        if not lease or lease.get("run") == self.owner["run"]:
            return False
        if lease.get("host") == self.owner["host"] and not _pid_alive(lease.get("pid")):
            return False
        return time.time() - float(lease.get("beat", 0)) < self.TTL_S

    def _refuse(self, holder: dict) -> OutputBusy:
        age = time.time() - float(holder.get("beat", 0))
        return OutputBusy(
            f"{self.output.uri} is being written by another run ({_describe(holder)}; "
            f"its last heartbeat {age:.0f}s ago, it expires {self.TTL_S:.0f}s after the last); "
            "wait for it, or choose another --out"
        )

    def acquire(self) -> "Lease":
        holder = self._read()
        if self._live(holder):
            raise self._refuse(holder)
        self._write()
        time.sleep(self.SETTLE_S)
        holder = self._read()
        if holder is None or holder.get("run") != self.owner["run"]:
            raise self._refuse(holder or {})
        self._beats = threading.Thread(target=self._beat, name="sampleiqa-lease", daemon=True)
        self._beats.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.BEAT_S):
            try:
                holder = self._read()
                if holder and holder.get("run") != self.owner["run"]:
                    self.lost.set()
                    return
                self._write()
            except OSError:  # a storage hiccup: the next beat tries again, TTL_S allows several
                pass

    def release(self) -> None:
        from .shards import META

        self._stop.set()
        if self._beats is not None:
            self._beats.join()
        try:
            holder = self._read()
            if holder and holder.get("run") == self.owner["run"]:
                self.output.delete(META, self.name)
        except OSError:
            pass  # it expires by itself


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return True  # someone else's process, or no pid: trust the heartbeat
    return True
