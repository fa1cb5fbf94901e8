"""Effective multipliers: what the rounded network really multiplies, pinned on the cpu preset's base;
how the report uses them; how coarse a plan is at its base."""

from __future__ import annotations

import json

import pytest
from conftest import read_csv, run_cli

from scaling_search.analysis.report import EFFECTIVE_B_SERIES, effective_entry, write_report
from scaling_search.flops import count_meta
from scaling_search.models import EfficientNetConfig, effective_multipliers
from scaling_search.models.efficientnet_config import compound_config, scale_network
from scaling_search.records import COLUMNS, TrialRecord, TrialState, parse_trials, trials_csv
from scaling_search.scaling import Coefficients
from scaling_search.search.coarseness import COMPRESSION_WARNING, coarseness
from scaling_search.search.plan import build_plan
from scaling_search.space import GridSpec, parse_space

CPU_BASE = EfficientNetConfig(width=0.25, depth=0.25, resolution=32, num_classes=10)


def _phi1(alpha: float, beta: float, gamma: float, base: EfficientNetConfig = CPU_BASE) -> EfficientNetConfig:
    return compound_config(Coefficients(alpha, beta, gamma), 1, base, 4)


def test_pinned_effective_multipliers_of_the_cpu_base():
    deep = effective_multipliers(_phi1(1.675, 1, 1), CPU_BASE)
    assert deep.depth == 10 / 7 and deep.width == 1.0 and deep.resolution == 1.0
    assert effective_multipliers(_phi1(2.0, 1, 1), CPU_BASE).depth == 10 / 7  # alpha 2 builds the same 10 blocks
    assert effective_multipliers(_phi1(1.2, 1, 1), CPU_BASE).depth == 8 / 7
    wide = effective_multipliers(_phi1(1, 1.75, 1), CPU_BASE)
    # beta 1.75 alone costs 1.95x, not 1.75^2 = 3.06x: many channel counts sit at the floor of 8
    real = count_meta(_phi1(1, 1.75, 1)).macs / count_meta(CPU_BASE).macs  # the built modules, counted
    assert wide.macs == pytest.approx(real, rel=1e-12) and real == pytest.approx(1.9466, abs=1e-4)
    assert wide.depth == 1.0 and 1.6 < wide.width < 1.75
    sharp = effective_multipliers(_phi1(1, 1, 1.25), CPU_BASE)
    assert sharp.resolution == 40 / 32 and sharp.depth == 1.0 and sharp.width == 1.0
    # at B0 itself the multipliers are close to what they say
    b0 = EfficientNetConfig()
    full = effective_multipliers(_phi1(2.0, 1, 1, b0), b0)
    assert full.depth == scale_network(_phi1(2.0, 1, 1, b0)).num_blocks / 16 == 2.0


def test_effective_columns_round_trip_and_old_files_read_without_them():
    record = TrialRecord(1.675, 1.0, 1.0, 0, 1, 0.42, 0.25, 32, 1, 1, 1.675, 1.3, effective_alpha=10 / 7)
    assert {"effective_alpha", "effective_beta", "effective_gamma"} <= set(COLUMNS)
    (back,) = parse_trials(trials_csv([record]))
    assert back.effective_alpha == pytest.approx(10 / 7) and back.effective_beta is None
    old = "alpha,beta,gamma,seed,state,accuracy\n1,1,1.25,0,COMPLETE,0.5\n"
    (legacy,) = parse_trials(old)
    assert legacy.effective_alpha is None and legacy.accuracy == 0.5


def _space(max_phi: int = 2):
    return parse_space(
        {
            "name": "s",
            "baseline": {"model": "efficientnet", "width": 0.25, "depth": 0.25, "resolution": 32},
            "data": {"name": "cifar10"},
            "proxy": {"epochs": 1},
            "seeds": [0, 1],
            "extrapolation": {"max_phi": max_phi, "detection": False},
        }
    )


def _records(winner: tuple[float, float, float], effective: tuple[float, float, float]) -> list[TrialRecord]:
    """Two seeds of a winner (with the given effective multipliers) and of a weaker candidate."""
    out = []
    for coeffs, eff, accs in ((winner, effective, (0.6, 0.62)), ((1.0, 1.0, 1.0), (1.0, 1.0, 1.0), (0.4, 0.41))):
        for seed, acc in enumerate(accs):
            out.append(
                TrialRecord(
                    *coeffs,
                    seed,
                    1,
                    0.25,
                    0.25,
                    32,
                    1,
                    1,
                    2.0,
                    2.0,
                    state=TrialState.COMPLETE,
                    accuracy=acc,
                    epochs_run=1,
                    effective_alpha=eff[0],
                    effective_beta=eff[1],
                    effective_gamma=eff[2],
                )  # fmt: skip
            )
    return out


def test_the_report_shows_both_series_when_nominal_and_effective_part(tmp_path):
    write_report(tmp_path, _records((1.675, 1.0, 1.0), (10 / 7, 1.0, 1.0)), _space(), {})
    best = json.loads((tmp_path / "best.json").read_text())
    e = best["effective"]
    assert e["differs"] and e["differing"] == ["alpha"] and e["coefficients"] == [1.4286, 1.0, 1.0]
    assert e["apart_at_max_phi"]["alpha"] == pytest.approx((10 / 7 / 1.675) ** 2 - 1, abs=1e-4)
    assert best["extrapolation_multipliers"] == "nominal"
    md = (tmp_path / "coefficients.md").read_text()
    assert "labels more than multipliers" in md and "effective alpha 1.429 (blocks)" in md
    assert "B-series from the winner's nominal coefficients" in md and "B-series from the winner's effective" in md
    nominal, effective = read_csv(tmp_path / "b_series.csv"), read_csv(tmp_path / EFFECTIVE_B_SERIES)
    assert int(effective[2]["blocks"]) < int(nominal[2]["blocks"])  # fewer blocks from the real depth
    ranking = md.split("## Ranking")[1]
    assert "eff. alpha" in ranking and "1.429" in ranking
    trials = read_csv(tmp_path / "trials.csv")
    assert {r["effective_alpha"] for r in trials} == {str(10 / 7), "1.0"}
    assert EFFECTIVE_B_SERIES in (tmp_path / "COLUMNS.md").read_text()
    # the same folder, now with a winner whose coefficients are what they say: the effective table goes
    write_report(tmp_path, _records((1.0, 1.0, 1.25), (1.0, 1.0, 1.25)), _space(), {})
    best = json.loads((tmp_path / "best.json").read_text())
    assert not best["effective"]["differs"] and not (tmp_path / EFFECTIVE_B_SERIES).exists()
    md = (tmp_path / "coefficients.md").read_text()
    assert "stay within 10%" in md and "B-series from the winner's effective" not in md


def test_the_margin_compounds_to_the_largest_phi():
    # beta 1.05 that really is 1.012: 3.6% apart at phi 1, 23% at phi 7
    assert not effective_entry(Coefficients(1, 1.05, 1.25), (1, 1.012, 1.25), 1)["differs"]
    assert effective_entry(Coefficients(1, 1.05, 1.25), (1, 1.012, 1.25), 7)["differing"] == ["beta"]
    assert effective_entry(Coefficients(1, 1.05, 1.25), (None, 1.0, 1.0), 7) is None


def test_coarseness_warns_when_a_reduced_base_compresses_depth():
    grid = GridSpec(kind="full", step=0.1)
    plan = build_plan("2x", CPU_BASE, multiple=4, grid=grid)
    coarse = coarseness(plan, CPU_BASE)
    alpha = coarse.axes[0]
    assert alpha.name == "alpha" and alpha.effective[1] == pytest.approx(8 / 7) and alpha.fraction < COMPRESSION_WARNING
    assert coarse.networks == len([c for c in plan.classes if not c.reference]) and coarse.depths == (7, 8)
    assert any("alpha" in w and "depth" in w for w in coarse.warnings())
    b0 = EfficientNetConfig(resolution=64)
    full = coarseness(build_plan("2x", b0, multiple=4, grid=grid), b0)
    assert not full.warnings() and full.axes[0].fraction > 0.9


def test_candidates_prints_how_coarse_the_space_is():
    proc = run_cli("candidates", "--preset", "smoke")
    assert proc.returncode == 0, proc.stderr
    assert "5 distinct networks with 2 distinct depths (7, 8 blocks; the baseline has 7)" in proc.stdout
    assert "warning: at this base alpha 1-1.3 really spans only 1.000-1.143" in proc.stdout
