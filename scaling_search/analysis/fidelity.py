"""The fidelity check: does the search's decision survive a longer schedule?

Once the search has decided, a few candidates train again at ``epochs_factor``
times the proxy's epochs, with the same seeds: the decision set (the 90%
confidence set of the best), the paper's triple, and the best candidate of
each leaning (depth-, width- or resolution-heavy: the dimension that takes
the largest share of its real MACs growth, ln(alpha) against 2 ln(beta) and
2 ln(gamma), from the effective multipliers). ``select`` says which and why;
``compare`` reads both schedules' records: the rank agreement between them,
each candidate's accuracy gain, and whether the decision changes.

Pure: records in, a frozen result out. The search trains the units
(``search/fidelity.py``); the report writes the result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from ..records import TrialRecord, TrialState
from .ranking import Ranking
from .statistics import rung_agreement

LEANINGS = ("depth", "width", "resolution")


@dataclass(frozen=True)
class Selected:
    """A candidate the fidelity check trains again, and why."""

    candidate: str
    coefficients: tuple[float, float, float]
    reasons: tuple[str, ...]


def leaning(row: pd.Series | dict) -> str | None:
    """The dimension that takes the largest share of a candidate's real growth (None: it does not grow).

    Shares of ln(MACs growth): ln(alpha) for depth, 2 ln(beta) for width, 2 ln(gamma) for resolution,
    from the effective multipliers when known (the nominal coefficients otherwise)."""

    def value(name: str) -> float:
        v = row.get(f"effective_{name}")
        return float(row[name]) if v is None or not math.isfinite(float(v)) else float(v)

    shares = [math.log(value("alpha")), 2 * math.log(value("beta")), 2 * math.log(value("gamma"))]
    if max(shares) <= 0:
        return None
    return LEANINGS[shares.index(max(shares))]


def decision_set(ranking: Ranking, decision: Sequence[str] | None = None) -> list[str]:
    """The candidates the search could not tell from the best: ``decision`` when the allocation made one (a
    race's candidates still in contention), else the ranking's confidence set (the winner alone without one)."""
    if decision:
        return list(decision)
    if ranking.analysis is not None and ranking.analysis.confidence_set:
        return list(ranking.analysis.confidence_set)
    win = ranking.winner
    return [] if win is None else [str(win["candidate"])]


def select(ranking: Ranking, decision: Sequence[str] | None = None) -> list[Selected]:
    """The decision set, the paper's triple and the best ranked candidate of each leaning, each once."""
    table = ranking.table
    if table.empty or ranking.winner is None:
        return []
    rows = {str(r["candidate"]): r for _, r in table.iterrows()}
    reasons: dict[str, list[str]] = {}
    for key in decision_set(ranking, decision):
        reasons.setdefault(key, []).append("decision set")
    paper = table[table["paper"]]
    if not paper.empty:
        reasons.setdefault(str(paper.iloc[0]["candidate"]), []).append("paper")
    ranked = table[table["seeds"] > 0]  # best first
    for lean in LEANINGS:
        best = next((str(r["candidate"]) for _, r in ranked.iterrows() if leaning(r) == lean), None)
        if best is not None:
            reasons.setdefault(best, []).append(f"best {lean}-heavy")
    return [
        Selected(key, (float(rows[key]["alpha"]), float(rows[key]["beta"]), float(rows[key]["gamma"])), tuple(why))
        for key, why in reasons.items()
        if key in rows
    ]


@dataclass(frozen=True)
class FidelityRow:
    candidate: str
    reasons: tuple[str, ...]
    leaning: str | None
    seeds: tuple[int, ...]  # seeds with a score at both schedules
    short: float | None  # mean top-1 over those seeds at the search's schedule
    long: float | None  # the same at the longer schedule
    short_rank: int | None  # among the checked candidates
    long_rank: int | None

    @property
    def gain(self) -> float | None:
        return None if self.short is None or self.long is None else self.long - self.short


@dataclass(frozen=True)
class FidelityCheck:
    factor: int
    short_epochs: int
    long_epochs: int
    rows: tuple[FidelityRow, ...]  # best at the longer schedule first
    units: int
    finished: int
    kendall_tau_b: float | None  # between the schedules' means over the checked candidates; None below 3
    winner: str | None  # the search's winner (the short schedule's decision)
    long_best: str | None  # the best at the longer schedule
    in_decision_set: bool | None  # whether the longer schedule's best is in the search's decision set

    @property
    def complete(self) -> bool:
        return self.units > 0 and self.finished == self.units

    @property
    def decision_changes(self) -> bool | None:
        if not self.complete or self.winner is None or self.long_best is None:
            return None
        return self.long_best != self.winner

    def statements(self) -> list[str]:
        head = f"Fidelity check ({self.long_epochs} epochs, {self.factor}x the search's {self.short_epochs})"
        if self.units == 0:
            return [f"{head}: nothing to check (no decision yet)."]
        if not self.complete:
            return [
                f"{head}: {self.finished} of {self.units} units finished; run the same command again to finish it. "
                "Nothing is concluded from part of it."
            ]
        by = {r.candidate: r for r in self.rows}
        gains = ", ".join(f"{r.candidate} {r.gain:+.4f}" for r in self.rows if r.gain is not None)
        tau = (
            f"the two schedules rank the {len(self.rows)} checked candidates with Kendall tau-b "
            f"{self.kendall_tau_b:.2f}"
            if self.kendall_tau_b is not None
            else f"{len(self.rows)} checked candidate(s), too few to compare rankings"
        )
        out = []
        w, b = by.get(self.winner), by.get(self.long_best)
        if self.decision_changes and w is not None and b is not None:
            where = "inside" if self.in_decision_set else "outside"
            out.append(
                f"The answer depends on the schedule: at {self.short_epochs} epoch(s) the search's winner is "
                f"{w.candidate} ({w.short:.4f} against {b.short:.4f} for {b.candidate}); at {self.long_epochs} "
                f"epochs {b.candidate} leads ({b.long:.4f} against {w.long:.4f}), a candidate {where} the search's "
                "decision set."
            )
        elif w is not None:
            out.append(
                f"{head}: the decision holds: the search's winner {w.candidate} is also best at {self.long_epochs} "
                f"epochs ({w.long:.4f})."
            )
        out.append(f"{head}: {tau}; accuracy gain per candidate: {gains}.")
        return out

    def to_dict(self) -> dict:
        return {
            "epochs_factor": self.factor,
            "short_epochs": self.short_epochs,
            "long_epochs": self.long_epochs,
            "units": self.units,
            "finished": self.finished,
            "complete": self.complete,
            "kendall_tau_b": self.kendall_tau_b,
            "winner": self.winner,
            "long_best": self.long_best,
            "decision_changes": self.decision_changes,
            "long_best_in_decision_set": self.in_decision_set,
            "candidates": [
                {
                    "candidate": r.candidate,
                    "reasons": list(r.reasons),
                    "leaning": r.leaning,
                    "seeds": list(r.seeds),
                    "accuracy_short": r.short,
                    "accuracy_long": r.long,
                    "gain": r.gain,
                    "rank_short": r.short_rank,
                    "rank_long": r.long_rank,
                }
                for r in self.rows
            ],
            "statements": self.statements(),
        }


def _scores(records: Sequence[TrialRecord], epochs: int) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for r in records:
        if r.rung is None and r.state is TrialState.COMPLETE and r.accuracy is not None and r.epochs_run >= epochs:
            out.setdefault(r.candidate, {})[r.seed] = float(r.accuracy)
    return out


def _ranks(means: dict[str, float]) -> dict[str, int]:
    order = sorted(means, key=lambda k: (-means[k], k))
    return {k: i + 1 for i, k in enumerate(order)}


def compare(
    ranking: Ranking,
    selected: Sequence[Selected],
    search: Sequence[TrialRecord],
    checked: Sequence[TrialRecord],
    *,
    factor: int,
    short_epochs: int,
    decision: Sequence[str] | None = None,
    winner: str | None = None,
) -> FidelityCheck:
    """Both schedules' scores of the ``selected`` candidates, over the seeds that have both; ``winner`` is the
    search's decision when its allocation named one (a race's leader), else the ranking's winner."""
    long_epochs = short_epochs * factor
    short = _scores([r for r in search if r.fidelity is None], short_epochs)
    long = _scores([r for r in checked if r.fidelity == factor], long_epochs)
    table = ranking.table
    rows_of = {str(r["candidate"]): r for _, r in table.iterrows()} if not table.empty else {}
    pairs = {}
    for s in selected:
        seeds = tuple(sorted(set(short.get(s.candidate, {})) & set(long.get(s.candidate, {}))))
        if seeds:
            pairs[s.candidate] = (
                seeds,
                sum(short[s.candidate][k] for k in seeds) / len(seeds),
                sum(long[s.candidate][k] for k in seeds) / len(seeds),
            )
    short_rank = _ranks({k: v[1] for k, v in pairs.items()})
    long_rank = _ranks({k: v[2] for k, v in pairs.items()})
    rows = []
    for s in selected:
        seeds, a, b = pairs.get(s.candidate, ((), None, None))
        row = rows_of.get(s.candidate)
        rows.append(
            FidelityRow(
                candidate=s.candidate,
                reasons=s.reasons,
                leaning=None if row is None else leaning(row),
                seeds=seeds,
                short=a,
                long=b,
                short_rank=short_rank.get(s.candidate),
                long_rank=long_rank.get(s.candidate),
            )
        )
    rows.sort(key=lambda r: (r.long_rank is None, r.long_rank or 0, r.candidate))
    agreement = rung_agreement([{k: v[1] for k, v in pairs.items()}, {k: v[2] for k, v in pairs.items()}])
    win = ranking.winner
    winner = winner or (None if win is None else str(win["candidate"]))
    long_best = next((r.candidate for r in rows if r.long_rank == 1), None)
    decided = decision_set(ranking, decision)
    return FidelityCheck(
        factor=factor,
        short_epochs=short_epochs,
        long_epochs=long_epochs,
        rows=tuple(rows),
        units=len(checked),
        finished=sum(r.state.finished for r in checked),
        kendall_tau_b=agreement[0].kendall_tau_b if agreement else None,
        winner=winner,
        long_best=long_best,
        in_decision_set=None if long_best is None else long_best in decided,
    )
