from .swin import ScorerConfig, SwinScorer, TwinScorer, create_model, get_config, list_models, register

__all__ = ["ScorerConfig", "SwinScorer", "TwinScorer", "create_model", "get_config", "list_models", "register"]
