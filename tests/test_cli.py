import json
import os

import pytest
from conftest import ROOT, assert_usage_error, run_cli, table_args


def test_candidates_json_contains_paper_triple_and_satisfies_constraint():
    proc = run_cli("candidates", "--budget", "2x", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert len(rows) == 108
    assert any((r["alpha"], r["beta"], r["gamma"]) == (1.2, 1.1, 1.15) for r in rows)
    for r in rows:
        assert set(r) >= {"alpha", "beta", "gamma", "theoretical_ratio", "measured_ratio"}
        assert abs(r["alpha"] * r["beta"] ** 2 * r["gamma"] ** 2 / 2 - 1) < 0.05
        assert r["measured_ratio"] > 1


def test_candidates_measured_constraint_reports_both_ratios():
    proc = run_cli("candidates", "--budget", "2x", "--constraint", "measured", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert rows
    for r in rows:
        if r["reference"]:  # the paper's triple, listed with its real cost
            continue
        assert abs(r["measured_ratio"] / 2 - 1) < 0.05
        assert r["theoretical_ratio"] == pytest.approx(r["alpha"] * r["beta"] ** 2 * r["gamma"] ** 2, rel=1e-5)
    # rounding makes the measured set differ from the theoretical one
    theoretical = {(r["alpha"], r["beta"], r["gamma"]) for r in json.loads(run_cli("candidates", "--json").stdout)}
    assert {(r["alpha"], r["beta"], r["gamma"]) for r in rows} != theoretical


def test_candidates_derived_grid_human_output():
    proc = run_cli("candidates", "--budget", "2x", "--grid", "derived")
    assert proc.returncode == 0, proc.stderr
    assert "<- paper" in proc.stdout
    assert "25 candidates" in proc.stdout


def test_table_side_by_side_and_committed_results_are_current():
    proc = run_cli(*table_args("--format", "json"))
    assert proc.returncode == 0, proc.stderr
    table = json.loads(proc.stdout)
    rows = table["rows"]
    assert [r["phi"] for r in rows] == list(range(8))
    assert rows[0]["params"] == rows[0]["official_params"] == 5_288_548
    assert rows[7]["official_params"] == 66_347_960
    assert rows[1]["blocks"] == 23 and rows[1]["theoretical_ratio"] == pytest.approx(1.9203, abs=1e-4)
    assert any("not alpha^phi" in n for n in table["notes"])
    committed = json.loads((ROOT / "results" / "paper" / "b_series.json").read_text())
    assert committed == table, "results/paper is stale: regenerate it (see results/paper/README.md)"
    md = run_cli(*table_args("--max-phi", "2"))
    assert md.returncode == 0 and "efficientnet-b2" in md.stdout and "| phi |" in md.stdout


def test_flops_json_contract():
    proc = run_cli("flops", "efficientnet-b0", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["model"] == "efficientnet-b0" and out["resolution"] == 224
    assert out["params"] == 5_288_548 and isinstance(out["macs"], int)
    assert abs(out["macs"] / 0.386e9 - 1) < 0.005
    assert out["macs_fvcore"] > out["macs"] and out["fvcore_conv_linear"] == out["macs"]
    custom = json.loads(
        run_cli(
            "flops",
            "efficientnet",
            "--width",
            "0.5",
            "--depth",
            "0.5",
            "--resolution",
            "64",
            "--num-classes",
            "10",
            "--json",
            "--no-fvcore",
        ).stdout
    )
    assert custom["resolution"] == 64 and custom["macs_fvcore"] is None and custom["params"] < 1_000_000


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["candidates", "--budget", "abc"], "budget"),
        (["candidates", "--budget", "0x"], "budget"),
        (["candidates", "--budget", "-2x"], "budget"),
        (["candidates", "--budget", "1x"], "budget"),
        (["candidates", "--step", "0"], "step"),
        (["candidates", "--tolerance", "2"], "tolerance"),
        (["candidates", "--budget", "3x", "--tolerance", "0.001", "--step", "0.5"], "no (alpha, beta, gamma)"),
        (["table", "--alpha", "0.9", "--beta", "1.1", "--gamma", "1.15"], "alpha"),
        (["table", "--alpha", "1.2", "--beta", "x", "--gamma", "1.15"], "beta"),
        (["table", "--alpha", "1.2", "--beta", "1.1"], "gamma"),
        (table_args("--family", "resnet"), "family"),
        (["flops", "efficientnet-b42"], "unknown model"),
        (["flops", "efficientnet", "--resolution", "-3"], "resolution"),
        (["flops", "efficientnet", "--resolution", "0"], "resolution"),
        (["flops", "efficientnet", "--resolution", "2.5"], "resolution"),
        (["flops", "efficientnet-b1", "--width", "2"], "fixed width"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_one_line_exit_2(args, fragment):
    assert_usage_error(run_cli(*args), fragment)


def test_table_output_file_is_atomic_and_validated(tmp_path):
    target = tmp_path / "t.csv"
    target.write_text("the previous table\n")
    os.link(target, tmp_path / "previous")  # a second name for the old file's inode
    proc = run_cli(*table_args("--max-phi", "1", "--format", "csv", "--output", str(target)))
    assert proc.returncode == 0, proc.stderr
    assert target.read_text().startswith("phi,") and len(target.read_text().splitlines()) == 3
    # Replaced by a rename, not rewritten in place: the old inode still holds the old table whole,
    # so a reader (or a crash) at any moment sees the old or the new file, never a mix.
    assert (tmp_path / "previous").read_text() == "the previous table\n"
    assert not os.path.samefile(target, tmp_path / "previous")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["previous", "t.csv"]  # no temporary file left
    assert_usage_error(
        run_cli(*table_args("--output", str(tmp_path / "no" / "t.md"))),
        "does not exist",
    )


def test_a_write_that_fails_midway_leaves_the_old_file(tmp_path):
    from scaling_search.atomic import atomic_open

    target = tmp_path / "report.md"
    target.write_bytes(b"old and whole")
    with pytest.raises(RuntimeError, match="disk gone"):
        with atomic_open(target) as f:
            f.write(b"new and half")
            raise RuntimeError("disk gone")
    assert target.read_bytes() == b"old and whole"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]
