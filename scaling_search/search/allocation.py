"""How the training budget is spent, with no order effects.

Asynchronous halving (Optuna's SuccessiveHalvingPruner, Ray's ASHA) promotes a
trial by comparing it with whoever reached the rung before it, so the first
trials to finish are favoured. Here nothing depends on the order in which
units finish: the run order is interleaved by seed and shuffled with a
recorded seed (an interrupted run is a fair sample), and optional pruning is
synchronous successive halving, deciding on seed means over a complete rung.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from ..errors import UsageError

T = TypeVar("T")


def run_order(units: Iterable[T], seed: int, *, seed_of: Callable[[T], int] = lambda u: u.seed) -> list[T]:
    """All units at the smallest seed, then the next seed, ...; shuffled within each seed by ``seed``.

    Each seed block gets its own permutation, so no candidate is always first.
    """
    blocks: dict[int, list[T]] = {}
    for u in units:
        blocks.setdefault(seed_of(u), []).append(u)
    rng = random.Random(seed)
    order: list[T] = []
    for s in sorted(blocks):
        block = list(blocks[s])
        rng.shuffle(block)
        order.extend(block)
    return order


def rung_epochs(
    max_epochs: int, eta: int, *, min_epochs: int | None = None, rungs: int | None = None
) -> tuple[int, ...]:
    """Epochs of each rung, each a complete schedule: E, eta*E, eta^2*E, ..., ending at ``max_epochs``.

    Give either ``min_epochs`` (the first rung) or ``rungs`` (their number,
    counted back from ``max_epochs`` by factors of ``eta``).
    """
    if not isinstance(eta, int) or eta < 2:
        raise UsageError(f"reduction factor {eta!r} must be an integer >= 2")
    if not isinstance(max_epochs, int) or max_epochs < 1:
        raise UsageError(f"epochs {max_epochs!r} must be a positive integer")
    if (min_epochs is None) == (rungs is None):
        raise UsageError("give either the first rung's epochs or the number of rungs, not both")
    if min_epochs is not None:
        if not 1 <= min_epochs <= max_epochs:
            raise UsageError(f"the first rung's {min_epochs} epochs must be between 1 and the {max_epochs} epochs")
        out = []
        e = min_epochs
        while e < max_epochs:
            out.append(e)
            e *= eta
        return (*out, max_epochs)
    assert rungs is not None
    if rungs < 1:
        raise UsageError(f"number of rungs {rungs} must be at least 1")
    out = [max(1, round(max_epochs / eta ** (rungs - 1 - i))) for i in range(rungs)]
    if len(set(out)) != rungs:
        raise UsageError(
            f"{rungs} rungs with factor {eta} do not fit in {max_epochs} epochs (rungs {out}): use fewer rungs"
        )
    return tuple(out)


@dataclass(frozen=True)
class Promotion:
    """One rung's decision; ``carried`` were kept only because they are references."""

    promoted: tuple[str, ...]  # best first, references last
    dropped: tuple[str, ...]
    carried: tuple[str, ...]
    threshold: float  # the seed mean a candidate needed
    means: tuple[tuple[str, float], ...]  # every scored candidate, best first


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def promote(rung_scores: Mapping[str, Sequence[float]], eta: int, *, always: Iterable[str] = ()) -> Promotion:
    """Keep the best ceil(n / eta) candidates by seed mean, ties at the threshold kept.

    ``rung_scores`` maps candidate keys to their scores at this rung (one per
    seed; NaN for a failed unit). Candidates without any score are dropped;
    keys in ``always`` go on regardless (the paper's triple, as a reference).
    The result depends only on the scores, never on the mapping's order.
    """
    if not isinstance(eta, int) or eta < 2:
        raise UsageError(f"reduction factor {eta!r} must be an integer >= 2")
    means = {k: _mean(v) for k, v in rung_scores.items()}
    scored = sorted((k for k in means if math.isfinite(means[k])), key=lambda k: (-means[k], k))
    if not scored:
        threshold = math.nan
        kept: list[str] = []
    else:
        keep = max(1, math.ceil(len(scored) / eta))
        threshold = means[scored[keep - 1]]
        kept = [k for k in scored if means[k] >= threshold]
    references = sorted(k for k in set(always) if k in rung_scores and k not in kept)
    promoted = (*kept, *references)
    return Promotion(
        promoted=promoted,
        dropped=tuple(sorted(k for k in rung_scores if k not in promoted)),
        carried=tuple(references),
        threshold=threshold,
        means=tuple((k, means[k]) for k in scored),
    )


@dataclass(frozen=True)
class Rung:
    epochs: int
    scores: tuple[tuple[str, tuple[float, ...]], ...]  # per candidate, in seed order
    promotion: Promotion | None  # None at the last rung: nothing is promoted from it


@dataclass(frozen=True)
class HalvingRun:
    rungs: tuple[Rung, ...]

    @property
    def finalists(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.rungs[-1].scores)


def simulate_halving(
    score: Callable[[str, int, int, int], float],
    keys: Sequence[str],
    seeds: Sequence[int],
    epochs: Sequence[int],
    eta: int,
    *,
    order_seed: int,
    always: Iterable[str] = (),
    finish: Callable[[list[tuple[str, int]]], list[tuple[str, int]]] | None = None,
) -> HalvingRun:
    """Synchronous successive halving as a runner would drive it, for testing the protocol.

    ``score(key, seed, epochs, position)`` is a unit's result, ``position`` its
    place in the overall run order (so a test can add a drift over time).
    ``finish`` permutes the units of a rung into the order in which they
    complete (a backend's concurrency); decisions wait for the whole rung.
    """
    always = tuple(always)
    alive = list(keys)
    position = 0
    rungs = []
    for i, e in enumerate(epochs):
        units = run_order([(k, s) for k in alive for s in seeds], order_seed + i, seed_of=lambda u: u[1])
        started = {}
        for u in units:
            started[u] = position
            position += 1
        done = finish(list(units)) if finish is not None else units
        if sorted(done) != sorted(units):
            raise ValueError("finish must return a permutation of the rung's units")
        results: dict[str, dict[int, float]] = {k: {} for k in alive}
        for k, s in done:
            results[k][s] = score(k, s, e, started[(k, s)])
        table = {k: tuple(results[k][s] for s in seeds) for k in alive}
        decision = promote(table, eta, always=always) if i < len(epochs) - 1 else None
        rungs.append(Rung(epochs=e, scores=tuple(sorted(table.items())), promotion=decision))
        if decision is not None:
            alive = list(decision.promoted)
    return HalvingRun(rungs=tuple(rungs))
