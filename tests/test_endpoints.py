"""Endpoints re-resolved while a client runs (issue 24): a name that gains a pod (an HPA
scale-out) and loses one (a rollout), through real name resolution (/etc/hosts) and two
real Triton servers on one port, at 127.0.0.2 and 127.0.0.3. Where requests went is read
from each server's own inference statistics."""

from __future__ import annotations

import asyncio
import os
import secrets
import time

import pytest
import tritonclient.grpc as grpcclient

from sampleiqa.clients import ScoringClient
from sampleiqa.server import DEFAULT_REPOSITORY, TritonServer, free_port

from .helpers import all_running, biq_images

pytestmark = pytest.mark.server

HOSTS = "/etc/hosts"
REFRESH_S = 1.0
PHOTOS = 8


class HostsName:
    """A unique name in /etc/hosts, pointed at the given addresses; its lines removed at the end.

    Written in place from offset 0, never truncated first: the lines before ours are the
    same bytes, so a process resolving `localhost` meanwhile still finds it (/etc/hosts may
    be a bind mount, which a rename cannot replace)."""

    def __init__(self):
        self.name = f"sampleiqa-test-{secrets.token_hex(4)}.test"

    def _write(self, lines: list[str]) -> None:
        with open(HOSTS) as f:
            kept = [line for line in f.read().splitlines(keepends=True) if not self._ours(line)]
        if kept and not kept[-1].endswith("\n"):
            kept[-1] += "\n"
        data = "".join(kept + lines).encode()
        fd = os.open(HOSTS, os.O_WRONLY)
        try:
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)

    def _ours(self, line: str) -> bool:
        return self.name in line.split()

    def point(self, *addresses: str) -> None:
        self._write([f"{a} {self.name}\n" for a in addresses])

    def remove(self) -> None:
        self._write([])


@pytest.fixture
def hosts():
    if not os.access(HOSTS, os.W_OK):
        pytest.skip(f"{HOSTS} is not writable")
    with open(HOSTS) as f:
        before = f.read()
    name = HostsName()
    try:
        yield name
    finally:
        name.remove()
        with open(HOSTS) as f:
            assert f.read() == before, f"{HOSTS} changed"


@pytest.fixture(scope="module")
def pods(tmp_path_factory):
    """Two servers on one port at 127.0.0.2 and 127.0.0.3: two pods behind a headless Service."""
    logs = tmp_path_factory.mktemp("pods")
    port = free_port()
    servers = [
        TritonServer(DEFAULT_REPOSITORY, host=host, grpc_port=port, log_file=logs / f"{host}.log", supervise=False)
        for host in ("127.0.0.2", "127.0.0.3")
    ]
    with all_running(servers):
        yield servers


@pytest.fixture(scope="module")
def photos():
    return [(p.name, p.read_bytes()) for p in biq_images(PHOTOS)]


def successes(server) -> int:
    """Requests the server's `sampleiqa` ensemble answered successfully."""
    with grpcclient.InferenceServerClient(server.url) as c:
        stats = c.get_inference_statistics(model_name="sampleiqa", as_json=True)["model_stats"][0]
    return int(stats.get("inference_stats", {}).get("success", {}).get("count", 0))


def settle(servers, total: int) -> list[int]:
    """Each server's count once they add up to `total` (statistics follow the response)."""
    deadline = time.monotonic() + 10
    while True:
        counts = [successes(s) for s in servers]
        if sum(counts) >= total or time.monotonic() > deadline:
            return counts
        time.sleep(0.1)


def score_all(client, photos) -> list:
    """One request alone first: it re-resolves (when due) before any other is sent, so that
    every request of the round goes to the addresses resolved now."""
    first = client.score(photos[0][1])
    results = [first] + [r for _, r in client.score_many(photos[1:], concurrency=4)]
    assert len(results) == len(photos) and all(r.ok for r in results), results
    return results


def test_a_url_list_follows_the_name_it_holds(pods, hosts, photos):
    a, b = pods
    hosts.point(a.host)
    counts = settle(pods, 0)
    with ScoringClient([f"{hosts.name}:{a.grpc_port}", a.url], refresh_s=REFRESH_S) as client:
        score_all(client, photos)
        counts, before = settle(pods, sum(counts) + PHOTOS), counts
        assert counts[1] == before[1], "a request reached 127.0.0.3 before the name did"

        hosts.point(b.host)  # the name now holds the other pod: the list is both
        time.sleep(REFRESH_S + 0.2)
        score_all(client, photos)
        counts, before = settle(pods, sum(counts) + PHOTOS), counts
        assert counts[1] > before[1], f"no request reached the name's new address: {before} -> {counts}"
        assert client.endpoint_changes == 1

        refreshes = client.channels.refreshes
        hosts.remove()  # a DNS hiccup: the name does not resolve; the channel stays as it was
        time.sleep(REFRESH_S + 0.2)
        score_all(client, photos)
        counts, before = settle(pods, sum(counts) + PHOTOS), counts
        assert counts[1] > before[1], f"a failed lookup dropped an address: {before} -> {counts}"
        assert client.channels.refreshes > refreshes and client.endpoint_changes == 1


def test_the_asyncio_client_follows_a_name_too(pods, hosts, photos):
    from sampleiqa.clients.aio import AsyncScoringClient

    a, b = pods
    few = photos[:4]

    async def score(client):
        results = [await client.score(few[0][1])] + [r async for _, r in client.score_many(few[1:], concurrency=2)]
        assert all(r.ok for r in results), results

    async def run():
        async with AsyncScoringClient(f"{hosts.name}:{a.grpc_port}", refresh_s=REFRESH_S) as client:
            await score(client)
            hosts.point(b.host)
            await asyncio.sleep(REFRESH_S + 0.2)
            await score(client)
            return client.endpoint_changes

    hosts.point(a.host)
    counts = settle(pods, 0)
    assert asyncio.run(run()) == 1
    assert settle(pods, sum(counts) + 2 * len(few)) == [counts[0] + len(few), counts[1] + len(few)]


def test_a_name_gains_a_pod_and_loses_one_and_every_request_is_answered(pods, hosts, photos):
    a, b = pods
    hosts.point(a.host)
    counts = settle(pods, 0)
    with ScoringClient(f"{hosts.name}:{a.grpc_port}", refresh_s=REFRESH_S) as client:
        score_all(client, photos)
        counts, before = settle(pods, sum(counts) + PHOTOS), counts
        assert counts[1] == before[1], "a request reached 127.0.0.3 before the name did"

        hosts.point(a.host, b.host)  # scale-out: a second pod behind the name
        time.sleep(REFRESH_S + 0.2)
        score_all(client, photos)
        counts, before = settle(pods, sum(counts) + PHOTOS), counts
        assert counts[1] > before[1], f"no request reached the new pod: {before} -> {counts}"

        hosts.point(b.host)  # a rollout replaced the first pod: it is still up, but no longer named
        time.sleep(REFRESH_S + 0.2)
        score_all(client, photos)
        counts, before = settle(pods, sum(counts) + PHOTOS), counts
        assert counts == [before[0], before[1] + PHOTOS], f"requests still reach the old pod: {before} -> {counts}"
        assert client.endpoint_changes == 2

        a.stop()  # and then it goes away: the swapped-out channel must not matter
        score_all(client, photos)
        assert settle([b], counts[1] + PHOTOS) == [counts[1] + PHOTOS]
        assert client.endpoint_changes == 2
