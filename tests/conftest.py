"""Fixtures and hooks: one real Triton server for the session, and the `unit` marker.
What tests share that is not a fixture (paths, photos, the CLI runner) is in tests/helpers.py."""

from __future__ import annotations

import pytest

# Markers of tests that start something slow or heavy; a test with none of them is `unit`
# (`pytest -m unit`: the fast loop, under a minute; plain `pytest` and CI run everything).
SLOW_MARKERS = ("server", "ray", "s3", "training", "export", "perf", "soak", "slow")

# Fixtures that start something: a test that asks for one (even through another fixture)
# gets its marker here, so that it needs no mark of its own.
FIXTURE_MARKERS = {
    "server": "server",  # below: the committed repository on the real Triton binary
    "client": "server",  # below: a client of that server
    "tight": "server",  # test_backpressure.py: a Triton with tiny queue bounds
    "pods": "server",  # test_endpoints.py: two Tritons behind one name
    "pod": "server",  # test_deploy.py: `sampleiqa serve` as the pod runs it
    "replicas": "server",  # test_ray.py: two Tritons
    "cluster": "ray",  # test_ray.py: `ray start` head and worker
    "s3": "s3",  # test_storage.py: a moto S3 server
}


@pytest.hookimpl(tryfirst=True)  # before `-m` selects on the markers
def pytest_collection_modifyitems(config, items):
    for item in items:
        for name in item.fixturenames:
            if name in FIXTURE_MARKERS and not item.get_closest_marker(FIXTURE_MARKERS[name]):
                item.add_marker(FIXTURE_MARKERS[name])
        if not any(item.get_closest_marker(m) for m in SLOW_MARKERS):
            item.add_marker("unit")


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """The committed CPU repository served by the real Triton binary on loopback."""
    from sampleiqa.server import DEFAULT_REPOSITORY, TritonServer

    log = tmp_path_factory.mktemp("triton") / "triton.log"
    with TritonServer(DEFAULT_REPOSITORY, log_file=log) as s:
        yield s


@pytest.fixture(scope="session")
def client(server):
    from sampleiqa.clients import ScoringClient

    with ScoringClient(server.url, timeout_s=60) as c:
        yield c
