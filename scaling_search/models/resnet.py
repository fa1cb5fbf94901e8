"""ResNet modules (basic and bottleneck blocks), built from the already-scaled lists of ``resnet_config``."""

from __future__ import annotations

import torch
from torch import nn

from .efficientnet import drop_path, init_weights
from .residual import zero_bn
from .resnet_config import BN_EPS, ResidualBlock, ResNetConfig, blocks, stem_channels


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


def _conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False)


class Residual(nn.Module):
    """A basic (two 3x3) or bottleneck (1x1, 3x3 strided, 1x1) block with its shortcut."""

    def __init__(self, spec: ResidualBlock):
        super().__init__()
        self.spec = spec
        p = spec.planes
        if spec.kind == "basic":
            layers = [_conv(spec.in_channels, p, 3, spec.stride), _bn(p), nn.ReLU(inplace=True), _conv(p, p, 3), _bn(p)]
        else:
            layers = [
                *(_conv(spec.in_channels, p, 1), _bn(p), nn.ReLU(inplace=True)),
                *(_conv(p, p, 3, spec.stride), _bn(p), nn.ReLU(inplace=True)),
                *(_conv(p, spec.out_channels, 1), _bn(spec.out_channels)),
            ]
        self.body = nn.Sequential(*layers)
        self.shortcut = (
            nn.Sequential(_conv(spec.in_channels, spec.out_channels, 1, spec.stride), _bn(spec.out_channels))
            if spec.projection
            else nn.Identity()
        )
        self.act = nn.ReLU(inplace=True)

    def zero_init_last(self) -> bool:
        """The block starts as its shortcut (then ReLU): the residual branch's last BN scale and shift at zero."""
        zero_bn(self.body[-1])
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(drop_path(self.body(x), self.spec.drop_path, self.training) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, config: ResNetConfig):
        super().__init__()
        self.config = config
        c = stem_channels(config)
        self.stem = nn.Sequential(_conv(3, c, 7, 2), _bn(c), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        specs = blocks(config)
        self.stages = nn.ModuleList(nn.Sequential(*(Residual(b) for b in stage)) for stage in specs)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(specs[-1][-1].out_channels, config.num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.classifier(self.dropout(torch.flatten(self.pool(x), 1)))
