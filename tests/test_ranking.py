import math

import pandas as pd
import pytest

from scaling_search.analysis.ranking import difference_interval, mean_interval, rank, t_quantile_975
from scaling_search.records import TrialRecord, TrialState


def test_t_quantiles():
    assert t_quantile_975(1) == pytest.approx(12.706)
    assert t_quantile_975(10) == pytest.approx(2.228)
    assert t_quantile_975(60) == pytest.approx(2.000, abs=0.002)
    assert t_quantile_975(10_000) == pytest.approx(1.96, abs=0.001)


def test_mean_interval():
    mean, lo, hi = mean_interval([0.5, 0.6], bounds=(-10, 10))
    assert mean == pytest.approx(0.55)
    # sd = 0.0707, se = 0.05, t(1) = 12.706
    assert hi - mean == pytest.approx(12.706 * 0.05, rel=1e-3) and mean - lo == pytest.approx(hi - mean)
    mean, lo, hi = mean_interval([0.50, 0.51, 0.52])
    assert hi - mean == pytest.approx(4.303 * 0.01 / 3**0.5, rel=1e-3)
    assert math.isnan(mean_interval([0.4])[1])
    assert mean_interval([0.05, 0.3])[1] == 0.0  # clipped: an accuracy interval stays in [0, 1]


def test_difference_interval():
    d, lo, hi = difference_interval([0.60, 0.61, 0.62], [0.50, 0.51, 0.52])
    # by hand: sd 0.01 in each arm, se = sqrt(2 * 0.01^2 / 3) = 0.008165, df = 4, t(4) = 2.776
    assert d == pytest.approx(0.1)
    assert (lo, hi) == (
        pytest.approx(0.1 - 2.776 * 0.008165, rel=1e-3),
        pytest.approx(0.1 + 2.776 * 0.008165, rel=1e-3),
    )
    assert difference_interval([0.5], [0.4, 0.41]) is None


def _trials(spec):
    rows = []
    for (a, b, g), accs in spec.items():
        for seed, acc in enumerate(accs):
            rows.append(
                TrialRecord(
                    alpha=a,
                    beta=b,
                    gamma=g,
                    seed=seed,
                    state=TrialState.PRUNED if acc is None else TrialState.COMPLETE,
                    accuracy=acc if acc is not None else 0.1,
                    epochs_run=1 if acc is None else 3,
                    epochs=3,
                    depth=1.0,
                    width=1.0,
                    params=10,
                    macs=20,
                    resolution=40,
                    theoretical_ratio=1.9,
                    measured_ratio=2.2,
                )
            )
    return rows


def test_rank_winner_pooled_intervals_and_paper():
    trials = _trials(
        {(1.0, 1.0, 1.4): [0.70, 0.71, 0.72], (1.2, 1.1, 1.15): [0.60, 0.61, 0.62], (2.0, 1.0, 1.0): [None, None]}
    )
    r = rank(trials, final_epochs=3)
    assert (r.winner["alpha"], r.winner["gamma"]) == (1.0, 1.4)
    assert list(r.table["seeds"]) == [3, 3, 0]
    assert r.table.iloc[2]["pruned"] == 2 and pd.isna(r.table.iloc[2]["rank"])  # PRUNED records never rank
    # Pooled noise: both arms have sd 0.01, so ms_within = 1e-4 with 4 df; half width t(4) * 0.01 / sqrt(3).
    half = 2.776 * 0.01 / 3**0.5
    assert r.winner["ci_high"] - r.winner["accuracy_mean"] == pytest.approx(half, rel=1e-3)
    a = r.analysis
    assert a.paper.rank == 2 and a.paper.difference == pytest.approx(-0.1)
    assert a.verdict.conclusive is False  # rank agreement needs 3 candidates: with 2 there is none
    assert r.winner["p_best"] == pytest.approx(1.0) and a.confidence_set == ("a1-b1-g1.4",)
    assert "ranks 2 of 2" in " ".join(r.statements)


def test_rank_reads_full_schedules_only_and_order_does_not_matter():
    trials = _trials({(1.0, 1.0, 1.4): [0.60, 0.70], (1.2, 1.1, 1.15): [0.62, 0.66], (1.1, 1.1, 1.2): [0.5, 0.52]})
    rung0 = [t.replace(rung=0, epochs=1, epochs_run=1, accuracy=0.99) for t in trials]  # a shorter halving rung
    r = rank(trials + rung0, final_epochs=3)
    assert list(r.table["accuracy_mean"]) == pytest.approx([0.65, 0.64, 0.51])  # the 0.99s do not count
    again = rank(list(reversed(trials + rung0)), final_epochs=3)
    assert again.table.equals(r.table) and again.statements == r.statements
    assert len(r.rungs) == 1 and r.rungs[0].candidates == 3  # rank agreement between the two rungs


def test_rank_single_seed_has_no_interval():
    r = rank(_trials({(1.0, 1.0, 1.4): [0.6], (1.2, 1.1, 1.15): [0.5]}), final_epochs=3)
    assert any("single score" in s for s in r.statements)
    assert r.analysis.anova is None and pd.isna(r.winner["ci_low"]) and not r.conclusive


def test_rank_flags_off_budget_and_names_classes():
    from scaling_search.models import EfficientNetConfig
    from scaling_search.search.plan import build_plan
    from scaling_search.space import GridSpec

    plan = build_plan(
        "2x", EfficientNetConfig(resolution=32, width=0.25, depth=0.25), multiple=4, grid=GridSpec("full", 0.1)
    )
    rep = [c for c in plan.classes if len(c.members) > 1][0]
    a, b, g = rep.representative.coefficients.as_tuple()
    trials = _trials({(a, b, g): [0.7, 0.72], (1.2, 1.1, 1.15): [0.6, 0.61]})
    r = rank(trials, final_epochs=3, budget=2.0, tolerance=0.05, classes=plan.classes)
    row = r.table[r.table["alpha"] == a].iloc[0]
    assert row["class"] == rep.label and row["members"] == len(rep.members) and row["coefficients"] == rep.describe()
    assert bool(row["off_budget"])  # _trials records a measured ratio of 2.2: 10% over a 2x budget
    assert any("Off the budget" in s for s in r.statements)
