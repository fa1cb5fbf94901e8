import re

import pytest

from scaling_search.flops import count, count_fvcore
from scaling_search.models import EfficientNetConfig, get_config

# conv + linear GMACs at the official resolutions (paper / torchvision convention)
REFERENCE_GMACS = {
    "b0": 0.386,
    "b1": 0.687,
    "b2": 0.994,
    "b3": 1.827,
    "b4": 4.394,
    "b5": 10.266,
    "b6": 19.068,
    "b7": 37.746,
}


@pytest.mark.parametrize("variant", list(REFERENCE_GMACS))
def test_macs_within_half_percent(variant):
    result = count(get_config(f"efficientnet-{variant}"))
    assert abs(result.macs / 1e9 / REFERENCE_GMACS[variant] - 1) < 0.005


@pytest.mark.parametrize(
    "config",
    [
        get_config("efficientnet-b0"),
        get_config("efficientnet-b1"),
        EfficientNetConfig(width=0.6, depth=0.4, resolution=71, num_classes=10),
    ],
    ids=["b0", "b1", "custom"],
)
def test_fvcore_conv_linear_equals_macs(config):
    fv = count_fvcore(config)
    assert fv.conv_linear == count(config).macs
    assert fv.total > fv.conv_linear  # fvcore adds BN and pooling
    assert fv.elementwise > 0  # SiLU, sigmoid, mul, add got handles instead of being skipped


def test_fvcore_b0_total_matches_published():
    # fvcore's standard total for B0 is 0.4017 G (conv + linear + BN + pooling)
    assert count_fvcore(get_config("efficientnet-b0")).total / 1e9 == pytest.approx(0.4017, abs=0.0005)


def test_resolution_override_and_breakdown():
    config = get_config("efficientnet-b0")
    small = count(config, resolution=112, breakdown=True)
    assert small.resolution == 112
    assert small.macs < count(config).macs / 3.5
    parts = [
        v for k, v in small.per_module.items() if k in ("stem", "head", "classifier") or re.fullmatch(r"stages\.\d+", k)
    ]
    assert len(parts) == 10 and sum(parts) == small.macs  # stem + 7 stages + head + classifier
