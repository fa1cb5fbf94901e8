"""What a family of networks must say to be searched and extrapolated.

A family is data plus a handful of pure functions over its frozen config:
how compound multipliers become a network (the family's own rounding lives in
its config module), its params and MACs, and a signature that is equal exactly
when two configs build the same network. The candidate builder, the measured
constraint, the series tables, ``flops``, ``export`` and kept weights ask the
family through the helpers below and never name a family's stage table.

Every config of a scalable family has ``width``, ``depth``, ``resolution``,
``num_classes`` and ``name`` fields and a ``with_(**changes)`` method.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ..scaling import Coefficients, ScaledDims, extrapolate


@dataclass(frozen=True)
class Counts:
    """Trainable parameters and conv + linear multiply-adds of one forward pass at the config's resolution."""

    params: int
    macs: int


@dataclass(frozen=True)
class ScalableFamily:
    """The functions a searchable family provides; one instance per config type."""

    name: str
    config_type: type
    # (baseline config, dims of one compound step relative to it) -> the scaled config.
    scale: Callable[[Any, ScaledDims], Any]
    counts: Callable[[Any], Counts]
    # Equal signatures build the same network (resolution aside, which the plan adds).
    signature: Callable[[Any], Hashable]
    # The family's own columns of a series row (e.g. dropout, blocks), in table order.
    columns: Callable[[Any], dict]
    rounding: str  # how multipliers become channels and blocks, in words (series notes)
    base_label: str | None = None  # the phi = 0 network's name in column headers, e.g. B0; None: its config's name
    # Published members by phi (e.g. EfficientNet b0..b7), given the class count.
    official: Callable[[int], dict[int, Any]] = field(default=lambda num_classes: {})
    detection_backbone: bool = False  # an EfficientDet D-series can be built on it
    # (config, baseline) -> its real depth, width, resolution multipliers after rounding; None: the family cannot say.
    effective: Callable[[Any, Any], Any] = field(default=lambda config, base: None)
    # Refuses a baseline the search would be meaningless on (a user's function that does not build or grow).
    check: Callable[[Any], None] = field(default=lambda config: None)


def check_common(config: Any) -> None:
    """The checks every scalable config makes of its shared fields (width, depth, resolution, classes, dropouts)."""
    from ..errors import UsageError

    for key in ("width", "depth"):
        value = getattr(config, key)
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise UsageError(f"{key} must be a positive number, got {value!r}")
    if not isinstance(config.resolution, int) or isinstance(config.resolution, bool) or config.resolution <= 0:
        raise UsageError(f"resolution must be a positive integer number of pixels, got {config.resolution!r}")
    if not isinstance(config.num_classes, int) or config.num_classes < 1:
        raise UsageError(f"num_classes must be a positive integer, got {config.num_classes!r}")
    for key in ("dropout", "drop_path"):
        value = getattr(config, key, 0.0)
        if not 0.0 <= value < 1.0:
            raise UsageError(f"{key} must be in [0, 1), got {value!r}")


_SCALABLE: list[ScalableFamily] = []


def register_scalable(family: ScalableFamily) -> None:
    _SCALABLE.append(family)


def scalable_of(config: Any) -> ScalableFamily | None:
    """The family that scales ``config``, or None (a detector, say)."""
    for family in _SCALABLE:
        if type(config) is family.config_type:
            return family
    return None


def family_of(config: Any) -> ScalableFamily:
    family = scalable_of(config)
    if family is None:
        from ..errors import UsageError

        raise UsageError(f"{getattr(config, 'name', type(config).__name__)} is not a network family that scales")
    return family


def base_label(config: Any) -> str:
    """How tables name ``config`` as the phi = 0 network (B0 for EfficientNet)."""
    return family_of(config).base_label or config.name


def compound(base: Any, coeffs: Coefficients, phi: float, multiple: int = 8) -> Any:
    """``base`` scaled by alpha^phi in depth, beta^phi in width, gamma^phi in resolution (to ``multiple`` px)."""
    return family_of(base).scale(base, extrapolate(coeffs, phi, base.resolution, multiple))


@lru_cache(maxsize=65536)
def _macs(config: Any) -> int:
    return family_of(config).counts(config).macs


def measured_ratio(coeffs: Coefficients, base: Any, multiple: int = 8) -> float:
    """MACs of the rounded phi = 1 network at its own resolution over the baseline's.

    Families count in closed form where they can (a measured-constraint grid asks for thousands of points).
    """
    return _macs(compound(base, coeffs, 1, multiple)) / _macs(base)


def network_key(coeffs: Coefficients, base: Any, multiple: int = 8) -> tuple[Hashable, int]:
    """What makes two candidates one network: the family's signature of the phi = 1 network and its input size."""
    config = compound(base, coeffs, 1, multiple)
    return family_of(config).signature(config), config.resolution
