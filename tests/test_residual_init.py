"""The depth-fair initialisation: every residual block starts as the identity, when the recipe says so."""

from __future__ import annotations

import json

import pytest
import torch

from scaling_search.analysis.report import write_report
from scaling_search.errors import UsageError
from scaling_search.models import EfficientNetConfig, build
from scaling_search.models.efficientnet import MBConv
from scaling_search.models.residual import ResidualBlock, zero_init_residual
from scaling_search.records import TrialRecord, TrialState
from scaling_search.space import parse_space
from scaling_search.train.loop import prepared_model
from scaling_search.train.recipe import Recipe

# Depth 0.5 at width 0.25: 9 blocks, of which the repeats of stages 2-6 are residual.
CONFIG = EfficientNetConfig(width=0.25, depth=0.5, resolution=32, num_classes=10)


def _blocks(model: torch.nn.Module) -> list[MBConv]:
    return [m for m in model.modules() if isinstance(m, MBConv)]


def _block_inputs(model, x: torch.Tensor) -> list[torch.Tensor]:
    """The input each MBConv sees in a forward pass of ``model``."""
    seen = []
    hooks = [b.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach().clone())) for b in _blocks(model)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("zero", [True, False])
def test_every_residual_block_is_the_identity_at_step_0_only_when_asked(zero):
    torch.manual_seed(0)
    model = prepared_model(CONFIG, Recipe(zero_init_residual=zero))
    blocks = _blocks(model)
    residual = [b for b in blocks if b.spec.residual]
    assert len(residual) >= 4 and len(residual) < len(blocks)  # both kinds are present
    assert all(isinstance(b, ResidualBlock) for b in blocks)
    x = torch.randn(4, 3, 32, 32)
    for mode in ("train", "eval"):
        getattr(model, mode)()
        for block, inp in zip(blocks, _block_inputs(model, x)):
            with torch.no_grad():
                out = block(inp)
            if block.spec.residual:
                assert torch.equal(out, inp) is zero, (mode, block.spec)
            else:  # a block that changes shape or stride is never the identity
                assert out.shape != inp.shape or not torch.equal(out, inp)


def test_the_helper_counts_the_residual_blocks_and_leaves_the_rest():
    torch.manual_seed(0)
    model = build(CONFIG)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    changed = zero_init_residual(model)
    assert changed == sum(b.spec.residual for b in _blocks(model))
    after = model.state_dict()
    differs = sorted(k for k in before if not torch.equal(before[k], after[k]))
    # exactly the projection BN's scale of each residual block (the shift was already zero)
    projections = sorted(
        f"{name}.body.{len(b.body) - 1}.1.weight"
        for name, b in model.named_modules()
        if isinstance(b, MBConv) and b.spec.residual
    )
    assert differs == projections and all(not after[k].any() for k in differs)


def test_the_recipe_key_is_validated_and_hashed_only_when_on():
    with pytest.raises(UsageError, match="zero_init_residual must be true or false"):
        Recipe(zero_init_residual="yes")

    def space(**proxy):
        return parse_space({"name": "s", "data": {"name": "cifar10"}, "proxy": {"epochs": 1, **proxy}})

    with pytest.raises(UsageError, match=r"proxy\.zero_init_residual"):
        space(zero_init_residual=1)
    # off is what every earlier run did: its folders keep their fingerprint
    assert space().fingerprint() == space(zero_init_residual=False).fingerprint()
    assert space(zero_init_residual=True).fingerprint() != space().fingerprint()


@pytest.mark.parametrize("zero", [True, False])
def test_the_report_names_the_initialisation(tmp_path, zero):
    space = parse_space(
        {
            "name": "s",
            "data": {"name": "cifar10"},
            "proxy": {"epochs": 1, "zero_init_residual": zero},
            "seeds": [0],
            "extrapolation": {"max_phi": 1, "detection": False},
        }
    )
    records = [
        TrialRecord(1.0, 1.0, g, 0, 1, 0.25, 0.25, 32, 1, 1, 2.0, 2.0, state=TrialState.COMPLETE, accuracy=a)
        for g, a in ((1.1, 0.3), (1.2, 0.4))
    ]
    write_report(tmp_path, records, space, {}, extrapolate=False)
    best = json.loads((tmp_path / "best.json").read_text())
    md = (tmp_path / "coefficients.md").read_text()
    assert best["zero_init_residual"] is zero
    word = "zero-init residual" if zero else "standard"
    assert best["init"].startswith(word) and f"- initialisation: {word}" in md
