"""State-dict names: the project's EfficientNet <-> timm's ``EfficientNet``.

The two networks have the same layers in the same order (tests hold the
shapes equal to those read from real timm models, ``tests/golden/timm``);
only the names differ. The mapping is derived from the config alone, block by
block: a block without an expansion conv is timm's ``DepthwiseSeparableConv``
(``conv_dw, bn1, se, conv_pw, bn2``), one with it an ``InvertedResidual``
(``conv_pw, bn1, conv_dw, bn2, se, conv_pwl, bn3``).

Conversions are strict both ways: every expected name present, nothing else,
every shape as the config builds it; the tensors themselves are passed
through untouched, so a round trip is bit-identical.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from ..errors import UsageError
from .efficientnet_config import EfficientNetConfig, block_specs

_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_CONV_BIAS = ("weight", "bias")


def _conv_bn(project: str, conv: str, bn: str) -> list[tuple[str, str]]:
    """A project ConvBNAct (``<p>.0`` conv, ``<p>.1`` BN) -> timm's separate conv and BN."""
    return [(f"{project}.0.weight", f"{conv}.weight")] + [(f"{project}.1.{k}", f"{bn}.{k}") for k in _BN]


def _se(project: str, timm: str) -> list[tuple[str, str]]:
    return [(f"{project}.reduce.{k}", f"{timm}.conv_reduce.{k}") for k in _CONV_BIAS] + [
        (f"{project}.expand.{k}", f"{timm}.conv_expand.{k}") for k in _CONV_BIAS
    ]


@lru_cache(maxsize=256)
def _key_map(config: EfficientNetConfig) -> tuple[tuple[str, str], ...]:
    pairs = _conv_bn("stem", "conv_stem", "bn1")
    for i, stage in enumerate(block_specs(config)):
        for j, block in enumerate(stage):
            p, t = f"stages.{i}.{j}.body", f"blocks.{i}.{j}"
            if block.expanded != block.in_channels:  # InvertedResidual
                pairs += _conv_bn(f"{p}.0", f"{t}.conv_pw", f"{t}.bn1")
                pairs += _conv_bn(f"{p}.1", f"{t}.conv_dw", f"{t}.bn2")
                pairs += _se(f"{p}.2", f"{t}.se")
                pairs += _conv_bn(f"{p}.3", f"{t}.conv_pwl", f"{t}.bn3")
            else:  # DepthwiseSeparableConv
                pairs += _conv_bn(f"{p}.0", f"{t}.conv_dw", f"{t}.bn1")
                pairs += _se(f"{p}.1", f"{t}.se")
                pairs += _conv_bn(f"{p}.2", f"{t}.conv_pw", f"{t}.bn2")
    pairs += _conv_bn("head", "conv_head", "bn2")
    pairs += [(f"classifier.{k}", f"classifier.{k}") for k in _CONV_BIAS]
    return tuple(pairs)


def timm_key_map(config: EfficientNetConfig) -> list[tuple[str, str]]:
    """(project name, timm name) of every state-dict entry, in state-dict order."""
    if not isinstance(config, EfficientNetConfig):
        raise UsageError(f"timm names exist for EfficientNet classifiers only, not {type(config).__name__}")
    return list(_key_map(config))


@lru_cache(maxsize=64)
def project_shapes(config: EfficientNetConfig) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """(name, shape) of the project model's state dict, built on the meta device (nothing allocated)."""
    import torch

    from .efficientnet import EfficientNet

    with torch.device("meta"):
        model = EfficientNet(config)
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())


def timm_shapes(config: EfficientNetConfig) -> list[tuple[str, tuple[int, ...]]]:
    """(timm name, shape) of the timm model that builds the same network, in its state-dict order."""
    shapes = dict(project_shapes(config))
    return [(t, shapes[p]) for p, t in timm_key_map(config)]


def _rename(state: Mapping[str, Any], pairs: list[tuple[str, str]], shapes: dict[str, tuple[int, ...]], source: str):
    expected = [src for src, _ in pairs]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in shapes]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {', '.join(unexpected[:3])})")
        raise UsageError(f"the {source} state dict does not fit this config: {'; '.join(parts)}")
    for src in expected:
        shape = tuple(state[src].shape)
        if shape != shapes[src]:
            raise UsageError(
                f"the {source} state dict does not fit this config: {src} has shape {shape}, expected {shapes[src]}"
            )
    return {dst: state[src] for src, dst in pairs}


def to_timm(state_dict: Mapping[str, Any], config: EfficientNetConfig) -> dict[str, Any]:
    """The project's state dict under timm's names (same tensors, timm's order); strict."""
    pairs = timm_key_map(config)
    return _rename(state_dict, pairs, dict(project_shapes(config)), "project")


def from_timm(state_dict: Mapping[str, Any], config: EfficientNetConfig) -> dict[str, Any]:
    """A timm ``EfficientNet`` state dict under the project's names; strict."""
    pairs = [(t, p) for p, t in timm_key_map(config)]
    return _rename(state_dict, pairs, dict(timm_shapes(config)), "timm")
