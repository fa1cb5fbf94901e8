"""EfficientDet as data: the BiFPN topology, the D-series scaling rules and the
official D0-D7 table.

No torch here. The BiFPN is a node list (which earlier nodes feed each new
node) generated for any range of pyramid levels; the modules in ``bifpn.py``
are built from it, so changing the levels needs no new code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import UsageError
from ..scaling import PAPER, Coefficients
from .efficientnet_config import EfficientNetConfig, compound_config, official_config

FUSIONS = ("fast", "sum")  # fast normalized weighted fusion, or a plain sum
NUM_ANCHORS = 9  # 3 scales x 3 aspect ratios per location
NUM_CLASSES = 90  # COCO as the original counts it
CLASS_PRIOR = 0.01  # initial foreground probability of every class output
FUSION_EPS = 1e-4
BACKBONE_MAX_LEVEL = 5  # EfficientNet's last feature map has stride 32 = 2^5

# D-series formulas (EfficientDet paper, eq. 1-3).
FPN_BASE_CHANNELS = 64
FPN_CHANNEL_GROWTH = 1.35
FPN_CHANNEL_MULTIPLE = 8
BASE_RESOLUTION = 512
RESOLUTION_STEP = 128


# ----------------------------------------------------------------- topology


@dataclass(frozen=True)
class BiFPNNode:
    """A fusion node: the pyramid level it outputs and the ids of its inputs.

    Ids 0..L-1 are the layer's inputs (lowest level first); each node gets the
    next id in list order.
    """

    level: int
    inputs: tuple[int, ...]


def bifpn_nodes(min_level: int = 3, max_level: int = 7) -> tuple[BiFPNNode, ...]:
    """One BiFPN layer: a top-down pass, then a bottom-up pass.

    Top-down, each level below the top fuses its input with the (upsampled)
    latest node one level up. Bottom-up, each level above the bottom fuses
    every node it has so far with the (downsampled) latest node one level down.
    """
    _check_levels(min_level, max_level)
    ids: dict[int, list[int]] = {level: [level - min_level] for level in range(min_level, max_level + 1)}
    nodes: list[BiFPNNode] = []

    def add(level: int, inputs: list[int]) -> None:
        ids[level].append(max_level - min_level + 1 + len(nodes))
        nodes.append(BiFPNNode(level, tuple(inputs)))

    for level in range(max_level - 1, min_level - 1, -1):
        add(level, [ids[level][-1], ids[level + 1][-1]])
    for level in range(min_level + 1, max_level + 1):
        add(level, ids[level] + [ids[level - 1][-1]])
    return tuple(nodes)


def bifpn_outputs(nodes: tuple[BiFPNNode, ...], min_level: int, max_level: int) -> tuple[int, ...]:
    """Ids of a layer's outputs, lowest level first: the last node of each level."""
    first = max_level - min_level + 1
    last = {level: level - min_level for level in range(min_level, max_level + 1)}
    for i, node in enumerate(nodes):
        last[node.level] = first + i
    return tuple(last[level] for level in range(min_level, max_level + 1))


def _check_levels(min_level: int, max_level: int) -> None:
    for name, value in (("min_level", min_level), ("max_level", max_level)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise UsageError(f"{name} must be an integer pyramid level, got {value!r}")
    if not 1 <= min_level <= BACKBONE_MAX_LEVEL:
        raise UsageError(f"min_level {min_level} must be a backbone level, 1..{BACKBONE_MAX_LEVEL} (stride 2..32)")
    if max_level <= min_level:
        raise UsageError(f"max_level {max_level} must be above min_level {min_level}")


# ------------------------------------------------------------ scaling rules


def _check_phi(phi: Any) -> int:
    if not isinstance(phi, int) or isinstance(phi, bool) or phi < 0:
        raise UsageError(f"phi must be a non-negative integer (0 for D0, 1 for D1, ...), got {phi!r}")
    return phi


def formula_fpn_channels(phi: int) -> int:
    """BiFPN width W = 64 * 1.35^phi, to the nearest multiple of 8."""
    return (
        int(round(FPN_BASE_CHANNELS * FPN_CHANNEL_GROWTH ** _check_phi(phi) / FPN_CHANNEL_MULTIPLE))
        * FPN_CHANNEL_MULTIPLE
    )


def formula_fpn_layers(phi: int) -> int:
    return 3 + _check_phi(phi)


def formula_head_layers(phi: int) -> int:
    return 3 + _check_phi(phi) // 3


def formula_resolution(phi: int) -> int:
    return BASE_RESOLUTION + RESOLUTION_STEP * _check_phi(phi)


@dataclass(frozen=True)
class OfficialDetEntry:
    backbone: str  # an official EfficientNet variant
    resolution: int
    fpn_channels: int
    fpn_layers: int
    head_layers: int
    fusion: str


# The official D0-D7 table (the one place it lives in the project). Index = phi.
OFFICIAL_D: dict[str, OfficialDetEntry] = {
    "d0": OfficialDetEntry("b0", 512, 64, 3, 3, "fast"),
    "d1": OfficialDetEntry("b1", 640, 88, 4, 3, "fast"),
    "d2": OfficialDetEntry("b2", 768, 112, 5, 3, "fast"),
    "d3": OfficialDetEntry("b3", 896, 160, 6, 4, "fast"),
    "d4": OfficialDetEntry("b4", 1024, 224, 7, 4, "fast"),
    "d5": OfficialDetEntry("b5", 1280, 288, 7, 4, "fast"),
    "d6": OfficialDetEntry("b6", 1280, 384, 8, 5, "sum"),
    "d7": OfficialDetEntry("b6", 1536, 384, 8, 5, "sum"),
}


# ------------------------------------------------------------------ config


@dataclass(frozen=True)
class EfficientDetConfig:
    """One detector: backbone, BiFPN and heads; training settings live elsewhere."""

    backbone: EfficientNetConfig
    fpn_channels: int
    fpn_layers: int
    head_layers: int
    resolution: int  # nominal input size; the layers accept any size
    fusion: str = "fast"
    num_classes: int = NUM_CLASSES
    num_anchors: int = NUM_ANCHORS
    min_level: int = 3
    max_level: int = 7
    phi: int | None = None
    name: str = "efficientdet"
    nodes: tuple[BiFPNNode, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for key in ("fpn_channels", "fpn_layers", "head_layers", "resolution", "num_classes", "num_anchors"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UsageError(f"{key} must be a positive integer, got {value!r}")
        if self.fusion not in FUSIONS:
            raise UsageError(f"fusion {self.fusion!r} is unknown: use one of {', '.join(FUSIONS)}")
        if self.phi is not None:
            _check_phi(self.phi)
        object.__setattr__(self, "nodes", bifpn_nodes(self.min_level, self.max_level))

    @property
    def backbone_levels(self) -> tuple[int, ...]:
        """Levels taken from the backbone; the ones above are pooled from the last."""
        return tuple(range(self.min_level, min(self.max_level, BACKBONE_MAX_LEVEL) + 1))

    @property
    def num_levels(self) -> int:
        return self.max_level - self.min_level + 1

    def with_(self, **changes: Any) -> EfficientDetConfig:
        return replace(self, **changes)

    @classmethod
    def from_formula(
        cls,
        phi: int,
        coefficients: Coefficients = PAPER,
        *,
        num_classes: int = NUM_CLASSES,
        base: EfficientNetConfig | None = None,
        multiple: int = 8,
    ) -> EfficientDetConfig:
        """D-phi by the paper's rules, on the compound B-phi of ``coefficients``."""
        _check_phi(phi)
        c = coefficients
        return cls(
            backbone=compound_config(c, phi, base, multiple),
            fpn_channels=formula_fpn_channels(phi),
            fpn_layers=formula_fpn_layers(phi),
            head_layers=formula_head_layers(phi),
            resolution=formula_resolution(phi),
            fusion="fast",
            num_classes=num_classes,
            phi=phi,
            name=f"efficientdet(phi={phi},alpha={c.alpha:g},beta={c.beta:g},gamma={c.gamma:g})",
        )

    @classmethod
    def official(cls, variant: str, num_classes: int = NUM_CLASSES) -> EfficientDetConfig:
        """The published ``efficientdet-<variant>`` (d0..d7)."""
        if variant not in OFFICIAL_D:
            raise UsageError(f"unknown EfficientDet variant {variant!r}: choose one of {', '.join(OFFICIAL_D)}")
        e = OFFICIAL_D[variant]
        return cls(
            backbone=official_config(e.backbone),
            fpn_channels=e.fpn_channels,
            fpn_layers=e.fpn_layers,
            head_layers=e.head_layers,
            resolution=e.resolution,
            fusion=e.fusion,
            num_classes=num_classes,
            phi=int(variant[1:]),
            name=f"efficientdet-{variant}",
        )


# -------------------------------------------------------------- departures


@dataclass(frozen=True)
class Departure:
    """One field where the official table differs from the formulas."""

    model: str
    field: str
    formula: Any
    official: Any

    def __str__(self) -> str:
        return f"{self.model}: {self.field} {self.formula} by the formula, {self.official} in the table"


def official_departures() -> list[Departure]:
    """Every (model, field) where the official D-table departs from the formulas.

    The backbone departs when the table names another B than B-phi; the
    formula's own backbone (alpha^phi, ... of some coefficients) differing
    from the official B-phi is a B-series matter, measured in the tables.
    """
    out = []
    for variant, e in OFFICIAL_D.items():
        phi = int(variant[1:])
        formula = {
            "backbone": f"b{phi}",
            "resolution": formula_resolution(phi),
            "fpn_channels": formula_fpn_channels(phi),
            "fpn_layers": formula_fpn_layers(phi),
            "head_layers": formula_head_layers(phi),
            "fusion": "fast",
        }
        for key, value in formula.items():
            if getattr(e, key) != value:
                out.append(Departure(f"efficientdet-{variant}", key, value, getattr(e, key)))
    return out


def class_prior_bias(prior: float = CLASS_PRIOR) -> float:
    """Class-output bias so that sigmoid(bias) = prior at initialisation."""
    return -math.log((1 - prior) / prior)
