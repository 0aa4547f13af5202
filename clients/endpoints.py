"""Where a scoring run sends its requests: the --url endpoints (saying at once when none
answers yet), or an embedded server started for the run. Takes a job's fields (job.py)."""

from __future__ import annotations

import sys
import time
from pathlib import Path


def server_urls(urls, tls, retry_seconds: float, repository: str | Path, server_log: str | None):
    """(embedded server or None, endpoints): `urls` as given, else a server started for this
    run ((None, []) when it cannot start)."""
    from sampleiqa.server import start_embedded

    if urls:
        say_if_waiting(list(urls), tls, retry_seconds)
        return None, list(urls)
    server = start_embedded(repository, "score", log_file=server_log)
    return server, [server.url] if server else []


def say_if_waiting(urls: list[str], tls, retry_seconds: float) -> None:
    """A server that does not answer at once: say so now, not after --retry-seconds of silence."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(urls[0], **(tls.client_kwargs() if tls else {})) as c:
        try:
            if c.is_server_ready(client_timeout=2):
                return
        except Exception:  # refused, unreachable, TLS mismatch: the client's retries will tell which
            pass
    until = time.strftime("%H:%M:%S", time.localtime(time.time() + retry_seconds))
    print(
        f"sampleiqa score: no ready server at {urls[0]} yet; retrying until {until} "
        f"(--retry-seconds {retry_seconds:g})",
        file=sys.stderr,
    )
