"""Client behaviour that needs more than one server: backoff while a server starts, and
gRPC round_robin over several endpoints."""

import threading
import time

import pytest
import tritonclient.grpc as grpcclient

from sampleiqa.clients import RetryPolicy, ScoringClient, TransportError
from sampleiqa.clients.protocol import channel_target
from sampleiqa.server import DEFAULT_REPOSITORY, TritonServer, free_port

from .helpers import SAMPLES


def test_channel_target_lists_every_endpoint():
    assert channel_target("127.0.0.1:8001") == "127.0.0.1:8001"
    assert channel_target(["127.0.0.1:8001", "127.0.0.2:9001"]) == "ipv4:127.0.0.1:8001,127.0.0.2:9001"
    assert channel_target(["localhost:8001", "127.0.0.1:8002"]).startswith("ipv")


@pytest.mark.server
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


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl."""
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        cwd=d,
    )
    (d / "server.cnf").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    (d / "client.cnf").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            cwd=d,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            f"{name}.cnf",
            "-out",
            f"{name}.crt",
            cwd=d,
        )
    return {p.stem + p.suffix.replace(".", "_"): str(p) for p in d.iterdir()}


@pytest.mark.server
def test_tls_client_talks_to_a_tls_server(pki, tmp_path):
    from sampleiqa.clients import TLSConfig
    from sampleiqa.server import ServerTLS

    server = TritonServer(
        DEFAULT_REPOSITORY, log_file=tmp_path / "t.log", tls=ServerTLS(pki["server_crt"], pki["server_key"])
    )
    with server:
        data = (SAMPLES / "astronaut.jpg").read_bytes()
        with ScoringClient(server.url, tls=TLSConfig(pki["ca_crt"])) as c:
            assert c.score(data).ok
        with ScoringClient(server.url, retry=RetryPolicy(attempts=1)) as plain:
            with pytest.raises(TransportError):
                plain.score(data)  # plaintext is refused by a TLS server


@pytest.mark.server
def test_mutual_tls_through_serve_and_score_flags(pki, tmp_path):
    """`sampleiqa serve --tls-mutual` accepts `sampleiqa score` with a client certificate and
    refuses a client that has the CA but no certificate of its own."""
    import subprocess
    import sys

    from sampleiqa.clients import TLSConfig

    port = free_port()
    serve = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sampleiqa.cli",
            "serve",
            "--grpc-port",
            str(port),
            "--log-file",
            str(tmp_path / "t.log"),
            "--tls-cert",
            pki["server_crt"],
            "--tls-key",
            pki["server_key"],
            "--tls-ca",
            pki["ca_crt"],
            "--tls-mutual",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in serve.stderr:  # serve prints this once Triton is ready
            if "SampleIQA serving on" in line:
                break
        else:
            pytest.fail("serve did not start")
        url = f"127.0.0.1:{port}"
        out = tmp_path / "scores.csv"
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "sampleiqa.cli",
                "score",
                str(SAMPLES / "astronaut.jpg"),
                "--url",
                url,
                "--out",
                str(out),
                "--tls-ca",
                pki["ca_crt"],
                "--tls-cert",
                pki["client_crt"],
                "--tls-key",
                pki["client_key"],
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert res.returncode == 0, res.stderr
        assert out.read_text().splitlines()[1].split(",")[-2] == "ok"
        data = (SAMPLES / "astronaut.jpg").read_bytes()
        with ScoringClient(url, tls=TLSConfig(pki["ca_crt"]), retry=RetryPolicy(attempts=1)) as no_cert:
            with pytest.raises(TransportError):
                no_cert.score(data)  # the handshake fails without a client certificate
    finally:
        serve.terminate()
        serve.wait(60)
