import json

from conftest import run_cli

from scaling_search.models import EfficientNetConfig, compound, measured_ratio, scale_network
from scaling_search.scaling import PAPER
from scaling_search.search.plan import build_plan, search_candidates, space_plan
from scaling_search.space import GridSpec, load_space, preset_path

BASE = EfficientNetConfig(resolution=64, num_classes=10)


def _built(coeffs):
    cfg = compound(BASE, coeffs, 1, 4)
    return scale_network(cfg), cfg.resolution


def test_measured_constraint_holds_and_paper_is_a_flagged_reference():
    plan = build_plan("2x", BASE, multiple=4, grid=GridSpec("full", 0.05, max_beta=1.5, max_gamma=1.5))
    for c in plan.candidates:
        assert c.measured_ratio == measured_ratio(c.coefficients, BASE, 4)
        if not c.reference:
            assert abs(c.measured_ratio / 2 - 1) < 0.05
    paper = [c for c in plan.candidates if c.is_paper]
    assert len(paper) == 1 and paper[0].reference and paper[0].measured_ratio > 2.5
    assert plan.paper_class.reference and plan.paper_class.members == tuple(paper)


def test_classes_group_exactly_the_triples_that_build_one_network():
    plan = build_plan("2x", BASE, multiple=4, grid=GridSpec("full", 0.05, max_beta=1.5, max_gamma=1.5))
    assert sum(len(c.members) for c in plan.classes) == len(plan.candidates)
    networks = [_built(cls.representative.coefficients) for cls in plan.classes]
    assert len(set(networks)) == len(plan.classes)  # different classes, different networks
    for cls, net in zip(plan.classes, networks):
        assert all(_built(m.coefficients) == net for m in cls.members)
    assert len(plan.classes) < len(plan.candidates)  # rounding does merge triples here
    merged = next(c for c in plan.classes if len(c.members) > 1)
    assert "-" in merged.describe()


def test_shipped_spaces_hold_twenty_networks_and_cli_lists_the_search_plan():
    for name in ("default", "cpu"):
        plan = space_plan(load_space(preset_path(name)))
        assert sum(not c.reference for c in plan.classes) >= 20
        assert any(m.is_paper for m in plan.paper_class.members)
    space = load_space(preset_path("smoke"))
    plan = space_plan(space)
    proc = run_cli("candidates", "--preset", "smoke", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == json.loads(json.dumps(plan.rows()))
    trained = [r for r in json.loads(proc.stdout) if r["trained"]]
    assert [c.coefficients.as_tuple() for c in search_candidates(space)] == [
        c.representative.coefficients.as_tuple() for c in plan.classes
    ]
    assert len(trained) == len(plan.classes)
    assert any(r["paper"] and (r["alpha"], r["beta"], r["gamma"]) == PAPER.as_tuple() for r in trained)
