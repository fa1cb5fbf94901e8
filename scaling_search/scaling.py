"""Compound-scaling math: budgets, coefficients, candidate grids, extrapolation.

Pure Python on purpose (no torch import): the search, the tables and the tests
all reason about coefficients without building a network. Grid arithmetic is
exact (``fractions.Fraction``) so that a candidate on the tolerance boundary is
decided the same way on every machine.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction

from .errors import UsageError

PAPER_ALPHA, PAPER_BETA, PAPER_GAMMA = 1.2, 1.1, 1.15

CONSTRAINT_MODES = ("theoretical", "measured")
GRID_KINDS = ("full", "derived")

_BUDGET_RE = re.compile(r"^\s*([+-]?\d+(?:\.\d*)?|[+-]?\.\d+)\s*[xX]?\s*$")


def parse_budget(text: str | float | int) -> float:
    """Read a FLOPs budget written ``2x``, ``2``, ``2.0x`` or ``4x``.

    The budget is the FLOPs multiplier of one scaling step: ``2x`` is the
    paper's phi = 1 (alpha * beta^2 * gamma^2 ~= 2).
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        match = _BUDGET_RE.match(str(text))
        if not match:
            raise UsageError(
                f"budget {text!r} is not a number like '2x' or '2.0': write the FLOPs multiplier, e.g. --budget 2x"
            )
        value = float(match.group(1))
    if not math.isfinite(value) or value <= 1.0:
        raise UsageError(f"budget {text!r} must be greater than 1x (2x doubles the FLOPs, the paper's phi = 1)")
    return value


@dataclass(frozen=True)
class Coefficients:
    """Depth (alpha), width (beta) and resolution (gamma) multipliers of one step."""

    alpha: float
    beta: float
    gamma: float

    def __post_init__(self) -> None:
        for name in ("alpha", "beta", "gamma"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UsageError(f"{name} must be a number, got {value!r}")
            if value < 1.0:
                raise UsageError(
                    f"{name} = {value} is below 1: compound scaling only grows a network (use values >= 1)"
                )

    @property
    def flops_ratio(self) -> float:
        """The theoretical FLOPs multiplier alpha * beta^2 * gamma^2."""
        return self.alpha * self.beta**2 * self.gamma**2

    def as_tuple(self) -> tuple[float, float, float]:
        return (self.alpha, self.beta, self.gamma)


PAPER = Coefficients(PAPER_ALPHA, PAPER_BETA, PAPER_GAMMA)


@dataclass(frozen=True)
class Candidate:
    """A grid point with both of its FLOPs ratios (measured is None until measured).

    ``reference`` marks a point trained for comparison although it is off the
    budget (the paper's triple under the measured constraint): its real cost is
    its ``measured_ratio``.
    """

    coefficients: Coefficients
    theoretical_ratio: float
    measured_ratio: float | None = None
    reference: bool = False

    @property
    def is_paper(self) -> bool:
        return self.coefficients == PAPER

    def to_dict(self) -> dict:
        c = self.coefficients
        return {
            "alpha": c.alpha,
            "beta": c.beta,
            "gamma": c.gamma,
            "theoretical_ratio": round(self.theoretical_ratio, 6),
            "measured_ratio": None if self.measured_ratio is None else round(self.measured_ratio, 6),
            "reference": self.reference,
        }


def _fraction(value: float | str, name: str) -> Fraction:
    try:
        return Fraction(str(value))
    except (ValueError, ZeroDivisionError):
        raise UsageError(f"{name} {value!r} is not a number") from None


def _axis(step: Fraction, upper: Fraction) -> list[Fraction]:
    count = int((upper - 1) / step)
    return [1 + k * step for k in range(count + 1)]


def _within(ratio: Fraction, budget: Fraction, tolerance: Fraction) -> bool:
    # Strictly inside: a point exactly on the boundary (e.g. 1.9 for 2x at 5%)
    # is out, so the kept set does not hinge on float rounding.
    return abs(ratio / budget - 1) < tolerance


def _check_grid_args(
    step: float, tolerance: float, bounds: Sequence[float]
) -> tuple[Fraction, Fraction, list[Fraction]]:
    fstep = _fraction(step, "step")
    if not 0 < fstep <= 1:
        raise UsageError(f"step {step} must be in (0, 1], e.g. --step 0.05")
    ftol = _fraction(tolerance, "tolerance")
    if not 0 < ftol < 1:
        raise UsageError(f"tolerance {tolerance} must be in (0, 1), e.g. --tolerance 0.05 for 5%")
    fbounds = []
    for name, bound in zip(("max alpha", "max beta", "max gamma"), bounds):
        fb = _fraction(bound, name)
        if fb < 1:
            raise UsageError(f"{name} {bound} must be at least 1")
        fbounds.append(fb)
    return fstep, ftol, fbounds


def candidate_grid(
    budget: float,
    *,
    step: float = 0.05,
    tolerance: float = 0.05,
    max_alpha: float = 2.0,
    max_beta: float = 2.0,
    max_gamma: float = 2.0,
    grid: str = "full",
    constraint: str = "theoretical",
    measure: Callable[[Coefficients], float] | None = None,
) -> list[Candidate]:
    """Enumerate (alpha, beta, gamma) candidates for one scaling step of ``budget``.

    ``grid="full"``: every combination on a ``step`` grid from 1 to the bounds.
    ``grid="derived"``: alpha and beta on the grid (0.1 in the paper's spirit),
    gamma solved from the constraint and rounded to the nearest 0.05.

    ``constraint="theoretical"`` keeps points whose alpha * beta^2 * gamma^2 is
    strictly within ``tolerance`` (relative) of the budget; ``"measured"`` keeps
    those whose ``measure(coefficients)`` (MACs of the rounded network over the
    baseline's) is. Both ratios are filled in whenever ``measure`` is given.
    """
    if constraint not in CONSTRAINT_MODES:
        raise UsageError(f"constraint {constraint!r} is unknown: use one of {', '.join(CONSTRAINT_MODES)}")
    if grid not in GRID_KINDS:
        raise UsageError(f"grid {grid!r} is unknown: use one of {', '.join(GRID_KINDS)}")
    if constraint == "measured" and measure is None:
        raise ValueError("the measured constraint needs a measure function")
    fbudget = _fraction(parse_budget(budget), "budget")
    fstep, ftol, (amax, bmax, gmax) = _check_grid_args(step, tolerance, (max_alpha, max_beta, max_gamma))

    points: Iterable[tuple[Fraction, Fraction, Fraction]]
    if grid == "full":
        gammas = _axis(fstep, gmax)
        points = ((a, b, g) for a in _axis(fstep, amax) for b in _axis(fstep, bmax) for g in gammas)
    else:
        points = _derived_points(fbudget, fstep, amax, bmax, gmax)

    kept = []
    for a, b, g in points:
        theoretical = a * b * b * g * g
        coeffs = Coefficients(float(a), float(b), float(g))
        if constraint == "theoretical":
            if not _within(theoretical, fbudget, ftol):
                continue
            measured = measure(coeffs) if measure is not None else None
        else:
            measured = measure(coeffs)  # type: ignore[misc]
            if not _within(_fraction(measured, "measured ratio"), fbudget, ftol):
                continue
        kept.append(Candidate(coeffs, float(theoretical), measured))
    return kept


_GAMMA_QUANTUM = Fraction(1, 20)


def _derived_points(budget: Fraction, step: Fraction, amax: Fraction, bmax: Fraction, gmax: Fraction):
    for a in _axis(step, amax):
        for b in _axis(step, bmax):
            gamma_sq = budget / (a * b * b)
            if gamma_sq < 1:  # the constraint would need gamma < 1: no candidate
                continue
            exact = math.sqrt(gamma_sq)
            g = Fraction(round(exact / float(_GAMMA_QUANTUM))) * _GAMMA_QUANTUM
            if 1 <= g <= gmax:
                yield a, b, g


def derived_step_default(grid: str, step: float | None) -> float:
    """The paper-spirit grid steps alpha/beta by 0.1, the full grid by 0.05."""
    if step is not None:
        return step
    return 0.1 if grid == "derived" else 0.05


@dataclass(frozen=True)
class ScaledDims:
    """Multipliers and sizes of one compound-scaled network at a given phi."""

    phi: float
    depth: float
    width: float
    resolution: int
    dropout: float


def round_resolution(value: float, multiple: int = 8) -> int:
    """Nearest multiple of ``multiple`` (at least one multiple)."""
    if multiple < 1:
        raise UsageError(f"resolution multiple {multiple} must be a positive integer")
    return max(multiple, int(round(value / multiple)) * multiple)


def dropout_for_phi(phi: float) -> float:
    """Classifier dropout as the official table grows it: 0.2 at B0/B1, +0.1 every two steps, at most 0.5."""
    return round(min(0.5, 0.2 + 0.1 * math.floor(max(phi, 0.0) / 2)), 4)


def extrapolate(coeffs: Coefficients, phi: float, base_resolution: int = 224, multiple: int = 8) -> ScaledDims:
    """Depth alpha^phi, width beta^phi, resolution round(r0 * gamma^phi) to ``multiple``."""
    if phi < 0:
        raise UsageError(f"phi {phi} must be non-negative")
    if base_resolution <= 0:
        raise UsageError(f"base resolution {base_resolution} must be a positive integer")
    return ScaledDims(
        phi=phi,
        depth=coeffs.alpha**phi,
        width=coeffs.beta**phi,
        resolution=round_resolution(base_resolution * coeffs.gamma**phi, multiple),
        dropout=dropout_for_phi(phi),
    )


def implied_phi(multiplier: float, coefficient: float) -> float | None:
    """The phi at which ``coefficient ** phi`` equals ``multiplier`` (None when undefined)."""
    if coefficient <= 1.0 or multiplier <= 0:
        return None
    return math.log(multiplier) / math.log(coefficient)
