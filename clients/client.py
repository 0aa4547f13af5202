"""Synchronous gRPC client for the `sampleiqa` ensemble. Its endpoints are re-resolved every
refresh_s (30 s) from the request path: pods added or replaced behind a name get traffic
(channels.py).

    from sampleiqa.clients import ScoringClient
    with ScoringClient(["10.0.0.5:8001", "10.0.0.6:8001"]) as client:
        result = client.score(open("photo.jpg", "rb").read())
        for key, result in client.score_many(((p, p.read_bytes()) for p in paths), concurrency=8):
            ...
"""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Hashable, Iterable, Iterator, Sequence

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from .protocol import (
    ENSEMBLE,
    Attempt,
    ClientBase,
    InFlightWindow,
    RetryPolicy,
    ScoreResult,
    TLSConfig,
    build_inputs,
    classify,
    failure_outcome,
    parse_result,
)


class ScoringClient(ClientBase):
    def __init__(
        self,
        urls: str | Sequence[str] = "127.0.0.1:8001",
        timeout_s: float = 60.0,
        retry: RetryPolicy = RetryPolicy(),
        tls: TLSConfig | None = None,
        model: str = ENSEMBLE,
        refresh_s: float | None = None,
    ):
        super().__init__(grpcclient, urls, timeout_s, retry, tls, model, refresh_s)
        self._window: InFlightWindow | None = None  # set by score_many

    def close(self) -> None:
        for client in self.channels.take_all():
            client.close()

    def __enter__(self) -> "ScoringClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def is_ready(self) -> bool:
        try:
            return self._client.is_server_ready() and self._client.is_model_ready(self.model)
        except InferenceServerException:
            return False

    def _infer(self, images: Sequence[bytes]):
        """One request; retried with backoff while the server is unreachable."""
        inputs, outputs = build_inputs(grpcclient, images)
        attempt = Attempt(self.retry)
        unreachable = False
        while True:
            self._refresh(unreachable)
            window = self._window
            started = window.acquire() if window else 0.0
            refused = False
            try:  # self._client read after the window's wait: a retired client is not used late
                return self._client.infer(self.model, inputs, outputs=outputs, client_timeout=self.timeout_s)
            except InferenceServerException as exc:
                kind = classify(exc)[0]
                refused, unreachable = kind == "busy", kind == "retry"
                delay = self.backoff(exc, attempt, self._server_ready)
            finally:
                if window:
                    window.release(started, refused)
            time.sleep(delay)

    def _refresh(self, unreachable: bool) -> None:
        """Re-resolve the endpoints when due (one thread; the others go on with the current
        channel) and close swapped-out clients that no request can still be using."""
        if self.channels.due(unreachable):
            for client in self.channels.swap(self.channels.resolve()):
                client.close()

    def _server_ready(self) -> bool:
        try:
            return self._client.is_server_ready()
        except InferenceServerException:
            return False

    def score_batch(self, images: Sequence[bytes]) -> list[ScoreResult]:
        """Score several images in one request. A bad item costs only itself: the server names
        it, and the rest are re-sent around it, so every good image still gets its score."""
        if not images:
            return []
        try:
            return parse_result(self._infer(images), len(images))
        except InferenceServerException as exc:
            bad, failed = failure_outcome(exc, len(images))
            if bad is None:
                return [failed] * len(images)
            return self.score_batch(images[:bad]) + [failed] + self.score_batch(images[bad + 1 :])

    def score(self, image: bytes) -> ScoreResult:
        return self.score_batch([image])[0]

    def score_many(
        self, items: Iterable[tuple[Hashable, bytes]], concurrency: int = 8, batch_size: int = 1
    ) -> Iterator[tuple[Hashable, ScoreResult]]:
        """Score (key, bytes) pairs with at most `concurrency` requests in flight; yields
        (key, result) as they complete. Items are read from the iterable lazily.
        Raises TransportError when the server stays unreachable."""
        exhausted = False
        pending: dict[Future, list[Hashable]] = {}
        iterator = iter(items)

        def next_batch():
            batch = []
            for key, data in iterator:
                batch.append((key, data))
                if len(batch) == batch_size:
                    break
            return batch

        self._window = InFlightWindow(concurrency)  # fewer in flight while the server refuses work
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="sampleiqa-score") as pool:
            try:
                while True:
                    while len(pending) < concurrency and not exhausted:
                        batch = next_batch()
                        if not batch:
                            exhausted = True
                            break
                        keys = [k for k, _ in batch]
                        pending[pool.submit(self.score_batch, [d for _, d in batch])] = keys
                    if not pending:
                        return
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        keys = pending.pop(future)
                        for key, result in zip(keys, future.result()):
                            yield key, result
            finally:
                for future in pending:
                    future.cancel()
                self._window = None
