"""The server's locked-down defaults, against the real Triton binary: admin APIs behind a
key, inference open without it, and image limits that reach the python-backend stubs."""

from multiprocessing import shared_memory

import cv2
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from sampleiqa.clients import ScoringClient
from sampleiqa.server import DEFAULT_REPOSITORY, TritonServer, free_port

from .helpers import SAMPLES, biq_images


def refused(call) -> str:
    with pytest.raises(InferenceServerException) as e:
        call()
    return e.value.message()


def test_unauthenticated_client_cannot_load_unload_or_register_shared_memory(server, client):
    """The session server runs with TritonServer's defaults, as `sampleiqa serve` does."""
    region = shared_memory.SharedMemory("sampleiqa-test", create=True, size=64)  # /dev/shm/sampleiqa-test
    try:
        with grpcclient.InferenceServerClient(server.url) as c:
            admin = server.admin_headers()
            for call in (
                lambda **kw: c.load_model("scorer", **kw),
                lambda **kw: c.unload_model("scorer", **kw),
                lambda **kw: c.register_system_shared_memory("r", "/sampleiqa-test", 64, **kw),
                lambda **kw: c.get_model_repository_index(**kw),
                lambda **kw: c.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]}, **kw),
            ):
                assert "restricted" in refused(call)
                assert "restricted" in refused(lambda: call(headers={"triton-grpc-protocol-admin-key": "guess"}))
            # Inference needs no key, and the scorer is still loaded.
            assert client.score((SAMPLES / "astronaut.jpg").read_bytes()).face_found
            assert c.is_model_ready("scorer")
            # With the key: the repository index answers, shared memory registers, and
            # loading is still refused, now by --model-control-mode=none.
            assert {m.name for m in c.get_model_repository_index(headers=admin).models} >= {"sampleiqa", "scorer"}
            c.register_system_shared_memory("r", "/sampleiqa-test", 64, headers=admin)
            c.unregister_system_shared_memory("r", headers=admin)
            message = refused(lambda: c.load_model("scorer", headers=admin))
            assert "restricted" not in message and "not allowed" in message
    finally:
        region.close()
        region.unlink()


@pytest.mark.server
def test_http_is_restricted_too_and_limits_reach_the_python_stubs(tmp_path):
    """A second server with HTTP on and small image limits given through its environment."""
    photo = biq_images(1)[0].read_bytes()  # 512x512: 262144 pixels, 22 KB
    server = TritonServer(
        DEFAULT_REPOSITORY,
        http_port=free_port(),
        log_file=tmp_path / "t.log",
        admin_key="a-key-for-this-test",
        env={"SAMPLEIQA_MAX_PIXELS": "200000", "SAMPLEIQA_MAX_BYTES": "200000"},
    )
    with server:
        http = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
        assert "restricted" in refused(lambda: http.get_model_repository_index())
        assert "restricted" in refused(lambda: http.load_model("scorer"))
        assert len(http.get_model_repository_index(headers=server.admin_headers(http=True))) >= 3
        assert http.is_model_ready("sampleiqa")  # health and metadata stay open
        http.close()
        with ScoringClient(server.url) as c:
            big = c.score(photo)
            assert big.error_code == "too_many_pixels" and "over the limit of 200000" in big.error
            small = cv2.imencode(".jpg", cv2.resize(cv2.imdecode(np.frombuffer(photo, np.uint8), 1), (400, 400)))[1]
            assert c.score(small.tobytes()).ok  # 160000 pixels: under both limits
            large = c.score(b"\xff\xd8\xff" + bytes(200_000))
            assert large.error_code == "too_large" and "limit of 200000" in large.error


@pytest.mark.parametrize(
    "args,message",
    [
        (["--admin-key", "short"], "at least 16 characters"),
        (["--tls-cert", "s.crt", "--tls-key", "s.key", "--tls-mutual"], "needs the CA"),
        (["--tls-cert", "s.crt"], "--tls-key"),
    ],
)
def test_serve_refuses_a_weak_or_incomplete_security_setup_before_starting(args, message):
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "sampleiqa.cli", "serve", "--grpc-port", str(free_port()), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and message in res.stderr, res.stderr
