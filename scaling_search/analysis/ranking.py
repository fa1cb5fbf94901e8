"""Ranking candidates from their trials: means over seeds, 95% intervals, and
plain statements of what the seeds can and cannot tell apart."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from ..records import TrialRecord, TrialState
from ..scaling import PAPER

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


KEY = ["alpha", "beta", "gamma"]


@dataclass(frozen=True)
class Ranking:
    table: pd.DataFrame  # one row per candidate, best first
    statements: tuple[str, ...]

    @property
    def winner(self) -> pd.Series | None:
        ranked = self.table[self.table["seeds"] > 0]
        return None if ranked.empty else ranked.iloc[0]


def rank(trials: Sequence[TrialRecord], final_epochs: int) -> Ranking:
    """Rank candidates by mean held-out accuracy over the seeds that reached ``final_epochs``."""
    groups: dict[tuple[float, float, float], list[TrialRecord]] = {}
    for r in trials:
        groups.setdefault((r.alpha, r.beta, r.gamma), []).append(r)
    rows = []
    for key, group in groups.items():
        accs = [
            float(r.accuracy)
            for r in group
            if r.state is TrialState.COMPLETE and r.epochs_run >= final_epochs and r.accuracy is not None
        ]
        mean, low, high = mean_interval(accs) if accs else (math.nan, math.nan, math.nan)
        first = next((r for r in group if r.params is not None), group[0])
        rows.append(
            {
                "alpha": key[0],
                "beta": key[1],
                "gamma": key[2],
                "seeds": len(accs),
                "accuracy_mean": mean,
                "ci_low": low,
                "ci_high": high,
                "accuracy_std": float(pd.Series(accs).std()) if len(accs) > 1 else math.nan,
                "pruned": sum(r.state is TrialState.PRUNED for r in group),
                "failed": sum(r.state is TrialState.FAIL for r in group),
                "params": first.params,
                "macs": first.macs,
                "resolution": first.resolution or None,
                "theoretical_ratio": float(first.theoretical_ratio),
                "measured_ratio": float(first.measured_ratio),
                "paper": key == PAPER.as_tuple(),
                "_accs": accs,
            }
        )
    table = pd.DataFrame(rows)
    if table.empty:
        return Ranking(table, ("No trials yet.",))
    # Ranked candidates first, best mean first; unranked (pruned, failed) after.
    table["_ranked"] = table["seeds"] > 0
    table = (
        table.sort_values(["_ranked", "accuracy_mean"], ascending=[False, False])
        .drop(columns="_ranked")
        .reset_index(drop=True)
    )
    table.insert(0, "rank", pd.array([i + 1 if s > 0 else None for i, s in enumerate(table["seeds"])], dtype="Int64"))
    statements = _statements(table)
    return Ranking(table.drop(columns=["_accs"]), tuple(statements))


def _name(row: pd.Series) -> str:
    return f"({row['alpha']:g}, {row['beta']:g}, {row['gamma']:g})"


def _acc(row: pd.Series) -> str:
    if row["seeds"] >= 2:
        return f"{row['accuracy_mean']:.4f} [95% CI {row['ci_low']:.4f}, {row['ci_high']:.4f}], {row['seeds']} seeds"
    return f"{row['accuracy_mean']:.4f} (1 seed, no interval)"


def _compare(a: pd.Series, b: pd.Series, label: str) -> str:
    diff = difference_interval(a["_accs"], b["_accs"])
    if diff is None:
        return f"The winner cannot be told apart from {label} {_name(b)}: an interval needs at least 2 seeds each."
    d, lo, hi = diff
    if lo <= 0 <= hi:
        return (
            f"The winner is NOT distinguishable from {label} {_name(b)} at the seeds used: the difference "
            f"{d:+.4f} has a 95% interval [{lo:+.4f}, {hi:+.4f}] that includes 0."
        )
    return f"The winner beats {label} {_name(b)} by {d:+.4f} (95% interval [{lo:+.4f}, {hi:+.4f}], excludes 0)."


def _statements(table: pd.DataFrame) -> list[str]:
    ranked = table[table["seeds"] > 0]
    out = []
    if ranked.empty:
        return ["No candidate has finished a trial at the final fidelity yet."]
    win = ranked.iloc[0]
    out.append(
        f"Winner: {_name(win)} with held-out accuracy {_acc(win)}; {len(ranked)} of {len(table)} candidates ranked."
    )
    if len(ranked) > 1:
        out.append(_compare(win, ranked.iloc[1], "the runner-up"))
    paper = table[table["paper"]]
    if paper.empty:
        out.append("The paper's (1.2, 1.1, 1.15) is not among the candidates (it does not satisfy this constraint).")
    else:
        p = paper.iloc[0]
        if p["seeds"] == 0:
            out.append("The paper's (1.2, 1.1, 1.15) has no trial at the final fidelity (pruned or failed).")
        elif bool(win["paper"]):
            out.append(f"The paper's (1.2, 1.1, 1.15) is the winner, rank 1 of {len(ranked)}.")
        else:
            out.append(f"The paper's (1.2, 1.1, 1.15) ranks {int(p['rank'])} of {len(ranked)} with {_acc(p)}.")
            if int(p["rank"]) != 2:  # as runner-up it was compared above
                out.append(_compare(win, p, "the paper's"))
    return out
