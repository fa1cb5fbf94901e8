import math

import pytest

from scaling_search.errors import UsageError
from scaling_search.models.efficientnet_config import OFFICIAL
from scaling_search.scaling import (
    PAPER,
    Coefficients,
    candidate_grid,
    dropout_for_phi,
    extrapolate,
    implied_phi,
    parse_budget,
    round_resolution,
)


@pytest.mark.parametrize("text,value", [("2x", 2.0), ("2", 2.0), ("2.0x", 2.0), ("4x", 4.0), (" 1.5X ", 1.5), (3, 3.0)])
def test_parse_budget(text, value):
    assert parse_budget(text) == value


@pytest.mark.parametrize("text", ["abc", "0x", "-2x", "1x", "", "2xx", "nan", "x2"])
def test_parse_budget_rejects(text):
    with pytest.raises(UsageError):
        parse_budget(text)


def test_coefficients_below_one_rejected():
    with pytest.raises(UsageError, match="below 1"):
        Coefficients(0.9, 1.1, 1.15)


def test_full_grid_has_108_candidates_with_paper_triple():
    cands = candidate_grid("2x")
    assert len(cands) == 108
    assert PAPER in [c.coefficients for c in cands]
    paper = next(c for c in cands if c.is_paper)
    assert paper.theoretical_ratio == pytest.approx(1.92027, abs=1e-5)
    for c in cands:
        a, b, g = c.coefficients.as_tuple()
        assert min(a, b, g) >= 1
        assert abs(a * b * b * g * g / 2 - 1) < 0.05
    # the boundary point 1.9 * 1 * 1 (exactly 5% off) is out, the grid is exact
    assert Coefficients(1.9, 1.0, 1.0) not in [c.coefficients for c in cands]


def test_derived_grid_has_25_candidates():
    cands = candidate_grid("2x", grid="derived", step=0.1)
    assert len(cands) == 25
    triples = [c.coefficients.as_tuple() for c in cands]
    assert (1.2, 1.1, 1.15) in triples
    for a, b, g in triples:
        assert round(g / 0.05, 6) == round(g / 0.05)  # gamma on the 0.05 grid
        assert a * b * b <= 2  # gamma >= 1 before rounding


def test_tolerance_and_step_change_the_grid():
    tight = candidate_grid("2x", tolerance=0.01)
    assert 0 < len(tight) < 108
    assert all(abs(c.theoretical_ratio / 2 - 1) < 0.01 for c in tight)
    four = candidate_grid("4x", max_alpha=3, max_beta=3, max_gamma=3, step=0.1)
    assert four and all(abs(c.theoretical_ratio / 4 - 1) < 0.05 for c in four)


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        ({"step": 0}, "step"),
        ({"step": -0.1}, "step"),
        ({"tolerance": 0}, "tolerance"),
        ({"tolerance": 1.5}, "tolerance"),
        ({"max_alpha": 0.5}, "max alpha"),
        ({"constraint": "nope"}, "constraint"),
    ],
)
def test_grid_rejects_bad_arguments(kwargs, fragment):
    with pytest.raises(UsageError, match=fragment):
        candidate_grid("2x", **kwargs)


def test_measured_constraint_uses_measure():
    # a fake measure makes the arithmetic checkable: measured = 2 * alpha
    cands = candidate_grid("2x", constraint="measured", measure=lambda c: 2 * c.alpha, step=0.05)
    assert cands and {c.coefficients.alpha for c in cands} == {1.0}
    assert all(c.measured_ratio == 2.0 for c in cands)


def test_extrapolation_rules():
    dims = extrapolate(PAPER, 1)
    assert dims.depth == pytest.approx(1.2) and dims.width == pytest.approx(1.1)
    assert dims.resolution == 256  # 224 * 1.15 = 257.6 -> nearest multiple of 8
    assert extrapolate(PAPER, 1, multiple=1).resolution == 258
    assert extrapolate(PAPER, 3).depth == pytest.approx(1.728)
    assert round_resolution(257.6, 8) == 256 and round_resolution(3, 8) == 8


def test_dropout_follows_the_official_table():
    for phi in range(8):
        assert dropout_for_phi(phi) == OFFICIAL[f"b{phi}"].dropout


def test_implied_phi():
    assert implied_phi(1.2**3, 1.2) == pytest.approx(3)
    assert implied_phi(1.0, 1.0) is None
    assert math.isclose(implied_phi(2.0, 1.1), math.log(2) / math.log(1.1))


def test_scaling_imports_without_torch():
    import subprocess
    import sys

    code = (
        "import sys, scaling_search.scaling, scaling_search.models.efficientnet_config; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
