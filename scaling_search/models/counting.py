"""Params and conv + linear MACs of a module, counted on the meta device (nothing allocated, nothing computed).

The module is built on the meta device and run once under ``FlopCounterMode``;
conv and matmul count 2 FLOPs per multiply-add, halved here into MACs (the
paper's and torchvision's "FLOPs"). It takes a factory, not a config, so any
family (a user's function included) counts the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Conv + linear are what the paper counts; FlopCounterMode reports linear as mm/addmm.
MAC_OPS = ("convolution", "addmm", "mm", "bmm")


@dataclass(frozen=True)
class MetaCount:
    params: int
    macs: int
    per_module: dict[str, int] = field(default_factory=dict, compare=False)


def trainable_params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _macs(ops: dict) -> int:
    return sum(int(n) for op, n in ops.items() if any(k in str(op) for k in MAC_OPS))


def count_module(
    make: Callable[[], Any],
    resolution: int,
    *,
    device: str = "meta",
    breakdown: bool = False,
    check: Callable[[Any], None] | None = None,
) -> MetaCount:
    """Build ``make()`` on ``device`` (meta: no memory) and count one forward of a 1 x 3 x R x R input;
    ``check`` sees the output."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device(device):
        model = make()
    model.eval()
    params = trainable_params(model)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        output = model(torch.zeros(1, 3, resolution, resolution, device=device))
    if check is not None:
        check(output)
    flops = counter.get_flop_counts()
    per_module: dict[str, int] = {}
    if breakdown:
        root = type(model).__name__ + "."
        for name, ops in flops.items():
            if not name.startswith(root):  # "Global" and the model itself
                continue
            rel = name[len(root) :]
            if rel.count(".") <= 1:  # children and grandchildren: stem, stages.3, head
                per_module[rel] = _macs(ops) // 2
    return MetaCount(params=params, macs=_macs(flops.get("Global", {})) // 2, per_module=per_module)
