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
        capsys, ["curves", str(out), *space, "--s", "2", "--multiple", "32", "--strategies", "resolution"], "costs"
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
    args = cli_command("curves", str(run), "--s", "2", "--strategies", "resolution", "paper", "winner", "set")
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
    for fragment in ("## s = 2", "Fig. 3", "Table 7", "Rank agreement", "upsampled", "95% CI", "P(best)"):
        assert fragment in md, fragment
    summary = json.loads((run / "curves" / "curves.json").read_text())
    assert summary["complete"] and summary["per_s"][0]["s"] == 2
    from PIL import Image

    for png in ("curves.png", "speed.png"):
        with Image.open(run / "curves" / png) as im:
            assert im.format == "PNG" and im.size[0] > 300
