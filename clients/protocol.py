"""What the sync and asyncio clients share: endpoints, request building, result parsing,
error classification and the retry schedule. No torch, no OpenCV: only tritonclient + numpy.
"""

from __future__ import annotations

import ipaddress
import random
import re
import socket
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from sampleiqa.contracts import ENSEMBLE, FACE_BOX, FACE_FOUND, IMAGE, SCORE

MAX_MESSAGE = 2**31 - 1
RETRYABLE = {"StatusCode.UNAVAILABLE", "StatusCode.RESOURCE_EXHAUSTED"}
# A server that is (re)starting listens before its models are loaded.
LOADING = ("has no available versions", "is not ready")
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

    def to_dict(self) -> dict:
        return asdict(self)


class TransportError(RuntimeError):
    """The server could not be reached (after retries): the run cannot go on."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6  # tries per request, the first included
    base_s: float = 0.2
    max_s: float = 5.0

    def delays(self):
        """Exponential backoff with full jitter, one delay between each two tries."""
        for k in range(self.attempts - 1):
            yield random.uniform(0, min(self.max_s, self.base_s * 2**k))


@dataclass(frozen=True)
class TLSConfig:
    """PEM file paths (tritonclient reads them)."""

    root_certificates: str | None = None  # CA that signed the server's certificate
    private_key: str | None = None  # client key and certificate chain: mutual TLS
    certificate_chain: str | None = None

    def client_kwargs(self) -> dict:
        return dict(ssl=True, root_certificates=self.root_certificates, private_key=self.private_key,
                    certificate_chain=self.certificate_chain)


def _resolve(endpoint: str) -> list[str]:
    host, _, port = endpoint.rpartition(":")
    host = host.strip("[]")
    try:
        ip = ipaddress.ip_address(host)
        return [f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"]
    except ValueError:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        return [f"[{i[4][0]}]:{port}" if i[0] == socket.AF_INET6 else f"{i[4][0]}:{port}" for i in infos]


def channel_target(urls: str | Sequence[str]) -> str:
    """One gRPC target for one or several HOST:PORT endpoints.

    Several endpoints become a static address list ("ipv4:a:p,b:q") that gRPC's own
    round_robin policy spreads calls over, with per-address reconnects.
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    if not urls:
        raise ValueError("no server endpoint given")
    if len(urls) == 1:
        return urls[0]
    addresses = list(dict.fromkeys(a for u in urls for a in _resolve(u)))
    scheme = "ipv6" if all(a.startswith("[") for a in addresses) else "ipv4"
    if any(a.startswith("[") for a in addresses) and scheme == "ipv4":
        raise ValueError("mixing IPv4 and IPv6 endpoints is not supported")
    return f"{scheme}:" + ",".join(addresses)


def channel_args(round_robin: bool) -> list[tuple]:
    args = [
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]
    if round_robin:
        args.append(("grpc.lb_policy_name", "round_robin"))
    return args


def build_inputs(module, images: Sequence[bytes]):
    """One IMAGE tensor [N, 1] of encoded bytes, for tritonclient.grpc or .grpc.aio."""
    array = np.empty((len(images), 1), dtype=object)
    array[:, 0] = list(images)
    tensor = module.InferInput(IMAGE, list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array)
    return [tensor], [module.InferRequestedOutput(n) for n in (SCORE, FACE_BOX, FACE_FOUND)]


def parse_result(result, n: int) -> list[ScoreResult]:
    scores = result.as_numpy(SCORE).reshape(n)
    boxes = result.as_numpy(FACE_BOX).reshape(n, 4)
    found = result.as_numpy(FACE_FOUND).reshape(n)
    return [ScoreResult(float(scores[i]), bool(found[i]), tuple(int(v) for v in boxes[i])) for i in range(n)]


def classify(exc: Exception) -> tuple[str, str, int | None]:
    """(kind, message, bad item index) for an InferenceServerException.

    kind: "retry" (server unreachable), "timeout", "item" (a bad input), "error" (other).
    """
    status = str(getattr(exc, "status", lambda: "")() or "")
    message = str(getattr(exc, "message", lambda: str(exc))() or exc)
    if status in RETRYABLE or (status == "StatusCode.NOT_FOUND" and any(m in message for m in LOADING)):
        return "retry", message, None
    if status == "StatusCode.DEADLINE_EXCEEDED":
        return "timeout", "[timeout] the request exceeded its deadline", None
    m = _ITEM_ERROR.search(message)
    if m:
        return "item", f"[{m.group(2)}] {m.group(3).strip()}", int(m.group(1))
    return "error", f"[server] {status} {message}".strip(), None


def split_code(message: str) -> str:
    m = re.match(r"\[(\w+)\]", message)
    return m.group(1) if m else "server"


__all__ = ["ENSEMBLE", "RetryPolicy", "ScoreResult", "TLSConfig", "TransportError", "build_inputs",
           "channel_args", "channel_target", "classify", "parse_result", "split_code"]
