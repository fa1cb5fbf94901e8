"""The one rounds driver: every allocation policy is rounds of complete trainings.

A round is a set of units handed to the backend as one plan; the next round
starts only when every result of this one is in, and what it holds is decided
by a pure function of the records so far (the policy's ``after``). So neither
the backend nor the order in which units finish can change a decision, and a
resumed run (or ``report``) walks the rounds again over the stored results:
finished units are kept, decisions recomputed, nothing trained twice.

- uniform: one round, every candidate x every seed of the space;
- halving: the rungs of synchronous successive halving (``halving.py``);
- racing: rounds of one more seed for the candidates still in contention (``racing.py``).

A later stage (another set of units given the decision) is one more policy
driven the same way. ``policies.policy_for`` picks a space's policy (it imports
the policies, which import this driver's types: the driver never imports them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..records import TrialRecord
from ..scaling import Candidate
from ..space import SearchSpace
from .plan import Unit, units_for


@dataclass(frozen=True)
class Step:
    """What a policy decided after a round: the next round's units (none: it has finished) and why."""

    units: tuple[Unit, ...]
    decision: Any = None  # the policy's own record of this round's decision (halving: Promotion; racing: Look)


@dataclass(frozen=True)
class RoundResult:
    index: int
    epochs: int  # each unit's complete schedule in this round
    candidates: tuple[str, ...]  # candidate keys trained in this round
    seeds: tuple[int, ...]  # seeds trained in this round
    units: int
    complete: bool  # every unit of the round has a result
    decision: Any = None  # None when the round is not complete (nothing is decided from part of a round)


class Policy(Protocol):
    name: str

    def first(self) -> list[Unit]:
        """The first round's units, in run order."""
        ...

    def after(self, index: int, records: Sequence[TrialRecord]) -> Step:
        """After complete round ``index``: the decision and the next round's units, from every record so far."""
        ...


def run_rounds(
    policy: Policy,
    plan_of: Callable[[Unit], TrialRecord],
    execute: Callable[[list[TrialRecord]], list[TrialRecord]],
    on_round: Callable[[RoundResult], None] | None = None,
) -> tuple[list[TrialRecord], tuple[RoundResult, ...]]:
    """Execute round after round; returns every record of every round reached and each round's result.

    ``execute`` runs a round's planned records and returns one record per
    unit (WAITING where none is in: a stop, or units running elsewhere); an
    incomplete round ends the walk. ``on_round`` hears of each round's result as it is decided.
    """
    records: list[TrialRecord] = []
    results: list[RoundResult] = []
    units = list(policy.first())
    index = 0
    while units:
        plan = [plan_of(u) for u in units]
        got = execute(plan)
        records.extend(got)
        complete = all(r.state.finished for r in got)
        step = policy.after(index, records) if complete else Step(())
        results.append(
            RoundResult(
                index=index,
                epochs=plan[0].epochs,
                candidates=tuple(sorted({p.candidate for p in plan})),
                seeds=tuple(sorted({p.seed for p in plan})),
                units=len(plan),
                complete=complete,
                decision=step.decision,
            )
        )
        if on_round is not None:
            on_round(results[-1])
        units = list(step.units)
        index += 1
    return records, tuple(results)


class Uniform:
    """Every candidate x every seed of the space, in one round."""

    name = "uniform"

    def __init__(self, space: SearchSpace, candidates: Sequence[Candidate]):
        self.space, self.candidates = space, list(candidates)

    def first(self) -> list[Unit]:
        return units_for(self.space, self.candidates)

    def after(self, index: int, records: Sequence[TrialRecord]) -> Step:
        return Step(())
