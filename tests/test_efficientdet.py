import json
import math
import time

import pytest
import torch
from conftest import ROOT, assert_usage_error, run_cli, table_args

from scaling_search.analysis.series import d_series, d_series_departures
from scaling_search.cli import main
from scaling_search.errors import UsageError
from scaling_search.flops import count, count_fvcore, trainable_params
from scaling_search.models import EfficientNetConfig, analytic_counts, build, get_config, scale_network
from scaling_search.models.bifpn import MaxPoolSame, fast_normalized_fusion, same_pool_padding
from scaling_search.models.efficientdet_config import (
    OFFICIAL_D,
    EfficientDetConfig,
    bifpn_nodes,
    bifpn_outputs,
    formula_fpn_channels,
    formula_fpn_layers,
    formula_head_layers,
    formula_resolution,
    official_departures,
)
from scaling_search.scaling import PAPER, Coefficients

# effdet tf_efficientdet_d*: trainable params with 90 classes, fvcore GMACs at the official resolution
EXACT_PARAMS = {
    "d0": 3_880_067,
    "d1": 6_625_898,
    "d2": 8_097_039,
    "d3": 12_032_296,
    "d4": 20_723_675,
    "d5": 33_653_315,
    "d6": 51_871_782,
    "d7": 51_871_782,
}
FVCORE_GMACS = {
    "d0": 2.571,
    "d1": 6.176,
    "d2": 11.105,
    "d3": 25.087,
    "d4": 55.501,
    "d5": 136.076,
    "d6": 226.728,
    "d7": 326.485,
}


def _meta(config):
    with torch.device("meta"):
        return build(config)


# ---------------------------------------------------------------- topology


def test_node_list_p3_p7_is_the_published_one():
    nodes = bifpn_nodes(3, 7)
    assert [(n.level, n.inputs) for n in nodes] == [
        (6, (3, 4)),
        (5, (2, 5)),
        (4, (1, 6)),
        (3, (0, 7)),
        (4, (1, 7, 8)),
        (5, (2, 6, 9)),
        (6, (3, 5, 10)),
        (7, (4, 11)),
    ]
    assert bifpn_outputs(nodes, 3, 7) == (8, 9, 10, 11, 12)


def test_node_list_follows_the_levels():
    nodes = bifpn_nodes(3, 5)
    assert [(n.level, n.inputs) for n in nodes] == [(4, (1, 2)), (3, (0, 3)), (4, (1, 3, 4)), (5, (2, 5))]
    assert bifpn_outputs(nodes, 3, 5) == (4, 5, 6)
    wide = bifpn_nodes(2, 8)
    assert len(wide) == 2 * 6
    for i, node in enumerate(wide):
        assert all(0 <= j < 7 + i for j in node.inputs)  # only earlier nodes feed a node
    with pytest.raises(UsageError):
        bifpn_nodes(5, 5)


def test_fast_normalized_fusion_formula():
    torch.manual_seed(0)
    xs = [torch.randn(2, 4, 5, 5) for _ in range(3)]
    raw = torch.tensor([2.0, -1.0, 0.5])  # the negative weight is clipped to 0 by ReLU
    expected = (2.0 * xs[0] + 0.0 * xs[1] + 0.5 * xs[2]) / (2.0 + 0.0 + 0.5 + 1e-4)
    torch.testing.assert_close(fast_normalized_fusion(xs, raw), expected)
    ones = fast_normalized_fusion(xs, torch.ones(3))
    torch.testing.assert_close(ones, sum(xs) / (3 + 1e-4))


def test_fusion_weights_per_edge_and_sum_fusion():
    d0 = _meta(get_config("efficientdet-d0"))
    weights = [p for n, p in d0.bifpn.named_parameters() if n.endswith(".weights")]
    per_layer = sum(len(n.inputs) for n in bifpn_nodes())
    assert len(weights) == 8 * 3 and sum(w.numel() for w in weights) == per_layer * 3
    real = build(get_config("efficientdet-d0").with_(backbone=EfficientNetConfig(width=0.25, depth=0.25)))
    assert all(torch.equal(p, torch.ones_like(p)) for n, p in real.bifpn.named_parameters() if n.endswith(".weights"))
    d6 = _meta(get_config("efficientdet-d6"))
    assert not [n for n, _ in d6.bifpn.named_parameters() if n.endswith(".weights")]


def test_first_layer_resamples_each_edge_on_its_own():
    # P4 and P5 feed two nodes each in the first layer: two separate 1x1 convs each.
    model = _meta(get_config("efficientdet-d0"))
    first, second = model.bifpn.layers[0], model.bifpn.layers[1]
    projected = [
        (node.node.level, len(node.node.inputs))
        for node in first.nodes
        for r in node.resample
        if not isinstance(r.project, torch.nn.Identity)
    ]
    assert sorted(projected) == [(3, 2), (4, 2), (4, 3), (5, 2), (5, 3)]
    assert all(isinstance(r.project, torch.nn.Identity) for node in second.nodes for r in node.resample)
    assert len(model.bifpn.extra) == 2 and not isinstance(model.bifpn.extra[0].project, torch.nn.Identity)
    assert isinstance(model.bifpn.extra[1].project, torch.nn.Identity)  # P7: pool of P6 only


def test_same_max_pool():
    assert same_pool_padding(8) == (0, 1) and same_pool_padding(7) == (1, 1) and same_pool_padding(1) == (1, 1)
    x = -torch.arange(49.0).reshape(1, 1, 7, 7)  # all negative: a zero pad would win
    y = MaxPoolSame()(x)
    assert y.shape[-2:] == (4, 4)
    assert y[0, 0, 0, 0] == 0.0 and y[0, 0, -1, -1] == -40.0


# ------------------------------------------------------------ scaling rules


def test_formula_rounding_and_rules():
    assert [formula_fpn_channels(p) for p in range(8)] == [64, 88, 120, 160, 216, 288, 384, 520]
    assert [formula_fpn_layers(p) for p in range(8)] == [3, 4, 5, 6, 7, 8, 9, 10]
    assert [formula_head_layers(p) for p in range(8)] == [3, 3, 3, 4, 4, 4, 5, 5]
    assert [formula_resolution(p) for p in range(8)] == [512 + 128 * p for p in range(8)]
    for bad in (-1, 1.5, True):
        with pytest.raises(UsageError):
            formula_fpn_channels(bad)


def test_official_departures_are_listed():
    found = {(d.model.removeprefix("efficientdet-"), d.field): (d.formula, d.official) for d in official_departures()}
    assert found == {
        ("d2", "fpn_channels"): (120, 112),
        ("d4", "fpn_channels"): (216, 224),
        ("d7", "fpn_channels"): (520, 384),
        ("d5", "fpn_layers"): (8, 7),
        ("d6", "fpn_layers"): (9, 8),
        ("d7", "fpn_layers"): (10, 8),
        ("d5", "resolution"): (1152, 1280),
        ("d7", "resolution"): (1408, 1536),
        ("d7", "backbone"): ("b7", "b6"),
        ("d6", "fusion"): ("fast", "sum"),
        ("d7", "fusion"): ("fast", "sum"),
    }


def test_formula_config_uses_the_given_coefficients():
    coeffs = Coefficients(1.3, 1.05, 1.1)
    cfg = EfficientDetConfig.from_formula(3, coeffs)
    assert cfg.backbone.width == pytest.approx(1.05**3) and cfg.backbone.depth == pytest.approx(1.3**3)
    assert (cfg.fpn_channels, cfg.fpn_layers, cfg.head_layers, cfg.resolution, cfg.fusion) == (160, 6, 4, 896, "fast")
    assert get_config("efficientdet", phi=3, alpha=1.3, beta=1.05, gamma=1.1) == cfg
    assert get_config("efficientdet", phi=2) == EfficientDetConfig.from_formula(2, PAPER)
    d7 = get_config("efficientdet-d7")
    assert d7.backbone == get_config("efficientnet-b6") and d7.num_classes == 90 and d7.resolution == 1536
    assert len(OFFICIAL_D) == 8


# ------------------------------------------------------------- counts


@pytest.mark.parametrize("variant", list(EXACT_PARAMS))
def test_exact_parameter_counts(variant):
    assert trainable_params(_meta(get_config(f"efficientdet-{variant}", num_classes=90))) == EXACT_PARAMS[variant]


def test_backbone_is_built_without_its_head():
    model = _meta(get_config("efficientdet-d0"))
    for name in ("head", "pool", "dropout", "classifier"):
        assert not hasattr(model.backbone, name)
    b0 = get_config("efficientnet-b0")
    net = scale_network(b0)
    head = (
        net.stages[-1].out_channels * net.head_channels
        + 2 * net.head_channels
        + (net.head_channels + 1) * b0.num_classes
    )
    assert trainable_params(model.backbone) == analytic_counts(b0).params - head
    feats = model.backbone(torch.zeros(1, 3, 64, 64, device="meta"))  # the strides P3-P5 it was built for
    assert [tuple(f.shape[1:]) for f in feats] == [(40, 8, 8), (112, 4, 4), (320, 2, 2)]


# d0 is checked through the CLI below; d5-d7 take ~40 s each here: benchmarks/efficientdet_counts.py
@pytest.mark.parametrize("variant", ["d1", "d2", "d3", pytest.param("d4", marks=pytest.mark.slow)])
def test_fvcore_total_matches_published(variant):
    config = get_config(f"efficientdet-{variant}")
    fv = count_fvcore(config)
    assert abs(fv.total / 1e9 / FVCORE_GMACS[variant] - 1) < 0.015
    assert fv.conv_linear == count(config).macs  # the two counters agree on conv MACs


def test_d7_meta_count_is_fast():
    start = time.perf_counter()
    result = count(get_config("efficientdet-d7"))
    assert time.perf_counter() - start < 60
    assert result.resolution == 1536 and result.params == EXACT_PARAMS["d7"]
    assert result.macs > count(get_config("efficientdet-d6")).macs * (1536 / 1280) ** 2 * 0.99


def test_breakdown_parts_add_up():
    result = count(get_config("efficientdet-d0"), breakdown=True)
    parts = {k: v for k, v in result.per_module.items() if "." not in k}
    assert set(parts) == {"backbone", "bifpn", "class_net", "box_net"}
    assert sum(parts.values()) == result.macs


# ------------------------------------------------------------ forward


def test_d0_forward_shapes_and_class_prior():
    torch.manual_seed(0)
    model = build(get_config("efficientdet-d0")).eval()
    with torch.no_grad():
        classes, boxes = model(torch.randn(1, 3, 512, 512))
    assert [tuple(c.shape) for c in classes] == [(1, 9 * 90, s, s) for s in (64, 32, 16, 8, 4)]
    assert [tuple(b.shape) for b in boxes] == [(1, 9 * 4, s, s) for s in (64, 32, 16, 8, 4)]
    bias = model.class_net.predict.pointwise.bias
    torch.testing.assert_close(torch.sigmoid(bias), torch.full_like(bias, 0.01))
    assert bias[0].item() == pytest.approx(-math.log((1 - 0.01) / 0.01))


def test_other_levels_and_odd_sizes():
    small = EfficientNetConfig(width=0.25, depth=0.25)
    base = get_config("efficientdet-d0").with_(backbone=small, num_classes=3)
    torch.manual_seed(0)
    with torch.no_grad():
        classes, boxes = build(base).eval()(torch.randn(1, 3, 200, 200))
        assert [c.shape[-1] for c in classes] == [25, 13, 7, 4, 2]  # 'same' sizes: ceil(n / 2)
        classes, boxes = build(base.with_(min_level=2, max_level=6)).eval()(torch.randn(1, 3, 64, 64))
        assert [c.shape[-1] for c in classes] == [16, 8, 4, 2, 1] and boxes[0].shape[1] == 36
        classes, _ = build(base.with_(max_level=5, fusion="sum")).eval()(torch.randn(2, 3, 64, 64))
        assert [tuple(c.shape) for c in classes] == [(2, 27, 8, 8), (2, 27, 4, 4), (2, 27, 2, 2)]


# -------------------------------------------------------------- tables


def test_d_series_rows_are_measured_side_by_side():
    coeffs = Coefficients(1.3, 1.05, 1.1)
    rows = d_series(coeffs, max_phi=1)
    assert [r["phi"] for r in rows] == [0, 1]
    last = rows[-1]
    formula, official = count(EfficientDetConfig.from_formula(1, coeffs)), count(get_config("efficientdet-d1"))
    assert (last["params"], last["macs"], last["official_params"], last["official_macs"]) == (
        formula.params,
        formula.macs,
        official.params,
        official.macs,
    )
    for r in rows:
        assert r["backbone_width"] == round(1.05 ** r["phi"], 4) and r["backbone_depth"] == round(1.3 ** r["phi"], 4)
        assert r["params_diff"] == round(r["params"] / r["official_params"] - 1, 4)
    assert rows[0]["params"] == EXACT_PARAMS["d0"] and rows[0]["params_diff"] == 0  # phi 0 is D0 for any triple
    assert rows[1]["official_backbone"] == "b1" and rows[1]["params_diff"] != 0
    notes = d_series_departures(coeffs, rows)
    assert "alpha=1.3, beta=1.05, gamma=1.1" in notes[0] and not any(
        "departs" in n for n in notes
    )  # d0, d1 follow the formulas


def test_committed_paper_d_series_is_current():
    rows = d_series(PAPER)
    notes = d_series_departures(PAPER, rows)
    assert [r["official_params"] for r in rows] == list(EXACT_PARAMS.values())
    assert rows[2]["fpn_channels"] == 120 and rows[2]["official_fpn_channels"] == 112
    assert sum("departs" in n for n in notes) == 5  # width, BiFPN layers, resolution, backbone, fusion
    assert any("d7 (b7 -> b6)" in n for n in notes) and any("d5 (1152 -> 1280), d7 (1408 -> 1536)" in n for n in notes)
    committed = json.loads((ROOT / "results" / "paper" / "d_series.json").read_text())
    assert (committed["rows"], committed["notes"]) == (rows, notes), (
        "results/paper is stale: regenerate it (see results/paper/README.md)"
    )
    assert (committed["alpha"], committed["beta"], committed["gamma"], committed["family"]) == (
        1.2,
        1.1,
        1.15,
        "efficientdet",
    )


def test_d_series_fvcore_on_request():
    (row,) = d_series(PAPER, max_phi=0, fvcore=True)
    assert row["macs_fvcore"] == row["official_macs_fvcore"] and row["macs_fvcore_diff"] == 0
    assert abs(row["official_macs_fvcore"] / 1e9 / FVCORE_GMACS["d0"] - 1) < 0.015


def test_table_cli_efficientdet(capsys, monkeypatch):
    assert main(table_args("--family", "efficientdet", "--max-phi", "1", "--format", "json")) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["family"] == "efficientdet" and data["num_classes"] == 90
    assert [r["official_params"] for r in data["rows"]] == [EXACT_PARAMS["d0"], EXACT_PARAMS["d1"]]
    assert "macs_fvcore" not in data["rows"][0]
    # The flag's wiring only (fvcore itself is tested above): a stand-in keeps it quick.
    monkeypatch.setattr("scaling_search.analysis.series.measure_fvcore", lambda config: 10**9 * config.fpn_channels)
    assert main(table_args("--family", "efficientdet", "--max-phi", "2", "--fvcore", "--format", "csv")) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split(",")
    fv = [dict(zip(header, line.split(",")))["macs_fvcore_diff"] for line in lines[1:]]
    assert fv == ["0.0", "0.0", str(round(120 / 112 - 1, 4))]


# ----------------------------------------------------------------- CLI


def test_flops_cli_d0_contract():
    proc = run_cli("flops", "efficientdet-d0", "--num-classes", "90", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["model"] == "efficientdet-d0" and data["resolution"] == 512
    assert all(type(data[k]) is int for k in ("params", "macs", "macs_fvcore"))
    assert data["params"] == EXACT_PARAMS["d0"]
    assert abs(data["macs_fvcore"] / 1e9 / FVCORE_GMACS["d0"] - 1) < 0.015
    assert data["macs"] < data["macs_fvcore"]


@pytest.mark.parametrize("variant", ["d1", "d2", "d3", "d4", "d5", "d6", "d7"])
def test_flops_cli_contract_without_fvcore(variant, capsys):
    assert main(["flops", f"efficientdet-{variant}", "--num-classes", "90", "--json", "--no-fvcore"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == f"efficientdet-{variant}" and data["resolution"] == OFFICIAL_D[variant].resolution
    assert data["params"] == EXACT_PARAMS[variant] and type(data["macs"]) is int and data["macs_fvcore"] is None


def test_flops_cli_formula(capsys):
    assert (
        main(
            [
                "flops",
                "efficientdet",
                "--phi",
                "2",
                "--alpha",
                "1.3",
                "--beta",
                "1.05",
                "--gamma",
                "1.1",
                "--no-fvcore",
                "--json",
            ]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    expected = count(EfficientDetConfig.from_formula(2, Coefficients(1.3, 1.05, 1.1)))
    assert data["model"] == "efficientdet(phi=2,alpha=1.3,beta=1.05,gamma=1.1)"
    assert (data["params"], data["macs"], data["resolution"]) == (expected.params, expected.macs, 768)


@pytest.mark.parametrize(
    "args, fragments",
    [
        (("flops", "efficientdet-d9"), ("unknown model", "efficientdet-d9")),
        (("flops", "efficientdet", "--phi", "-1"), ("phi", "non-negative")),
        (("flops", "efficientdet-d0", "--phi", "1"), ("efficientdet-d0", "phi")),
        (("flops", "efficientdet-d3", "--alpha", "1.3"), ("efficientdet-d3", "alpha")),
        (("flops", "efficientdet"), ("--phi",)),
        (("flops", "efficientdet", "--phi", "1", "--width", "2"), ("width",)),
        (("flops", "efficientnet-b0", "--phi", "1"), ("phi",)),
        (("flops", "efficientdet", "--phi", "1", "--beta", "0.9"), ("beta", "below 1")),
        (("table", "--alpha", "1.2", "--beta", "1.1", "--gamma", "1.15", "--fvcore"), ("--fvcore", "efficientdet")),
        (("table", "--alpha", "1.2", "--beta", "1.1", "--gamma", "1.15", "--family", "efficientxyz"), ("family",)),
    ],
    ids=[
        "unknown",
        "negative-phi",
        "phi-with-official",
        "alpha-with-official",
        "no-phi",
        "width",
        "phi-on-classifier",
        "beta-below-1",
        "fvcore-b-series",
        "bad-family",
    ],
)
def test_bad_inputs_exit_2(args, fragments):
    assert_usage_error(run_cli(*args, "--no-fvcore") if args[0] == "flops" else run_cli(*args), *fragments)
