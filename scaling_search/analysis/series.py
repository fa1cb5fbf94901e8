"""From coefficients to a model family: the B- and D-series tables, compound vs official.

Every params and MACs figure here is measured on a built network (meta-device
counter), never taken from the published table; the departures of the
official table from pure compound scaling are derived from those measurements.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from ..models import EfficientNetConfig, compound, family_of
from ..models.efficientdet_config import NUM_CLASSES as DET_NUM_CLASSES
from ..models.efficientdet_config import OFFICIAL_D, EfficientDetConfig, official_departures
from ..models.family import base_label
from ..scaling import Coefficients, implied_phi
from .tables import Column, giga, millions, num, percent, ratio

DEFAULT_MAX_PHI = 7


@dataclass(frozen=True)
class Measured:
    params: int
    macs: int


def measure(config) -> Measured:
    from ..flops import count  # torch only when a table is actually measured

    c = count(config)
    return Measured(params=c.params, macs=c.macs)


def _network_columns(config: Any, counts: Measured, b0_macs: int, prefix: str = "") -> dict:
    """A series network's settings, its family's own columns and measured counts (MACs also over its phi = 0
    network's), keys behind ``prefix``."""
    row = {
        "depth": round(config.depth, 4),  # the official multipliers have one decimal: rounding keeps them
        "width": round(config.width, 4),
        "resolution": config.resolution,
        **family_of(config).columns(config),
        "params": counts.params,
        "macs": counts.macs,
        "macs_ratio": round(counts.macs / b0_macs, 4),
    }
    return {prefix + key: value for key, value in row.items()}


def b_series(
    coeffs: Coefficients,
    *,
    max_phi: int = DEFAULT_MAX_PHI,
    base: Any = None,
    multiple: int = 8,
    budget: float = 2.0,
    num_classes: int = 1000,
) -> list[dict]:
    """One row per phi: the compound network of ``base``'s family (EfficientNet B0 by default) and, where
    the family publishes one (EfficientNet's B-phi), the official network, both measured."""
    base = (base or EfficientNetConfig()).with_(num_classes=num_classes)
    family = family_of(base)
    family.check(base)
    base_counts = measure(base)
    official = family.official(num_classes)
    official_b0 = measure(official[0]) if official else None
    rows = []
    for phi in range(max_phi + 1):
        cfg = compound(base, coeffs, phi, multiple)
        m = measure(cfg)
        row = {
            "phi": phi,
            **_network_columns(cfg, m, base_counts.macs),
            "theoretical_ratio": round(coeffs.flops_ratio**phi, 4),
            "target_ratio": round(budget**phi, 4),
        }
        if phi in official:
            off = official[phi]
            om = measure(off)
            row.update(
                {
                    "official": off.name,
                    **_network_columns(off, om, official_b0.macs, "official_"),
                    "official_phi_depth": _round_opt(implied_phi(off.depth, coeffs.alpha)),
                    "official_phi_width": _round_opt(implied_phi(off.width, coeffs.beta)),
                    "official_phi_resolution": _round_opt(
                        implied_phi(off.resolution / official[0].resolution, coeffs.gamma)
                    ),
                    "params_diff": round(m.params / om.params - 1, 4),
                    "macs_diff": round(m.macs / om.macs - 1, 4),
                }
            )
        rows.append(row)
    return rows


def _round_opt(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def b_series_departures(coeffs: Coefficients, rows: list[dict], base: Any = None) -> list[str]:
    """Plain-language notes on where the rounded networks (and the official table) depart from the compound rule."""
    family = family_of(base or EfficientNetConfig())
    notes = []
    one = next((r for r in rows if r["phi"] == 1), None)
    if one is not None:
        rounding = (
            f"per-stage ceil depth rounding takes {rows[0]['blocks']} blocks to {one['blocks']}, and {family.rounding}"
            if "blocks" in one
            else family.rounding
        )
        notes.append(
            f"phi = 1 by the rule (d={one['depth']:g}, w={one['width']:g}, r={one['resolution']}) measures "
            f"{one['macs_ratio']:.2f}x {base_label(base or EfficientNetConfig())}'s MACs against the theoretical "
            f"{coeffs.flops_ratio:.2f}x: {rounding}."
        )
    off = [r for r in rows if "official" in r and r["phi"] > 0]
    if off:
        implied = "; ".join(
            f"{r['official']}: width {_fmt_phi(r['official_phi_width'])}, depth {_fmt_phi(r['official_phi_depth'])}, "
            f"resolution {_fmt_phi(r['official_phi_resolution'])}"
            for r in off
        )
        notes.append(
            "The official B1-B7 are not alpha^phi, beta^phi, gamma^phi at integer phi; "
            f"the phi each dimension implies with these coefficients is {implied}."
        )
        ratios = ", ".join(f"{r['official']} {r['official_macs_ratio']:.2f}x" for r in off)
        notes.append(f"Measured MACs of the official networks over B0: {ratios} (the compound target is 2^phi).")
    return notes


def _fmt_phi(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def b_series_columns(base: Any = None) -> list[Column]:
    """How the series rows of ``base``'s family (default EfficientNet's B-series) read as a table (Markdown, LaTeX)."""
    family = family_of(base or EfficientNetConfig())
    own = list(family.columns(base or EfficientNetConfig()))
    columns = [
        Column("phi", "phi", num),
        Column("depth", "d", num),
        Column("width", "w", num),
        Column("resolution", "res", num),
        Column("blocks", "blocks", num),
        Column("params", "params", millions),
        Column("macs", "GMACs", giga),
        Column("macs_ratio", "MACs/B0", ratio),
        Column("theoretical_ratio", "(abg)^phi", ratio),
        Column("target_ratio", "2^phi", ratio),
        Column("official", "official", num),
        Column("official_depth", "d", num),
        Column("official_width", "w", num),
        Column("official_resolution", "res", num),
        Column("official_params", "params", millions),
        Column("official_macs", "GMACs", giga),
        Column("official_macs_ratio", "MACs/B0", ratio),
        Column("official_phi_width", "phi(w)", num),
        Column("official_phi_depth", "phi(d)", num),
        Column("official_phi_resolution", "phi(r)", num),
        Column("macs_diff", "MACs vs official", percent),
    ]
    if family.official(1):
        return columns
    label = f"MACs/{base_label(base)}"
    return [
        Column(c.key, label if c.header == "MACs/B0" else c.header, c.fmt)
        for c in columns
        if not c.key.startswith("official") and c.key != "macs_diff" and (c.key != "blocks" or "blocks" in own)
    ]


# ------------------------------------------------------------------ D-series


def measure_fvcore(config) -> int:
    from ..flops import count_fvcore  # real compute: only when a table asks for it

    return count_fvcore(config).total


def _det_columns(config: EfficientDetConfig, prefix: str = "") -> dict:
    b = config.backbone
    return {
        f"{prefix}backbone": b.name.removeprefix("efficientnet-") if prefix else f"B{config.phi}",
        f"{prefix}backbone_width": round(b.width, 4),
        f"{prefix}backbone_depth": round(b.depth, 4),
        f"{prefix}resolution": config.resolution,
        f"{prefix}fpn_channels": config.fpn_channels,
        f"{prefix}fpn_layers": config.fpn_layers,
        f"{prefix}head_layers": config.head_layers,
        f"{prefix}fusion": config.fusion,
    }


def d_series(
    coeffs: Coefficients,
    *,
    max_phi: int = DEFAULT_MAX_PHI,
    base: Any = None,
    multiple: int = 8,
    num_classes: int = DET_NUM_CLASSES,
    fvcore: bool = False,
) -> list[dict]:
    """One row per phi: the D-phi formulas on this triple's B-phi, beside the
    official D-phi where one exists, both measured (fvcore totals on request)."""
    why = d_series_unavailable(base)
    if why:
        raise UsageError(why)
    rows = []
    for phi in range(max_phi + 1):
        cfg = EfficientDetConfig.from_formula(phi, coeffs, num_classes=num_classes, base=base, multiple=multiple)
        m = measure(cfg)
        row = {"phi": phi, **_det_columns(cfg), "params": m.params, "macs": m.macs}
        if fvcore:
            row["macs_fvcore"] = measure_fvcore(cfg)
        variant = f"d{phi}"
        if variant in OFFICIAL_D:
            off = EfficientDetConfig.official(variant, num_classes)
            om = measure(off)
            row.update(
                {
                    "official": off.name,
                    **_det_columns(off, "official_"),
                    "official_params": om.params,
                    "official_macs": om.macs,
                }
            )
            if fvcore:
                row["official_macs_fvcore"] = measure_fvcore(off)
            row["params_diff"] = round(m.params / om.params - 1, 4)
            row["macs_diff"] = round(m.macs / om.macs - 1, 4)
            if fvcore:
                row["macs_fvcore_diff"] = round(row["macs_fvcore"] / row["official_macs_fvcore"] - 1, 4)
        rows.append(row)
    return rows


def d_series_unavailable(base: Any) -> str | None:
    """Why no D-series can be made on ``base``'s family (None: it can)."""
    if base is None or family_of(base).detection_backbone:
        return None
    return (
        f"the EfficientDet D-series needs an EfficientNet backbone (its BiFPN takes the stride-8/16/32 stages of "
        f"EfficientNet's stage table); {base.name} has none"
    )


_DEPARTURE_FIELDS = {
    "fpn_channels": "BiFPN width (64 * 1.35^phi to a multiple of 8)",
    "fpn_layers": "BiFPN layers (3 + phi)",
    "head_layers": "head layers (3 + floor(phi / 3))",
    "resolution": "resolution (512 + 128 phi)",
    "backbone": "backbone (B-phi)",
    "fusion": "fusion (fast normalized)",
}


def d_series_departures(coeffs: Coefficients, rows: list[dict]) -> list[str]:
    """Where the official D-table departs from the formulas, and what the
    formula rows' backbones are; limited to the phis in ``rows``."""
    shown = {r["official"] for r in rows if "official" in r}
    notes = [
        f"Formula rows use the compound B-phi of alpha={coeffs.alpha:g}, beta={coeffs.beta:g}, gamma={coeffs.gamma:g} "
        "(width beta^phi, depth alpha^phi) as backbone; official rows use the official EfficientNet named in the table."
    ]
    departures = [d for d in official_departures() if d.model in shown]
    for key, label in _DEPARTURE_FIELDS.items():
        found = [d for d in departures if d.field == key]
        if found:
            where = ", ".join(f"{d.model.removeprefix('efficientdet-')} ({d.formula} -> {d.official})" for d in found)
            notes.append(f"The official table departs from the {label} at {where}.")
    off = [r for r in rows if "official" in r]
    if off:
        widest = max(off, key=lambda r: abs(r["macs_diff"]))
        notes.append(
            f"Largest measured MACs difference, formula vs official: {widest['official']} "
            f"{widest['macs_diff'] * 100:+.1f}% "
            f"(params {widest['params_diff'] * 100:+.1f}%)."
        )
    return notes


def d_series_columns(fvcore: bool = False) -> list[Column]:
    """How the D-series rows read as a table; fvcore columns when the rows have them."""
    columns = [
        Column("phi", "phi", num),
        Column("backbone", "backbone", num),
        Column("backbone_width", "w", num),
        Column("backbone_depth", "d", num),
        Column("resolution", "res", num),
        Column("fpn_channels", "W", num),
        Column("fpn_layers", "BiFPN", num),
        Column("head_layers", "head", num),
        Column("fusion", "fusion", num),
        Column("params", "params", millions),
        Column("macs", "GMACs", giga),
        Column("macs_fvcore", "fvcore G", giga),
        Column("official", "official", num),
        Column("official_backbone", "backbone", num),
        Column("official_resolution", "res", num),
        Column("official_fpn_channels", "W", num),
        Column("official_fpn_layers", "BiFPN", num),
        Column("official_head_layers", "head", num),
        Column("official_fusion", "fusion", num),
        Column("official_params", "params", millions),
        Column("official_macs", "GMACs", giga),
        Column("official_macs_fvcore", "fvcore G", giga),
        Column("params_diff", "params vs official", percent),
        Column("macs_diff", "MACs vs official", percent),
        Column("macs_fvcore_diff", "fvcore vs official", percent),
    ]
    return columns if fvcore else [c for c in columns if "fvcore" not in c.key]


# ------------------------------------------------------------------ data dictionary

# What each column of b_series.csv and d_series.csv means (written into every run folder's COLUMNS.md).
# "official_*" columns describe the published network of the same phi; empty where none exists.
B_SERIES_DESCRIPTIONS = {
    "phi": "compound coefficient: the B-phi network scales depth by alpha^phi, width by beta^phi, resolution by "
    "gamma^phi",
    "depth": "depth multiplier of the compound B-phi (per-stage block counts are ceil(depth * B0's))",
    "width": "width multiplier of the compound B-phi (channels rounded to multiples of 8)",
    "resolution": "input side in pixels of the compound B-phi (base resolution times gamma^phi, rounded)",
    "dropout": "classifier dropout of the compound B-phi (the official schedule's rate for that phi)",
    "blocks": "MBConv blocks of the compound B-phi after depth rounding",
    "params": "parameters of the compound B-phi, measured on the built network",
    "macs": "multiply-adds of one forward pass of the compound B-phi (conv + linear), measured",
    "macs_ratio": "macs over the compound B0's",
    "theoretical_ratio": "(alpha * beta^2 * gamma^2)^phi: the FLOPs multiplier the rule promises",
    "target_ratio": "budget^phi: the multiplier the search aimed at (2^phi for a 2x budget)",
    "official": "the published network of this phi (efficientnet-bN)",
    "official_depth": "depth multiplier of the official network",
    "official_width": "width multiplier of the official network",
    "official_resolution": "input side in pixels of the official network",
    "official_dropout": "classifier dropout of the official network",
    "official_blocks": "MBConv blocks of the official network",
    "official_params": "parameters of the official network, measured on the built network",
    "official_macs": "multiply-adds of the official network, measured",
    "official_macs_ratio": "official_macs over the official B0's",
    "official_phi_depth": "the phi at which alpha^phi equals the official depth multiplier: how far the published "
    "depth is from this phi under these coefficients (empty when alpha is 1)",
    "official_phi_width": "the phi at which beta^phi equals the official width multiplier (empty when beta is 1)",
    "official_phi_resolution": "the phi at which gamma^phi equals the official resolution over B0's 224 px "
    "(empty when gamma is 1)",
    "params_diff": "params / official_params - 1 (0.05 is 5% more)",
    "macs_diff": "macs / official_macs - 1",
}

# The same columns for a family other than EfficientNet (no B-phi, no MBConv).
SERIES_DESCRIPTIONS = {
    "phi": "compound coefficient: the phi network scales depth by alpha^phi, width by beta^phi, resolution by "
    "gamma^phi",
    "depth": "depth multiplier of the phi network (the family rounds block counts)",
    "width": "width multiplier of the phi network (the family rounds channels)",
    "resolution": "input side in pixels (base resolution times gamma^phi, rounded)",
    "dropout": "classifier dropout of the phi network",
    "blocks": "residual blocks of the phi network after depth rounding",
    "params": "parameters of the phi network, measured",
    "macs": "multiply-adds of one forward pass of the phi network (conv + linear), measured",
    "macs_ratio": "macs over the phi = 0 network's",
}

D_SERIES_DESCRIPTIONS = {
    "phi": "compound coefficient of EfficientDet D-phi",
    "backbone": "backbone of the formula row: this run's compound B-phi",
    "backbone_width": "width multiplier of the backbone",
    "backbone_depth": "depth multiplier of the backbone",
    "resolution": "input side in pixels (512 + 128 phi)",
    "fpn_channels": "BiFPN channels (64 * 1.35^phi, to a multiple of 8)",
    "fpn_layers": "BiFPN layers (3 + phi)",
    "head_layers": "box and class head layers (3 + floor(phi / 3))",
    "fusion": "BiFPN feature fusion (fast normalized)",
    "params": "parameters of the formula network, measured on the built network",
    "macs": "multiply-adds of one forward pass of the formula network (conv + linear), measured",
    "macs_fvcore": "fvcore's total operation count of the formula network (conv, BN, pooling, upsampling)",
    "official": "the published network of this phi (efficientdet-dN)",
    "official_backbone": "backbone of the official network (an official EfficientNet)",
    "official_backbone_width": "width multiplier of the official backbone",
    "official_backbone_depth": "depth multiplier of the official backbone",
    "official_resolution": "input side in pixels of the official network",
    "official_fpn_channels": "BiFPN channels of the official network",
    "official_fpn_layers": "BiFPN layers of the official network",
    "official_head_layers": "head layers of the official network",
    "official_fusion": "feature fusion of the official network",
    "official_params": "parameters of the official network, measured",
    "official_macs": "multiply-adds of the official network, measured",
    "official_macs_fvcore": "fvcore's total operation count of the official network",
    "params_diff": "params / official_params - 1",
    "macs_diff": "macs / official_macs - 1",
    "macs_fvcore_diff": "macs_fvcore / official_macs_fvcore - 1",
}
