"""EfficientNet modules, built from an already-scaled stage list.

Scaling happens in ``efficientnet_config.scale_network`` before any module
exists; the constructors below only read concrete channel and block counts.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .efficientnet_config import (
    BN_EPS,
    BN_MOMENTUM,
    BlockSpec,
    EfficientNetConfig,
    block_specs,
    feature_strides,
    scale_network,
    se_channels,
)
from .residual import zero_bn


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class ConvBNAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True):
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
            _bn(cout),
        ]
        if act:
            layers.append(nn.SiLU(inplace=True))
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeezed: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.act = nn.SiLU(inplace=True)
        self.expand = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.expand(self.act(self.reduce(self.pool(x))))
        return x * torch.sigmoid(s)


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero the whole residual branch of some samples."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask / keep


class MBConv(nn.Module):
    """Inverted residual: [expand 1x1] -> depthwise kxk -> SE -> project 1x1."""

    def __init__(self, spec: BlockSpec):
        super().__init__()
        self.spec = spec
        layers: list[nn.Module] = []
        if spec.expanded != spec.in_channels:
            layers.append(ConvBNAct(spec.in_channels, spec.expanded, 1))
        layers.append(ConvBNAct(spec.expanded, spec.expanded, spec.kernel, spec.stride, groups=spec.expanded))
        layers.append(SqueezeExcite(spec.expanded, se_channels(spec.in_channels)))
        layers.append(ConvBNAct(spec.expanded, spec.out_channels, 1, act=False))
        self.body = nn.Sequential(*layers)

    def zero_init_last(self) -> bool:
        """A residual block starts as the identity: the projection's BN scale (and shift) at zero."""
        if not self.spec.residual:
            return False
        zero_bn(self.body[-1][1])  # ConvBNAct(project): conv, BN
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if self.spec.residual:
            out = drop_path(out, self.spec.drop_path, self.training) + x
        return out


def init_weights(module: nn.Module) -> None:
    """Every convolution, BN and linear layer below ``module``: He normal (fan out), unit scale, uniform; zero bias."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            bound = 1.0 / math.sqrt(m.out_features)
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)


class _Trunk(nn.Module):
    """Stem and MBConv stages, shared by the classifier and the detector backbone."""

    def __init__(self, config: EfficientNetConfig):
        super().__init__()
        self.config = config
        net = scale_network(config)
        self.stem = ConvBNAct(3, net.stem_channels, 3, stride=2)
        self.stages = nn.ModuleList(nn.Sequential(*(MBConv(b) for b in blocks)) for blocks in block_specs(config, net))
        # (stage index, stride, channels) of the last stage at every output stride.
        self.feature_info = feature_strides(config)

    def _init_weights(self) -> None:
        init_weights(self)

    def feature_channels(self, strides: tuple[int, ...] = (8, 16, 32)) -> list[int]:
        """Channel counts of ``features(x, strides)``."""
        return [c for _, s, c in self.feature_info if s in strides]

    def features(self, x: torch.Tensor, strides: tuple[int, ...] = (8, 16, 32)) -> list[torch.Tensor]:
        """Feature maps at ``strides`` (the detector's C3-C5 by default), no head conv."""
        wanted = {stage for stage, s, _ in self.feature_info if s in strides}
        if len(wanted) != len(strides):
            raise ValueError(f"strides {strides} not all in {[s for _, s, _ in self.feature_info]}")
        out = []
        x = self.stem(x)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in wanted:
                out.append(x)
        return out


class EfficientNet(_Trunk):
    """A compound-scaled EfficientNet classifier; ``config.resolution`` is nominal only.

    As in timm: ``forward_features`` runs stem, stages and head conv;
    ``forward_head`` pools, drops out and classifies.
    """

    def __init__(self, config: EfficientNetConfig):
        super().__init__(config)
        net = scale_network(config)
        self.head = ConvBNAct(net.stages[-1].out_channels, net.head_channels, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(net.head_channels, config.num_classes)
        self._init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.pool(x), 1)
        return x if pre_logits else self.classifier(self.dropout(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class EfficientNetFeatures(_Trunk):
    """The feature extractor alone (stem and stages, no head conv, pooling or
    classifier), as a detector backbone: modules that never run would otherwise
    count as parameters. ``forward`` returns the maps at ``strides``."""

    def __init__(self, config: EfficientNetConfig, strides: tuple[int, ...] = (8, 16, 32)):
        super().__init__(config)
        self.strides = tuple(strides)
        self.channels = self.feature_channels(self.strides)
        if len(self.channels) != len(self.strides):
            raise ValueError(f"strides {strides} not all in {[s for _, s, _ in self.feature_info]}")
        self._init_weights()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.features(x, self.strides)
