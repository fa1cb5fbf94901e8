"""The curves folder's files: curves.csv, curves.md, curves.png and speed.png.

Per cost multiple s, the strategies' networks are ranked with the search's statistics (pooled 95%
intervals, P(best), the 90% confidence set of the best, the verdict), each compound triple is set
against the best single dimension with a pooled interval, and the paper's two claims are read off
the proxy: Fig. 3 (each single dimension alone saturates) and Table 7 (compound beats every single
dimension at equal FLOPs). The compound triples' ranks at consecutive s say whether a phi = 1
winner stays best as the network grows. Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..records import TrialRecord, TrialState, candidate_key
from .ranking import difference_interval
from .statistics import Analysis, ScoreTable, analyze

CURVES_CSV = "curves.csv"
COMPOUND_ROLES = ("paper", "winner", "set", "compound")
SINGLE_ROLE = "single"


@dataclass(frozen=True)
class PointInfo:
    """One strategy at one cost multiple as planned: the network it trains and what that costs."""

    strategy: str
    role: str  # baseline, single, mixed, paper, winner, set, compound
    describe: str  # the split or the triple, in words
    s: float
    depth: float  # multipliers over the baseline and the resolution trained
    width: float
    gamma: float  # resolution over the base resolution
    resolution: int
    cost: float  # real MACs over the baseline's, as planned
    same_as: str | None
    activations: int | None
    coefficients: tuple[float, float, float] | None = None  # a compound strategy's triple

    @property
    def candidate(self) -> str:
        """The key of the unit's network (shared by strategies that build the same one)."""
        return candidate_key(self.depth, self.width, self.gamma)


CSV_COLUMNS = (
    "strategy",
    "role",
    "s",
    "seed",
    "state",
    "accuracy",
    "macs",
    "macs_ratio",
    "params",
    "activations",
    "images_per_second",
    "depth",
    "width",
    "resolution",
    "upsampled",
    "alpha",
    "beta",
    "gamma",
    "same_network_as",
    "wall_seconds",
    "unit",
)
COLUMN_DESCRIPTIONS = {
    "strategy": "how the cost multiple is spent: depth, width, resolution (one dimension), uniform, dWr, paper, "
    "winner, a set member compound(a,b,g), or baseline (s = 1)",
    "role": "baseline, single (one dimension), mixed (a fixed split), paper, winner, set (the search's set of the "
    "best) or compound (a triple given)",
    "s": "the cost multiple: the network's MACs are within the tolerance of s times the baseline's",
    "seed": "training seed (int)",
    "state": "COMPLETE, FAIL (failure in the study) or WAITING (not trained yet)",
    "accuracy": "held-out top-1 after the proxy recipe; empty until trained",
    "macs": "multiply-adds of one forward pass at the network's resolution, conv + linear (int)",
    "macs_ratio": "macs over the baseline's: the real cost multiple",
    "params": "trainable parameters (int)",
    "activations": "elements of every convolution's output for one image (Dollar et al.'s activations) (int)",
    "images_per_second": "training throughput measured in this trial (images per second, this machine)",
    "depth": "depth multiplier over the baseline (blocks per stage rounded up)",
    "width": "width multiplier over the baseline (channels to multiples of 8)",
    "resolution": "input side in pixels (int)",
    "upsampled": "true when the resolution is above the images' native size (interpolated detail)",
    "alpha": "a compound strategy's depth coefficient (empty for the others); phi solved so the cost is s",
    "beta": "a compound strategy's width coefficient",
    "gamma": "a compound strategy's resolution coefficient",
    "same_network_as": "the strategy whose identical rounded network this row shares (trained once)",
    "wall_seconds": "wall-clock seconds of the trial",
    "unit": "the study's unit key of this network and seed",
}


def columns_md() -> str:
    """COLUMNS.md of the curves folder: what every column of curves.csv means."""
    rows = [f"| `{c}` | {COLUMN_DESCRIPTIONS[c]} |" for c in CSV_COLUMNS]
    head = [
        "# Columns of curves.csv",
        "",
        "One row per strategy x cost multiple s x seed (the baseline at s = 1). Integers are written as integers; an "
        "empty field is a missing value. Load with `pandas.read_csv`.",
        "",
        "| column | meaning |",
        "|---|---|",
    ]
    return "\n".join(head + rows) + "\n"


@dataclass(frozen=True)
class AtS:
    """The comparison at one cost multiple."""

    s: float
    labels: dict[str, str]  # candidate -> the strategies that train it, joined by " = "
    analysis: Analysis | None
    means: dict[str, float]  # strategy -> mean accuracy over its seeds
    scores: dict[str, list[float]]  # strategy -> accuracy per seed (NaN where missing)
    best_single: str | None
    versus_single: dict[str, tuple[float, float, float]]  # compound strategy -> (difference, low, high)


@dataclass(frozen=True)
class CurveReport:
    comparisons: tuple[AtS, ...]
    statements: tuple[str, ...]


def _score(records: dict[tuple[str, int], TrialRecord], candidate: str, seed: int) -> float:
    r = records.get((candidate, seed))
    ok = r is not None and r.state is TrialState.COMPLETE and r.accuracy is not None
    return float(r.accuracy) if ok else math.nan


def _t975(df: int) -> float:
    from scipy import stats as sps

    return float(sps.t.ppf(0.975, df))


def compare(points: Sequence[PointInfo], by_unit: dict, seeds: Sequence[int], s: float, boot_seed: int) -> AtS:
    here = [p for p in points if p.s == s]
    labels: dict[str, str] = {}
    for p in here:
        labels[p.candidate] = f"{labels[p.candidate]} = {p.strategy}" if p.candidate in labels else p.strategy
    keys = list(labels)
    matrix = [[_score(by_unit, k, seed) for seed in seeds] for k in keys]
    analysis = None
    if sum(any(math.isfinite(v) for v in row) for row in matrix) >= 2:
        table = ScoreTable.build([labels[k] for k in keys], matrix)
        analysis = analyze(table, bootstrap_seed=boot_seed)
    scores = {p.strategy: matrix[keys.index(p.candidate)] for p in here}
    means = {k: _mean(v) for k, v in scores.items()}
    singles = [p.strategy for p in here if p.role == SINGLE_ROLE and math.isfinite(means[p.strategy])]
    best_single = max(singles, key=lambda k: means[k]) if singles else None
    versus: dict[str, tuple[float, float, float]] = {}
    if best_single is not None and analysis is not None and analysis.anova is not None:
        ms, df = analysis.anova.ms_within, analysis.anova.df_within
        n_single = sum(math.isfinite(v) for v in scores[best_single])
        for p in here:
            if p.role not in COMPOUND_ROLES or not math.isfinite(means[p.strategy]):
                continue
            n = sum(math.isfinite(v) for v in scores[p.strategy])
            diff = means[p.strategy] - means[best_single]
            half = _t975(df) * math.sqrt(ms * (1 / n + 1 / n_single))
            versus[p.strategy] = (diff, diff - half, diff + half)
    return AtS(s, labels, analysis, means, scores, best_single, versus)


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _verdict_word(low: float, high: float) -> str:
    if low > 0:
        return "supports it"
    if high < 0:
        return "contradicts it"
    return "cannot tell (the interval holds 0)"


def fig3_statement(points: Sequence[PointInfo], comparisons: Sequence[AtS], baseline: list[float]) -> str:
    """The paper's Fig. 3 (each single dimension alone saturates near 80% on ImageNet), as this proxy sees it."""
    head = "Fig. 3 (each single dimension, scaled alone, saturates):"
    if len(comparisons) < 1 or not any(math.isfinite(v) for v in baseline):
        return f"{head} no trained baseline and scaled networks yet."
    parts = []
    flattening = []
    for name in ("depth", "width", "resolution"):
        series = [baseline] + [c.scores.get(name, [math.nan]) for c in comparisons]
        gains = []
        for a, b in zip(series, series[1:]):
            fa, fb = [v for v in a if math.isfinite(v)], [v for v in b if math.isfinite(v)]
            gains.append(difference_interval(fb, fa) if len(fa) > 1 and len(fb) > 1 else None)
        if not gains or any(g is None for g in gains):
            continue
        steps = ", ".join(f"{g[0]:+.3f} [{g[1]:+.3f}, {g[2]:+.3f}] to {c.s:g}x" for g, c in zip(gains, comparisons))
        parts.append(f"{name} {steps}")
        if len(gains) > 1:
            flattening.append((name, gains[-1][0] < gains[-2][0]))
    if not parts:
        return f"{head} needs at least two seeds of the baseline and of each single dimension."
    text = f"{head} accuracy gained at each step (95% Welch intervals): " + "; ".join(parts) + "."
    if flattening:
        slower = [n for n, f in flattening if f]
        said = (
            f"The last step gains less than the one before for {', '.join(slower)} ({len(slower)} of "
            f"{len(flattening)} dimensions)"
            if slower
            else f"None of the {len(flattening)} dimensions gains less at its last step than at the one before"
        )
        text += (
            f" {said}; a proxy this short and small sees the start of the curves, not the plateau near 80% the "
            "paper reports on ImageNet."
        )
    return text


def table7_statement(comparisons: Sequence[AtS]) -> str:
    """The paper's Table 7 (compound beats each single dimension at about equal FLOPs), as this proxy sees it."""
    head = (
        "Table 7 (compound (1.4, 1.2, 1.3) 81.1% against depth 79.0%, width 78.9%, resolution 79.1% at about 4.5x "
        "B0's FLOPs):"
    )
    parts = []
    for c in comparisons:
        for name in ("paper", "winner"):
            if name in c.versus_single and c.best_single is not None:
                d, lo, hi = c.versus_single[name]
                if any({name, c.best_single} <= set(label.split(" = ")) for label in c.labels.values()):
                    # an interval around 0 here would read as "cannot tell" about a network compared with itself
                    parts.append(
                        f"at {c.s:g}x the {name}'s triple builds the best single dimension's network "
                        f"({c.best_single} only): one network, nothing to compare"
                    )
                    continue
                parts.append(
                    f"at {c.s:g}x the {name}'s triple is {d:+.4f} [95% {lo:+.4f}, {hi:+.4f}] against the best single "
                    f"dimension ({c.best_single}): {_verdict_word(lo, hi)}"
                )
    if not parts:
        return f"{head} not measurable yet (needs compound and single-dimension networks with at least two seeds)."
    return f"{head} " + "; ".join(parts) + "."


def _one_network_groups(points: Sequence[PointInfo], names: Sequence[str]) -> dict[str, list[str]]:
    """``names`` grouped by the networks they build at every s, in their order: {"a = b": ["a", "b"], ...}."""
    networks: dict[tuple[str, ...], list[str]] = {}
    for name in names:
        key = tuple(p.candidate for p in sorted(points, key=lambda q: q.s) if p.strategy == name)
        networks.setdefault(key, []).append(name)
    return {" = ".join(members): members for members in networks.values()}


def rank_agreement_statement(points: Sequence[PointInfo], comparisons: Sequence[AtS]) -> str:
    """Do the compound triples keep their order from one s to the next (does the phi = 1 winner stay best)?"""
    from scipy import stats as sps

    triples = sorted({p.strategy for p in points if p.role in COMPOUND_ROLES})
    if len(comparisons) < 2:
        return "Rank agreement of the compound triples across s: needs at least two cost multiples."
    out = []
    for a, b in zip(comparisons, comparisons[1:]):
        both = [
            t for t in triples if math.isfinite(a.means.get(t, math.nan)) and math.isfinite(b.means.get(t, math.nan))
        ]
        # Triples that round to the same network at every s are one entry: counted twice, their tie at
        # every s would pass for agreement.
        label = {members[0]: joined for joined, members in _one_network_groups(points, both).items()}
        shared = list(label)
        if len(shared) < 2:
            out.append(f"between {a.s:g}x and {b.s:g}x: fewer than two distinct compound networks trained at both")
            continue
        order_a = sorted(shared, key=lambda t: -a.means[t])
        order_b = sorted(shared, key=lambda t: -b.means[t])
        text = f"between {a.s:g}x and {b.s:g}x over {len(shared)} distinct compound networks"
        if len(shared) >= 3:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tau = sps.kendalltau([a.means[t] for t in shared], [b.means[t] for t in shared], variant="b").statistic
            text += f", Kendall tau-b {tau:.2f}" if math.isfinite(tau) else ", Kendall tau-b undefined (ties)"
        text += (
            f" (order at {a.s:g}x: {', '.join(label[t] for t in order_a)};"
            f" at {b.s:g}x: {', '.join(label[t] for t in order_b)})"
        )
        winner = next((t for t in shared if "winner" in label[t].split(" = ")), None)
        if winner is not None:
            ra, rb = order_a.index(winner) + 1, order_b.index(winner) + 1
            text += f"; the search's winner ranks {ra} then {rb} of {len(shared)}"
        out.append(text)
    return "Rank agreement of the compound triples: " + "; ".join(out) + "."


# ------------------------------------------------------------------ files


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def csv_rows(
    points: Sequence[PointInfo], by_unit: dict, seeds: Sequence[int], detail: int | None, first: Sequence[int] = ()
) -> list[dict]:
    """One row per point x seed it has a unit of (every seed of the first round, and the seeds a race added)."""
    rows = []
    for p in points:
        for seed in seeds:
            r = by_unit.get((p.candidate, seed))
            if r is None and seed not in first:
                continue  # a seed a race gave other networks only
            done = r is not None and r.state is TrialState.COMPLETE
            c = p.coefficients
            rows.append(
                {
                    "strategy": p.strategy,
                    "role": p.role,
                    "s": p.s,
                    "seed": seed,
                    "state": r.state.value if r is not None else TrialState.WAITING.value,
                    "accuracy": r.accuracy if done else None,
                    "macs": r.macs if r is not None else None,
                    "macs_ratio": round(p.cost, 6),
                    "params": r.params if r is not None else None,
                    "activations": p.activations,
                    "images_per_second": r.images_per_second if done else None,
                    "depth": p.depth,
                    "width": p.width,
                    "resolution": p.resolution,
                    "upsampled": None if detail is None else p.resolution > detail,
                    "alpha": c[0] if c else None,
                    "beta": c[1] if c else None,
                    "gamma": c[2] if c else None,
                    "same_network_as": p.same_as,
                    "wall_seconds": r.wall_seconds if done else None,
                    "unit": r.unit if r is not None else None,
                }
            )
    return rows


def to_csv(rows: Sequence[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([_cell(row[c]) for c in CSV_COLUMNS])
    return buffer.getvalue()


def write_curves(
    out: Path,
    points: Sequence[PointInfo],
    records: Sequence[TrialRecord],
    seeds: Sequence[int],
    info: dict,
) -> CurveReport:
    """Rank, compare and write every file of the curves folder; returns what it found."""
    from . import plots

    by_unit = {(r.candidate, r.seed): r for r in records}
    detail = info.get("detail")
    targets = sorted({p.s for p in points if p.s > 1})
    boot = int(info.get("order_seed", 0))
    comparisons = tuple(compare(points, by_unit, seeds, s, boot) for s in targets)
    base = next((p for p in points if p.role == "baseline"), None)
    baseline = [_score(by_unit, base.candidate, seed) for seed in seeds] if base is not None else []
    statements = (
        fig3_statement(points, comparisons, baseline),
        table7_statement(comparisons),
        rank_agreement_statement(points, comparisons),
    )
    rows = csv_rows(points, by_unit, seeds, detail, info.get("seeds") or seeds)
    atomic_write_text(out / CURVES_CSV, to_csv(rows))
    atomic_write_text(out / "curves.md", _markdown(points, comparisons, statements, baseline, info, rows))
    atomic_write_text(out / "COLUMNS.md", columns_md())
    summary = {
        "targets": targets,
        "units_total": len(records),
        "units_finished": sum(r.state.finished for r in records),
        "per_s": [_summary(c) for c in comparisons],
        "statements": list(statements),
        **{k: v for k, v in info.items() if k != "detail"},
    }
    atomic_write_text(out / "curves.json", json.dumps(summary, indent=2, default=_plain) + "\n")
    series = _series(points, rows, base)
    name = info.get("space", "")
    plots.strategy_curves(
        series,
        out / "curves.png",
        f"{name}: scaling strategies at equal real MACs",
        x="macs",
        xlabel="real MACs (conv + linear, millions)",
    )
    plots.strategy_curves(
        series,
        out / "speed.png",
        f"{name}: the same networks against their measured training speed",
        x="images_per_second",
        xlabel=f"measured training images/s ({info.get('device', 'this machine')})",
    )
    return CurveReport(comparisons, statements)


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(type(value))


def _summary(c: AtS) -> dict:
    a = c.analysis
    out: dict[str, Any] = {
        "s": c.s,
        "best_single": c.best_single,
        "means": {k: (None if math.isnan(v) else v) for k, v in c.means.items()},
        "versus_best_single": {
            k: {"difference": d, "low": lo, "high": hi} for k, (d, lo, hi) in c.versus_single.items()
        },
    }
    if a is not None:
        out.update(
            best=a.winner,
            verdict="conclusive" if a.verdict.conclusive else "inconclusive",
            confidence_set=list(a.confidence_set),
            p_best={s.key: s.p_best for s in a.candidates},
        )
    return out


def _series(points: Sequence[PointInfo], rows: Sequence[dict], base: PointInfo | None) -> dict[str, list[dict]]:
    """Per strategy, its points from the baseline up: mean accuracy with its spread, MACs, measured img/s."""
    series: dict[str, list[dict]] = {}
    names = list(dict.fromkeys(p.strategy for p in points if p.role != "baseline"))
    for label, members in _one_network_groups(points, names).items():  # a curve shared by strategies drawn once
        name = members[0]
        line = []
        for p in [base] + [q for q in points if q.strategy == name] if base is not None else []:
            here = [r for r in rows if r["strategy"] == p.strategy and r["s"] == p.s and r["accuracy"] is not None]
            if not here:
                continue
            accs = [r["accuracy"] for r in here]
            ips = [r["images_per_second"] for r in here if r["images_per_second"]]
            line.append(
                {
                    "s": p.s,
                    "accuracy": sum(accs) / len(accs),
                    "low": min(accs),
                    "high": max(accs),
                    "macs": here[0]["macs"] / 1e6 if here[0]["macs"] else math.nan,
                    "images_per_second": sum(ips) / len(ips) if ips else math.nan,
                    "upsampled": bool(here[0]["upsampled"]),
                }
            )
        series[label] = line
    return series


def _fmt(v: float | None, digits: int = 4) -> str:
    return "" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _markdown(
    points: Sequence[PointInfo],
    comparisons: Sequence[AtS],
    statements: Sequence[str],
    baseline: list[float],
    info: dict,
    rows: Sequence[dict],
) -> str:
    lines = [f"# Scaling curves: {info.get('space', '')}", ""]
    lines += [f"- {s}" for s in statements]
    done = sum(1 for r in rows if r["state"] != TrialState.WAITING.value)
    lines += [
        "",
        "## Protocol",
        "",
        f"- baseline: {info.get('baseline', '')} at {info.get('base_resolution')} px ({info.get('base_note', '')})",
        f"- every network's real MACs (conv + linear, counted as built) within {info.get('tolerance', 0):g} of s "
        f"times the baseline's; resolutions rounded to multiples of {info.get('multiple')}; strategies that round "
        "to one network share its trainings",
        f"- proxy recipe and seeds of the search ({', '.join(str(s) for s in info.get('seeds', []))}); "
        f"{info.get('recipe', '')}",
        f"- data: {info.get('resolution_statement', '')}",
        f"- trials finished: {done} of {len(rows)} rows"
        + ("" if info.get("complete") else " (not complete: run the same command again to resume)"),
        "",
    ]
    if any(math.isfinite(v) for v in baseline):
        lines += [
            f"Baseline (s = 1): accuracy {_fmt(_mean(baseline))} over {sum(map(math.isfinite, baseline))} seed(s).",
            "",
        ]
    for c in comparisons:
        lines += [f"## s = {c.s:g}", ""]
        lines += _ranking_table(c, points, info.get("detail"))
        decision = (info.get("decisions") or {}).get(f"{c.s:g}")
        if decision:
            lines += ["", decision_line(decision, c.labels)]
        if c.analysis is not None:
            lines += [""] + [f"- {s}" for s in c.analysis.verdict.statements]
        if c.versus_single:
            lines += ["", f"Compound against the best single dimension ({c.best_single}), pooled 95% intervals:", ""]
            lines += ["| strategy | difference | 95% interval |", "|---|---|---|"]
            single = next((p.candidate for p in points if p.s == c.s and p.strategy == c.best_single), None)
            for name, (d, lo, hi) in c.versus_single.items():
                same = next((p for p in points if p.s == c.s and p.strategy == name), None)
                note = " (the same network)" if same is not None and same.candidate == single else ""
                lines.append(f"| {name}{note} | {d:+.4f} | [{lo:+.4f}, {hi:+.4f}] |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def decision_line(decision: dict, labels: dict[str, str]) -> str:
    """The race's decision at one s in words, networks named by their strategies."""
    named = [labels.get(k, k) for k in decision.get("alive", [])]
    outcome = decision["outcome"]
    if outcome == "best":
        what = f"**best: {named[0]}**" if named else "**best**"
    elif outcome == "equivalent":
        what = f"**equivalent: {', '.join(named)}**"
    else:
        what = f"**undecided** ({len(named)} still in contention: {', '.join(named)})"
    return (
        f"Decision ({decision.get('rule', '')}, {decision.get('seeds')} seeds): {what}; {decision.get('reason', '')}."
    )


def _ranking_table(c: AtS, points: Sequence[PointInfo], detail: int | None) -> list[str]:
    here = {p.strategy: p for p in points if p.s == c.s}
    stats = {s.key: s for s in c.analysis.candidates} if c.analysis is not None else {}
    head = (
        "| rank | strategies (one network) | accuracy | 95% CI | P(best) | in 90% set | MACs ratio | depth x | "
        "width x | res | detail |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|---|"]
    ordered = sorted(c.labels.values(), key=lambda label: (stats[label].rank if label in stats else 10**6, label))
    for label in ordered:
        p = here[label.split(" = ")[0]]
        st = stats.get(label)
        mean = st.mean if st is not None else _mean(c.scores[p.strategy])
        ci = f"[{_fmt(st.low)}, {_fmt(st.high)}]" if st is not None and math.isfinite(st.low) else ""
        pb = "" if st is None or st.p_best is None else f"{st.p_best:.2f}"
        upsampled = "upsampled" if detail is not None and p.resolution > detail else ""
        lines.append(
            f"| {st.rank if st is not None else ''} | {label} | {_fmt(mean)} | {ci} | {pb} | "
            f"{'yes' if st is not None and st.in_confidence_set else ''} | {p.cost:.3f}x | {p.depth:.3g} | "
            f"{p.width:.3g} | {p.resolution} | {upsampled} |"
        )
    return lines
