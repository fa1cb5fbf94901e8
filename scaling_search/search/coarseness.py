"""How coarse a plan is at its base: what the coefficients really buy once the network is rounded.

At a reduced base (a quarter-width, quarter-depth B0, say) per-stage depth
rounding and the 8-channel floor turn many coefficients into the same
network, and a wide nominal range into a narrow real one: alpha from 1 to 2
may build 7 to 10 blocks (1x to 1.43x). ``coarseness`` says so before any
training, for ``candidates`` and the start of ``run``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..models import compound, family_of
from .plan import Plan

# Warn when the effective range of depth or width spans less than this fraction of the nominal range.
COMPRESSION_WARNING = 0.5


@dataclass(frozen=True)
class Axis:
    """One coefficient over the plan's candidates: the nominal range, and the range of what the networks really have."""

    name: str
    what: str  # how the effective value is measured
    nominal: tuple[float, float]
    effective: tuple[float, float]

    @property
    def fraction(self) -> float | None:
        """Effective span over nominal span; None when the nominal range is a single value."""
        span = self.nominal[1] - self.nominal[0]
        return None if span <= 0 else (self.effective[1] - self.effective[0]) / span


@dataclass(frozen=True)
class Coarseness:
    candidates: int
    networks: int
    depths: tuple[int, ...]  # distinct block counts of the networks
    base_blocks: int
    axes: tuple[Axis, ...]

    def lines(self) -> list[str]:
        out = [
            f"at this base: {self.candidates} candidates build {self.networks} distinct networks with "
            f"{len(self.depths)} distinct depths ({', '.join(str(d) for d in self.depths)} blocks; the baseline "
            f"has {self.base_blocks})"
        ]
        for a in self.axes:
            frac = "" if a.fraction is None else f", {a.fraction:.0%} of the nominal span"
            out.append(
                f"  {a.name}: nominal {a.nominal[0]:g}-{a.nominal[1]:g}, effective {a.effective[0]:.3f}-"
                f"{a.effective[1]:.3f} ({a.what}){frac}"
            )
        return out

    def warnings(self) -> list[str]:
        out = []
        for a in self.axes:
            if a.name in ("alpha", "beta") and a.fraction is not None and a.fraction < COMPRESSION_WARNING:
                out.append(
                    f"warning: at this base {a.name} {a.nominal[0]:g}-{a.nominal[1]:g} really spans only "
                    f"{a.effective[0]:.3f}-{a.effective[1]:.3f} ({a.fraction:.0%} of the nominal range, below "
                    f"{COMPRESSION_WARNING:.0%}): the search can say little about {_dimension(a.name)}, and its "
                    "coefficients are labels more than multipliers; a larger base width and depth separates "
                    "them"
                )
        return out

    def to_dict(self) -> dict:
        return {
            "candidates": self.candidates,
            "networks": self.networks,
            "depths": list(self.depths),
            "base_blocks": self.base_blocks,
            "axes": {
                a.name: {"nominal": list(a.nominal), "effective": list(a.effective), "fraction": a.fraction}
                for a in self.axes
            },
            "warnings": self.warnings(),
        }


def _dimension(name: str) -> str:
    return {"alpha": "depth", "beta": "width", "gamma": "resolution"}[name]


def coarseness(plan: Plan, base: Any) -> Coarseness | None:
    """The plan's on-budget candidates (the paper's triple when off budget is left out) at ``base``; None when
    ``base``'s family cannot say what its networks really multiply (a user's function)."""
    family = family_of(base)
    classes = [c for c in plan.classes if not c.reference]
    members = [m for c in classes for m in c.members if not m.reference]
    real = []
    for c in classes:
        config = compound(base, c.representative.coefficients, 1, plan.multiple)
        effective = family.effective(config, base)
        if effective is None:
            return None
        real.append((effective, family.columns(config).get("blocks", 0)))
    fields = (
        ("alpha", "depth", "blocks over the baseline's"),
        ("beta", "width", "MACs-weighted channel ratio"),
        ("gamma", "resolution", "input side over the baseline's"),
    )
    axes = []
    for name, attr, what in fields:
        nominal = [getattr(m.coefficients, name) for m in members]
        effective = [getattr(e, attr) for e, _ in real]
        axes.append(Axis(name, what, (min(nominal), max(nominal)), (min(effective), max(effective))))
    return Coarseness(
        candidates=len(members),
        networks=len(classes),
        depths=tuple(sorted({blocks for _, blocks in real})),
        base_blocks=family.columns(base).get("blocks", 0),
        axes=tuple(axes),
    )
