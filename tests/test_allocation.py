import random
from collections import Counter

import pytest
from scipy import stats

from scaling_search.errors import UsageError
from scaling_search.search.allocation import promote, run_order, rung_epochs, simulate_halving
from scaling_search.search.plan import Unit


def test_run_order_is_interleaved_by_seed_shuffled_and_reproducible():
    units = [Unit(1 + i / 10, 1.0, 1.0, s, 2.0, 2.0) for s in (1, 0, 2) for i in range(12)]
    order = run_order(units, seed=5)
    assert [u.seed for u in order] == [0] * 12 + [1] * 12 + [2] * 12
    assert order == run_order(units, seed=5) and order != run_order(units, seed=6)
    assert sorted(order, key=lambda u: (u.seed, u.alpha)) == sorted(units, key=lambda u: (u.seed, u.alpha))
    blocks = [[u.alpha for u in order[i : i + 12]] for i in (0, 12, 24)]
    assert blocks[0] != sorted(blocks[0]) and blocks[0] != blocks[1]  # shuffled, each seed on its own


def test_rung_epochs():
    assert rung_epochs(9, 3, min_epochs=1) == (1, 3, 9)
    assert rung_epochs(10, 3, min_epochs=1) == (1, 3, 9, 10)
    assert rung_epochs(12, 2, rungs=3) == (3, 6, 12)
    with pytest.raises(UsageError):
        rung_epochs(2, 3, rungs=3)
    with pytest.raises(UsageError):
        rung_epochs(9, 1, min_epochs=1)


def test_promote_on_seed_means_keeps_ties_and_references():
    scores = {"a": [0.9, 0.7], "b": [0.8, 0.8], "c": [0.6, 0.6], "d": [0.5, float("nan")], "p": [0.1, 0.1]}
    d = promote(scores, 3, always=["p"])
    assert d.promoted == ("a", "b", "p")  # ceil(5/3) = 2 best, a and b tie at 0.8; p carried
    assert d.carried == ("p",) and d.threshold == pytest.approx(0.8)
    assert d.dropped == ("c", "d")
    shuffled = dict(random.Random(0).sample(sorted(scores.items()), len(scores)))
    assert promote(shuffled, 3, always=["p"]) == d
    assert promote({"a": [float("nan")], "b": [0.2]}, 2).promoted == ("b",)


def _score(quality, noise):
    def score(key, seed, epochs, position):
        return quality[key] + epochs * 0.01 + noise[(key, seed, epochs)]

    return score


def test_completion_order_changes_no_decision():
    keys = [f"c{i:02d}" for i in range(18)]
    rng = random.Random(1)
    quality = {k: rng.random() for k in keys}
    noise = {(k, s, e): rng.gauss(0, 0.2) for k in keys for s in (0, 1) for e in (1, 3, 9)}
    base = simulate_halving(_score(quality, noise), keys, (0, 1), (1, 3, 9), 3, order_seed=4, always=["c17"])
    for trial in range(5):
        perm = random.Random(trial)
        other = simulate_halving(
            _score(quality, noise),
            keys,
            (0, 1),
            (1, 3, 9),
            3,
            order_seed=4,
            always=["c17"],
            finish=lambda units, perm=perm: perm.sample(units, len(units)),
        )
        assert other == base
    assert "c17" in base.finalists and len(base.rungs[1].scores) < len(keys)


def test_monotone_trend_along_the_order_does_not_bias_survival():
    keys = [f"c{i:02d}" for i in range(20)]  # grid order
    survived = Counter()
    runs = 300

    def drifting(key, seed, epochs, position):  # equal candidates; scores drift down as the run goes on
        return -0.01 * position + random.Random(f"{key}-{seed}-{position}").gauss(0, 0.01)

    for order_seed in range(runs):
        result = simulate_halving(drifting, keys, (0, 1), (1, 3), 3, order_seed=order_seed)
        survived.update(result.rungs[0].promotion.promoted)
    rates = [survived[k] / runs for k in keys]
    rho = stats.spearmanr(range(len(keys)), rates).statistic
    assert abs(rho) < 0.5 and max(rates) < 0.6  # ceil(20/3) = 7 of 20 survive: 0.35 each on average
    # Control: the same drift under the grid order picks the first candidates every time.
    first = set(promote({k: [-0.01 * i, -0.01 * (i + 20)] for i, k in enumerate(keys)}, 3).promoted)
    assert first == set(keys[:7])


# ------------------------------------------------------------- the wired path (plan -> rungs -> records)


def _halving_space(order_seed=0):
    from scaling_search.space import parse_space

    return parse_space(
        {
            "name": "wired",
            "baseline": {"model": "efficientnet", "width": 0.25, "depth": 0.25, "resolution": 32},
            "data": {"name": "cifar10"},
            "grid": {"kind": "full", "step": 0.1},
            "constraint": {"budget": "2x", "mode": "measured", "resolution_multiple": 4},
            "proxy": {"epochs": 4},
            "seeds": [0, 1],
            "order_seed": order_seed,
            "pruning": {"enabled": True, "min_epochs": 1, "reduction_factor": 2},
        }
    )


def test_units_follow_the_recorded_order_seed():
    from scaling_search.search.plan import search_candidates, units_for

    space = _halving_space(order_seed=3)
    cands = search_candidates(space)
    units = units_for(space, cands)
    index = {c.coefficients: i for i, c in enumerate(cands)}
    grid_order = sorted(units, key=lambda u: (u.seed, index[u.coefficients]))
    assert units == run_order(grid_order, 3) and units != grid_order
    assert [u.seed for u in units] == [0] * len(cands) + [1] * len(cands)
    assert units != units_for(_halving_space(order_seed=4), cands)
    assert _halving_space(3).fingerprint() == _halving_space(4).fingerprint()  # order changes no unit


def _records_of(quality, noise, finish):
    """An ``execute`` for run_rounds: each unit's score from its candidate and seed, returned in ``finish`` order."""
    from scaling_search.records import TrialRecord, TrialState

    def execute(plan):
        done = [
            TrialRecord(
                **{f: getattr(p, f) for f in ("alpha", "beta", "gamma", "seed", "epochs", "rung")},
                depth=1.0,
                width=1.0,
                resolution=32,
                params=1,
                macs=1,
                theoretical_ratio=2.0,
                measured_ratio=2.0,
                state=TrialState.COMPLETE,
                accuracy=quality[p.candidate] + 0.01 * p.epochs + noise[(p.candidate, p.seed, p.epochs)],
                epochs_run=p.epochs,
            )
            for p in plan
        ]
        return finish(done)

    return execute


def test_rungs_decide_the_same_whatever_order_units_finish_in():
    from scaling_search.records import TrialRecord
    from scaling_search.search.plan import search_candidates, units_for
    from scaling_search.search.policies import policy_for
    from scaling_search.search.rounds import run_rounds

    space = _halving_space()
    cands = search_candidates(space)
    paper = next(c for c in cands if c.is_paper)
    rng = random.Random(2)

    def plan_of(u):
        return TrialRecord(u.alpha, u.beta, u.gamma, u.seed, u.epochs, 1.0, 1.0, 32, 1, 1, 2.0, 2.0, rung=u.rung)

    keys = [plan_of(u).candidate for u in units_for(space, cands)]
    quality = {k: rng.random() for k in keys}
    noise = {(k, s, e): rng.gauss(0, 0.1) for k in keys for s in (0, 1) for e in (1, 2, 4)}
    base_records, base = run_rounds(policy_for(space, cands), plan_of, _records_of(quality, noise, lambda d: d))
    assert [r.epochs for r in base] == [1, 2, 4] and base[0].decision is not None and base[-1].decision is None
    assert paper.coefficients.as_tuple() in {(r.alpha, r.beta, r.gamma) for r in base_records if r.rung is None}
    assert all(r.unit.endswith(f"-r{r.rung}") for r in base_records if r.rung is not None)
    for trial in range(4):
        perm = random.Random(trial)
        shuffled = _records_of(quality, noise, lambda d, perm=perm: perm.sample(d, len(d)))
        records, other = run_rounds(policy_for(space, cands), plan_of, shuffled)
        assert other == base and sorted(r.unit for r in records) == sorted(r.unit for r in base_records)
