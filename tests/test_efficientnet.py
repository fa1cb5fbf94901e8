import random

import pytest
import torch
from conftest import TORCHVISION_PARAMS

from scaling_search.flops import count_meta, trainable_params
from scaling_search.models import (
    EfficientNetConfig,
    analytic_counts,
    build,
    get_config,
    round_filters,
    round_repeats,
    scale_network,
)
from scaling_search.models.efficientnet_config import block_specs

# torchvision's efficientnet_b* trainable parameters with 1000 classes
EXACT_PARAMS = {**TORCHVISION_PARAMS, "b8": 87_413_142}
STEM_HEAD = {
    "b0": (32, 1280),
    "b1": (32, 1280),
    "b2": (32, 1408),
    "b3": (40, 1536),
    "b4": (48, 1792),
    "b5": (48, 2048),
    "b6": (56, 2304),
    "b7": (64, 2560),
}
BLOCKS = {"b0": 16, "b1": 23, "b2": 23, "b3": 26, "b4": 32, "b5": 39, "b6": 45, "b7": 55}


@pytest.mark.parametrize("variant", list(EXACT_PARAMS))
def test_exact_parameter_counts(variant):
    config = get_config(f"efficientnet-{variant}")
    with torch.device("meta"):
        model = build(config)
    assert trainable_params(model) == EXACT_PARAMS[variant]
    assert analytic_counts(config).params == EXACT_PARAMS[variant]


@pytest.mark.parametrize("variant", list(STEM_HEAD))
def test_rounded_stem_head_and_blocks(variant):
    net = scale_network(get_config(f"efficientnet-{variant}"))
    assert (net.stem_channels, net.head_channels) == STEM_HEAD[variant]
    assert net.num_blocks == BLOCKS[variant]


def test_round_filters_rules():
    assert round_filters(32, 1.0) == 32
    assert round_filters(32, 1.1) == 32  # 35.2 -> 32, lost under 10%
    assert round_filters(16, 0.25) == 8  # never below the divisor
    assert round_filters(40, 1.8) == 72
    assert round_filters(80, 0.55) == 48  # 44 -> 40 lost over 10% -> 48
    assert round_repeats(1, 1.1) == 2 and round_repeats(3, 1.0) == 3 and round_repeats(4, 0.25) == 1


def test_stochastic_depth_grows_linearly():
    config = EfficientNetConfig(drop_path=0.2)
    probs = [b.drop_path for stage in block_specs(config) for b in stage]
    assert probs[0] == 0.0
    assert probs == pytest.approx([0.2 * i / 16 for i in range(16)])


@pytest.mark.parametrize("variant", ["b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7"])
def test_forward_at_official_resolution(variant):
    config = get_config(f"efficientnet-{variant}", num_classes=7)
    torch.manual_seed(0)
    model = build(config).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, config.resolution, config.resolution))
    assert out.shape == (1, 7)
    assert torch.isfinite(out).all()


def test_any_resolution_and_features():
    model = build(EfficientNetConfig(width=0.5, depth=0.5, resolution=64, num_classes=10)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 96, 96)).shape == (1, 10)  # nominal 64, runs at 96
        feats = model.features(torch.randn(1, 3, 128, 128))
    assert [f.shape[-1] for f in feats] == [16, 8, 4]
    assert [f.shape[1] for f in feats] == model.feature_channels()
    assert [s for _, s, _ in model.feature_info] == [2, 4, 8, 16, 32]
    b0 = build(get_config("efficientnet-b0"))
    assert b0.feature_channels() == [40, 112, 320]


def test_stochastic_depth_only_in_training():
    # depth 1.0 keeps the residual blocks (drop path acts on them only); dropout off isolates drop path
    x = torch.randn(8, 3, 32, 32)

    def two_training_passes(drop_path: float) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        model = build(EfficientNetConfig(width=0.25, depth=1.0, drop_path=drop_path, dropout=0.0, num_classes=3))
        model.train()
        with torch.no_grad():
            return model(x), model(x)

    a, b = two_training_passes(0.9)
    assert not torch.allclose(a, b), "drop path did not change the training forward pass"
    a, b = two_training_passes(0.0)
    assert torch.equal(a, b)  # the control: without drop path, training passes are deterministic
    torch.manual_seed(0)
    model = build(EfficientNetConfig(width=0.25, depth=1.0, drop_path=0.9, dropout=0.0, num_classes=3)).eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_analytic_counts_match_built_model_and_counter():
    rng = random.Random(7)
    for _ in range(6):
        config = EfficientNetConfig(
            width=round(rng.uniform(0.25, 2.2), 2),
            depth=round(rng.uniform(0.25, 2.5), 2),
            resolution=rng.choice([32, 57, 64, 100, 224, 258]),
            num_classes=rng.choice([10, 100, 1000]),
        )
        counted = count_meta(config)  # the model itself, run under the FLOP counter
        expected = analytic_counts(config)  # the closed form that count() returns for EfficientNet configs
        assert (counted.params, counted.macs) == (expected.params, expected.macs), config
        with torch.device("meta"):
            assert counted.params == sum(p.numel() for p in build(config).parameters())


def test_bad_configs_rejected():
    from scaling_search.errors import UsageError

    for kwargs, says in (
        ({"resolution": 0}, r"resolution must be a positive integer number of pixels, got 0"),
        ({"resolution": 3.5}, r"resolution must be a positive integer number of pixels, got 3\.5"),
        ({"width": -1}, r"width must be a positive number, got -1"),
        ({"num_classes": 0}, r"num_classes must be a positive integer, got 0"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1\.0"),
    ):
        with pytest.raises(UsageError, match=says):
            EfficientNetConfig(**kwargs)
    with pytest.raises(UsageError, match="unknown model"):
        get_config("efficientnet-b9")
