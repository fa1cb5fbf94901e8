"""Named models and model families.

A family turns a name plus options into a frozen config (no torch needed),
and names the module class that builds it; the class is imported only when a
model is actually built.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import UsageError
from .efficientnet_config import OFFICIAL, EfficientNetConfig, official_config


@dataclass(frozen=True)
class Family:
    name: str
    members: tuple[str, ...]  # registered names, e.g. efficientnet-b0
    configure: Callable[..., Any]  # (name, **options) -> config
    config_type: type
    builder: str  # "module:Class", relative to this package


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> None:
    _FAMILIES[family.name] = family


def _configure_efficientnet(
    name: str,
    *,
    width: float | None = None,
    depth: float | None = None,
    resolution: int | None = None,
    num_classes: int | None = None,
    dropout: float | None = None,
    drop_path: float | None = None,
    **unused: Any,
) -> EfficientNetConfig:
    if name == "efficientnet":
        config = EfficientNetConfig(
            width=1.0 if width is None else width,
            depth=1.0 if depth is None else depth,
            resolution=224 if resolution is None else resolution,
        )
    else:
        if width is not None or depth is not None:
            raise UsageError(f"{name} has fixed width and depth: use 'efficientnet --width W --depth D' for other values")
        config = official_config(name.split("-", 1)[1])
        if resolution is not None:
            config = config.with_(resolution=resolution)
    changes = {k: v for k, v in (("num_classes", num_classes), ("dropout", dropout), ("drop_path", drop_path)) if v is not None}
    return config.with_(**changes) if changes else config


register(
    Family(
        name="efficientnet",
        members=("efficientnet",) + tuple(f"efficientnet-{v}" for v in OFFICIAL),
        configure=_configure_efficientnet,
        config_type=EfficientNetConfig,
        builder=".efficientnet:EfficientNet",
    )
)


def families() -> dict[str, Family]:
    return dict(_FAMILIES)


def model_names() -> list[str]:
    return [m for f in _FAMILIES.values() for m in f.members]


def get_config(name: str, **options: Any):
    """The frozen config for a registered model name (options override its defaults)."""
    for family in _FAMILIES.values():
        if name in family.members:
            return family.configure(name, **options)
    known = ", ".join(model_names())
    raise UsageError(f"unknown model {name!r}: choose one of {known}")


def build(config) -> "Any":
    """Build the torch module for a config returned by ``get_config``."""
    for family in _FAMILIES.values():
        if isinstance(config, family.config_type):
            module_name, cls = family.builder.split(":")
            module = importlib.import_module(module_name, __package__)
            return getattr(module, cls)(config)
    raise TypeError(f"no model family builds {type(config).__name__}")
