"""Named models and model families.

A family turns a name plus options into a frozen config (no torch needed),
and names the module class that builds it; the class is imported only when a
model is actually built.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from ..scaling import PAPER, Coefficients
from .efficientdet_config import NUM_CLASSES as DET_NUM_CLASSES
from .efficientdet_config import OFFICIAL_D, EfficientDetConfig
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
    _reject(name, unused, ("phi", "alpha", "beta", "gamma"), "they scale detectors: use 'efficientdet --phi K'")
    if name == "efficientnet":
        config = EfficientNetConfig(
            width=1.0 if width is None else width,
            depth=1.0 if depth is None else depth,
            resolution=224 if resolution is None else resolution,
        )
    else:
        if width is not None or depth is not None:
            raise UsageError(
                f"{name} has fixed width and depth: use 'efficientnet --width W --depth D' for other values"
            )
        config = official_config(name.split("-", 1)[1])
        if resolution is not None:
            config = config.with_(resolution=resolution)
    changes = {
        k: v for k, v in (("num_classes", num_classes), ("dropout", dropout), ("drop_path", drop_path)) if v is not None
    }
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


def _reject(name: str, options: dict[str, Any], keys: tuple[str, ...], why: str) -> None:
    given = [k for k in keys if options.get(k) is not None]
    if given:
        raise UsageError(f"{name} takes no {', '.join(given)}: {why}")


def _configure_efficientdet(
    name: str,
    *,
    phi: int | None = None,
    alpha: float | None = None,
    beta: float | None = None,
    gamma: float | None = None,
    resolution: int | None = None,
    num_classes: int | None = None,
    **unused: Any,
) -> EfficientDetConfig:
    _reject(name, unused, ("width", "depth"), "detectors are scaled by phi (and the backbone by alpha, beta, gamma)")
    classes = DET_NUM_CLASSES if num_classes is None else num_classes
    if name == "efficientdet":
        if phi is None:
            raise UsageError(
                "efficientdet needs phi: e.g. 'efficientdet --phi 3' (optionally --alpha/--beta/--gamma for the "
                "backbone)"
            )
        coeffs = Coefficients(
            PAPER.alpha if alpha is None else alpha,
            PAPER.beta if beta is None else beta,
            PAPER.gamma if gamma is None else gamma,
        )
        config = EfficientDetConfig.from_formula(phi, coeffs, num_classes=classes)
    else:
        variant = name.split("-", 1)[1]
        _reject(
            name,
            {"phi": phi, "alpha": alpha, "beta": beta, "gamma": gamma},
            ("phi", "alpha", "beta", "gamma"),
            f"it is the official configuration; use 'efficientdet --phi {variant[1:]}' for the formula",
        )
        config = EfficientDetConfig.official(variant, classes)
    return config if resolution is None else config.with_(resolution=resolution)


register(
    Family(
        name="efficientdet",
        members=("efficientdet",) + tuple(f"efficientdet-{v}" for v in OFFICIAL_D),
        configure=_configure_efficientdet,
        config_type=EfficientDetConfig,
        builder=".efficientdet:EfficientDet",
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


def build(config) -> Any:
    """Build the torch module for a config returned by ``get_config``."""
    for family in _FAMILIES.values():
        if isinstance(config, family.config_type):
            module_name, cls = family.builder.split(":")
            module = importlib.import_module(module_name, __package__)
            return getattr(module, cls)(config)
    raise TypeError(f"no model family builds {type(config).__name__}")
