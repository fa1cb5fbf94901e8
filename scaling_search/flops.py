"""Parameters and multiply-adds of built models.

``count`` is the headline path: it asks the model's family (``models.family``),
which counts in closed form where it can (EfficientNet, MobileNetV2, ResNet:
microseconds; the tests hold each equal to the meta counter over random
widths, depths, resolutions and class counts). Every other model, a user's
function, and a per-module breakdown go through the meta-device counter
(``models.counting``): the model is built on the meta device and run under
``FlopCounterMode``, so nothing is allocated or computed; conv and matmul count
2 FLOPs per multiply-add, halved here into MACs (the paper's and torchvision's
"FLOPs"). ``count_fvcore`` is the cross-check users compare with: fvcore
traces real tensors and adds BN, pooling and upsampling.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .models import build, scalable_of
from .models.counting import count_module, trainable_params  # noqa: F401  (trainable_params: part of this API)


@dataclass(frozen=True)
class FlopCount:
    params: int
    macs: int
    resolution: int
    per_module: dict[str, int] = field(default_factory=dict, compare=False)


def _example_input(resolution: int, device: str | torch.device) -> torch.Tensor:
    return torch.zeros(1, 3, resolution, resolution, device=device)


def count(config: Any, resolution: int | None = None, *, breakdown: bool = False) -> FlopCount:
    """Params and conv + linear MACs at ``resolution`` (default: the config's), without real compute."""
    res = int(config.resolution if resolution is None else resolution)
    family = scalable_of(config)
    if not breakdown and family is not None:
        at = config if res == config.resolution else config.with_(resolution=res)
        counted = family.counts(at)
        return FlopCount(params=counted.params, macs=counted.macs, resolution=res)
    return count_meta(config, res, breakdown=breakdown)


def count_meta(config: Any, resolution: int | None = None, *, breakdown: bool = False) -> FlopCount:
    """``count`` through the model itself: built on the meta device, run under FlopCounterMode."""
    res = int(config.resolution if resolution is None else resolution)
    counted = count_module(lambda: build(config), res, breakdown=breakdown)
    return FlopCount(params=counted.params, macs=counted.macs, resolution=res, per_module=counted.per_module)


# fvcore has no handle for these and warns; they are elementwise, so count one
# operation per output element, as fvcore itself does for its own elementwise ops.
_ELEMENTWISE_OPS = ("aten::silu_", "aten::silu", "aten::sigmoid", "aten::mul", "aten::add_", "aten::add")


def _elementwise(inputs: list[Any], outputs: list[Any]) -> int:
    shape = outputs[0].type().sizes()
    n = 1
    for s in shape or ():
        n *= s
    return n


@dataclass(frozen=True)
class FvcoreCount:
    total: int  # fvcore's standard total: conv, linear, BN, pooling, upsampling
    conv_linear: int  # the part comparable with ``count().macs``
    elementwise: int  # SiLU, sigmoid, mul, add, which fvcore alone would skip
    by_operator: dict[str, int]


def count_fvcore(config: Any, resolution: int | None = None) -> FvcoreCount:
    """fvcore's FlopCountAnalysis on real tensors (slow: real compute, TorchScript trace).

    The elementwise ops fvcore has no handle for get one (one op per output
    element) so that nothing is skipped silently; they are reported apart
    from ``total`` so that ``total`` stays the number fvcore users know.
    """
    from fvcore.nn import FlopCountAnalysis

    res = int(config.resolution if resolution is None else resolution)
    torch.manual_seed(0)
    model = build(config).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analysis = FlopCountAnalysis(model, _example_input(res, "cpu"))
        analysis.set_op_handle(**{op: _elementwise for op in _ELEMENTWISE_OPS})
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        with torch.no_grad():
            by_op = {k: int(v) for k, v in analysis.by_operator().items()}
    elementwise = sum(v for k, v in by_op.items() if f"aten::{k}" in _ELEMENTWISE_OPS)
    conv_linear = sum(by_op.get(k, 0) for k in ("conv", "linear", "addmm", "matmul"))
    return FvcoreCount(
        total=sum(by_op.values()) - elementwise,
        conv_linear=conv_linear,
        elementwise=elementwise,
        by_operator=by_op,
    )


def count_activations(config: Any, resolution: int | None = None) -> int:
    """Elements of every convolution's output for one image at ``resolution`` (Dollar et al.'s "activations",
    which track memory traffic and so runtime better than FLOPs), counted on the meta device."""
    res = int(config.resolution if resolution is None else resolution)
    with torch.device("meta"):
        model = build(config)
    model.eval()
    total = [0]

    def add(module, inputs, output) -> None:
        total[0] += output[0].numel()  # one image of the batch

    hooks = [m.register_forward_hook(add) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(_example_input(res, "meta"))
    finally:
        for h in hooks:
            h.remove()
    return int(total[0])
