"""The gRPC channel to the endpoints, kept current: targets, channel arguments, and the
re-resolution that lets a running job reach pods added by an autoscaler or replaced in a
rollout (a DNS target alone is re-resolved by gRPC only after a connection fails; an
address list never). No background thread: each client re-resolves from its request path.
"""

from __future__ import annotations

import ipaddress
import math
import socket
import threading
import time
from typing import Sequence

MAX_MESSAGE = 2**31 - 1  # what we send: images up to the server's byte limit, in batches
MAX_RESPONSE = 16 * 1024 * 1024  # what we accept back: a few numbers per image
REFRESH_S = 30.0  # how often, at most, the endpoints are re-resolved
MIN_REFRESH_S = 1.0  # sooner after a request found no server, but not on every retry
RETIRE_GRACE_S = 5.0  # past timeout_s, before a swapped-out channel is closed


def _resolve(endpoint: str) -> list[str]:
    host, _, port = endpoint.rpartition(":")
    host = host.strip("[]")
    try:
        ip = ipaddress.ip_address(host)
        return [f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"]
    except ValueError:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        return [f"[{i[4][0]}]:{port}" if i[0] == socket.AF_INET6 else f"{i[4][0]}:{port}" for i in infos]


def resolve_all(urls: Sequence[str]) -> tuple[str, ...]:
    """Every address the endpoints resolve to now, each once, in the order found. Raises
    OSError (socket.gaierror) when a name does not resolve."""
    return tuple(dict.fromkeys(a for u in urls for a in _resolve(u)))


def address_list(addresses: Sequence[str]) -> str:
    """A static gRPC address list ("ipv4:a:p,b:q") that round_robin spreads calls over."""
    scheme = "ipv6" if all(a.startswith("[") for a in addresses) else "ipv4"
    if any(a.startswith("[") for a in addresses) and scheme == "ipv4":
        raise ValueError("mixing IPv4 and IPv6 endpoints is not supported")
    return f"{scheme}:" + ",".join(addresses)


def channel_target(urls: str | Sequence[str]) -> str:
    """One gRPC target for one or several HOST:PORT endpoints.

    One endpoint stays as given: gRPC resolves a name itself (and TLS checks the name).
    Several become a static address list, with per-address reconnects.
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    if not urls:
        raise ValueError("no server endpoint given")
    return urls[0] if len(urls) == 1 else address_list(resolve_all(urls))


def channel_args() -> list[tuple]:
    """round_robin even for one endpoint: a name that resolves to several addresses (a
    Kubernetes headless Service) is spread over all of them, not pinned to the first."""
    args = [
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.max_receive_message_length", MAX_RESPONSE),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2_000),
        ("grpc.lb_policy_name", "round_robin"),
    ]
    return args


class Channels:
    """The tritonclient client (`module`: tritonclient.grpc or .grpc.aio) to the endpoints,
    replaced by a new one when their addresses change. Thread-safe: many requests read
    `client` while one re-resolves. A lookup that fails (a DNS hiccup) keeps the current
    client. A replaced client is closed only once no request can still be on it.

    `refresh_s`: how often, at most, to re-resolve (None: REFRESH_S, read now so that tests
    can set it; math.inf: only after a request found no server). Settable afterwards."""

    def __init__(
        self,
        module,
        urls: str | Sequence[str],
        client_kwargs: dict,
        timeout_s: float | None,
        refresh_s: float | None = None,
    ):
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("no server endpoint given")
        self.refresh_s = REFRESH_S if refresh_s is None else refresh_s
        self.refreshes = 0  # lookups made
        self.changes = 0  # of them, those that found other addresses (a new client each)
        self._module = module
        self._kwargs = dict(channel_args=channel_args(), **client_kwargs)
        self._linger_s = (math.inf if timeout_s is None else timeout_s) + RETIRE_GRACE_S
        self._lock = threading.Lock()
        self._last = time.monotonic()
        # A name that does not resolve yet (a headless Service with no ready pod) is not an
        # error for one endpoint: gRPC keeps resolving it. A list needs its addresses now.
        self._addresses = self.resolve() if len(self.urls) == 1 else resolve_all(self.urls)
        self.client = self._connect(self._addresses)
        self._retired: list[tuple[float, object]] = []  # (close after, replaced client)

    def _connect(self, addresses: Sequence[str] | None):
        target = self.urls[0] if len(self.urls) == 1 else address_list(addresses)
        return self._module.InferenceServerClient(target, **self._kwargs)

    def resolve(self) -> tuple[str, ...] | None:
        """The endpoints' addresses, or None when a name does not resolve."""
        try:
            return resolve_all(self.urls)
        except (OSError, ValueError):  # ValueError: a malformed endpoint, left to gRPC as before
            return None

    def due(self, unreachable: bool = False) -> bool:
        """True for the one caller that should re-resolve now: every refresh_s, or after a
        request found no server, MIN_REFRESH_S apart (every address of a list may be gone)."""
        wait = min(self.refresh_s, MIN_REFRESH_S) if unreachable else self.refresh_s
        if time.monotonic() < self._last + wait:  # the common case, without the lock
            return False
        with self._lock:
            now = time.monotonic()
            if now < self._last + wait:
                return False
            self._last = now
            self.refreshes += 1
            return True

    def swap(self, addresses: tuple[str, ...] | None) -> list:
        """Put a new client in place when the addresses changed (None: keep the current one).
        Returns replaced clients now safe to close: a request sent on one just before its
        swap ends within timeout_s, and its retries take the new one."""
        now = time.monotonic()
        with self._lock:
            if addresses is not None and set(addresses) != set(self._addresses or ()):
                try:
                    client = self._connect(addresses)
                except ValueError:  # a list now mixing IPv4 and IPv6: keep the current client
                    client = None
                if client is not None:
                    self._retired.append((now + self._linger_s, self.client))
                    self.client, self._addresses = client, addresses  # one assignment: atomic for readers
                    self.changes += 1
            idle = [c for t, c in self._retired if t <= now]
            self._retired = [(t, c) for t, c in self._retired if t > now]
        return idle

    def take_all(self) -> list:
        """The current client and every replaced one, to close them all."""
        with self._lock:
            clients, self._retired = [self.client] + [c for _, c in self._retired], []
        return clients


__all__ = ["REFRESH_S", "Channels", "address_list", "channel_args", "channel_target", "resolve_all"]
