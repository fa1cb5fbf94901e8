"""``scaling-search curves``: strategies at equal real cost over a finished search, trained once, resumable."""

import json
import os
import signal
import sqlite3
import subprocess
import time

import pytest
from conftest import ROOT, cli_command, read_csv, run_args, run_cli, tiny_space, unit_attempts

from scaling_search.cli import main
from scaling_search.errors import UsageError


def usage_error(capsys, argv: list[str], *fragments: str) -> None:
    """In-process: exit 2, one line on stderr starting 'scaling-search: error: ', naming what is wrong."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("scaling-search: error: "), err
    for f in fragments:
        assert f.lower() in lines[0].lower(), (f, lines[0])


def test_bad_inputs_get_one_line_and_nothing_is_written(tmp_path, capsys):
    out = tmp_path / "c"
    space = ["--space", str(tiny_space(tmp_path))]
    usage_error(capsys, ["curves", str(out), *space, "--s", "0.5"], "at least 1")
    usage_error(capsys, ["curves", str(out), *space, "--s", "two"], "--s")
    usage_error(capsys, ["curves", str(out), *space, "--strategies", "depth", "bogus"], "unknown strategy 'bogus'")
    usage_error(capsys, ["curves", str(out), *space, "--strategies", "winner"], "needs a finished run folder")
    usage_error(capsys, ["curves", str(out), *space, "--strategies", "compound:1.2,1.1"], "compound:ALPHA,BETA,GAMMA")
    # Resolution in multiples of 32 from 32 px cannot cost 2x: refused, with the nearest network's real cost.
    usage_error(
        capsys, ["curves", str(out), *space, "--s", "2", "--multiple", "32", "--strategies", "resolution"], "nearest"
    )
    usage_error(capsys, ["curves", str(out)], "not a run folder")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "run.json").write_text("{}")
    (unfinished / "best.json").write_text(json.dumps({"complete": False, "units_finished": 2, "units_total": 6}))
    usage_error(capsys, ["curves", str(unfinished)], "no finished search", "2 of 6")
    assert not out.exists() and not (unfinished / "curves").exists()


def _states(db) -> list[str]:
    con = sqlite3.connect(db)
    try:
        return [s for (s,) in con.execute("select state from trials")]
    finally:
        con.close()


def test_curves_over_a_search_resume_after_kill_9_and_train_nothing_twice(tmp_path, data_env):
    run = tmp_path / "run"
    space = tiny_space(tmp_path, seeds=(0, 1), train=64)
    search = run_cli(*run_args(space, run), env=data_env)
    assert search.returncode == 0, search.stderr + search.stdout
    best = json.loads((run / "best.json").read_text())
    args = cli_command(
        "curves", str(run), "--s", "2", "--strategies", "resolution", "paper", "winner", "set", "--heartbeat", "1"
    )
    env = {**os.environ, **data_env, "PYTHONWARNINGS": "ignore"}
    db = run / "curves" / "study.db"
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            try:
                states = _states(db) if db.exists() else []
            except sqlite3.OperationalError:
                states = []
            if states.count("COMPLETE") >= 2 and "RUNNING" in states:
                break
            assert proc.poll() is None, "the curves ended before they could be killed"
            time.sleep(0.2)
        else:
            pytest.fail("no curve trial finished in time")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    done_before = {k for k, s in unit_attempts(db.parent).items() if "COMPLETE" in s}
    resumed = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert f"resuming: {len(done_before)} of" in resumed.stdout
    attempts = unit_attempts(db.parent)
    for key, states in attempts.items():
        assert states.count("COMPLETE") == 1, (key, states)  # each unit trained to completion once
        if key in done_before:
            assert states == ["COMPLETE"], (key, states)  # nothing finished was trained again
    assert sum("FAIL" in s for s in attempts.values()) == 1  # the trial the kill cut short, trained again

    rows = read_csv(run / "curves" / "curves.csv")
    assert all(r["state"] == "COMPLETE" and 0 <= float(r["accuracy"]) <= 1 for r in rows)
    strategies = {r["strategy"] for r in rows}
    assert {"baseline", "resolution", "paper", "winner"} <= strategies
    named = {f"a{best['alpha']:g}-b{best['beta']:g}-g{best['gamma']:g}", "a1.2-b1.1-g1.15"}  # winner, paper
    others = set(best["confidence_set"]) - named
    assert len(strategies) == 4 + len(others)  # every other member of the search's set is a strategy of its own
    assert len(rows) == 2 * len(strategies)  # x 2 seeds
    # One network per distinct unit: strategies that round to the same network share its trainings.
    assert len(attempts) == 2 * len({r["unit"][: r["unit"].rindex("-s")] for r in rows})
    base_macs = {int(r["macs"]) for r in rows if r["strategy"] == "baseline"}.pop()
    for r in rows:
        if r["strategy"] == "baseline":
            continue
        # Equal real cost, from the MACs counted on the trained network itself.
        assert abs(int(r["macs"]) / base_macs / 2 - 1) < 0.05, r
        assert float(r["macs_ratio"]) == pytest.approx(int(r["macs"]) / base_macs, rel=1e-5)
        assert int(r["activations"]) > 0 and float(r["images_per_second"]) > 0
        assert (r["upsampled"] == "true") == (int(r["resolution"]) > 32)  # CIFAR-10 holds 32 px of detail
    winner = next(r for r in rows if r["strategy"] == "winner")
    assert (float(winner["alpha"]), float(winner["beta"]), float(winner["gamma"])) == (
        best["alpha"],
        best["beta"],
        best["gamma"],
    )
    md = (run / "curves" / "curves.md").read_text()
    for fragment in ("## s = 2", "Fig. 3", "Table 7", "Rank agreement", "upsampled", "95% CI", "P(best)", "Decision ("):
        assert fragment in md, fragment
    described = (run / "curves" / "COLUMNS.md").read_text()
    assert all(f"`{column}`" in described for column in rows[0])
    summary = json.loads((run / "curves" / "curves.json").read_text())
    assert summary["complete"] and summary["per_s"][0]["s"] == 2
    assert summary["decisions"]["2"]["outcome"] in ("best", "equivalent", "undecided")
    from PIL import Image

    for png in ("curves.png", "speed.png"):
        with Image.open(run / "curves" / png) as im:
            assert im.format == "PNG" and im.size[0] > 300


def _finished(planned, accuracy):
    from scaling_search.records import TrialState

    return planned.replace(state=TrialState.COMPLETE, accuracy=accuracy, epochs_run=planned.epochs)


def test_a_race_at_each_s_gives_more_seeds_only_where_its_answer_is_open(tmp_path):
    from scaling_search.search.curves import CurvesPolicy, build_curve_plan, space_source
    from scaling_search.search.trials import planned_record
    from scaling_search.space import load_space

    space = load_space(tiny_space(tmp_path, seeds=(0, 1)))
    plan = build_curve_plan(space_source(space), (2, 4), ["depth", "width", "paper"], race=True)
    policy = CurvesPolicy(plan)
    first = policy.first()
    records = [planned_record(plan.space, u, 10) for u in first]
    keys = {s: {p.coefficients for p in plan.networks() if p.target == s} for s in (2.0, 4.0)}
    assert len(first) == 2 * (1 + len(keys[2.0]) + len(keys[4.0]))  # baseline and every network, 2 seeds each
    # At 2x one network is far ahead on both seeds (decided: best); at 4x all are within noise (open).
    by = {}
    for r in records:
        c = (r.alpha, r.beta, r.gamma)
        at2 = any(c == k.as_tuple() for k in keys[2.0])
        lead = at2 and c == min(k.as_tuple() for k in keys[2.0])
        by[r.unit] = _finished(
            r, (0.9 if lead else 0.3) + 0.001 * r.seed if at2 else 0.5 + 0.01 * ((r.seed + hash(c)) % 3)
        )
    step = policy.after(0, list(by.values()))
    again = {(u.alpha, u.beta, u.gamma) for u in step.units}
    assert step.decision[2.0].outcome == "best" and not again & {k.as_tuple() for k in keys[2.0]}
    assert step.decision[4.0].next_seed == 2 and again <= {k.as_tuple() for k in keys[4.0]} and again
    assert {u.seed for u in step.units} == {2}  # one more seed, shared by every network still racing
    decided = policy.decisions(list(by.values()))
    assert decided[2.0]["outcome"] == "best" and decided[2.0]["rule"].startswith("racing rule")


def test_one_look_without_a_race_and_the_runs_decision_set(tmp_path):
    from scaling_search.search.curves import CurvesPolicy, build_curve_plan, load_run, space_source
    from scaling_search.search.trials import planned_record
    from scaling_search.space import load_space

    space = load_space(tiny_space(tmp_path, seeds=(0, 1)))
    plan = build_curve_plan(space_source(space), (2,), ["depth", "width"])
    policy = CurvesPolicy(plan)
    first = policy.first()
    assert policy.after(0, []).units == ()  # one round: nothing more without a race
    # Seed-to-seed noise as large as the differences: one look at two seeds cannot separate them.
    noise = {0: [0.02, -0.03, 0.04], 1: [-0.04, 0.03, -0.02]}
    networks = sorted({(u.alpha, u.beta, u.gamma) for u in first})
    records = [
        _finished(planned_record(plan.space, u, 10), 0.4 + noise[u.seed][networks.index((u.alpha, u.beta, u.gamma))])
        for u in first
    ]
    decided = policy.decisions(records)[2.0]
    assert decided["outcome"] == "undecided" and "--race" in decided["reason"] and decided["seeds"] == 2
    # A run folder whose race decided: its candidates still in contention are the set the curves scale.
    run = tmp_path / "run"
    run.mkdir()
    (run / "space.yaml").write_text(tiny_space(tmp_path).read_text())
    (run / "run.json").write_text(json.dumps({"native_size": 32, "stored_size": 32, "num_classes": 10}))
    best = {"complete": True, "alpha": 1.0, "beta": 1.1, "gamma": 1.3, "confidence_set": ["a1-b1.1-g1.3"]}
    race = {"decision": "equivalent", "in_contention": ["a1-b1.1-g1.3", "a1.1-b1.1-g1.2"]}
    (run / "best.json").write_text(json.dumps({**best, "race": race}))
    source = load_run(run)
    assert source.winner.as_tuple() == (1.0, 1.1, 1.3) and [c.as_tuple() for c in source.others] == [(1.1, 1.1, 1.2)]
    assert "race" in source.set_name and source.detail == 32
    (run / "best.json").write_text(json.dumps({**best, "race": {**race, "decision": None}}))
    with pytest.raises(UsageError, match="has not decided yet"):
        load_run(run)


def test_strategies_that_train_the_same_networks_are_one_line_named_for_all():
    """The plot draws a curve once when two strategies share every network (a winner (1, 1, 1.3) at equal cost
    is resolution only), labelled with both names, the single dimension first so it keeps its colour."""
    from scaling_search.analysis.curves import PointInfo, _series

    def point(strategy, role, s, key):  # key: the network built, resolution (r2) or width (w2) scaling
        width, gamma = {"b": (1.0, 1.0), "r2": (1.0, 1.375), "w2": (1.4, 1.0)}[key]
        return PointInfo(strategy, role, "", s, 1.0, width, gamma, round(32 * gamma), s, None, None), key

    base, _ = point("baseline", "baseline", 1.0, "b")
    planned = [
        point("resolution", "single", 2.0, "r2"),
        point("winner", "winner", 2.0, "r2"),
        point("width", "single", 2.0, "w2"),
    ]
    rows = [
        {"strategy": "baseline", "s": 1.0, "unit": "b-s0", "accuracy": 0.40},
        *[
            {"strategy": p.strategy, "s": p.s, "unit": f"{key}-s0", "accuracy": 0.5 if key == "r2" else 0.45}
            for p, key in planned
        ],
    ]
    for r in rows:
        r.update(macs=1e6 * r["s"], images_per_second=100.0, upsampled=False)
    series = _series([base] + [p for p, _ in planned], rows, base)
    assert list(series) == ["resolution = winner", "width"]
    assert [p["accuracy"] for p in series["resolution = winner"]] == [0.40, 0.5]


def test_rank_agreement_counts_triples_that_train_one_network_once():
    """Two triples that build the same network at every s tie at every s; counted as two, that tie would pass for
    agreement. Three distinct networks whose order reverses give tau-b -1, whatever the duplicates."""
    from scaling_search.analysis.curves import AtS, PointInfo, rank_agreement_statement

    def point(strategy, role, s, width):
        return PointInfo(strategy, role, "", s, 1.0, width, 1.0, 32, s, None, None, (1.0, width, 1.0))

    nets = {"winner": 1.1, "compound(1,1.1,1)": 1.1, "paper": 1.2, "compound(1,1.3,1)": 1.3}
    points = [
        point(t, "winner" if t == "winner" else "compound", s * 1.0, w * s) for t, w in nets.items() for s in (2, 4)
    ]
    at2 = {"winner": 0.5, "compound(1,1.1,1)": 0.5, "paper": 0.4, "compound(1,1.3,1)": 0.3}
    at4 = {"winner": 0.3, "compound(1,1.1,1)": 0.3, "paper": 0.4, "compound(1,1.3,1)": 0.5}
    comparisons = [AtS(s, {}, None, means, {}, None, {}) for s, means in ((2.0, at2), (4.0, at4))]
    text = rank_agreement_statement(points, comparisons)
    assert "over 3 distinct compound networks, Kendall tau-b -1.00" in text, text
    assert "compound(1,1.1,1) = winner" in text and "winner ranks 1 then 3 of 3" in text, text


def test_table7_says_when_a_triple_is_the_best_single_dimensions_network():
    """A winner (1, 1, gamma) at equal cost is resolution only: its difference of 0 is not "cannot tell"."""
    from scaling_search.analysis.curves import AtS, table7_statement

    c = AtS(
        2.0,
        {"a1-b1-g1.375": "resolution = winner", "a1.15-b1.07-g1.125": "paper"},
        None,
        {},
        {},
        "resolution",
        {"winner": (0.0, -0.04, 0.04), "paper": (-0.05, -0.09, -0.01)},
    )
    text = table7_statement([c])
    assert "the winner's triple builds the best single dimension's network (resolution only)" in text, text
    assert "the paper's triple is -0.0500 [95% -0.0900, -0.0100]" in text, text
    assert "winner's triple is +0.0000" not in text, text
