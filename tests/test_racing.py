"""Racing seeds: the rule's guarantee by simulation (no training), decisions independent of completion order,
and a real race killed between rounds that resumes to the same decision."""

import json
import os
import random
import signal
import subprocess

import numpy as np
import pytest
from conftest import ROOT, cli_command, read_csv, run_args, unit_attempts

from scaling_search.records import TrialRecord, TrialState
from scaling_search.search.racing import BEST, EQUIVALENT, pooled_variance, seed_sequence, simulate
from scaling_search.space import RacingSpec, parse_space

# Candidate means of the uniform two-seed cpu-preset run (AMD EPYC, 22 networks, 2 seeds, before racing): the winner
# leads the second by 0.0235, more than delta. Index 6 is the paper's triple.
MEASURED = [
    0.4828, 0.4593, 0.4538, 0.4505, 0.4470, 0.4448, 0.4435, 0.4208, 0.4188, 0.4188, 0.4182,
    0.4165, 0.4120, 0.4080, 0.4052, 0.4045, 0.3968, 0.3952, 0.3948, 0.3880, 0.3865, 0.3808,
]  # fmt: skip
PAPER = 6
RACES = 500
ALPHA = 0.05


def _races(means, *, sigma, seed_sd=0.01, max_seeds, max_trainings=None, seed=0, reference=PAPER):
    spec = RacingSpec(enabled=True, delta=0.01, alpha=ALPHA, max_seeds=max_seeds, max_trainings=max_trainings)
    rng = np.random.default_rng(seed)
    return simulate(
        means, sigma=sigma, seed_sd=seed_sd, spec=spec, first_seeds=2, races=RACES, rng=rng, reference=reference
    )


def test_pooled_variance_is_the_two_way_least_squares_residual():
    rng = np.random.default_rng(3)
    y = rng.normal(0.45, 0.02, (7, 5)) + rng.normal(0, 0.01, (1, 5))
    present = np.ones_like(y, dtype=bool)
    present[4:, 4] = False  # eliminated after four seeds
    present[6, 3] = False  # and one failed unit
    rows, targets = [], []
    for i, j in zip(*np.nonzero(present)):
        x = np.zeros(7 + 5)
        x[i], x[7 + j] = 1, 1
        rows.append(x)
        targets.append(y[i, j])
    x, t = np.array(rows), np.array(targets)
    coef, _, rank, _ = np.linalg.lstsq(x, t, rcond=None)
    resid = t - x @ coef
    var, df = pooled_variance(y[None], present[None])
    assert df[0] == len(t) - rank == present.sum() - (7 + 5 - 1)
    assert var[0] == pytest.approx(resid @ resid / df[0], rel=1e-9)
    # With all k candidates at all n seeds: (k - 1)(n - 1) degrees of freedom (21 for 22 candidates at 2 seeds).
    assert pooled_variance(np.zeros((1, 22, 2)), np.ones((1, 22, 2), dtype=bool))[1][0] == 21


def test_seeds_extend_the_spaces_with_the_next_unused_integers():
    assert seed_sequence([0, 1], 5) == [0, 1, 2, 3, 4]
    assert seed_sequence([3, 0], 5) == [3, 0, 1, 2, 4]


def test_the_best_is_named_with_probability_one_minus_alpha_and_fewer_trainings_than_uniform():
    """The measured means, noise of the whole held-out split (0.014) and a shared seed effect."""
    sim = _races(MEASURED, sigma=0.014, max_seeds=30)
    named = np.mean((sim.outcome == BEST) & (sim.winner == 0))
    wrong = np.mean((sim.outcome == BEST) & (sim.winner != 0))
    uniform = len(MEASURED) * sim.seeds
    ratio = float(np.mean(sim.trainings / uniform))
    print(f"named {named:.3f}, wrong best {wrong:.3f}, trainings/uniform {ratio:.2f}, seeds {sim.seeds.mean():.1f}")
    assert named >= 1 - ALPHA
    assert wrong <= ALPHA / 2
    assert ratio < 0.5  # the race trained under half of what uniform allocation at its final seed count would


def test_least_favourable_means_still_name_the_best():
    """Every other candidate exactly delta behind the best (the indifference zone's edge), low noise so the race
    can finish: eliminating the best is most likely here."""
    means = [0.46] + [0.45] * 21
    sim = _races(means, sigma=0.003, seed_sd=0.01, max_seeds=12, seed=1)
    named = np.mean((sim.outcome == BEST) & (sim.winner == 0))
    assert named >= 1 - ALPHA, named
    assert not np.any((sim.outcome == EQUIVALENT) & sim.alive[:, 0])  # no set holding the best is "equivalent"


def test_equal_candidates_are_almost_never_called_best():
    """All 22 equal, noise of 2,000 held-out images (0.017): a *best* here is a false one."""
    sim = _races([0.45] * 22, sigma=0.017, max_seeds=16, seed=2)
    false_best = np.mean(sim.outcome == BEST)
    print(f"false best {false_best:.3f}")
    assert false_best <= ALPHA


def test_repeated_looks_are_paid_for():
    """Two equal candidates looked at after each of 39 rounds: testing each look at the full level would call one
    of them best far more often than alpha (repeated significance tests); the race must not."""
    sim = _races([0.45, 0.45], sigma=0.017, max_seeds=40, seed=5, reference=None)
    assert np.mean(sim.outcome == BEST) <= ALPHA / 2


def test_equivalence_is_declared_only_within_delta():
    """Two leaders exactly delta apart, or equal, the rest far behind; low noise so equivalence can be shown."""
    far = [0.40] * 20
    apart = _races([0.46, 0.45, *far], sigma=0.002, max_seeds=40, seed=3)
    assert np.mean(apart.outcome == EQUIVALENT) <= ALPHA / 2  # they differ by delta: never "equivalent"
    same = _races([0.45, 0.45, *far], sigma=0.002, max_seeds=40, seed=4)
    assert np.mean(same.outcome == EQUIVALENT) >= 0.9  # and the test has the power to say so when they are equal
    assert np.mean(same.outcome == BEST) <= ALPHA


# ------------------------------------------------------------------ the rounds driver


def _racing_space(**racing):
    return parse_space(
        {
            "name": "race",
            "baseline": {"model": "efficientnet", "width": 0.25, "depth": 0.25, "resolution": 32},
            "data": {"name": "cifar10"},
            "grid": {"kind": "full", "step": 0.1},
            "constraint": {"budget": "2x", "mode": "measured", "resolution_multiple": 4},
            "proxy": {"epochs": 1},
            "seeds": [0, 1],
            "racing": {"enabled": True, "max_seeds": 8, **racing},
        }
    )


def _execute(quality, noise, finish):
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
                accuracy=quality[p.candidate] + noise[(p.candidate, p.seed)],
                epochs_run=p.epochs,
            )
            for p in plan
        ]
        return finish(done)

    return execute


def test_a_race_decides_the_same_whatever_order_units_finish_in():
    from scaling_search.search.plan import search_candidates
    from scaling_search.search.policies import policy_for
    from scaling_search.search.rounds import run_rounds

    space = _racing_space()
    cands = search_candidates(space)

    def plan_of(u):
        return TrialRecord(u.alpha, u.beta, u.gamma, u.seed, 1, 1.0, 1.0, 32, 1, 1, 2.0, 2.0, rung=u.rung)

    rng = random.Random(5)
    keys = sorted({plan_of(u).candidate for u in policy_for(space, cands).first()})
    quality = {k: 0.45 + 0.03 * i for i, k in enumerate(keys)}  # clear steps: candidates leave the race
    noise = {(k, s): rng.gauss(0, 0.01) for k in keys for s in range(8)}
    base_records, base = run_rounds(policy_for(space, cands), plan_of, _execute(quality, noise, lambda d: d))
    assert len(base) >= 2 and base[0].decision.eliminated  # a real race: someone left after the first round
    assert base[-1].decision.outcome == "best" and base[-1].decision.leader == keys[-1]
    for trial in range(3):
        perm = random.Random(trial)
        shuffled = _execute(quality, noise, lambda d, perm=perm: perm.sample(d, len(d)))
        records, other = run_rounds(policy_for(space, cands), plan_of, shuffled)
        assert other == base
        assert sorted(r.unit for r in records) == sorted(r.unit for r in base_records)
    # Later rounds train only the candidates in contention, and the paper's triple once out (as a reference).
    paper = "a1.2-b1.1-g1.15"
    for before, after in zip(base, base[1:]):
        assert set(after.candidates) == set(before.decision.alive) | set(before.decision.carried)
        assert paper in after.candidates


# ------------------------------------------------------------------ a real race, killed between rounds

RACE_YAML = """\
name: race
baseline: {model: efficientnet, width: 0.25, depth: 0.25, resolution: 32}
data: {name: cifar10}
grid: {kind: full, step: 0.1, max_alpha: 1.1, max_beta: 1.1, max_gamma: 1.3}
constraint: {budget: 2x, tolerance: 0.05, resolution_multiple: 4}
proxy: {epochs: 1, batch_size: 64, lr: 0.05, train_subset: 128, test_subset: 128}
seeds: [0, 1]
racing: {enabled: true, max_seeds: 3}
extrapolation: {max_phi: 2, detection: false}
"""


def race_space(folder) -> str:
    """Three tiny networks, 2 seeds, then a third seed for those in contention."""
    path = folder / "race.yaml"
    path.write_text(RACE_YAML)
    return str(path)


def test_a_race_killed_between_rounds_resumes_with_two_jobs_to_the_same_decision(tmp_path, data_env, straight_race):
    space = race_space(tmp_path)
    out = tmp_path / "killed"
    env = {**os.environ, **data_env, "PYTHONWARNINGS": "ignore"}
    args = cli_command(*run_args(space, out))
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith("round 1 ("):  # the first look is decided; the next round starts now
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "best.json").exists()
    # Resumed with two worker processes (--jobs 2): the rounds left run through them, to the same decision.
    resumed = subprocess.run([*args, "--jobs", "2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "jobs: 2" in resumed.stdout
    attempts = unit_attempts(out)
    assert all(states.count("COMPLETE") == 1 for states in attempts.values()), attempts  # none trained twice
    first_round = [k for k in attempts if k.endswith(("-s0", "-s1"))]
    assert len(first_round) == 6 and all(attempts[k] == ["COMPLETE"] for k in first_round)  # kept, not retrained
    again, reference = json.loads((out / "best.json").read_text()), straight_race["best"]
    assert again["race"]["rounds"] == reference["race"]["rounds"]
    assert again["decision"] == reference["decision"] and again["race"]["winner"] == reference["race"]["winner"]
    rows = {r["unit"]: r["accuracy"] for r in read_csv(out / "trials.csv")}
    assert rows == straight_race["accuracies"]  # the same machine trains every unit to the same score


def test_an_equivalent_decision_says_what_its_members_share_and_how_their_series_differ():
    from scaling_search.analysis.ranking import rank
    from scaling_search.analysis.report import _race_details, race_statements

    space = _racing_space()
    triples = [(1.0, 1.1, 1.3), (1.1, 1.1, 1.2), (1.2, 1.1, 1.15)]
    records = [
        TrialRecord(a, b, g, s, 1, 1.0, 1.0, 32, 1, 1, 2.0, 2.0, state=TrialState.COMPLETE, accuracy=0.4 + 0.001 * s)
        for a, b, g in triples
        for s in range(3)
    ]
    ranking = rank(records, 1)
    race = {
        "decision": "equivalent",
        "winner": "a1-b1.1-g1.3",
        "in_contention": ["a1-b1.1-g1.3", "a1.1-b1.1-g1.2"],
        "delta": 0.01,
        "alpha": 0.05,
        "rule": "the rule",
        "guarantee": "the guarantee",
        "rounds": [
            {
                "round": 1,
                "trainings": 6,
                "in_contention": ["a1-b1.1-g1.3", "a1.1-b1.1-g1.2"],
                "eliminated": ["a1.2-b1.1-g1.15"],
            }
        ],
        "differences": [{"candidate": "a1.1-b1.1-g1.2", "difference": 0.0, "low": -0.004, "high": 0.004, "seeds": 3}],
    }
    race.update(_race_details(race, ranking, (), space))
    assert race["shared"] == "alpha 1-1.1, beta 1.1, gamma 1.2-1.3"
    assert race["series_spread"].startswith("Their B-series at phi = 7 differ:") and "px" in race["series_spread"]
    text = " ".join(race_statements(race))
    assert "Equivalent: the 2 candidates left" in text and "They share alpha 1-1.1, beta 1.1, gamma 1.2-1.3" in text
    assert race["paper"]["status"].startswith("out of contention at round 1, trained in every round as a reference")
