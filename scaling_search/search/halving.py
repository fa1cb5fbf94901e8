"""The rungs of a run: one rung without pruning, synchronous successive halving with it.

Each rung is a set of complete trainings (every promoted candidate x every
seed, a full schedule of that rung's epochs) handed to the backend as one
plan. The next rung starts only when every score of this one is in, and
promotion reads seed means alone (``allocation.promote``), so neither the
backend nor the order in which units finish can change a decision. A resumed
run walks the rungs again: finished units are kept, decisions recomputed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..records import TrialRecord, TrialState, candidate_key
from ..scaling import Candidate
from ..space import SearchSpace
from .allocation import Promotion, promote, rung_epochs
from .plan import Unit, units_for


def rung_schedule(space: SearchSpace) -> tuple[int, ...]:
    """Epochs of each rung: (proxy.epochs,) without pruning."""
    p = space.pruning
    if not p.enabled:
        return (space.proxy.epochs,)
    return rung_epochs(space.proxy.epochs, p.reduction_factor, min_epochs=p.min_epochs)


@dataclass(frozen=True)
class RungResult:
    epochs: int
    candidates: tuple[str, ...]  # candidate keys trained at this rung
    complete: bool  # every unit of the rung has a result
    promotion: Promotion | None  # None at the last rung, or when the rung is not complete


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


def run_rungs(
    space: SearchSpace,
    candidates: Sequence[Candidate],
    plan_of: Callable[[Unit], TrialRecord],
    execute: Callable[[list[TrialRecord]], list[TrialRecord]],
    *,
    reference: Candidate | None = None,
) -> tuple[list[TrialRecord], tuple[RungResult, ...]]:
    """Execute rung after rung; returns every record of every rung reached and each rung's decision.

    ``execute`` runs a rung's planned records and returns one record per
    unit (WAITING where none is in: a stop, or units running elsewhere);
    an incomplete rung ends the walk, nothing is promoted from part of a rung.
    """
    epochs = rung_schedule(space)
    eta = space.pruning.reduction_factor
    always = [candidate_key(*reference.coefficients.as_tuple())] if reference is not None else []
    alive = list(candidates)
    records: list[TrialRecord] = []
    results = []
    for i in range(len(epochs)):
        plan = [plan_of(u) for u in rung_units(space, alive, i, epochs)]
        got = execute(plan)
        records.extend(got)
        complete = all(r.state.finished for r in got)
        keys = tuple(sorted({r.candidate for r in plan}))
        if i == len(epochs) - 1 or not complete:
            results.append(RungResult(epochs[i], keys, complete, None))
            break
        decision = promote(rung_scores(got, space.seeds), eta, always=always)
        results.append(RungResult(epochs[i], keys, complete, decision))
        kept = set(decision.promoted)
        alive = [c for c in alive if candidate_key(*c.coefficients.as_tuple()) in kept]
    return records, tuple(results)
