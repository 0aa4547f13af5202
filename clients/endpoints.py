"""Where a scoring run sends its requests: the --url endpoints (saying at once when none
answers yet), or an embedded server started for the run; and the client's TLS flags."""

from __future__ import annotations

import sys
import time


def tls_config(args):
    from sampleiqa.clients.protocol import TLSConfig

    if not (args.ssl or args.ssl_root_certs or args.ssl_key or args.ssl_cert):
        return None
    return TLSConfig(args.ssl_root_certs, args.ssl_key, args.ssl_cert)


def server_urls(args):
    """(embedded server or None, endpoints): --url as given, else a server started for this
    run ((None, []) when it cannot start)."""
    from sampleiqa.server import start_embedded

    if args.url:
        say_if_waiting(args.url, args)
        return None, args.url
    server = start_embedded(args.repository, "score", log_file=args.server_log)
    return server, [server.url] if server else []


def say_if_waiting(urls: list[str], args) -> None:
    """A server that does not answer at once: say so now, not after --retry-seconds of silence."""
    import tritonclient.grpc as grpcclient

    tls = tls_config(args)
    with grpcclient.InferenceServerClient(urls[0], **(tls.client_kwargs() if tls else {})) as c:
        try:
            if c.is_server_ready(client_timeout=2):
                return
        except Exception:  # refused, unreachable, TLS mismatch: the client's retries will tell which
            pass
    until = time.strftime("%H:%M:%S", time.localtime(time.time() + args.retry_seconds))
    print(
        f"sampleiqa score: no ready server at {urls[0]} yet; retrying until {until} "
        f"(--retry-seconds {args.retry_seconds:g})",
        file=sys.stderr,
    )
