"""Back-pressure inside the ensemble: at most `limit` preprocessed crops wait for the scorer.

Triton 2.51 has no in-flight limit for an ensemble and no flow control between its steps.
`preprocess` is several times faster than the scorer, so under load every request's crop
(2.4 MB of FP32) piled up in Triton's memory in front of the scorer: ~4.5 GiB at 64 requests
in flight. Here each `preprocess` batch takes one credit per item before it decodes, and the
scorer gives them back as it scores. While none are free, `preprocess` waits, its queue
fills, and Triton refuses what is over that queue's bound at once ("Exceeds maximum queue
size", gRPC UNAVAILABLE), before any work is spent on it; clients retry with backoff.

The credits are a counter in a small file shared by the python stubs of one Triton server
(named by the server's pid: the stubs' parent), changed under flock. Credits that never come
back (crops asked of `preprocess` directly, a request cancelled between the steps, the
warm-up) are forgiven when more are wanted than are free:
- at once if the scorer is idle: not running and not for IDLE_S. An idle scorer has nothing
  queued (Triton hands it queued crops within its batching delay), so no crop waits for it;
- otherwise once none has come back for STALE_S (a hung scorer).
So the pipeline can never stall on them. Standard library only: repositories vendor it.
"""

from __future__ import annotations

import fcntl
import os
import struct
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

IDLE_S = 0.25  # far above the scorer's batching delay (2 ms) and the gap between its runs
STALE_S = 10.0  # far above one scorer run of a few crops, on any host
POLL_S = 0.003
PARAMETER = "crops_in_flight"  # the models' config parameter: the limit, 0 for none
# credits out; scorer runs in progress; CLOCK_MONOTONIC (shared by processes) of the last
# credit given back (or the first taken), and of the end of the scorer's last run
_STATE = struct.Struct("<qqdd")
OUT, RUNNING, GIVEN, ENDED = range(4)
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
        self.forgiven = 0  # times the count was found stale and restarted

    @contextmanager
    def _state(self):
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            raw = os.pread(self._fd, _STATE.size, 0)
            state = list(_STATE.unpack(raw)) if len(raw) == _STATE.size else [0, 0, 0.0, 0.0]
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
            if state[OUT] and state[OUT] + n > self.limit and self._stale(state, now):
                state[OUT] = 0
                self.forgiven += 1
            if state[OUT] and state[OUT] + n > self.limit:
                return False
            if not state[OUT]:
                state[GIVEN] = now  # staleness counts from the first credit out
            state[OUT] += n
            return True

    @staticmethod
    def _stale(state: list, now: float) -> bool:
        idle = not state[RUNNING] and now - state[ENDED] > IDLE_S
        return idle or now - state[GIVEN] > STALE_S

    def take(self, n: int) -> None:
        """Wait until n credits are free, and take them (never longer than ~STALE_S)."""
        while n > 0 and not self.try_take(n):
            time.sleep(POLL_S)

    def give_back(self, n: int) -> None:
        if n < 1:
            return
        with self._state() as state:
            state[OUT] = max(0, state[OUT] - n)  # a direct call to the scorer took none
            state[GIVEN] = time.monotonic()

    @contextmanager
    def scoring(self):
        """The scorer's run: while it lasts, and IDLE_S after, the scorer is not idle."""
        with self._state() as state:
            state[RUNNING] += 1
        try:
            yield
        finally:
            with self._state() as state:
                state[RUNNING] = max(0, state[RUNNING] - 1)
                state[ENDED] = time.monotonic()

    def out(self) -> int:
        with self._state() as state:
            return state[OUT]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
