"""Scorers by registered name (registry.py); importing the package registers every family."""

from . import prior, swin  # noqa: F401  (each registers its family and models)
from .registry import (
    DEFAULT_MODEL,
    check_stages,
    create_model,
    deprecated_models,
    get_config,
    list_models,
    pipeline_of,
    register,
)
from .swin import ScorerConfig, SwinScorer
from .twin import TwinScorer

__all__ = [
    "DEFAULT_MODEL",
    "ScorerConfig",
    "SwinScorer",
    "TwinScorer",
    "check_stages",
    "create_model",
    "deprecated_models",
    "get_config",
    "list_models",
    "pipeline_of",
    "register",
]
