"""What the sync and asyncio clients share: endpoints (kept current by channels.py), request
building, result parsing, error classification and the retry schedule. No torch, no OpenCV:
only tritonclient + numpy.
"""

from __future__ import annotations

import random
import re
import threading
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from sampleiqa.runtime.contracts import ENSEMBLE, FACE_BOX, FACE_FOUND, IMAGE, SCORE

from .channels import REFRESH_S, Channels, channel_args, channel_target

RETRYABLE = {"StatusCode.UNAVAILABLE", "StatusCode.RESOURCE_EXHAUSTED"}
# Triton's answer when a model's queue is at its bound (max_queue_size): the server is up and
# busy. Retried with backoff for as long as the server keeps answering; never a row.
_BUSY = re.compile(r"[Ee]xceeds maximum queue size")
# A python-backend stub that died (OOM killer): the launcher restarts the server; until then
# the server answers, but every request through that instance fails.
_UNHEALTHY = re.compile(r"Stub process (?:'[^']*' )?is not healthy")
_ITEM_ERROR = re.compile(r"item (\d+): \[(\w+)\] (.*)", re.S)


@dataclass(frozen=True)
class ScoreResult:
    score: float | None = None
    face_found: bool | None = None
    face_box: tuple[int, int, int, int] | None = None  # x, y, w, h in original pixels
    status: str = "ok"  # "ok" | "error"
    error_code: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def failure(cls, code: str, message: str) -> "ScoreResult":
        return cls(status="error", error_code=code, error=message)


class TransportError(RuntimeError):
    """The server could not be reached (after retries): the run cannot go on."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6  # tries per request, the first included
    base_s: float = 0.2
    max_s: float = 5.0
    # When set, retry for this long instead of `attempts` times: long enough to outlast a
    # server restart (Triton takes ~10-20 s to load the models here, longer on a GPU host).
    seconds: float | None = None
    # Tries for a request the server answered with a failure that is not the image's
    # ([server], [timeout]); after them each image gets its row with that code.
    failed_attempts: int = 3
    # A refusal from a busy server: backoff from busy_base_s, doubling up to busy_max_s, with
    # full jitter. Unbounded in count: the server answers, so the work will be taken.
    busy_base_s: float = 0.05
    busy_max_s: float = 2.0

    def delays(self):
        """Exponential backoff with full jitter, one delay between each two tries."""
        deadline = None if self.seconds is None else time.monotonic() + self.seconds
        k = 0
        while k < self.attempts - 1 if deadline is None else time.monotonic() < deadline:
            delay = random.uniform(0, min(self.max_s, self.base_s * 2 ** min(k, 30)))
            yield delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic()))
            k += 1

    def describe(self) -> str:
        return f"{self.attempts} tries" if self.seconds is None else f"retrying for {self.seconds:g}s"


@dataclass(frozen=True)
class TLSConfig:
    """PEM file paths (tritonclient reads them)."""

    root_certificates: str | None = None  # CA that signed the server's certificate
    private_key: str | None = None  # client key and certificate chain: mutual TLS
    certificate_chain: str | None = None

    def client_kwargs(self) -> dict:
        return dict(
            ssl=True,
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )


def build_inputs(module, images: Sequence[bytes]):
    """One IMAGE tensor [N, 1] of encoded bytes, for tritonclient.grpc or .grpc.aio."""
    array = np.empty((len(images), 1), dtype=object)
    array[:, 0] = list(images)
    tensor = module.InferInput(IMAGE, list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array)
    return [tensor], [module.InferRequestedOutput(n) for n in (SCORE, FACE_BOX, FACE_FOUND)]


NON_FINITE = ScoreResult.failure("non_finite", "[non_finite] the scorer gave no finite score for this image")


def parse_result(result, n: int) -> list[ScoreResult]:
    scores = result.as_numpy(SCORE).reshape(n)
    boxes = result.as_numpy(FACE_BOX).reshape(n, 4)
    found = result.as_numpy(FACE_FOUND).reshape(n)
    return [
        ScoreResult(float(scores[i]), bool(found[i]), tuple(int(v) for v in boxes[i]))
        if np.isfinite(scores[i])
        else NON_FINITE
        for i in range(n)
    ]


def classify(exc: Exception) -> tuple[str, str, int | None]:
    """(kind, message, bad item index) for an InferenceServerException.

    kind: "busy" (refused by a full queue: back-pressure), "retry" (server unreachable),
    "loading" (model not found: retry only while the server is not ready), "timeout",
    "item" (a bad input), "error" (other).
    """
    status = str(getattr(exc, "status", lambda: "")() or "")
    message = str(getattr(exc, "message", lambda: str(exc))() or exc)
    if status in RETRYABLE and _BUSY.search(message):
        return "busy", message, None
    if status in RETRYABLE or _UNHEALTHY.search(message):
        return "retry", message, None
    if status == "StatusCode.NOT_FOUND":  # a missing model, or a (re)starting server still loading it
        return "loading", message, None
    if status == "StatusCode.DEADLINE_EXCEEDED":
        return "timeout", "[timeout] the request exceeded its deadline", None
    m = _ITEM_ERROR.search(message)
    if m:
        return "item", f"[{m.group(2)}] {m.group(3).strip()}", int(m.group(1))
    return "error", f"[server] {status} {message}".strip(), None


class ClientBase:
    """Construction shared by the sync and asyncio clients; `module` is tritonclient.grpc or .grpc.aio."""

    def __init__(
        self,
        module,
        urls: str | Sequence[str],
        timeout_s: float,
        retry: RetryPolicy,
        tls: TLSConfig | None,
        model: str,
        refresh_s: float | None = None,
    ):
        """`refresh_s`: how often, at most, the endpoints are re-resolved (see Channels)."""
        self.timeout_s = timeout_s
        self.retry = retry
        self.model = model
        self.refusals = 0  # requests the server refused as busy, each retried (not a row)
        self._count_lock = threading.Lock()
        self.channels = Channels(module, urls, dict(tls.client_kwargs() if tls else {}), timeout_s, refresh_s)

    @property
    def _client(self):
        """The client for the next try: read anew for each, as a refresh may swap it."""
        return self.channels.client

    @property
    def endpoint_changes(self) -> int:
        """How often a re-resolution found other addresses (for a run's summary)."""
        return self.channels.changes

    def backoff(self, exc: Exception, attempt: "Attempt", server_ready) -> float:
        """Seconds to wait before retrying `exc`; re-raises what retrying cannot fix or what
        has used its tries, and raises TransportError once the server stays unreachable.
        `server_ready` is called only for a missing model: a ready server without it will
        not grow it by waiting."""
        kind, message, _ = classify(exc)
        if kind == "busy":  # not a transport failure: it does not use the unreachable-server budget
            with self._count_lock:
                self.refusals += 1
            attempt.busy += 1
            return random.uniform(0, min(self.retry.busy_max_s, self.retry.busy_base_s * 2 ** min(attempt.busy, 30)))
        if kind in ("timeout", "error"):  # answered, but not about the image: a few more tries
            attempt.failed += 1
            if attempt.failed >= self.retry.failed_attempts:
                raise exc
            return random.uniform(0, self.retry.base_s * 2**attempt.failed)
        if kind not in ("retry", "loading") or (kind == "loading" and server_ready()):
            raise exc
        delay = next(attempt.delays, None)
        if delay is None:
            raise TransportError(f"server unavailable after {self.retry.describe()}: {message}") from None
        return delay


class InFlightWindow:
    """How many requests a client keeps in flight against a server that refuses work: AIMD,
    as TCP adapts to loss. A refusal halves the window (at most once per round trip: a burst
    of refusals is one signal); each answered request grows it by 1/window, about one per
    round trip, up to the caller's concurrency. Without it every waiting request retries on
    its own and the server spends its CPU refusing them (3,300 refusals for 400 photos at 256
    in flight: perf/results/memory-under-load.md)."""

    def __init__(self, cap: int):
        self.cap = max(1, cap)
        self.limit = float(self.cap)
        self.in_flight = 0
        self.round_trip_s = 0.2  # a moving estimate of an answered request's time
        self._last_cut = 0.0
        self._cond = threading.Condition()

    def acquire(self) -> float:
        with self._cond:
            while self.in_flight >= int(self.limit):
                self._cond.wait()
            self.in_flight += 1
        return time.monotonic()

    def release(self, started: float, refused: bool) -> None:
        now = time.monotonic()
        with self._cond:
            self.in_flight -= 1
            if refused:
                if now - self._last_cut > self.round_trip_s:
                    self.limit, self._last_cut = max(1.0, self.limit / 2), now
            else:
                self.round_trip_s = 0.8 * self.round_trip_s + 0.2 * (now - started)
                self.limit = min(float(self.cap), self.limit + 1 / self.limit)
            self._cond.notify_all()


class Attempt:
    """The retry state of one request."""

    def __init__(self, policy: RetryPolicy):
        self.delays = policy.delays()
        self.failed = 0
        self.busy = 0


def failure_outcome(exc: Exception, n: int) -> tuple[int | None, ScoreResult]:
    """After a failed request of n items: (index of the one bad item to cut out, or None
    when the whole request failed; the error result for it / for every item)."""
    kind, message, bad = classify(exc)
    failed = ScoreResult.failure(split_code(message), message)
    if kind == "item" and bad is not None and 0 <= bad < n:
        return bad, failed
    return None, failed


def split_code(message: str) -> str:
    m = re.match(r"\[(\w+)\]", message)
    return m.group(1) if m else "server"


__all__ = [
    "ENSEMBLE",
    "REFRESH_S",
    "Attempt",
    "ClientBase",
    "RetryPolicy",
    "ScoreResult",
    "TLSConfig",
    "TransportError",
    "build_inputs",
    "channel_args",
    "channel_target",
    "classify",
    "failure_outcome",
    "parse_result",
    "split_code",
]
