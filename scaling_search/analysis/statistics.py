"""How sure a search is of its winner: statistics over a candidates x seeds score table.

Pure numpy/scipy. Everything random (the bootstrap) draws from a generator
seeded by the caller and recorded in the result, so a report is reproducible.
Noise is estimated once, pooled over candidates (the within-candidate mean
square of a one-way ANOVA), because a search has many candidates and only a
few seeds each: a per-candidate spread from two seeds says almost nothing.
When the data cannot answer a question (one seed: no rank agreement, no
ANOVA, no interval; fewer than 6 candidates: no response surface), the answer
is None and a statement says why.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps
from scipy.spatial import Delaunay

from ..errors import UsageError

CONCLUSIVE_TAU = 0.5
CONCLUSIVE_P = 0.01
CONCLUSIVE_P_BEST = 0.5


@dataclass(frozen=True)
class ScoreTable:
    """Scores of candidates (rows) under seeds (columns); NaN where a unit has no score."""

    keys: tuple[str, ...]
    scores: tuple[tuple[float, ...], ...]
    coefficients: tuple[tuple[float, float, float], ...] | None = None  # (alpha, beta, gamma) per candidate
    costs: tuple[float, ...] | None = None  # measured MACs ratio per candidate
    paper: str | None = None  # key of the paper's triple
    budget: float | None = None  # for gamma on the response surface

    def __post_init__(self) -> None:
        n = len(self.keys)
        if len(set(self.keys)) != n:
            raise UsageError("candidate keys must be unique")
        if len(self.scores) != n or len({len(r) for r in self.scores}) > 1:
            raise UsageError("scores must be a candidates x seeds table, one row per key")
        for name in ("coefficients", "costs"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise UsageError(f"{name} must have one entry per candidate")
        if self.paper is not None and self.paper not in self.keys:
            raise UsageError(f"paper key {self.paper!r} is not a candidate")

    @classmethod
    def build(cls, keys: Sequence[str], scores, **kw) -> ScoreTable:
        matrix = np.asarray(scores, dtype=float)
        if matrix.ndim != 2:
            raise UsageError("scores must be a 2-D candidates x seeds table")
        coeffs = kw.pop("coefficients", None)
        costs = kw.pop("costs", None)
        return cls(
            keys=tuple(keys),
            scores=tuple(tuple(float(v) for v in row) for row in matrix),
            coefficients=None if coeffs is None else tuple(tuple(float(x) for x in c) for c in coeffs),  # type: ignore[misc]
            costs=None if costs is None else tuple(float(c) for c in costs),
            **kw,
        )

    def matrix(self) -> np.ndarray:
        return np.array(self.scores, dtype=float).reshape(len(self.keys), -1)


@dataclass(frozen=True)
class CandidateStats:
    key: str
    seeds: int  # scores present
    mean: float
    low: float  # pooled-variance 95% interval; NaN when the noise cannot be estimated
    high: float
    rank: int  # 1 = best mean
    p_best: float | None  # bootstrap probability of being the best; None with one seed
    in_confidence_set: bool


@dataclass(frozen=True)
class Agreement:
    """Seed-to-seed rank agreement over candidates, averaged over pairs of seeds."""

    kendall_tau_b: float
    spearman: float
    pairs: int
    candidates: int  # fewest candidates shared by a pair


@dataclass(frozen=True)
class Anova:
    f: float
    p: float
    df_between: int
    df_within: int
    ms_within: float  # pooled noise variance
    snr: float  # between-candidate variance component over the within-candidate variance


@dataclass(frozen=True)
class ResponseSurface:
    """Quadratic in (alpha, beta) fitted to candidate means; gamma from the constraint."""

    coefficients: tuple[float, ...]  # c0, a, b, a^2, a*b, b^2
    alpha: float
    beta: float
    gamma: float
    predicted: float
    region_alpha: tuple[float, float]  # 90% bootstrap box of the argmax
    region_beta: tuple[float, float]
    on_edge: bool  # the argmax lies on the grid's hull: the optimum may be outside it


@dataclass(frozen=True)
class PaperComparison:
    key: str
    rank: int
    p_best: float | None
    difference: float  # paper mean - winner mean
    low: float
    high: float
    cost: float | None


@dataclass(frozen=True)
class Verdict:
    conclusive: bool
    statements: tuple[str, ...]


@dataclass(frozen=True)
class Analysis:
    candidates: tuple[CandidateStats, ...]  # best first
    winner: str
    confidence_set: tuple[str, ...]  # the 90% confidence set of the best, best mean first
    agreement: Agreement | None
    anova: Anova | None
    surface: ResponseSurface | None
    paper: PaperComparison | None
    verdict: Verdict
    unscored: tuple[str, ...]  # candidates without any score, left out
    bootstrap_seed: int
    bootstrap_samples: int


# ------------------------------------------------------------------ pieces


def rank_agreement(matrix: np.ndarray) -> Agreement | None:
    """Mean Kendall tau-b and Spearman rho between every pair of seed columns (None with one seed)."""
    taus, rhos, shared = [], [], []
    for i in range(matrix.shape[1]):
        for j in range(i + 1, matrix.shape[1]):
            both = np.isfinite(matrix[:, i]) & np.isfinite(matrix[:, j])
            if both.sum() < 3:
                continue
            x, y = matrix[both, i], matrix[both, j]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a constant column gives NaN: no agreement to speak of
                tau = sps.kendalltau(x, y, variant="b").statistic
                rho = sps.spearmanr(x, y).statistic
            taus.append(0.0 if math.isnan(tau) else float(tau))
            rhos.append(0.0 if math.isnan(rho) else float(rho))
            shared.append(int(both.sum()))
    if not taus:
        return None
    return Agreement(float(np.mean(taus)), float(np.mean(rhos)), len(taus), min(shared))


def one_way_anova(groups: Sequence[np.ndarray]) -> Anova | None:
    """F test of equal candidate means, pooled noise and signal-to-noise (None without replicates)."""
    groups = [g for g in groups if len(g)]
    k, n = len(groups), sum(len(g) for g in groups)
    if k < 2 or n - k < 1:
        return None
    grand = np.concatenate(groups).mean()
    ss_within = sum(float(((g - g.mean()) ** 2).sum()) for g in groups)
    ss_between = sum(len(g) * float((g.mean() - grand) ** 2) for g in groups)
    ms_within = ss_within / (n - k)
    ms_between = ss_between / (k - 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = sps.f_oneway(*groups)
    f, p = float(result.statistic), float(result.pvalue)
    if ms_within == 0:  # identical seeds: any difference is certain, none is noise
        f, p = (math.inf, 0.0) if ms_between > 0 else (math.nan, 1.0)
    # Random-effects variance component: between-candidate variance net of what noise alone gives.
    n0 = (n - sum(len(g) ** 2 for g in groups) / n) / (k - 1)
    sigma_between = max(0.0, (ms_between - ms_within) / n0)
    snr = sigma_between / ms_within if ms_within > 0 else (math.inf if sigma_between > 0 else math.nan)
    return Anova(f=f, p=p, df_between=k - 1, df_within=n - k, ms_within=ms_within, snr=snr)


def _bootstrap_means(matrix: np.ndarray, rng: np.random.Generator, samples: int) -> np.ndarray:
    """Candidate means under resampled pooled residuals (samples x candidates).

    Residuals from every candidate are pooled and rescaled for the degrees of
    freedom their means used, then drawn into each present cell.
    """
    present = np.isfinite(matrix)
    counts = present.sum(axis=1)
    means = np.nanmean(matrix, axis=1)
    resid = (matrix - means[:, None])[present]
    dof = present.sum() - len(means)
    resid = resid * math.sqrt(present.sum() / dof)
    draws = rng.choice(resid, size=(samples, *matrix.shape))
    draws = np.where(present[None], draws, 0.0)
    return means[None] + draws.sum(axis=2) / counts[None]


def p_best(boot_means: np.ndarray) -> np.ndarray:
    """Share of bootstrap samples in which each candidate has the best mean (ties split)."""
    best = boot_means.max(axis=1, keepdims=True)
    top = boot_means == best
    return (top / top.sum(axis=1, keepdims=True)).mean(axis=0)


def confidence_set(means: np.ndarray, boot_means: np.ndarray, level: float = 0.90) -> np.ndarray:
    """Indices of the candidates that may be the best at ``level`` (Gupta's subset, bootstrap-calibrated).

    Candidate i stays unless it trails the best of the others by more than the
    ``level`` quantile of max_j (e_j - e_i), e the bootstrap's centred noise:
    the truly best candidate is then kept with probability ``level``, however
    the others compare. P(best) alone would not do: it favours whichever
    candidate the noise lifted.
    """
    noise = boot_means - means[None]
    keep = []
    for i in range(len(means)):
        others = np.delete(np.arange(len(means)), i)
        if not len(others):
            return np.array([i])
        margin = np.quantile((noise[:, others] - noise[:, [i]]).max(axis=1), level)
        if means[i] >= means[others].max() - margin:
            keep.append(i)
    return np.array(sorted(keep, key=lambda i: -means[i]), dtype=int)


def _design(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.column_stack([np.ones_like(a), a, b, a * a, a * b, b * b])


def _fit(points: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    x = _design(points[:, 0], points[:, 1]) * np.sqrt(weights)[:, None]
    return np.linalg.lstsq(x, y * np.sqrt(weights), rcond=None)[0]


def response_surface(
    points: np.ndarray,
    means: np.ndarray,
    weights: np.ndarray,
    budget: float,
    boot_means: np.ndarray | None = None,
    resolution: int = 81,
) -> ResponseSurface | None:
    """Quadratic fit over (alpha, beta), its argmax inside the grid's hull, and a 90% bootstrap box.

    None when the points cannot pin a quadratic (fewer than 6 distinct
    (alpha, beta) or all on a line).
    """
    distinct = np.unique(points, axis=0)
    if len(distinct) < 6 or np.linalg.matrix_rank(_design(distinct[:, 0], distinct[:, 1])) < 6:
        return None
    try:
        hull = Delaunay(distinct)
    except Exception:  # degenerate (collinear) points: no area to search
        return None
    lo, hi = distinct.min(axis=0), distinct.max(axis=0)
    ga, gb = np.meshgrid(np.linspace(lo[0], hi[0], resolution), np.linspace(lo[1], hi[1], resolution))
    mesh = np.column_stack([ga.ravel(), gb.ravel()])
    mesh = mesh[hull.find_simplex(mesh, tol=1e-9) >= 0]
    design = _design(mesh[:, 0], mesh[:, 1])

    def argmax(y: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
        coef = _fit(points, y, weights)
        pred = design @ coef
        i = int(np.argmax(pred))
        return mesh[i], float(pred[i]), coef

    best, value, coef = argmax(means)
    region_a = (float(best[0]), float(best[0]))
    region_b = (float(best[1]), float(best[1]))
    if boot_means is not None and len(boot_means):
        optima = np.array([argmax(row)[0] for row in boot_means])
        region_a = tuple(float(v) for v in np.quantile(optima[:, 0], [0.05, 0.95]))  # type: ignore[assignment]
        region_b = tuple(float(v) for v in np.quantile(optima[:, 1], [0.05, 0.95]))  # type: ignore[assignment]
    step = (hi - lo) / (resolution - 1)
    # On the edge when a mesh step in some direction leaves the hull.
    near = best + np.array([[s0, s1] for s0 in (-1, 0, 1) for s1 in (-1, 0, 1)]) * step
    on_edge = bool(np.any(hull.find_simplex(near, tol=1e-9) < 0))
    a, b = float(best[0]), float(best[1])
    gamma = math.sqrt(budget / (a * b * b)) if budget / (a * b * b) >= 1 else 1.0
    # In the record's field order: fit, optimum, its predicted accuracy, its bootstrap box, the edge flag.
    return ResponseSurface(tuple(float(c) for c in coef), a, b, gamma, value, region_a, region_b, on_edge)


# ------------------------------------------------------------------ analysis


def _fmt(x: float) -> str:
    return f"{x:.4f}"


def analyze(
    table: ScoreTable, *, bootstrap_seed: int = 0, bootstrap_samples: int = 2000, level: float = 0.90
) -> Analysis:
    """Every statistic of the report and the verdict, from a score table."""
    full = table.matrix()
    scored = np.isfinite(full).any(axis=1)
    if scored.sum() < 2:
        raise UsageError("statistics need scores for at least two candidates")
    idx = np.flatnonzero(scored)
    keys = [table.keys[i] for i in idx]
    matrix = full[idx]
    counts = np.isfinite(matrix).sum(axis=1)
    means = np.nanmean(matrix, axis=1)
    groups = [row[np.isfinite(row)] for row in matrix]
    anova = one_way_anova(groups)
    agreement = rank_agreement(matrix)
    statements: list[str] = []

    order = sorted(range(len(keys)), key=lambda i: (-means[i], keys[i]))
    rank = {i: r + 1 for r, i in enumerate(order)}
    w = order[0]

    boot = None
    probs = None
    if anova is not None and anova.ms_within > 0:
        rng = np.random.default_rng(bootstrap_seed)
        boot = _bootstrap_means(matrix, rng, bootstrap_samples)
        probs = p_best(boot)
        cset = [int(i) for i in confidence_set(means, boot, level)]
    elif anova is not None:  # seeds agree exactly: the best mean is certain
        probs = np.zeros(len(keys))
        best = np.flatnonzero(means == means.max())
        probs[best] = 1.0 / len(best)
        cset = [int(i) for i in best]
    else:
        cset = list(range(len(keys)))
        statements.append(
            "Each candidate has a single score, so the noise cannot be measured: no intervals, no rank agreement, "
            "no ANOVA and no P(best). Train at least two seeds."
        )

    t = sps.t.ppf(0.975, anova.df_within) if anova is not None else math.nan
    per = []
    for i in order:
        half = t * math.sqrt(anova.ms_within / counts[i]) if anova is not None else math.nan
        per.append(
            CandidateStats(
                key=keys[i],
                seeds=int(counts[i]),
                mean=float(means[i]),
                low=float(means[i] - half),
                high=float(means[i] + half),
                rank=rank[i],
                p_best=None if probs is None else float(probs[i]),
                in_confidence_set=i in cset,
            )
        )

    surface = None
    if table.coefficients is not None and table.budget is not None:
        points = np.array([table.coefficients[j][:2] for j in idx])
        surface = response_surface(points, means, counts.astype(float), table.budget, boot)
        if surface is None:
            statements.append(
                "The response surface needs at least 6 candidates spread over the (alpha, beta) plane; none was fitted."
            )

    paper = None
    if table.paper is not None and table.paper in keys:
        p = keys.index(table.paper)
        diff = float(means[p] - means[w])
        if anova is not None:
            half = t * math.sqrt(anova.ms_within * (1 / counts[p] + 1 / counts[w]))
            low, high = diff - half, diff + half
        else:
            low = high = math.nan
        cost = table.costs[int(idx[p])] if table.costs is not None else None
        paper = PaperComparison(
            key=table.paper,
            rank=rank[p],
            p_best=None if probs is None else float(probs[p]),
            difference=diff,
            low=float(low),
            high=float(high),
            cost=cost,
        )
    elif table.paper is not None:
        statements.append(f"The paper's triple ({table.paper}) has no score.")

    verdict = _verdict(keys, w, per, cset, agreement, anova, probs, surface, paper, level, statements)
    return Analysis(
        candidates=tuple(per),
        winner=keys[w],
        confidence_set=tuple(keys[i] for i in cset),
        agreement=agreement,
        anova=anova,
        surface=surface,
        paper=paper,
        verdict=verdict,
        unscored=tuple(k for k, s in zip(table.keys, scored) if not s),
        bootstrap_seed=bootstrap_seed,
        bootstrap_samples=bootstrap_samples,
    )


def _verdict(keys, w, per, cset, agreement, anova, probs, surface, paper, level, notes) -> Verdict:
    winner = keys[w]
    lines = []
    tau = agreement.kendall_tau_b if agreement is not None else math.nan
    p = anova.p if anova is not None else math.nan
    pb = float(probs[w]) if probs is not None else math.nan
    conclusive = tau >= CONCLUSIVE_TAU and p < CONCLUSIVE_P and pb >= CONCLUSIVE_P_BEST
    if conclusive:
        lines.append(f"Conclusive: {winner} is the best candidate (P(best) {pb:.2f}).")
    else:
        lines.append(
            f"Inconclusive: the seeds cannot single out a best candidate; the {level:.0%} confidence set of the best "
            f"holds {len(cset)} of {len(keys)} candidates: {', '.join(keys[i] for i in cset)}."
        )
    if agreement is not None:
        lines.append(
            f"Seeds rank the candidates alike with Kendall tau-b {tau:.2f} and Spearman {agreement.spearman:.2f} "
            f"(needs tau-b >= {CONCLUSIVE_TAU} to be conclusive)."
        )
    if anova is not None:
        lines.append(
            f"Differences between candidates are {anova.snr:.2f} times the seed-to-seed variance; "
            f"one-way ANOVA p = {p:.2g} (needs < {CONCLUSIVE_P})."
        )
    if probs is not None:
        lines.append(f"{winner} is the best in {pb:.0%} of bootstrap resamples (needs >= {CONCLUSIVE_P_BEST:.0%}).")
    if surface is not None:
        edge = " on the edge of the grid, so the optimum may lie outside it" if surface.on_edge else ""
        lines.append(
            f"A quadratic fit over (alpha, beta) peaks at alpha {surface.alpha:.3f}, beta {surface.beta:.3f}, "
            f"gamma {surface.gamma:.3f}{edge} (90% bootstrap box: alpha {surface.region_alpha[0]:.3f}-"
            f"{surface.region_alpha[1]:.3f}, beta {surface.region_beta[0]:.3f}-{surface.region_beta[1]:.3f}); "
            "a guide beside the grid winner, not the verdict."
        )
    if paper is not None:
        cost = f", real cost {paper.cost:.2f}x" if paper.cost is not None else ""
        if paper.key == winner:
            lines.append(f"The paper's triple is the winner{cost}.")
        else:
            interval = "" if math.isnan(paper.low) else f" (95% interval {paper.low:+.4f} to {paper.high:+.4f})"
            chance = "" if paper.p_best is None else f", P(best) {paper.p_best:.2f}"
            lines.append(
                f"The paper's triple ranks {paper.rank} of {len(keys)}{chance}, {paper.difference:+.4f} from the "
                f"winner{interval}{cost}."
            )
    return Verdict(conclusive=bool(conclusive), statements=tuple(lines + notes))


@dataclass(frozen=True)
class RungAgreement:
    rungs: tuple[int, int]  # indices of the two rungs
    candidates: int
    kendall_tau_b: float | None  # None with fewer than 3 shared candidates


def rung_agreement(rung_means: Sequence[dict[str, float]]) -> tuple[RungAgreement, ...]:
    """Kendall tau-b between the candidate means of consecutive rungs, over the candidates in both."""
    out = []
    for i in range(len(rung_means) - 1):
        a, b = rung_means[i], rung_means[i + 1]
        shared = sorted(k for k in a if k in b and math.isfinite(a[k]) and math.isfinite(b[k]))
        tau = None
        if len(shared) >= 3:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                value = sps.kendalltau([a[k] for k in shared], [b[k] for k in shared], variant="b").statistic
            tau = None if math.isnan(value) else float(value)
        out.append(RungAgreement(rungs=(i, i + 1), candidates=len(shared), kendall_tau_b=tau))
    return tuple(out)
