"""Residual branches that start as the identity (Goyal et al. 2017, "zero-gamma").

A block that can start as the identity exposes ``zero_init_last()``: it zeroes
the scale of the last BatchNorm of its residual branch, so the branch outputs
exactly zero and the block returns its input. Any family's residual block
(MBConv here; inverted residuals, bottlenecks) implements the same method, and
``zero_init_residual`` applies it to a whole module tree.

Why a short proxy needs it: a deep stack of freshly initialised residual
branches adds their variances at every block, and a few-epoch schedule spends
itself recovering from that, which makes depth look worse than it is.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import nn


@runtime_checkable
class ResidualBlock(Protocol):
    def zero_init_last(self) -> bool:
        """Zero the last BN scale of the residual branch; True if the block is residual (and was changed)."""
        ...


def zero_bn(bn: nn.Module) -> None:
    """A BatchNorm whose output is exactly zero: scale and shift 0."""
    nn.init.zeros_(bn.weight)
    nn.init.zeros_(bn.bias)


def zero_init_residual(model: nn.Module) -> int:
    """Every residual block under ``model`` (``model`` included) starts as the identity; returns how many."""
    return sum(bool(m.zero_init_last()) for m in model.modules() if isinstance(m, ResidualBlock))
