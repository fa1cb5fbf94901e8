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


def test_rank_winner_and_statements():
    trials = _trials(
        {(1.0, 1.0, 1.4): [0.70, 0.71, 0.72], (1.2, 1.1, 1.15): [0.60, 0.61, 0.62], (2.0, 1.0, 1.0): [None, None]}
    )
    r = rank(trials, final_epochs=3)
    assert (r.winner["alpha"], r.winner["gamma"]) == (1.0, 1.4)
    assert list(r.table["seeds"]) == [3, 3, 0]
    assert r.table.iloc[2]["pruned"] == 2 and pd.isna(r.table.iloc[2]["rank"])
    text = " ".join(r.statements)
    assert "beats the runner-up" in text and "ranks 2 of 2" in text


def test_rank_says_when_not_distinguishable():
    trials = _trials({(1.0, 1.0, 1.4): [0.60, 0.70], (1.2, 1.1, 1.15): [0.62, 0.66]})
    r = rank(trials, final_epochs=3)
    assert any("NOT distinguishable" in s for s in r.statements)


def test_rank_single_seed_has_no_interval():
    r = rank(_trials({(1.0, 1.0, 1.4): [0.6], (1.2, 1.1, 1.15): [0.5]}), final_epochs=3)
    assert any("at least 2 seeds" in s for s in r.statements)
    assert "is the winner" not in " ".join(r.statements)
