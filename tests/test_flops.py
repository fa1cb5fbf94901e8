import random
import re

import pytest
from conftest import TORCHVISION_PARAMS

from scaling_search.flops import count, count_fvcore, count_meta
from scaling_search.models import EfficientNetConfig, get_config

# Published figures (torchvision's model cards, /work/shared/docs/REFERENCE.md section 2), not this code's output:
# exact trainable params with 1000 classes
REFERENCE_PARAMS = TORCHVISION_PARAMS
# conv + linear GMACs at the official resolutions (paper / torchvision convention), to 3 decimals
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
def test_params_and_macs_equal_the_published_figures(variant):
    config = get_config(f"efficientnet-{variant}")
    for result in (count(config), count_meta(config)):  # closed form and counter, each against the table
        assert result.params == REFERENCE_PARAMS[variant]
        assert result.macs / 1e9 == pytest.approx(REFERENCE_GMACS[variant], abs=0.0005)  # the table's rounding


def test_closed_form_equals_the_counter_on_random_networks():
    rng = random.Random(3)
    for _ in range(8):
        config = EfficientNetConfig(
            width=round(rng.uniform(0.2, 2.5), 3),
            depth=round(rng.uniform(0.2, 3.0), 3),
            resolution=rng.choice([17, 32, 61, 96, 240]),
            num_classes=rng.choice([2, 10, 1000]),
        )
        res = rng.choice([None, 33, 128])
        assert count(config, res) == count_meta(config, res), config


def test_models_without_a_closed_form_are_counted_by_the_counter():
    detector = get_config("efficientdet-d0")
    counted = count(detector)
    assert counted.params == 3_880_067  # published: effdet tf_efficientdet_d0, 90 classes
    assert counted == count_meta(detector) and counted.macs > count(get_config("efficientnet-b0"), 512).macs


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
