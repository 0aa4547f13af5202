"""gRPC clients for the `sampleiqa` ensemble, the embedded server and the bulk CLI.

Nothing on this path imports torch.
"""

from .client import ScoringClient
from .protocol import RetryPolicy, ScoreResult, TLSConfig, TransportError

__all__ = ["RetryPolicy", "ScoreResult", "ScoringClient", "TLSConfig", "TransportError"]
