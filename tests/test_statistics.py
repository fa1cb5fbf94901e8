import math

import numpy as np
import pytest

from scaling_search.analysis.statistics import ScoreTable, analyze, one_way_anova, rung_agreement
from scaling_search.errors import UsageError

K = 20


def _grid(rng):
    a = rng.uniform(1.0, 2.0, K)
    b = rng.uniform(1.0, 1.4, K)
    return np.c_[a, b, np.sqrt(2.0 / (a * b * b))]


def test_strong_effect_gives_the_right_winner_and_conclusive():
    rng = np.random.default_rng(0)
    effect = np.linspace(0.0, 0.2, K)
    effect[7] = 0.3  # the true best, not last in the table
    scores = effect[:, None] + rng.normal(0, 0.005, (K, 3))
    scores[2, 1] = np.nan  # a missing unit does not stop the analysis
    keys = [f"c{i}" for i in range(K)]
    r = analyze(ScoreTable.build(keys, scores, paper="c3", costs=[2.0] * K), bootstrap_samples=400)
    assert r.winner == "c7"
    assert r.verdict.conclusive
    assert r.verdict.statements[0].startswith("Conclusive: c7")
    assert r.confidence_set == ("c7",)
    assert r.candidates[0].p_best > 0.99
    assert r.agreement.kendall_tau_b > 0.8 and r.anova.p < 1e-10
    assert r.paper.rank == 17 and r.paper.high < 0  # clearly worse than the winner
    assert next(c for c in r.candidates if c.key == "c2").seeds == 2


def test_pure_noise_is_inconclusive_with_a_wide_confidence_set():
    keys = [f"c{i}" for i in range(K)]
    wide = 0
    for seed in range(5):
        scores = np.random.default_rng(seed).normal(0.5, 0.01, (K, 3))
        r = analyze(ScoreTable.build(keys, scores), bootstrap_samples=400)
        assert not r.verdict.conclusive
        assert r.verdict.statements[0].startswith("Inconclusive")
        wide += len(r.confidence_set) >= K / 2
    assert wide >= 4  # a 90% set: nearly always at least half the grid


def test_bootstrap_is_reproducible_from_its_recorded_seed():
    scores = np.random.default_rng(3).normal(0.5, 0.01, (8, 2))
    keys = [f"c{i}" for i in range(8)]
    a = analyze(ScoreTable.build(keys, scores), bootstrap_seed=11, bootstrap_samples=300)
    b = analyze(ScoreTable.build(keys, scores), bootstrap_seed=11, bootstrap_samples=300)
    c = analyze(ScoreTable.build(keys, scores), bootstrap_seed=12, bootstrap_samples=300)
    assert a == b and a.bootstrap_seed == 11
    assert [x.p_best for x in a.candidates] != [x.p_best for x in c.candidates]


def test_pooled_interval_and_anova_match_scipy():
    groups = [np.array([0.5, 0.52, 0.51]), np.array([0.6, 0.58]), np.array([0.55, 0.56, 0.54])]
    anova = one_way_anova(groups)
    from scipy import stats

    ref = stats.f_oneway(*groups)
    assert anova.f == pytest.approx(ref.statistic) and anova.p == pytest.approx(ref.pvalue)
    ms_within = sum(((g - g.mean()) ** 2).sum() for g in groups) / (8 - 3)
    assert anova.ms_within == pytest.approx(ms_within)
    table = np.full((3, 3), np.nan)
    for i, g in enumerate(groups):
        table[i, : len(g)] = g
    r = analyze(ScoreTable.build(["a", "b", "c"], table), bootstrap_samples=200)
    b = next(c for c in r.candidates if c.key == "b")
    half = stats.t.ppf(0.975, 5) * math.sqrt(ms_within / 2)
    assert (b.low, b.high) == pytest.approx((0.59 - half, 0.59 + half))


def test_one_seed_says_it_cannot_decide():
    r = analyze(ScoreTable.build(["a", "b", "c"], [[0.5], [0.6], [0.4]]))
    assert r.winner == "b" and not r.verdict.conclusive
    assert r.agreement is None and r.anova is None and r.candidates[0].p_best is None
    assert math.isnan(r.candidates[0].low)
    assert any("single score" in s for s in r.verdict.statements)


def test_response_surface_finds_a_known_interior_optimum():
    a, b = np.meshgrid(np.linspace(1.0, 1.6, 5), np.linspace(1.0, 1.3, 5))
    a, b = a.ravel(), b.ravel()
    true = 0.7 - 2.0 * (a - 1.3) ** 2 - 3.0 * (b - 1.15) ** 2
    scores = true[:, None] + np.random.default_rng(1).normal(0, 0.002, (25, 2))
    coeffs = np.c_[a, b, np.sqrt(2 / (a * b * b)).clip(1)]
    r = analyze(ScoreTable.build([f"c{i}" for i in range(25)], scores, coefficients=coeffs, budget=2.0))
    s = r.surface
    assert s.alpha == pytest.approx(1.3, abs=0.03) and s.beta == pytest.approx(1.15, abs=0.03)
    assert not s.on_edge
    assert s.region_alpha[0] <= s.alpha <= s.region_alpha[1]
    assert s.gamma == pytest.approx(math.sqrt(2 / (s.alpha * s.beta**2)))
    few = analyze(ScoreTable.build(["a", "b", "c"], scores[:3], coefficients=coeffs[:3], budget=2.0))
    assert few.surface is None and any("response surface" in x for x in few.verdict.statements)


def test_rung_agreement_and_bad_tables():
    agree = rung_agreement([{"a": 1, "b": 2, "c": 3, "d": 4}, {"a": 1, "b": 2, "c": 3, "x": 9}, {"a": 3, "b": 2}])
    assert agree[0].kendall_tau_b == pytest.approx(1.0) and agree[0].candidates == 3
    assert agree[1].kendall_tau_b is None
    with pytest.raises(UsageError):
        ScoreTable.build(["a", "a"], [[1.0], [2.0]])
    with pytest.raises(UsageError):
        analyze(ScoreTable.build(["a", "b"], [[1.0], [np.nan]]))
