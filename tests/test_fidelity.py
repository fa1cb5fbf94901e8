"""The fidelity check: the decided search's decision set, the paper's triple and the best of each leaning,
trained again at a longer schedule: the right units, each once, added to a finished run folder; and a
report that says when the longer schedule reverses the decision."""

from __future__ import annotations

import json
from types import SimpleNamespace

from conftest import read_csv, run_args, run_cli, tiny_space, unit_attempts

from scaling_search.analysis.fidelity import select
from scaling_search.analysis.ranking import rank
from scaling_search.analysis.report import write_report
from scaling_search.records import TrialRecord, TrialState
from scaling_search.search.fidelity import decision_of
from scaling_search.search.rounds import RoundResult
from scaling_search.space import parse_space


def test_a_finished_run_adds_the_fidelity_units_once_and_resumes(tmp_path, data_env):
    space, out = tiny_space(tmp_path, train=64), tmp_path / "run"
    with space.open("a") as f:
        f.write("fidelity: {enabled: false, epochs_factor: 2}\n")  # off in the space; 2x keeps the test short
    first = run_cli(*run_args(space, out), env=data_env)
    assert first.returncode == 0, first.stderr + first.stdout
    searched = unit_attempts(out)
    assert len(searched) == 3 and "fidelity check" not in first.stdout
    assert "at this base: 2 candidates build 2 distinct networks with 2 distinct depths (7, 8 blocks" in first.stdout
    assert json.loads((out / "best.json").read_text())["fidelity"] is None
    # The same finished folder with the check turned on: only the longer-schedule units train.
    second = run_cli(*run_args(space, out, "--fidelity"), env=data_env)
    assert second.returncode == 0, second.stderr + second.stdout
    assert "fidelity check on: once decided" in second.stdout and "resuming: 3 of 3 trials" in second.stdout
    attempts = unit_attempts(out)
    added = {k: v for k, v in attempts.items() if k not in searched}
    assert {k: attempts[k] for k in searched} == searched  # the search's units: untouched
    best = json.loads((out / "best.json").read_text())
    checked = {c["candidate"] for c in best["fidelity"]["candidates"]}
    # every candidate the check selected, at the space's one seed, 2x the epochs, each trained once
    assert sorted(added) == sorted(f"{c}-s0-f2" for c in checked) and all(v == ["COMPLETE"] for v in added.values())
    assert "paper" in {r for c in best["fidelity"]["candidates"] for r in c["reasons"]}
    rows = read_csv(out / "trials.csv")
    longer = [r for r in rows if r["fidelity"]]
    assert len(longer) == len(added) and {(r["epochs"], r["epochs_run"]) for r in longer} == {("2", "2")}
    search_rows = [r for r in rows if not r["fidelity"]]
    winner = max(search_rows, key=lambda r: float(r["accuracy"]))
    assert best["accuracy_mean"] == float(winner["accuracy"])  # the ranking reads the search's units only
    assert best["fidelity"]["complete"] and "## Fidelity check: 2 epochs" in (out / "coefficients.md").read_text()
    assert not list((out / "weights").glob("*f2*"))  # a longer schedule keeps no weights over the searched model's
    # `report` rebuilds the check from the stored study, training nothing.
    (out / "best.json").unlink()
    rebuilt = run_cli("report", str(out), env=data_env)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert unit_attempts(out) == attempts
    assert json.loads((out / "best.json").read_text())["fidelity"] == best["fidelity"]


SPACE = {
    "name": "s",
    "baseline": {"model": "efficientnet", "width": 0.25, "depth": 0.25, "resolution": 32},
    "data": {"name": "cifar10"},
    "proxy": {"epochs": 2},
    "seeds": [0, 1],
    "fidelity": {"enabled": True, "epochs_factor": 3},
    "extrapolation": {"max_phi": 1, "detection": False},
}
# Candidates by leaning (effective multipliers: depth, width, resolution).
DEEP, WIDE, SHARP, WIDE2 = (1.675, 1.0, 1.0), (1.0, 1.4, 1.0), (1.0, 1.0, 1.25), (1.0, 1.3, 1.05)
EFFECTIVE = {DEEP: (10 / 7, 1.0, 1.0), WIDE: (1.0, 1.35, 1.0), SHARP: (1.0, 1.0, 1.25), WIDE2: (1.0, 1.28, 1.0)}


def _record(coeffs, seed, accuracy, epochs, fidelity=None) -> TrialRecord:
    a, b, g = EFFECTIVE.get(coeffs, (1.1, 1.1, 1.1))
    return TrialRecord(
        *coeffs, seed, epochs, 0.25, 0.25, 32, 1, 1, 2.0, 2.0,
        state=TrialState.COMPLETE, accuracy=accuracy, epochs_run=epochs, fidelity=fidelity,
        effective_alpha=a, effective_beta=b, effective_gamma=g,
    )  # fmt: skip


SHORT = {DEEP: (0.70, 0.71), WIDE: (0.60, 0.62), SHARP: (0.50, 0.52), WIDE2: (0.40, 0.41), (1.2, 1.1, 1.15): (0.3, 0.3)}


def _search() -> list[TrialRecord]:
    return [_record(c, s, acc, 2) for c, accs in SHORT.items() for s, acc in enumerate(accs)]


def test_select_takes_the_decision_set_the_paper_and_the_best_of_each_leaning():
    chosen = {s.candidate: s.reasons for s in select(rank(_search(), 2, seeds=(0, 1)))}
    assert chosen["a1.675-b1-g1"][-1] == "best depth-heavy" and "decision set" in chosen["a1.675-b1-g1"]
    assert chosen["a1-b1.4-g1"] == ("best width-heavy",)  # not a1-b1.3-g1.05, the weaker width-heavy one
    assert chosen["a1-b1-g1.25"] == ("best resolution-heavy",)
    assert chosen["a1.2-b1.1-g1.15"] == ("paper",) and "a1-b1.3-g1.05" not in chosen
    # A race's decision (its candidates still in contention) replaces the confidence set.
    rounds = (RoundResult(0, 2, (), (0, 1), 10, True, decision=SimpleNamespace(alive=("a1-b1.3-g1.05",))),)
    raced = {s.candidate: s.reasons for s in select(rank(_search(), 2, seeds=(0, 1)), decision_of(rounds))}
    assert raced["a1-b1.3-g1.05"] == ("decision set",) and "decision set" not in raced["a1.675-b1-g1"]
    assert decision_of(()) is None and decision_of((RoundResult(0, 2, (), (0,), 1, True),)) is None


def test_the_report_says_when_the_longer_schedule_reverses_the_decision(tmp_path):
    """A fixture of records, not a training: the longer schedule keeps the order, then reverses it."""
    space = parse_space(SPACE)
    checked = [DEEP, WIDE, SHARP, (1.2, 1.1, 1.15)]

    def report(long: dict) -> tuple[dict, str]:
        fidelity = [_record(c, s, long[c][s], 6, fidelity=3) for c in checked for s in (0, 1)]
        ranking = write_report(tmp_path, _search(), space, {}, fidelity=fidelity)
        best = json.loads((tmp_path / "best.json").read_text())
        assert list(ranking.statements) == best["statements"]
        return best, (tmp_path / "coefficients.md").read_text()

    same = {DEEP: (0.80, 0.82), WIDE: (0.70, 0.71), SHARP: (0.60, 0.61), (1.2, 1.1, 1.15): (0.4, 0.41)}
    best, md = report(same)
    f = best["fidelity"]
    assert best["schedule_dependent"] is False and f["kendall_tau_b"] == 1.0 and f["long_best"] == "a1.675-b1-g1"
    assert "the decision holds" in f["statements"][0] and "depends on the schedule" not in md
    gains = {c["candidate"]: c["gain"] for c in f["candidates"]}
    assert abs(gains["a1.675-b1-g1"] - 0.105) < 1e-9
    assert set(gains) == {"a1.675-b1-g1", "a1-b1.4-g1", "a1-b1-g1.25", "a1.2-b1.1-g1.15"}
    reversed_ = {DEEP: (0.70, 0.71), WIDE: (0.85, 0.86), SHARP: (0.60, 0.61), (1.2, 1.1, 1.15): (0.4, 0.41)}
    best, md = report(reversed_)
    f = best["fidelity"]
    assert best["schedule_dependent"] is True and f["decision_changes"] and f["long_best"] == "a1-b1.4-g1"
    assert f["winner"] == "a1.675-b1-g1" and best["alpha"] == 1.675  # the search's decision, as it was
    assert best["statements"][0].startswith("The answer depends on the schedule: at 2 epoch(s)")
    verdict = md.split("## Verdict")[1].split("##")[0]
    assert verdict.split("\n- ")[1].startswith("The answer depends on the schedule")
    assert "at 6 epochs a1-b1.4-g1 leads (0.8550 against 0.7050)" in verdict
    assert f["kendall_tau_b"] < 1.0


def test_under_a_race_the_decision_checked_is_the_races_and_a_change_is_said_under_decision(tmp_path):
    """A fixture of records and of a race's record: its leader (not the ranking's best mean) is the decision."""
    space = parse_space(SPACE)
    race = {
        "decision": "best",
        "winner": "a1-b1.4-g1",
        "in_contention": ["a1-b1.4-g1"],
        "rule": "a rule",
        "guarantee": "a guarantee",
        "delta": 0.01,
        "alpha": 0.05,
        "reason": "decided",
        "rounds": [{"round": 1, "trainings": 10, "in_contention": ["a1-b1.4-g1"]}],
    }
    long = {DEEP: (0.80, 0.82), WIDE: (0.70, 0.71), SHARP: (0.60, 0.61), (1.2, 1.1, 1.15): (0.4, 0.41)}
    fidelity = [_record(c, s, long[c][s], 6, fidelity=3) for c in long for s in (0, 1)]
    write_report(tmp_path, _search(), space, {"race": race}, fidelity=fidelity, decision=["a1-b1.4-g1"])
    best = json.loads((tmp_path / "best.json").read_text())
    f = best["fidelity"]
    assert f["winner"] == "a1-b1.4-g1" and f["long_best"] == "a1.675-b1-g1" and best["schedule_dependent"] is True
    reasons = {c["candidate"]: c["reasons"] for c in f["candidates"]}
    assert reasons["a1-b1.4-g1"] == ["decision set", "best width-heavy"]
    decision = (tmp_path / "coefficients.md").read_text().split("## Decision")[1].split("## Supporting")[0]
    assert "The answer depends on the schedule: at 2 epoch(s) the search's winner is a1-b1.4-g1" in decision
