"""Scaling strategies: the published splits of log s, and networks of equal real cost (counted, not assumed)."""

import math

import pytest

from scaling_search.errors import UsageError
from scaling_search.models.efficientnet_config import EfficientNetConfig, analytic_counts, scale_network
from scaling_search.scaling import Coefficients
from scaling_search.strategies import (
    BUILT_IN,
    COMPOUND,
    FAST,
    PAPER_STRATEGY,
    SINGLE,
    UNIFORM,
    check_multiples,
    compound,
    parse_compound,
    solve,
)


@pytest.mark.parametrize("s", [2.0, 4.0, 8.0, 3.7])
def test_published_splits(s):
    # Dollar et al. 2021 (pycls "d1_w8_g8_r1"): fast dWr scales depth by s^0.1, width by s^0.4, resolution by s^0.05.
    d, w, r = FAST.multipliers(s)
    assert (d, w, r) == pytest.approx((s**0.1, s**0.4, s**0.05), rel=1e-12)
    # Uniform "dwr": an equal third of log s each, so depth s^(1/3), width and resolution s^(1/6).
    assert UNIFORM.multipliers(s) == pytest.approx((s ** (1 / 3), s ** (1 / 6), s ** (1 / 6)), rel=1e-12)
    assert BUILT_IN["depth"].multipliers(s) == pytest.approx((s, 1, 1))
    assert BUILT_IN["width"].multipliers(s) == pytest.approx((1, math.sqrt(s), 1))
    assert BUILT_IN["resolution"].multipliers(s) == pytest.approx((1, 1, math.sqrt(s)))
    for strategy in (*BUILT_IN.values(), PAPER_STRATEGY):
        dd, ww, rr = strategy.multipliers(s)
        assert dd * ww**2 * rr**2 == pytest.approx(s, rel=1e-12)  # every split spends exactly s before rounding


def test_activation_growth_matches_the_published_exponents():
    # Dollar et al.: activations grow as s^0.6 for dWr, s^0.5 width-only, about s^0.83 uniform and s^0.85
    # for EfficientNet's (1.2, 1.1, 1.15).
    assert FAST.activation_exponent == pytest.approx(0.6)
    assert BUILT_IN["width"].activation_exponent == pytest.approx(0.5)
    assert UNIFORM.activation_exponent == pytest.approx(0.8333, abs=1e-4)
    assert PAPER_STRATEGY.activation_exponent == pytest.approx(0.85, abs=0.01)


def test_compound_is_the_papers_rule_at_the_solved_phi():
    c = Coefficients(1.2, 1.1, 1.15)
    for s in (2.0, 4.0):
        phi = PAPER_STRATEGY.phi(s)
        assert c.flops_ratio**phi == pytest.approx(s)
        assert PAPER_STRATEGY.multipliers(s) == pytest.approx((1.2**phi, 1.1**phi, 1.15**phi), rel=1e-12)
    assert PAPER_STRATEGY.kind == COMPOUND and BUILT_IN["depth"].kind == SINGLE
    no_depth = compound(Coefficients(1.0, 1.05, 1.25))
    assert no_depth.depth == 0 and no_depth.multipliers(4)[0] == 1.0
    assert parse_compound("compound:1.2,1.1,1.15") == c
    for bad in ("compound:1.2,1.1", "compound:a,b,c"):
        with pytest.raises(UsageError, match="compound:ALPHA,BETA,GAMMA"):
            parse_compound(bad)
    with pytest.raises(UsageError, match="does not grow"):
        compound(Coefficients(1, 1, 1))


def test_cost_multiples_are_checked():
    assert check_multiples([4, 2, 2.0, 1]) == (1.0, 2.0, 4.0)
    for bad in (0.5, 0, -2, math.nan):
        with pytest.raises(UsageError, match="at least 1"):
            check_multiples([2, bad])


TINY = EfficientNetConfig(width=0.25, depth=0.25, resolution=32, num_classes=10, dropout=0.0, drop_path=0.0)


def builder(base: EfficientNetConfig):
    """The project's rounded network for (depth, width, resolution) and its closed-form MACs ratio."""
    base_macs = analytic_counts(base).macs

    def build(d, w, r):
        config = base.with_(depth=base.depth * d, width=base.width * w, resolution=r)
        return (scale_network(config), r), analytic_counts(config).macs / base_macs

    return build


def test_every_strategy_costs_s_times_the_baseline_as_built_and_counted():
    """Solved with the closed form, checked with FlopCounterMode on the model itself (meta device)."""
    from scaling_search.flops import count_meta

    strategies = [*BUILT_IN.values(), PAPER_STRATEGY, compound(Coefficients(1.0, 1.05, 1.25), "winner")]
    base_macs = count_meta(TINY).macs
    for s in (2.0, 4.0):
        for strategy in strategies:
            got = solve(strategy, s, builder(TINY), base_resolution=32, multiple=4, tolerance=0.05)
            assert got.within, (strategy.name, s, got.cost)
            config = TINY.with_(depth=TINY.depth * got.depth, width=TINY.width * got.width, resolution=got.resolution)
            real = count_meta(config).macs / base_macs
            assert abs(real / s - 1) < 0.05, (strategy.name, s, real)
            assert real == pytest.approx(got.cost, rel=1e-12)
            # Each strategy grows only what it is told to.
            grown = (got.depth > 1, got.width > 1, got.resolution > 32)
            assert grown[0] <= (strategy.depth > 0) and grown[1] <= (strategy.width > 0)
            assert grown[2] <= (strategy.resolution > 0)
            assert got.resolution % 4 == 0


def test_a_target_no_rounded_network_reaches_is_said_not_hidden():
    # Resolution in multiples of 32 from 32 px: 1x (32 px) or about 4x (64 px), nothing near 2x.
    got = solve(BUILT_IN["resolution"], 2.0, builder(TINY), base_resolution=32, multiple=32, tolerance=0.05)
    assert not got.within and got.resolution in (32, 64)
    assert abs(got.error) > 0.05


def test_the_baseline_is_s_equal_one():
    got = solve(PAPER_STRATEGY, 1.0, builder(TINY), base_resolution=32, multiple=4)
    assert (got.depth, got.width, got.resolution, got.cost) == (1.0, 1.0, 32, 1.0)


def test_activations_are_every_convolutions_output_counted_by_hand():
    from scaling_search.flops import count_activations
    from scaling_search.models.efficientnet_config import block_specs, se_channels

    config = EfficientNetConfig(width=0.5, depth=0.5, resolution=48, num_classes=10)
    net = scale_network(config)
    h = (48 + 2 - 3) // 2 + 1  # the stem: 3x3, stride 2, same padding
    total = net.stem_channels * h * h
    for stage in block_specs(config, net):
        for b in stage:
            if b.expanded != b.in_channels:
                total += b.expanded * h * h
            h = (h + 2 * (b.kernel // 2) - b.kernel) // b.stride + 1
            total += b.expanded * h * h + se_channels(b.in_channels) + b.expanded + b.out_channels * h * h
    total += net.head_channels * h * h
    assert count_activations(config) == total
    assert count_activations(config, 96) > 3 * total  # about 4x: every map doubles its side
