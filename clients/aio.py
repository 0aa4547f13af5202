"""asyncio gRPC client for the `sampleiqa` ensemble, for services that already run an event loop.

    async with AsyncScoringClient("127.0.0.1:8001") as client:
        result = await client.score(data)

Its endpoints are re-resolved as the sync client's are (channels.py), the lookup in a thread
so that a slow DNS server does not stall the event loop.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Hashable, Iterable, Sequence

import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from .protocol import (
    ENSEMBLE,
    Attempt,
    ClientBase,
    RetryPolicy,
    ScoreResult,
    TLSConfig,
    TransportError,
    build_inputs,
    classify,
    failure_outcome,
    parse_result,
)


class AsyncScoringClient(ClientBase):
    def __init__(
        self,
        urls: str | Sequence[str] = "127.0.0.1:8001",
        timeout_s: float = 60.0,
        retry: RetryPolicy = RetryPolicy(),
        tls: TLSConfig | None = None,
        model: str = ENSEMBLE,
        refresh_s: float | None = None,
    ):
        super().__init__(grpcaio, urls, timeout_s, retry, tls, model, refresh_s)

    async def close(self) -> None:
        for client in self.channels.take_all():
            await client.close()

    async def __aenter__(self) -> "AsyncScoringClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _infer(self, images: Sequence[bytes]):
        inputs, outputs = build_inputs(grpcaio, images)
        attempt = Attempt(self.retry)
        unreachable = False
        while True:
            await self._refresh(unreachable)
            try:
                return await self._client.infer(self.model, inputs, outputs=outputs, client_timeout=self.timeout_s)
            except InferenceServerException as exc:
                kind = classify(exc)[0]
                unreachable = kind == "retry"
                # Probe readiness only for a missing model (see ClientBase.backoff).
                ready = kind == "loading" and await self._server_ready()
                await asyncio.sleep(self.backoff(exc, attempt, lambda: ready))

    async def _refresh(self, unreachable: bool) -> None:
        """As ScoringClient._refresh; the one task that claims the refresh resolves."""
        if self.channels.due(unreachable):
            addresses = await asyncio.get_running_loop().run_in_executor(None, self.channels.resolve)
            for client in self.channels.swap(addresses):
                await client.close()

    async def _server_ready(self) -> bool:
        try:
            return await self._client.is_server_ready()
        except InferenceServerException:
            return False

    async def score_batch(self, images: Sequence[bytes]) -> list[ScoreResult]:
        """As ScoringClient.score_batch: a bad item is isolated and the rest still score."""
        if not images:
            return []
        try:
            return parse_result(await self._infer(images), len(images))
        except InferenceServerException as exc:
            bad, failed = failure_outcome(exc, len(images))
            if bad is None:
                return [failed] * len(images)
            return await self.score_batch(images[:bad]) + [failed] + await self.score_batch(images[bad + 1 :])

    async def score(self, image: bytes) -> ScoreResult:
        return (await self.score_batch([image]))[0]

    async def score_many(
        self, items: Iterable[tuple[Hashable, bytes]], concurrency: int = 8
    ) -> AsyncIterator[tuple[Hashable, ScoreResult]]:
        """(key, result) pairs as they complete, at most `concurrency` in flight."""
        iterator = iter(items)
        pending: set[asyncio.Task] = set()

        async def one(key, data):
            return key, await self.score(data)

        try:
            while True:
                for key, data in iterator:
                    pending.add(asyncio.ensure_future(one(key, data)))
                    if len(pending) >= concurrency:
                        break
                if not pending:
                    return
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    yield task.result()
        finally:
            for task in pending:
                task.cancel()


__all__ = ["AsyncScoringClient", "TransportError"]
