"""ResNet as data: the stage tables of ResNet-18, -34 and -50, their scaling and closed-form counts.

He et al. 2016, Table 1, with the stride of a bottleneck stage on its 3x3
convolution (the "v1.5" most frameworks build). Width scales every stage's
channels and the 64-channel stem to multiples of 8 (EfficientNet's rounding,
so width 1 is the published network); depth scales the blocks of every stage,
rounding up.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .efficientnet_config import Effective, round_filters, round_repeats
from .family import Counts, check_common

STEM_CHANNELS = 64
STAGE_CHANNELS = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)
ARCHS: dict[str, tuple[str, tuple[int, ...]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}
EXPANSION = {"basic": 1, "bottleneck": 4}
BN_EPS = 1e-5


@dataclass(frozen=True)
class ResNetConfig:
    arch: str = "resnet50"
    width: float = 1.0
    depth: float = 1.0
    resolution: int = 224
    dropout: float = 0.0  # before the classifier; the published networks have none
    drop_path: float = 0.0
    num_classes: int = 1000
    name: str = "resnet50"

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            from ..errors import UsageError

            raise UsageError(f"unknown ResNet {self.arch!r}: choose one of {', '.join(ARCHS)}")
        check_common(self)

    def with_(self, **changes) -> ResNetConfig:
        return replace(self, **changes)


@dataclass(frozen=True)
class ResidualBlock:
    kind: str  # basic | bottleneck
    in_channels: int
    planes: int  # the 3x3 convolutions' width
    out_channels: int
    stride: int
    drop_path: float

    @property
    def projection(self) -> bool:
        """A 1x1 strided projection on the shortcut (shape changes)."""
        return self.stride != 1 or self.in_channels != self.out_channels


def stem_channels(config: ResNetConfig) -> int:
    return round_filters(STEM_CHANNELS, config.width)


def blocks(config: ResNetConfig) -> list[list[ResidualBlock]]:
    """Blocks per stage; stochastic depth grows linearly with the global block index."""
    kind, repeats = ARCHS[config.arch]
    expansion = EXPANSION[kind]
    cin = stem_channels(config)
    plan: list[list[tuple[int, int, int, int]]] = []
    for channels, stride, n in zip(STAGE_CHANNELS, STAGE_STRIDES, repeats):
        planes = round_filters(channels, config.width)
        stage = []
        for r in range(round_repeats(n, config.depth)):
            stage.append((cin, planes, planes * expansion, stride if r == 0 else 1))
            cin = planes * expansion
        plan.append(stage)
    total = sum(len(s) for s in plan)
    out, k = [], 0
    for stage in plan:
        row = []
        for cin, planes, cout, stride in stage:
            row.append(ResidualBlock(kind, cin, planes, cout, stride, config.drop_path * k / total))
            k += 1
        out.append(row)
    return out


def network(config: ResNetConfig) -> tuple:
    """Concrete channels and blocks: equal for two configs that build the same network."""
    return (
        config.arch,
        stem_channels(config),
        tuple(tuple((b.in_channels, b.planes, b.out_channels, b.stride) for b in s) for s in blocks(config)),
    )


def num_blocks(config: ResNetConfig) -> int:
    return sum(len(s) for s in blocks(config))


def _out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _bn(c: int) -> int:
    return 2 * c


def _count_parts(config: ResNetConfig, resolution: int | None = None) -> tuple[int, list[tuple[int, int]]]:
    """Parameters, and (channels, MACs) of each part: the stem, every stage (by its 3x3 width), the classifier."""
    h = _out(config.resolution if resolution is None else resolution, 7, 2, 3)
    c = stem_channels(config)
    params, parts = 3 * 49 * c + _bn(c), [(c, 3 * 49 * c * h * h)]
    h = _out(h, 3, 2, 1)  # max pooling
    for stage in blocks(config):
        macs = 0
        for b in stage:
            ho = _out(h, 3, b.stride, 1)
            if b.kind == "basic":
                params += 9 * b.in_channels * b.planes + _bn(b.planes) + 9 * b.planes * b.planes + _bn(b.planes)
                macs += 9 * b.in_channels * b.planes * ho * ho + 9 * b.planes * b.planes * ho * ho
            else:
                params += b.in_channels * b.planes + _bn(b.planes)
                macs += b.in_channels * b.planes * h * h
                params += 9 * b.planes * b.planes + _bn(b.planes)
                macs += 9 * b.planes * b.planes * ho * ho
                params += b.planes * b.out_channels + _bn(b.out_channels)
                macs += b.planes * b.out_channels * ho * ho
            if b.projection:
                params += b.in_channels * b.out_channels + _bn(b.out_channels)
                macs += b.in_channels * b.out_channels * ho * ho
            h = ho
            c = b.out_channels
        parts.append((stage[0].planes, macs))
    params += c * config.num_classes + config.num_classes
    parts.append((c, c * config.num_classes))
    return params, parts


def analytic_counts(config: ResNetConfig, resolution: int | None = None) -> Counts:
    """Parameters and conv + linear multiply-adds in closed form (tests hold them to the built model)."""
    params, parts = _count_parts(config, resolution)
    return Counts(params=params, macs=sum(m for _, m in parts))


def effective_multipliers(config: ResNetConfig, base: ResNetConfig) -> Effective:
    """Real depth (blocks), width (channel ratio of each part, weighted by the baseline's MACs in it), resolution
    and MACs of ``config`` over ``base``."""
    _, parts = _count_parts(config)
    _, ref = _count_parts(base)
    total = sum(m for _, m in ref)
    return Effective(
        depth=num_blocks(config) / num_blocks(base),
        width=sum(m * c / rc for (c, _), (rc, m) in zip(parts, ref)) / total,
        resolution=config.resolution / base.resolution,
        macs=sum(m for _, m in parts) / total,
    )
