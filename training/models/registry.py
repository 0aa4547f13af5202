"""The model registry: configs are data, `create_model(name)` is the one entry point (as in timm).

A model family (a config class) registers the function that builds its scorer and the
training pipeline that trains it (`register_family`: "prior" for training/prior/, "pixel" for
training/pixel/); each model registers its config (`register`). Retired names still build, with
a FutureWarning that names what to use instead, as timm's `_registry.py` does with its
`_deprecated_models`: the from-scratch pixel models that no config in training/configs/ and no
shipped checkpoint uses. Study designs still compared held out stay (training/models/prior.py).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

DEFAULT_MODEL = "lite0_swin"  # the shipped model (training/weights/, biq2021_default.toml)


@dataclass(frozen=True)
class Family:
    pipeline: str  # the training pipeline's package under training/: "prior" | "pixel"
    build: Callable[[Any, bool], nn.Module]  # (config, pretrained) -> a scorer
    stages: tuple[str, ...]  # the stage kinds its pipeline trains


_FAMILIES: dict[type, Family] = {}
_REGISTRY: dict[str, Any] = {}
_deprecated_models: dict[str, str] = {}  # retired name -> the model to use instead


def register_family(config_type: type, pipeline: str, stages: tuple[str, ...]):
    """Decorator for a family's builder: `@register_family(ScorerConfig, pipeline="pixel", stages=(...))`."""

    def decorate(build: Callable[[Any, bool], nn.Module]):
        _FAMILIES[config_type] = Family(pipeline, build, stages)
        return build

    return decorate


def register(cfg, deprecated: str | None = None):
    """Register a model's config under its name; `deprecated`: the model to use instead."""
    if type(cfg) not in _FAMILIES:
        raise TypeError(f"{type(cfg).__name__} has no registered family (register_family)")
    _REGISTRY[cfg.name] = cfg
    if deprecated:
        _deprecated_models[cfg.name] = deprecated
    return cfg


def list_models(include_deprecated: bool = False) -> list[str]:
    return sorted(n for n in _REGISTRY if include_deprecated or n not in _deprecated_models)


def deprecated_models() -> dict[str, str]:
    """Retired name -> the model to use instead."""
    return dict(_deprecated_models)


def get_config(name: str):
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(list_models())}") from None


def family_of(name: str) -> Family:
    return _FAMILIES[type(get_config(name))]


def pipeline_of(name: str) -> str:
    """The training pipeline of a registered model: "prior" or "pixel"."""
    return family_of(name).pipeline


def check_stages(name: str, stages) -> None:
    """A run's stages are kinds that the model's pipeline trains; ValueError naming the others."""
    family = family_of(name)
    wrong = [s.name for s in stages if s.kind not in family.stages]
    if wrong:
        kinds = "/".join(family.stages)
        raise ValueError(f"stages {wrong}: a {family.pipeline} model ({name}) trains {kinds} stages")


def create_model(name: str = DEFAULT_MODEL, twin: bool = False, pretrained: bool = True, **overrides) -> nn.Module:
    """A scorer by registered name. `pretrained` (prior models only): load the packaged
    ImageNet weights into the trunk; a checkpoint that carries them passes False. `overrides`
    replace fields of the registered config (a checkpoint's own config)."""
    cfg = get_config(name)
    if name in _deprecated_models:
        warnings.warn(
            f"model {name!r} is retired and will be removed; use {_deprecated_models[name]!r}",
            FutureWarning,
            stacklevel=2,
        )
    if overrides:
        cfg = type(cfg)(**{**cfg.to_dict(), **overrides})
    scorer = family_of(name).build(cfg, pretrained)
    if twin:
        from .twin import TwinScorer

        return TwinScorer(scorer)
    return scorer
