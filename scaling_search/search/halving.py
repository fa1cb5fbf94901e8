"""The rungs of a run: one rung without pruning, synchronous successive halving with it.

Each rung is a set of complete trainings (every promoted candidate x every
seed, a full schedule of that rung's epochs) handed to the backend as one
plan. The next rung starts only when every score of this one is in, and
promotion reads seed means alone (``allocation.promote``), so neither the
backend nor the order in which units finish can change a decision. A resumed
run walks the rungs again: finished units are kept, decisions recomputed.
The rounds driver (``rounds.run_rounds``) walks the rungs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..records import TrialRecord, TrialState, candidate_key
from ..scaling import Candidate
from ..space import SearchSpace
from .allocation import promote, rung_epochs
from .plan import Unit, units_for
from .rounds import Step


def rung_schedule(space: SearchSpace) -> tuple[int, ...]:
    """Epochs of each rung: (proxy.epochs,) without pruning."""
    p = space.pruning
    if not p.enabled:
        return (space.proxy.epochs,)
    return rung_epochs(space.proxy.epochs, p.reduction_factor, min_epochs=p.min_epochs)


def rung_units(space: SearchSpace, candidates: Sequence[Candidate], index: int, epochs: Sequence[int]) -> list[Unit]:
    """The units of rung ``index``: the last rung is the full schedule (no rung suffix in the keys)."""
    last = index == len(epochs) - 1
    return units_for(space, candidates, rung=None if last else index, epochs=epochs[index], stage=index)


def rung_scores(records: Sequence[TrialRecord], seeds: Sequence[int]) -> dict[str, list[float]]:
    """Per candidate, its score at each seed (NaN for a failed unit): what promotion reads."""
    by_unit = {(r.candidate, r.seed): r for r in records}
    out: dict[str, list[float]] = {}
    for cand, _ in by_unit:
        out.setdefault(cand, [])
    for cand in out:
        for s in seeds:
            r = by_unit.get((cand, s))
            ok = r is not None and r.state is TrialState.COMPLETE and r.accuracy is not None
            out[cand].append(float(r.accuracy) if ok else math.nan)
    return out


class Halving:
    """Synchronous successive halving as a policy of the rounds driver: one round per rung."""

    name = "halving"

    def __init__(self, space: SearchSpace, candidates: Sequence[Candidate], *, reference: Candidate | None = None):
        self.space = space
        self.epochs = rung_schedule(space)
        self.always = [candidate_key(*reference.coefficients.as_tuple())] if reference is not None else []
        self.alive = list(candidates)

    def first(self) -> list[Unit]:
        return rung_units(self.space, self.alive, 0, self.epochs)

    def after(self, index: int, records: Sequence[TrialRecord]) -> Step:
        if index == len(self.epochs) - 1:
            return Step(())
        rung = [r for r in records if r.rung == index]
        decision = promote(rung_scores(rung, self.space.seeds), self.space.pruning.reduction_factor, always=self.always)
        kept = set(decision.promoted)
        self.alive = [c for c in self.alive if candidate_key(*c.coefficients.as_tuple()) in kept]
        return Step(tuple(rung_units(self.space, self.alive, index + 1, self.epochs)), decision)
