"""Back-pressure inside the ensemble: at most `limit` preprocessed crops wait for the scorer.

Triton 2.51 has no in-flight limit for an ensemble and no flow control between its steps.
`preprocess` is several times faster than the scorer, so under load every request's crop
(2.4 MB of FP32) piled up in Triton's memory in front of the scorer: ~7 GiB at 64 requests
in flight. Here each `preprocess` batch takes one credit per item before it decodes, and the
scorer gives them back as it scores. While none are free, `preprocess` waits, its queue
fills, and Triton refuses what is over that queue's bound at once ("Exceeds maximum queue
size", gRPC UNAVAILABLE), before any work is spent on it; clients retry with backoff.

The credits are a counter in a 24-byte file shared by the python stubs of one Triton server
(named by the server's pid: the stubs' parent), changed under flock. Credits that never come
back (a request cancelled between the steps, the warm-up) are forgiven: once none has been
given back for STALE_S while some are out, the count restarts from zero, so the pipeline can
never stall on them. Standard library only: repositories vendor it beside the models.
"""

from __future__ import annotations

import fcntl
import os
import struct
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

STALE_S = 10.0  # far above one scorer run of a few crops, on any host
POLL_S = 0.003
PARAMETER = "crops_in_flight"  # the models' config parameter: the limit, 0 for none
_STATE = struct.Struct("<qd")  # credits out; CLOCK_MONOTONIC (shared by processes) of the last change that matters
PREFIX = "sampleiqa-credits-"


def credits_path(server_pid: int) -> Path:
    folder = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    return folder / f"{PREFIX}{server_pid}"


def limit_from(parameters: dict) -> int:
    """The limit named in a Triton model config's parameters (JSON form), 0 when absent."""
    return int(parameters.get(PARAMETER, {}).get("string_value", "0"))


class CropCredits:
    """One process's handle on its server's credits (a stub's parent is its server)."""

    def __init__(self, limit: int, path: str | Path | None = None):
        if limit < 1:
            raise ValueError("the limit must be at least 1 crop")
        self.limit = limit
        self.path = Path(path) if path else credits_path(os.getppid())
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.waited_s = 0.0  # time this process spent waiting for credits
        self.forgiven = 0  # times the count was found stale and restarted

    @contextmanager
    def _state(self):
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            raw = os.pread(self._fd, _STATE.size, 0)
            state = list(_STATE.unpack(raw)) if len(raw) == _STATE.size else [0, 0.0]
            before = list(state)
            yield state
            if state != before:  # a wait polls: it reads, and writes nothing
                os.pwrite(self._fd, _STATE.pack(*state), 0)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def try_take(self, n: int) -> bool:
        """Take n credits if they are free. A batch larger than the limit goes alone."""
        with self._state() as state:
            now = time.monotonic()
            if state[0] > 0 and now - state[1] > STALE_S:
                state[0] = 0
                self.forgiven += 1
            if state[0] and state[0] + n > self.limit:
                return False
            if not state[0]:
                state[1] = now  # staleness counts from the first credit out
            state[0] += n
            return True

    def take(self, n: int) -> None:
        """Wait until n credits are free, and take them (never longer than ~STALE_S)."""
        if n < 1 or self.try_take(n):
            return
        start = time.monotonic()
        while not self.try_take(n):
            time.sleep(POLL_S)
        self.waited_s += time.monotonic() - start

    def give_back(self, n: int) -> None:
        if n < 1:
            return
        with self._state() as state:
            state[0] = max(0, state[0] - n)  # a direct call to the scorer took none
            state[1] = time.monotonic()

    def out(self) -> int:
        with self._state() as state:
            return state[0]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
