"""EfficientDet: EfficientNet features -> BiFPN -> shared class and box heads.

The backbone is the project's EfficientNet feature extractor (no head); its
``feature_info`` says which channels the BiFPN's first layer receives.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .bifpn import BiFPN, SeparableConv, batch_norm
from .efficientdet_config import EfficientDetConfig, class_prior_bias
from .efficientnet import EfficientNetFeatures, init_weights


class HeadNet(nn.Module):
    """``layers`` x (separable conv -> BN -> SiLU), then a separable predictor.

    Convolutions are shared by all levels; BN is per layer and per level,
    since the levels' statistics differ.
    """

    def __init__(self, width: int, layers: int, num_levels: int, outputs: int):
        super().__init__()
        self.convs = nn.ModuleList(SeparableConv(width, width, norm=False) for _ in range(layers))
        self.norms = nn.ModuleList(nn.ModuleList(batch_norm(width) for _ in range(num_levels)) for _ in range(layers))
        self.act = nn.SiLU()
        self.predict = SeparableConv(width, outputs, norm=False)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for level, x in enumerate(feats):
            for conv, norms in zip(self.convs, self.norms):
                x = self.act(norms[level](conv(x)))
            out.append(self.predict(x))
        return out


class EfficientDet(nn.Module):
    """Returns (class outputs, box outputs), one map per level, lowest level first:
    ``num_anchors * num_classes`` and ``num_anchors * 4`` channels."""

    def __init__(self, config: EfficientDetConfig):
        super().__init__()
        self.config = config
        self.strides = tuple(2**level for level in config.backbone_levels)
        self.backbone = EfficientNetFeatures(config.backbone, self.strides)
        self.bifpn = BiFPN(config, self.backbone.channels)
        w, n = config.fpn_channels, config.num_levels
        self.class_net = HeadNet(w, config.head_layers, n, config.num_anchors * config.num_classes)
        self.box_net = HeadNet(w, config.head_layers, n, config.num_anchors * 4)
        self._init_weights()

    def _init_weights(self) -> None:
        # The backbone initialised itself; here only the BiFPN and the heads.
        for part in (self.bifpn, self.class_net, self.box_net):
            init_weights(part)
        for head in (self.class_net, self.box_net):
            # Small predictor weights keep the initial outputs near their bias.
            nn.init.normal_(head.predict.pointwise.weight, std=0.01)
        # Every anchor starts as background with probability 1 - prior, so the
        # rare positives do not swamp the loss in the first steps.
        nn.init.constant_(self.class_net.predict.pointwise.bias, class_prior_bias())

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        feats = self.bifpn(self.backbone(x))
        return self.class_net(feats), self.box_net(feats)
