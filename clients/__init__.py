"""gRPC clients for the `sampleiqa` ensemble, the embedded server and the bulk CLI.

Nothing on this path imports torch. The exports load on first use, so that training code
importing `sampleiqa.progress` does not need tritonclient.
"""

from importlib import import_module

_EXPORTS = {
    "ScoringClient": ".client",
    "RetryPolicy": ".protocol",
    "ScoreResult": ".protocol",
    "TLSConfig": ".protocol",
    "TransportError": ".protocol",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name], __name__), name)
