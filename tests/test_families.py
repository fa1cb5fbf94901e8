"""MobileNetV2 and ResNet as searchable families: published counts, candidate grids, the measured
constraint, phi = 0..7 tables, identity-starting residual blocks, and the commands that list them."""

from __future__ import annotations

import random

import pytest
import torch

from scaling_search.analysis.series import b_series, d_series_unavailable
from scaling_search.cli import main
from scaling_search.flops import count_meta
from scaling_search.models import build, compound, family_of, get_config, measured_ratio
from scaling_search.models.residual import zero_init_residual
from scaling_search.scaling import PAPER
from scaling_search.search.plan import build_plan
from scaling_search.space import GridSpec

# torchvision's model cards (published tables, not this code's output): trainable parameters and
# GFLOPS (= G multiply-adds of conv + linear) at 224 px with 1000 classes.
PUBLISHED = {
    "mobilenetv2": (3_504_872, 0.30),
    "resnet18": (11_689_512, 1.81),
    "resnet34": (21_797_672, 3.66),
    "resnet50": (25_557_032, 4.09),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_width_1_depth_1_is_the_published_network(name):
    params, gmacs = PUBLISHED[name]
    config = get_config(name)
    built = count_meta(config)  # the module itself, on the meta device
    assert built.params == params
    assert abs(built.macs / (gmacs * 1e9) - 1) < 0.01, built.macs
    closed = family_of(config).counts(config)  # the closed form the grid uses
    assert (closed.params, closed.macs) == (built.params, built.macs)


@pytest.mark.parametrize("name", ["mobilenetv2", "resnet18", "resnet50"])
def test_closed_form_equals_the_built_network_at_any_multipliers(name):
    rng = random.Random(name)
    for _ in range(4):
        config = get_config(
            name,
            width=rng.uniform(0.2, 1.8),
            depth=rng.uniform(0.3, 1.8),
            resolution=rng.randrange(24, 130),
            num_classes=rng.randrange(2, 200),
        )
        counted = family_of(config).counts(config)
        built = count_meta(config)
        assert (counted.params, counted.macs) == (built.params, built.macs), config


def test_mobilenetv2_head_keeps_1280_channels_below_width_1_and_scales_above():
    def head(width):
        return build(get_config("mobilenetv2", width=width, num_classes=10)).classifier.in_features

    assert head(0.5) == head(1.0) == 1280
    assert head(1.4) == 1792  # 1280 * 1.4, a multiple of 8


def test_resnet_width_scales_the_stem_and_every_stage_depth_the_blocks():
    model = build(get_config("resnet50", width=0.5, depth=0.5, num_classes=10))
    assert model.stem[0].out_channels == 32
    assert [len(s) for s in model.stages] == [2, 2, 3, 2]  # ceil(0.5 * (3, 4, 6, 3))
    assert [s[0].spec.planes for s in model.stages] == [32, 64, 128, 256]


@pytest.mark.parametrize("name", ["mobilenetv2", "resnet18", "resnet50"])
def test_candidate_grid_measured_constraint_and_classes(name):
    base = get_config(name, width=0.5, depth=0.5, resolution=32, num_classes=10)
    grid = GridSpec("full", 0.05, max_alpha=1.5, max_beta=1.5, max_gamma=1.5)
    plan = build_plan("2x", base, multiple=4, grid=grid, constraint="measured")
    assert len(plan.candidates) > 5 and plan.paper_class.has_paper
    for c in plan.candidates:
        if not c.reference:
            assert abs(c.measured_ratio / 2 - 1) < 0.05
    # The measured ratio is what the built networks cost, not the closed form alone.
    for cls in plan.classes[:3]:
        net = compound(base, cls.representative.coefficients, 1, 4)
        assert cls.measured_ratio == pytest.approx(count_meta(net).macs / count_meta(base).macs, rel=1e-12)

    def shapes(coeffs):
        config = compound(base, coeffs, 1, 4)
        with torch.device("meta"):
            state = build(config).state_dict()
        return tuple((k, tuple(v.shape)) for k, v in state.items()), config.resolution

    networks = [shapes(cls.representative.coefficients) for cls in plan.classes]
    assert len(set(networks)) == len(plan.classes)  # one class, one network
    merged = max(plan.classes, key=lambda c: len(c.members))
    assert len(merged.members) > 1 and {shapes(m.coefficients) for m in merged.members} == {networks[merged.index]}
    assert measured_ratio(PAPER, base, 4) == plan.paper_class.measured_ratio


@pytest.mark.parametrize("name", ["mobilenetv2", "resnet50"])
def test_phi_0_to_7_table(name):
    base = get_config(name)
    rows = b_series(PAPER, base=base, max_phi=7)
    assert [r["phi"] for r in rows] == list(range(8))
    assert rows[0]["params"] == PUBLISHED[name][0] and rows[0]["macs_ratio"] == 1.0
    assert all(a["macs"] < b["macs"] and a["params"] < b["params"] for a, b in zip(rows, rows[1:]))
    assert not any("official" in r for r in rows)  # no published series beside these
    seven = compound(base, PAPER, 7, 8)
    assert (rows[7]["params"], rows[7]["macs"]) == (count_meta(seven).params, count_meta(seven).macs)
    assert (rows[7]["resolution"], rows[7]["blocks"]) == (seven.resolution, rows[7]["blocks"])
    assert "EfficientNet backbone" in d_series_unavailable(base)


def _started_as_identity(block, x):
    assert block.zero_init_last() is True
    block.eval()
    with torch.no_grad():
        return block(x)


def test_every_residual_block_can_start_as_the_identity():
    torch.manual_seed(0)
    mobile = build(get_config("mobilenetv2", width=0.5, num_classes=10))
    inverted = next(b for b in mobile.blocks if b.spec.residual)
    y = torch.randn(2, inverted.spec.in_channels, 8, 8)
    assert not torch.allclose(inverted.eval()(y), y)
    assert torch.equal(_started_as_identity(inverted, y), y)
    assert next(b for b in mobile.blocks if not b.spec.residual).zero_init_last() is False
    resnet = build(get_config("resnet18", width=0.25, num_classes=10))
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(_started_as_identity(resnet.stages[0][1], x), torch.relu(x))  # relu(0 + shortcut)
    projected = resnet.stages[1][0]  # the strided block: its shortcut is the 1x1 projection
    with torch.no_grad():
        assert torch.equal(_started_as_identity(projected, x), torch.relu(projected.shortcut(x)))
    # The recipe's helper finds every family's blocks: all of ResNet-50's, MobileNetV2's residual ones.
    assert zero_init_residual(build(get_config("resnet50", width=0.25, num_classes=10))) == 16
    assert zero_init_residual(build(get_config("mobilenetv2", num_classes=10))) == 10


def _cli(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def test_candidates_and_table_commands_print_the_efficientnet_shapes(capsys):
    effnet = _cli(capsys, "candidates", "--budget", "2x").splitlines()
    mobile = _cli(capsys, "candidates", "--model", "mobilenetv2", "--budget", "2x").splitlines()
    assert mobile[0] == effnet[0] and len(mobile) == len(effnet)  # the same header and 108 candidates
    summary = next(line for line in mobile if "candidates for a" in line)
    assert summary.startswith("108 candidates for a 2x budget in ") and "at 224 px" in summary
    assert [line.split(":")[0] for line in mobile[-3:]] == [line.split(":")[0] for line in effnet[-3:]]  # coarseness
    assert sum("<- paper" in line for line in mobile) == 1
    table = _cli(capsys, "table", "--model", "resnet50", "--alpha", "1.2", "--beta", "1.1", "--gamma", "1.15")
    lines = table.splitlines()
    assert lines[0].startswith("## resnet50 series from alpha=1.2, beta=1.1, gamma=1.15")
    assert lines[2].startswith("| phi | d ") and "MACs/resnet50" in lines[2]
    assert lines[4].split("|")[6].strip() == "25.56M" and lines[4].split("|")[7].strip() == "4.089"
    assert len([line for line in lines if line.startswith("|   ")]) == 8
    assert any(line.startswith("- phi = 1 by the rule") for line in lines)


def test_detector_table_refuses_a_family_without_an_efficientnet_backbone(capsys):
    code = main(
        ["table", "--model", "mobilenetv2", *("--alpha", "1.2", "--beta", "1.1", "--gamma", "1.15")]
        + [
            "--family",
            "efficientdet",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "needs an EfficientNet backbone" in err[0]


@pytest.mark.parametrize("name", ["mobilenetv2", "resnet34"])
def test_configs_and_kept_weights_round_trip(tmp_path, name):
    from scaling_search.models import config_from_dict, config_to_dict
    from scaling_search.weights import load_model, save_weights

    config = get_config(name, width=0.25, depth=0.5, resolution=32, num_classes=7)
    assert config_from_dict(config_to_dict(config)) == config
    torch.manual_seed(0)
    model = build(config).eval()
    loaded = load_model(save_weights(tmp_path / "w.safetensors", config, model.state_dict()))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), loaded(x))
