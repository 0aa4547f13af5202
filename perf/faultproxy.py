"""A fault-injecting HTTP/1.1 proxy on loopback, in front of a real S3 server (moto).

Requests for objects (GET and HEAD of a key) can be delayed (`latency_s`), listings too
(`list_latency_s`: a slow listing of a large bucket), and a share of object requests
(`fail_rate`) fail the way an object store fails under load, in turn:
- `reset`: the TCP connection is reset (RST) before any answer;
- `slowdown`: 503 with S3's `SlowDown` error body;
- `stall`: no answer for `stall_s`, then the connection is closed.
Everything else is passed through unchanged, keep-alive included. Counters say what was
done, so a test can show that faults really happened.
"""

from __future__ import annotations

import http.client
import random
import socket
import socketserver
import struct
import threading
import time
from collections import Counter

SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>fault</RequestId></Error>"
)
KINDS = ("reset", "slowdown", "stall")


class FaultProxy:
    def __init__(
        self,
        upstream_port: int,
        fail_rate: float = 0.0,
        latency_s: float = 0.0,
        stall_s: float = 5.0,
        seed: int = 0,
        list_latency_s: float = 0.0,
    ):
        self.upstream_port, self.fail_rate, self.latency_s, self.stall_s = upstream_port, fail_rate, latency_s, stall_s
        self.list_latency_s = list_latency_s
        self.random = random.Random(seed)
        self.counts: Counter = Counter()
        self.lock = threading.Lock()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                proxy._serve(self.request)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _fault(self) -> str | None:
        with self.lock:
            self.counts["object requests"] += 1
            if self.random.random() >= self.fail_rate:
                return None
            kind = KINDS[sum(self.counts[k] for k in KINDS) % len(KINDS)]
            self.counts[kind] += 1
            return kind

    def _serve(self, client: socket.socket) -> None:
        upstream = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
        reader = client.makefile("rb")
        try:
            while True:
                request = _read_request(reader)
                if request is None:
                    return
                method, target, headers, body = request
                if "list-type" in target:
                    time.sleep(self.list_latency_s)
                if _is_object(method, target):
                    if self.latency_s:
                        time.sleep(self.latency_s)
                    fault = self._fault()
                    if fault == "reset":
                        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        return
                    if fault == "stall":
                        time.sleep(self.stall_s)
                        return
                    if fault == "slowdown":
                        client.sendall(_response(503, "Slow Down", {"Content-Type": "application/xml"}, SLOWDOWN))
                        continue
                upstream.request(method, target, body=body, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                kept = {
                    k: v
                    for k, v in answer.getheaders()
                    if k.lower() not in ("transfer-encoding", "connection", "content-length")
                }
                if method == "HEAD":  # a HEAD's length is the object's, with no body
                    kept["Content-Length"] = answer.getheader("Content-Length", "0")
                client.sendall(_response(answer.status, answer.reason, kept, data, head=method == "HEAD"))
        except (OSError, http.client.HTTPException):
            return
        finally:
            upstream.close()
            client.close()


def _is_object(method: str, target: str) -> bool:
    """GET or HEAD of a key (bucket/key), not a listing or a bucket."""
    path, _, query = target.partition("?")
    return method in ("GET", "HEAD") and "/" in path.strip("/") and "list-type" not in query


def _read_request(reader) -> tuple[str, str, dict, bytes] | None:
    line = reader.readline()
    if not line:
        return None
    method, target, _ = line.decode("latin-1").split(" ", 2)
    headers = {}
    while (line := reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip()] = value.strip()
    length = int(next((v for k, v in headers.items() if k.lower() == "content-length"), 0))
    if any(k.lower() == "transfer-encoding" for k in headers):
        raise http.client.HTTPException("chunked requests are not proxied")
    return method, target, headers, reader.read(length) if length else b""


def _response(status: int, reason: str, headers: dict, body: bytes, head: bool = False) -> bytes:
    if not head:
        headers = {**headers, "Content-Length": str(len(body))}
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode("latin-1") + (b"" if head else body)
