"""The one candidate builder: grid -> candidates -> classes of identical networks -> units.

Both the ``candidates`` command and the search call :func:`build_plan`, so
what a user lists is what a search trains. Costs are measured on the rounded
phi = 1 network at the proxy's own resolution (the baseline's), because that
is the network the proxy trains. The paper's (1.2, 1.1, 1.15) is always in
the plan as a reference, flagged with its real cost when off the budget.

Rounding makes many triples build the same network (EfficientNet: depth
rounds up per stage, channels to multiples of 8, resolution to a multiple of
pixels), so candidates are grouped into classes by the network they build,
as the baseline's family tells (``models.family``); a class is trained once,
by its representative, and stands for the range of coefficients of its members.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from ..models import family_of, get_config, measured_ratio, network_key, scalable_of
from ..records import unit_key
from ..scaling import PAPER, Candidate, Coefficients, candidate_grid, derived_step_default, parse_budget
from ..space import GridSpec, SearchSpace
from .allocation import run_order

# What makes two candidates the same network: the family's signature of it and the input size.
NetworkKey = tuple[Hashable, int]


@dataclass(frozen=True)
class Unit:
    """One candidate trained with one seed: the unit of work that runs exactly once."""

    alpha: float
    beta: float
    gamma: float
    seed: int
    theoretical_ratio: float
    measured_ratio: float
    rung: int | None = None  # a shorter halving rung; None: the full schedule
    epochs: int | None = None  # this unit's complete schedule; None: the proxy's epochs
    fidelity: int | None = None  # the fidelity check's longer schedule (its factor); None: a search unit

    @property
    def key(self) -> str:
        return unit_key(self.alpha, self.beta, self.gamma, self.seed, self.rung, self.fidelity)

    @property
    def coefficients(self) -> Coefficients:
        return Coefficients(self.alpha, self.beta, self.gamma)

    def attrs(self) -> dict:
        return {
            "unit": self.key,
            "alpha": self.alpha,
            "beta": self.beta,
            "gamma": self.gamma,
            "seed": self.seed,
            "theoretical_ratio": self.theoretical_ratio,
            "measured_ratio": self.measured_ratio,
            "rung": self.rung,
            "epochs": self.epochs,
            "fidelity": self.fidelity,
        }

    @classmethod
    def from_attrs(cls, attrs: dict) -> Unit:
        names = ("alpha", "beta", "gamma", "seed", "theoretical_ratio", "measured_ratio", "rung", "epochs", "fidelity")
        return cls(**{k: attrs[k] for k in names if k in attrs})


@dataclass(frozen=True)
class NetworkClass:
    """Candidates that build one and the same rounded network; trained once.

    ``index`` counts the classes in the order the candidates first build them, and names them (N01, N02, ...).
    """

    index: int
    key: NetworkKey
    members: tuple[Candidate, ...]
    representative: Candidate

    @property
    def label(self) -> str:
        return f"N{self.index + 1:02d}"

    @property
    def measured_ratio(self) -> float:
        return float(self.representative.measured_ratio)  # equal for every member: same network

    @property
    def reference(self) -> bool:
        """Only off-budget reference points are in it (the paper's triple off the budget)."""
        return all(m.reference for m in self.members)

    @property
    def has_paper(self) -> bool:
        return any(m.is_paper for m in self.members)

    def coefficient_range(self, name: str) -> tuple[float, float]:
        values = [getattr(m.coefficients, name) for m in self.members]
        return min(values), max(values)

    def describe(self) -> str:
        """The coefficients the class stands for, e.g. 'alpha 1.05-1.25, beta 1.1, gamma 1.15-1.2'."""
        parts = []
        for name in ("alpha", "beta", "gamma"):
            lo, hi = self.coefficient_range(name)
            parts.append(f"{name} {lo:g}" if lo == hi else f"{name} {lo:g}-{hi:g}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Plan:
    """Everything a search trains for one budget, and why."""

    budget: float
    constraint: str
    tolerance: float
    base_resolution: int
    multiple: int
    candidates: tuple[Candidate, ...]
    classes: tuple[NetworkClass, ...]

    @property
    def trained(self) -> tuple[Candidate, ...]:
        """One candidate per class: what the search trains."""
        return tuple(c.representative for c in self.classes)

    def class_of(self, coeffs: Coefficients) -> NetworkClass:
        for cls in self.classes:
            if any(m.coefficients == coeffs for m in cls.members):
                return cls
        raise KeyError(coeffs)

    @property
    def paper_class(self) -> NetworkClass:
        return self.class_of(PAPER)

    def rows(self) -> list[dict]:
        """One row per candidate (the ``candidates --json`` list), with its class."""
        out = []
        for cls in self.classes:
            for m in cls.members:
                out.append(m.to_dict() | {"paper": m.is_paper, "class": cls.label, "trained": m == cls.representative})
        return sorted(out, key=lambda r: (r["alpha"], r["beta"], r["gamma"]))


def _representative(members: Sequence[Candidate]) -> Candidate:
    # The paper's triple trains under its own name; otherwise the member nearest
    # the class's mean coefficients (first in grid order on a tie).
    for m in members:
        if m.is_paper:
            return m
    centre = [sum(getattr(m.coefficients, k) for m in members) / len(members) for k in ("alpha", "beta", "gamma")]

    def distance(m: Candidate) -> float:
        return sum((x - c) ** 2 for x, c in zip(m.coefficients.as_tuple(), centre))

    return min(members, key=distance)


def group_classes(candidates: Sequence[Candidate], base: Any, multiple: int) -> tuple[NetworkClass, ...]:
    """Group candidates by the network they build, classes in order of their first member."""
    groups: dict[NetworkKey, list[Candidate]] = {}
    for c in candidates:
        groups.setdefault(network_key(c.coefficients, base, multiple), []).append(c)
    return tuple(
        NetworkClass(index=i, key=key, members=tuple(members), representative=_representative(members))
        for i, (key, members) in enumerate(groups.items())
    )


# build_plan's grid when none is given: every step from 1 to 2 on all three axes.
FULL_GRID = GridSpec(kind="full")


def build_plan(
    budget: str | float,
    base: Any,
    *,
    multiple: int = 8,
    grid: GridSpec = FULL_GRID,
    tolerance: float = 0.05,
    constraint: str = "measured",
    hint: str = "widen --tolerance, refine --step or raise the --max-* bounds",
) -> Plan:
    """The candidates of one budget around ``base`` (at ``base.resolution``), the paper's triple, their classes.

    ``base`` is a config of any scalable family (``models.family``), which measures and groups the candidates.
    ``grid`` is the space's record of the grid (kind, step, bounds); a step of None is the kind's default.
    """
    value = parse_budget(budget)
    family_of(base).check(base)
    measure = lambda coeffs: measured_ratio(coeffs, base, multiple)  # noqa: E731
    cands = candidate_grid(
        value,
        step=derived_step_default(grid.kind, grid.step),
        tolerance=tolerance,
        max_alpha=grid.max_alpha,
        max_beta=grid.max_beta,
        max_gamma=grid.max_gamma,
        grid=grid.kind,
        constraint=constraint,
        measure=measure,
    )
    if not cands:
        raise UsageError(
            f"no (alpha, beta, gamma) satisfies a {value:g}x budget within {tolerance:g} on this grid "
            f"({constraint} constraint): {hint}"
        )
    if not any(c.is_paper for c in cands):
        cands.append(Candidate(PAPER, PAPER.flops_ratio, measure(PAPER), reference=True))
    return Plan(
        budget=value,
        constraint=constraint,
        tolerance=tolerance,
        base_resolution=base.resolution,
        multiple=multiple,
        candidates=tuple(cands),
        classes=group_classes(cands, base, multiple),
    )


def baseline_config(space: SearchSpace, num_classes: int) -> Any:
    """The space's baseline network at the proxy's resolution (the recipe's dropouts where the family has them)."""
    b, p = space.baseline, space.proxy
    options = {"resolution": b.resolution, "num_classes": num_classes, "dropout": p.dropout, "drop_path": p.drop_path}
    if b.width is not None or b.depth is not None or not b.model.startswith("efficientnet-"):
        options.update(width=b.width or 1.0, depth=b.depth or 1.0)
    config = get_config(b.model, **options)
    if scalable_of(config) is None:
        raise UsageError(f"baseline.model {b.model!r} is not a network family that can be searched")
    return config


def space_plan(space: SearchSpace) -> Plan:
    """The plan of a search space (MACs ratios do not depend on the classifier size enough to matter)."""
    c = space.constraint
    return build_plan(
        c.budget,
        baseline_config(space, 10),
        multiple=c.resolution_multiple,
        grid=space.grid,
        tolerance=c.tolerance,
        constraint=c.mode,
        hint="widen constraint.tolerance, refine grid.step or raise the grid bounds",
    )


def search_candidates(space: SearchSpace) -> list[Candidate]:
    """What a search of ``space`` trains: one representative per class of identical networks."""
    return list(space_plan(space).trained)


def units_for(
    space: SearchSpace,
    candidates: Sequence[Candidate],
    *,
    rung: int | None = None,
    epochs: int | None = None,
    stage: int = 0,
    seeds: Sequence[int] | None = None,
) -> list:
    """Every candidate x seed in run order: interleaved by seed (all candidates at a seed before the
    next seed), shuffled within a seed by the space's recorded ``order_seed`` (plus ``stage``, the
    halving rung's or race round's index, so each round has its own order). An interrupted run is then a fair
    sample of the grid. ``seeds``: the round's seeds (default: the space's)."""
    units = [
        Unit(
            c.coefficients.alpha,
            c.coefficients.beta,
            c.coefficients.gamma,
            seed,
            c.theoretical_ratio,
            float(c.measured_ratio),
            rung=rung,
            epochs=epochs,
        )
        for seed in (space.seeds if seeds is None else seeds)
        for c in candidates
    ]
    return run_order(units, space.order_seed + stage)
