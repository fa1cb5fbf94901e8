"""Ranking candidates from their trial records: the statistics of ``statistics.analyze``
(pooled intervals, rank agreement, SNR and ANOVA, P(best), the confidence set,
the response surface, the paper's row, the verdict) as a table and plain
statements, with each trained candidate's class of identical networks.

Only full-schedule records rank: a halving rung's shorter schedule is
reported as where a candidate stopped, and a PRUNED record (runs made with
asynchronous pruning) as not ranked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from ..records import TrialRecord, TrialState, candidate_key
from ..scaling import PAPER, Coefficients
from .statistics import Analysis, RungAgreement, ScoreTable, analyze, rung_agreement

# Two-sided 95% Student-t quantiles for 1..30 degrees of freedom.
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_quantile_975(df: float) -> float:
    """0.975 quantile of Student's t (table up to 30 df, Cornish-Fisher beyond)."""
    if df < 1:
        return math.inf
    if df <= 30:
        return _T975[int(math.floor(df)) - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_interval(values: list[float], bounds: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float, float]:
    """Mean and 95% t-interval, clipped to ``bounds`` (accuracy cannot leave [0, 1]);
    the interval is NaN with a single value."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return mean, max(bounds[0], mean - half), min(bounds[1], mean + half)


def difference_interval(a: list[float], b: list[float]) -> tuple[float, float, float] | None:
    """Welch 95% interval of mean(a) - mean(b); None when either has one value."""
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return None
    ma, mb = sum(a) / na, sum(b) / nb
    va = sum((x - ma) ** 2 for x in a) / (na - 1) / na
    vb = sum((x - mb) ** 2 for x in b) / (nb - 1) / nb
    diff = ma - mb
    se2 = va + vb
    if se2 == 0:
        return diff, diff, diff
    df = se2**2 / ((va**2 / (na - 1) if va else 0) + (vb**2 / (nb - 1) if vb else 0))
    half = t_quantile_975(df) * math.sqrt(se2)
    return diff, diff - half, diff + half


class NetworkClassLike(Protocol):
    """What the ranking reads of a class of candidates that build one network (``plan.NetworkClass``)."""

    label: str
    members: tuple

    @property
    def representative(self): ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class Ranking:
    table: pd.DataFrame  # one row per trained candidate, ranked ones best first
    statements: tuple[str, ...]  # the verdict first
    analysis: Analysis | None = None  # None with fewer than two ranked candidates
    rungs: tuple[RungAgreement, ...] = ()  # halving: rank agreement between consecutive rungs

    @property
    def winner(self) -> pd.Series | None:
        ranked = self.table[self.table["seeds"] > 0]
        return None if ranked.empty else ranked.iloc[0]

    @property
    def conclusive(self) -> bool:
        return self.analysis is not None and self.analysis.verdict.conclusive


def _final(r: TrialRecord, final_epochs: int) -> bool:
    return r.rung is None and r.state is TrialState.COMPLETE and r.accuracy is not None and r.epochs_run >= final_epochs


def rank(
    trials: Sequence[TrialRecord],
    final_epochs: int,
    *,
    seeds: Sequence[int] | None = None,
    budget: float | None = None,
    tolerance: float | None = None,
    classes: Sequence[NetworkClassLike] = (),
    bootstrap_seed: int = 0,
) -> Ranking:
    """Rank candidates by mean held-out accuracy over the seeds that trained the full schedule.

    The fidelity check's units (a longer schedule, after the decision) are not the search's: left out."""
    trials = [r for r in trials if r.fidelity is None]
    groups: dict[str, list[TrialRecord]] = {}
    for r in trials:
        groups.setdefault(r.candidate, []).append(r)
    if not groups:
        return Ranking(pd.DataFrame(), ("No trials yet.",))
    seeds = sorted({r.seed for r in trials}) if seeds is None else list(seeds)
    of_class = {candidate_key(*c.representative.coefficients.as_tuple()): c for c in classes}
    keys = sorted(groups)
    scores = []
    for k in keys:
        by_seed = {r.seed: float(r.accuracy) for r in groups[k] if _final(r, final_epochs)}
        scores.append([by_seed.get(s, math.nan) for s in seeds])
    firsts = {k: next((r for r in groups[k] if r.params is not None), groups[k][0]) for k in keys}
    paper_key = candidate_key(*PAPER.as_tuple())
    analysis = None
    if sum(any(math.isfinite(v) for v in row) for row in scores) >= 2:
        table = ScoreTable.build(
            keys,
            scores,
            coefficients=[(firsts[k].alpha, firsts[k].beta, firsts[k].gamma) for k in keys],
            costs=[float(firsts[k].measured_ratio) for k in keys],
            paper=paper_key if paper_key in keys else None,
            budget=budget,
        )
        analysis = analyze(table, bootstrap_seed=bootstrap_seed)
    stats = {c.key: c for c in analysis.candidates} if analysis is not None else {}
    rows = []
    for k, row in zip(keys, scores):
        group, first = groups[k], firsts[k]
        accs = [v for v in row if math.isfinite(v)]
        st = stats.get(k)
        if st is not None:
            mean, low, high = st.mean, st.low, st.high
        else:
            mean, low, high = mean_interval(accs) if accs else (math.nan, math.nan, math.nan)
        shorter = [r.rung for r in group if r.rung is not None and r.state.finished]
        cls = of_class.get(k)
        ratio_ = float(first.measured_ratio)
        off = budget is not None and tolerance is not None and abs(ratio_ / budget - 1) > tolerance
        rows.append(
            {
                "candidate": k,
                "class": cls.label if cls is not None else "",
                "coefficients": cls.describe() if cls is not None else "",
                "members": len(cls.members) if cls is not None else 1,
                "alpha": first.alpha,
                "beta": first.beta,
                "gamma": first.gamma,
                "seeds": len(accs),
                "accuracy_mean": mean,
                "ci_low": low,
                "ci_high": high,
                "accuracy_std": float(np.std(accs, ddof=1)) if len(accs) > 1 else math.nan,
                "p_best": st.p_best if st is not None and st.p_best is not None else math.nan,
                "confidence_set": bool(st.in_confidence_set) if st is not None else False,
                "stopped_rung": (max(shorter) if shorter and not accs else None),
                "pruned": sum(r.state is TrialState.PRUNED for r in group),
                "failed": sum(r.state is TrialState.FAIL for r in group),
                "params": first.params,
                "macs": first.macs,
                "resolution": first.resolution or None,
                "theoretical_ratio": float(first.theoretical_ratio),
                "measured_ratio": ratio_,
                **{f"effective_{k}": _number(getattr(first, f"effective_{k}")) for k in ("alpha", "beta", "gamma")},
                "off_budget": bool(off),
                "paper": k == paper_key,
                "_accs": accs,
            }
        )
    frame = pd.DataFrame(rows)
    # Ranked candidates first, best mean first (the analysis's order, ties by key); unranked after.
    frame["_ranked"] = frame["seeds"] > 0
    frame["_order"] = frame["candidate"].map({c.key: c.rank for c in stats.values()}).fillna(0)
    frame = frame.sort_values(["_ranked", "accuracy_mean", "candidate"], ascending=[False, False, True])
    if stats:
        frame = pd.concat([frame[frame["_ranked"]].sort_values("_order"), frame[~frame["_ranked"]]])
    frame = frame.drop(columns=["_ranked", "_order"]).reset_index(drop=True)
    frame.insert(0, "rank", pd.array([i + 1 if s > 0 else None for i, s in enumerate(frame["seeds"])], dtype="Int64"))
    rungs = _rung_agreement(trials)
    statements = _statements(frame, analysis, rungs)
    return Ranking(frame.drop(columns=["_accs"]), tuple(statements), analysis, rungs)


def _number(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _rung_agreement(trials: Sequence[TrialRecord]) -> tuple[RungAgreement, ...]:
    """Kendall tau-b between the candidate means of consecutive halving rungs (the full schedule last)."""
    by_rung: dict[float, dict[str, list[float]]] = {}
    for r in trials:
        if r.state is TrialState.COMPLETE and r.accuracy is not None:
            rung = math.inf if r.rung is None else r.rung
            by_rung.setdefault(rung, {}).setdefault(r.candidate, []).append(float(r.accuracy))
    if len(by_rung) < 2:
        return ()
    means = [{k: sum(v) / len(v) for k, v in by_rung[i].items()} for i in sorted(by_rung)]
    return rung_agreement(means)


def _name(row: pd.Series) -> str:
    return f"({row['alpha']:g}, {row['beta']:g}, {row['gamma']:g})"


def _acc(row: pd.Series) -> str:
    if row["seeds"] >= 2 and math.isfinite(row["ci_low"]):
        return f"{row['accuracy_mean']:.4f} [95% CI {row['ci_low']:.4f}, {row['ci_high']:.4f}], {row['seeds']} seeds"
    return f"{row['accuracy_mean']:.4f} ({row['seeds']} seed(s), no interval)"


def _statements(table: pd.DataFrame, analysis: Analysis | None, rungs: Sequence[RungAgreement]) -> list[str]:
    ranked = table[table["seeds"] > 0]
    if ranked.empty:
        return ["No candidate has finished a trial at the final fidelity yet."]
    win = ranked.iloc[0]
    out = []
    if analysis is not None:
        out += list(analysis.verdict.statements)
    else:
        out.append("Inconclusive: fewer than two candidates have a full-schedule score, so nothing can be compared.")
    what = f" (class {win['class']}: {win['coefficients']})" if win["members"] > 1 else ""
    out.append(
        f"Grid winner: {_name(win)}{what} with held-out accuracy {_acc(win)}; {len(ranked)} of {len(table)} "
        "candidates ranked."
    )
    paper = table[table["paper"]]
    if paper.empty:
        out.append("The paper's (1.2, 1.1, 1.15) is not among the candidates.")
    elif paper.iloc[0]["seeds"] == 0:
        out.append("The paper's (1.2, 1.1, 1.15) has no full-schedule score (pruned or failed).")
    off = table[table["off_budget"]]
    if not off.empty:
        names = ", ".join(f"{_name(r)} {r['measured_ratio']:.2f}x" for _, r in off.iterrows())
        out.append(f"Off the budget by more than the tolerance (real MACs over the baseline): {names}.")
    for a in rungs:
        if a.kendall_tau_b is None:
            out.append(f"Rungs {a.rungs[0]} and {a.rungs[1]} share {a.candidates} candidate(s): too few to compare.")
        else:
            out.append(
                f"Rungs {a.rungs[0]} and {a.rungs[1]} rank their {a.candidates} shared candidates with Kendall tau-b "
                f"{a.kendall_tau_b:.2f}."
            )
    return out


def class_spread(members: Sequence[Coefficients], max_phi: int, base, multiple: int) -> dict | None:
    """How the B-series at ``max_phi`` of coefficients that build one phi = 1 network differ.

    Returns min/max MACs (the family's count), resolution, depth and width multipliers, or None for one member.
    """
    from ..models import compound, family_of

    if len(members) < 2:
        return None
    configs = [compound(base, c, max_phi, multiple) for c in members]
    macs = [family_of(c).counts(c).macs for c in configs]
    return {
        "phi": max_phi,
        "macs": (min(macs), max(macs)),
        "resolution": (min(c.resolution for c in configs), max(c.resolution for c in configs)),
        "depth": (min(c.depth for c in configs), max(c.depth for c in configs)),
        "width": (min(c.width for c in configs), max(c.width for c in configs)),
    }
