"""The fidelity check as one more stage of rounds: once the search has decided, its selection
(``analysis.fidelity.select``) trains again at ``fidelity.epochs_factor`` times the proxy's epochs.

Its units carry their own keys (``-f3``), so the search's units and decision are untouched, a
finished run folder resumed with the check on trains only these, and each trains once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from ..analysis.fidelity import Selected, select
from ..analysis.ranking import Ranking, rank
from ..records import TrialRecord, candidate_key
from ..scaling import Candidate, parse_budget
from ..space import SearchSpace
from .plan import units_for
from .rounds import RoundResult, Step, run_rounds
from .trials import Unit

# Its own shuffle of the run order, apart from every round of the search.
ORDER_STAGE = 1000


def search_ranking(space: SearchSpace, records: Sequence[TrialRecord]) -> Ranking:
    """The search's ranking as the report computes it (the same call, so the same decision set)."""
    return rank(
        records,
        space.proxy.epochs,
        seeds=sorted(set(space.seeds) | {r.seed for r in records}),  # a race adds seeds round by round
        budget=parse_budget(space.constraint.budget),
        tolerance=space.constraint.tolerance,
        bootstrap_seed=space.order_seed,
    )


class FidelityStage:
    """One round: every selected candidate x the space's seeds at the longer schedule."""

    name = "fidelity"

    def __init__(self, space: SearchSpace, candidates: Sequence[Candidate], selected: Sequence[Selected]):
        by_key = {candidate_key(*c.coefficients.as_tuple()): c for c in candidates}
        self.space = space
        self.candidates = [by_key[s.candidate] for s in selected if s.candidate in by_key]

    def first(self) -> list[Unit]:
        factor = self.space.fidelity.epochs_factor
        units = units_for(self.space, self.candidates, epochs=self.space.proxy.epochs * factor, stage=ORDER_STAGE)
        return [dataclasses.replace(u, fidelity=factor) for u in units]

    def after(self, index: int, records: Sequence[TrialRecord]) -> Step:
        return Step(())


def decision_of(rounds: Sequence[RoundResult]) -> list[str] | None:
    """The allocation's own decision set, when it made one: a race's candidates still in contention at its
    last look; None otherwise (uniform allocation or halving: the ranking's confidence set stands for it)."""
    last = rounds[-1].decision if rounds else None
    alive = getattr(last, "alive", None)
    return list(alive) if alive else None


def run_fidelity(
    space: SearchSpace,
    candidates: Sequence[Candidate],
    search: Sequence[TrialRecord],
    plan_of: Callable[[Unit], TrialRecord],
    execute: Callable[[list[TrialRecord]], list[TrialRecord]],
    console=None,
    decision: Sequence[str] | None = None,
) -> list[TrialRecord]:
    """Train (or, with a fetch as ``execute``, read back) the fidelity units of a decided search."""
    selected = select(search_ranking(space, search), decision)
    stage = FidelityStage(space, candidates, selected)
    if not stage.candidates:
        return []
    if console is not None:
        factor = space.fidelity.epochs_factor
        console.print(
            f"fidelity check: {len(stage.candidates)} candidates x {len(space.seeds)} seeds at "
            f"{space.proxy.epochs * factor} epochs ({factor}x): "
            + "; ".join(f"{s.candidate} ({', '.join(s.reasons)})" for s in selected),
            highlight=False,
        )
    records, _ = run_rounds(stage, plan_of, execute)
    return records
