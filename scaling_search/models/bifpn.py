"""BiFPN modules, built from the node list of ``efficientdet_config``.

Nothing here is unrolled by hand: each layer walks ``config.nodes`` and gives
every edge its own resampling (1x1 conv + BN when the channels differ from
the BiFPN width, max-pool to go down, nearest-neighbour to go up).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .efficientdet_config import FUSION_EPS, BiFPNNode, EfficientDetConfig, bifpn_outputs
from .efficientnet_config import BN_EPS, BN_MOMENTUM


def batch_norm(channels: int) -> nn.BatchNorm2d:
    """BN with the backbone's settings (TensorFlow's eps and momentum)."""
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def same_pool_padding(size: int, kernel: int = 3, stride: int = 2) -> tuple[int, int]:
    """TensorFlow 'same' padding (before, after) along one axis: output ceil(size / stride)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class MaxPoolSame(nn.Module):
    """3x3 stride-2 max-pool with 'same' padding; padded cells never win (-inf)."""

    def __init__(self, kernel: int = 3, stride: int = 2):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_pool_padding(int(x.shape[-2]), self.kernel, self.stride)
        left, right = same_pool_padding(int(x.shape[-1]), self.kernel, self.stride)
        x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(x, self.kernel, self.stride)


class SeparableConv(nn.Module):
    """Depthwise 3x3 (no bias) -> pointwise 1x1 (bias) [-> BN].

    The pointwise bias stays even before BN, as in the original, so that
    parameter counts match the published ones.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: bool = True):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=True)
        self.bn = batch_norm(out_channels) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.pointwise(self.depthwise(x)))


class Resample(nn.Module):
    """Bring one feature map to ``out_channels`` and to a level ``steps`` above (down) or below (up)."""

    def __init__(self, in_channels: int, out_channels: int, steps: int):
        super().__init__()
        self.steps = steps
        # 1x1 conv (with bias, as the original) + BN, before any pooling.
        self.project = (
            nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=True), batch_norm(out_channels))
            if in_channels != out_channels
            else nn.Identity()
        )
        self.pool = nn.Sequential(*(MaxPoolSame() for _ in range(max(steps, 0))))

    def forward(self, x: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        x = self.pool(self.project(x))
        if self.steps < 0:
            if size is None:
                raise ValueError("upsampling needs the target size")
            x = F.interpolate(x, size=tuple(int(s) for s in size), mode="nearest")
        return x


def fast_normalized_fusion(
    inputs: Sequence[torch.Tensor], weights: torch.Tensor, eps: float = FUSION_EPS
) -> torch.Tensor:
    """sum_i relu(w_i) x_i / (sum_j relu(w_j) + eps): bounded like softmax, cheaper."""
    w = F.relu(weights)
    w = w / (w.sum() + eps)
    out = inputs[0] * w[0]
    for i in range(1, len(inputs)):
        out = out + inputs[i] * w[i]
    return out


class FusionNode(nn.Module):
    """Resample every input to the node's level, fuse, then SiLU -> separable conv -> BN."""

    def __init__(
        self, node: BiFPNNode, input_levels: Sequence[int], input_channels: Sequence[int], width: int, fusion: str
    ):
        super().__init__()
        self.node = node
        self.resample = nn.ModuleList(
            Resample(c, width, node.level - lvl) for lvl, c in zip(input_levels, input_channels)
        )
        self.fusion = fusion
        if fusion == "fast":
            self.weights = nn.Parameter(torch.ones(len(node.inputs)))
        self.act = nn.SiLU()
        self.conv = SeparableConv(width, width)

    def forward(self, feats: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        xs = [r(feats[i], size) for r, i in zip(self.resample, self.node.inputs)]
        if self.fusion == "fast":
            x = fast_normalized_fusion(xs, self.weights)
        else:
            x = xs[0]
            for y in xs[1:]:
                x = x + y
        return self.conv(self.act(x))


class BiFPNLayer(nn.Module):
    """One layer: every node of ``nodes`` in order; outputs the last node per level."""

    def __init__(self, nodes: Sequence[BiFPNNode], min_level: int, in_channels: Sequence[int], width: int, fusion: str):
        super().__init__()
        self.min_level = min_level
        max_level = min_level + len(in_channels) - 1
        levels = list(range(min_level, max_level + 1))
        channels = list(in_channels)
        self.nodes = nn.ModuleList()
        for node in nodes:
            self.nodes.append(
                FusionNode(node, [levels[i] for i in node.inputs], [channels[i] for i in node.inputs], width, fusion)
            )
            levels.append(node.level)
            channels.append(width)
        self.outputs = bifpn_outputs(tuple(nodes), min_level, max_level)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        # Each level's size is that of the layer input at the level.
        sizes = [f.shape[-2:] for f in feats]
        all_feats = list(feats)
        for node in self.nodes:
            all_feats.append(node(all_feats, sizes[node.node.level - self.min_level]))
        return [all_feats[i] for i in self.outputs]


class BiFPN(nn.Module):
    """Extra levels pooled from the backbone's last one, then ``fpn_layers`` BiFPN layers."""

    def __init__(self, config: EfficientDetConfig, backbone_channels: Sequence[int]):
        super().__init__()
        if len(backbone_channels) != len(config.backbone_levels):
            raise ValueError(f"{len(backbone_channels)} backbone feature maps for levels {config.backbone_levels}")
        w = config.fpn_channels
        # P6 = 1x1 conv + BN + pool of C5; P7 = pool of P6 (no conv: already W channels).
        extra = config.max_level - config.backbone_levels[-1]
        self.extra = nn.ModuleList(Resample(backbone_channels[-1] if i == 0 else w, w, 1) for i in range(extra))
        level_channels = list(backbone_channels) + [w] * extra
        self.layers = nn.ModuleList(
            BiFPNLayer(
                config.nodes, config.min_level, level_channels if i == 0 else [w] * config.num_levels, w, config.fusion
            )
            for i in range(config.fpn_layers)
        )

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        feats = list(feats)
        for resample in self.extra:
            feats.append(resample(feats[-1]))
        for layer in self.layers:
            feats = layer(feats)
        return feats
