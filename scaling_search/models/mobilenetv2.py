"""MobileNetV2 modules, built from the already-scaled block list of ``mobilenetv2_config``."""

from __future__ import annotations

import torch
from torch import nn

from .efficientnet import drop_path, init_weights
from .efficientnet_config import round_filters
from .mobilenetv2_config import (
    BN_EPS,
    BN_MOMENTUM,
    STEM_CHANNELS,
    InvertedBlock,
    MobileNetV2Config,
    blocks,
    head_channels,
)
from .residual import zero_bn


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """[1x1 expand, ReLU6] -> 3x3 depthwise, ReLU6 -> 1x1 linear projection; identity shortcut when shapes match."""

    def __init__(self, spec: InvertedBlock):
        super().__init__()
        self.spec = spec
        layers: list[nn.Module] = []
        if spec.hidden != spec.in_channels:
            layers.append(_conv_bn(spec.in_channels, spec.hidden, 1))
        layers.append(_conv_bn(spec.hidden, spec.hidden, 3, spec.stride, groups=spec.hidden))
        layers.append(_conv_bn(spec.hidden, spec.out_channels, 1, act=False))
        self.body = nn.Sequential(*layers)

    def zero_init_last(self) -> bool:
        """A residual block starts as the identity: the projection's BN scale (and shift) at zero."""
        if not self.spec.residual:
            return False
        zero_bn(self.body[-1][1])  # the projection: conv, BN
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if self.spec.residual:
            out = drop_path(out, self.spec.drop_path, self.training) + x
        return out


class MobileNetV2(nn.Module):
    def __init__(self, config: MobileNetV2Config):
        super().__init__()
        self.config = config
        specs = blocks(config)
        self.stem = _conv_bn(3, round_filters(STEM_CHANNELS, config.width), 3, stride=2)
        self.blocks = nn.Sequential(*(InvertedResidual(b) for b in specs))
        self.head = _conv_bn(specs[-1].out_channels, head_channels(config.width), 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(head_channels(config.width), config.num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(self.dropout(torch.flatten(self.pool(x), 1)))
