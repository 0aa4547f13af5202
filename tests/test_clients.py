"""Client behaviour that needs more than one server: backoff while a server starts, and
gRPC round_robin over several endpoints."""

import threading
import time

import pytest
import tritonclient.grpc as grpcclient

from sampleiqa.clients import RetryPolicy, ScoringClient, TransportError
from sampleiqa.clients.protocol import channel_target
from sampleiqa.clients.server import DEFAULT_REPOSITORY, TritonServer, free_port

from .conftest import SAMPLES

pytestmark = pytest.mark.server


def test_channel_target_lists_every_endpoint():
    assert channel_target("127.0.0.1:8001") == "127.0.0.1:8001"
    assert channel_target(["127.0.0.1:8001", "127.0.0.2:9001"]) == "ipv4:127.0.0.1:8001,127.0.0.2:9001"
    assert channel_target(["localhost:8001", "127.0.0.1:8002"]).startswith("ipv")


def test_requests_are_retried_until_a_late_server_is_up(tmp_path):
    port = free_port()
    results = []

    def score_early():  # sent before the server exists; must wait for it
        with ScoringClient(f"127.0.0.1:{port}", retry=RetryPolicy(attempts=200, base_s=0.2, max_s=0.5)) as c:
            try:
                results.append(c.score((SAMPLES / "astronaut.jpg").read_bytes()))
            except Exception as exc:
                results.append(exc)

    caller = threading.Thread(target=score_early)
    t0 = time.monotonic()
    caller.start()
    time.sleep(1.0)
    # Started from this (main) thread: the server's parent-death signal follows its starter.
    with TritonServer(DEFAULT_REPOSITORY, grpc_port=port, log_file=tmp_path / "t.log"):
        caller.join(120)
    assert len(results) == 1 and getattr(results[0], "ok", False) and results[0].face_found, results
    assert time.monotonic() - t0 > 1.0  # it really waited for the server


def test_round_robin_spreads_requests_over_servers(server, tmp_path):
    second = TritonServer(DEFAULT_REPOSITORY, log_file=tmp_path / "t2.log").start()
    try:
        def count(url):
            with grpcclient.InferenceServerClient(url) as c:
                stats = c.get_inference_statistics("sampleiqa", as_json=True)["model_stats"][0]
                return int(stats["inference_count"]) if "inference_count" in stats else 0

        before = [count(server.url), count(second.url)]
        data = (SAMPLES / "coffee.jpg").read_bytes()
        with ScoringClient([server.url, second.url]) as c:
            results = [c.score(data) for _ in range(20)]
        assert all(r.ok for r in results)
        deadline = time.monotonic() + 5
        while True:  # statistics are updated just after the response is sent
            served = [count(server.url) - before[0], count(second.url) - before[1]]
            if sum(served) >= 20 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert sum(served) == 20 and min(served) >= 5, served
    finally:
        second.stop()


def _openssl(*args, cwd):
    import subprocess

    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def test_tls_client_talks_to_a_tls_server(tmp_path):
    """A throwaway CA and server certificate for 127.0.0.1, made here with openssl."""
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=tmp_path)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
             "-out", "server.csr", cwd=tmp_path)
    (tmp_path / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "1", "-extfile", "ext.cnf", "-out", "server.crt", cwd=tmp_path)
    tls_args = ["--grpc-use-ssl=true", f"--grpc-server-cert={tmp_path / 'server.crt'}",
                f"--grpc-server-key={tmp_path / 'server.key'}", f"--grpc-root-cert={tmp_path / 'ca.crt'}"]
    from sampleiqa.clients import TLSConfig

    server = TritonServer(DEFAULT_REPOSITORY, log_file=tmp_path / "t.log", extra_args=tls_args,
                          tls=TLSConfig(str(tmp_path / "ca.crt")))
    with server:
        data = (SAMPLES / "astronaut.jpg").read_bytes()
        with ScoringClient(server.url, tls=TLSConfig(str(tmp_path / "ca.crt"))) as c:
            assert c.score(data).ok
        with ScoringClient(server.url, retry=RetryPolicy(attempts=1)) as plain:
            with pytest.raises(TransportError):
                plain.score(data)  # plaintext is refused by a TLS server
