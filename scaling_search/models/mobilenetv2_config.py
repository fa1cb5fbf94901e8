"""MobileNetV2 as data: the inverted-residual table, its scaling and its closed-form counts.

The baseline is the paper's (Sandler et al. 2018, Table 2), the EfficientNet
paper's Table 3 MobileNetV2 (0.3 G MACs). Width scales every stage's channels
and the stem to multiples of 8 (the EfficientNet rounding); the 1,280-channel
head is scaled only when width > 1 and stays 1,280 below, as in the paper and
torchvision (a narrow network keeps a wide final feature). Depth scales every
stage's repeats, rounding up (EfficientNet's per-stage ceil).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .efficientnet_config import Effective, round_filters, round_repeats
from .family import Counts, check_common


@dataclass(frozen=True)
class InvertedStage:
    """A row of the paper's table: ``repeats`` blocks of expansion ``expand``; only the first strides."""

    expand: int
    out_channels: int
    repeats: int
    stride: int


MOBILENETV2_STAGES: tuple[InvertedStage, ...] = (
    InvertedStage(1, 16, 1, 1),
    InvertedStage(6, 24, 2, 2),
    InvertedStage(6, 32, 3, 2),
    InvertedStage(6, 64, 4, 2),
    InvertedStage(6, 96, 3, 1),
    InvertedStage(6, 160, 3, 2),
    InvertedStage(6, 320, 1, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPS = 1e-5
BN_MOMENTUM = 0.1


@dataclass(frozen=True)
class MobileNetV2Config:
    width: float = 1.0
    depth: float = 1.0
    resolution: int = 224
    dropout: float = 0.2
    drop_path: float = 0.0
    num_classes: int = 1000
    name: str = "mobilenetv2"
    stages: tuple[InvertedStage, ...] = field(default=MOBILENETV2_STAGES, repr=False)

    def __post_init__(self) -> None:
        check_common(self)

    def with_(self, **changes) -> MobileNetV2Config:
        return replace(self, **changes)


@dataclass(frozen=True)
class InvertedBlock:
    """One inverted residual as built: [1x1 expand] -> 3x3 depthwise -> 1x1 project."""

    in_channels: int
    hidden: int
    out_channels: int
    stride: int
    drop_path: float

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels


@dataclass(frozen=True)
class MobileNetV2Network:
    """Concrete channel and block counts after scaling: what makes two configs one network."""

    stem_channels: int
    blocks: tuple[tuple[int, int, int, int], ...]  # (in, hidden, out, stride) per block
    head_channels: int


def head_channels(width: float) -> int:
    return round_filters(HEAD_CHANNELS, max(1.0, width))


def blocks(config: MobileNetV2Config) -> list[InvertedBlock]:
    """Every block in order; stochastic depth grows linearly with the block index."""
    w = config.width
    cin = round_filters(STEM_CHANNELS, w)
    plan = []
    for s in config.stages:
        cout = round_filters(s.out_channels, w)
        for r in range(round_repeats(s.repeats, config.depth)):
            plan.append((cin, int(round(cin * s.expand)), cout, s.stride if r == 0 else 1))
            cin = cout
    total = len(plan)
    return [InvertedBlock(i, h, o, st, config.drop_path * k / total) for k, (i, h, o, st) in enumerate(plan)]


def network(config: MobileNetV2Config) -> MobileNetV2Network:
    return MobileNetV2Network(
        stem_channels=round_filters(STEM_CHANNELS, config.width),
        blocks=tuple((b.in_channels, b.hidden, b.out_channels, b.stride) for b in blocks(config)),
        head_channels=head_channels(config.width),
    )


def _out(size: int, kernel: int, stride: int) -> int:
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


def _count_parts(config: MobileNetV2Config, resolution: int | None = None) -> tuple[int, list[tuple[int, int]]]:
    """Parameters, and (channels, MACs) of each part: stem, every stage, head with classifier."""
    h = _out(config.resolution if resolution is None else resolution, 3, 2)
    c = round_filters(STEM_CHANNELS, config.width)
    params, parts = 27 * c + 2 * c, [(c, 27 * c * h * h)]
    specs = iter(blocks(config))
    for stage in config.stages:
        macs = 0
        for _ in range(round_repeats(stage.repeats, config.depth)):
            b = next(specs)
            if b.hidden != b.in_channels:
                params += b.in_channels * b.hidden + 2 * b.hidden
                macs += b.in_channels * b.hidden * h * h
            h = _out(h, 3, b.stride)
            params += 9 * b.hidden + 2 * b.hidden
            macs += 9 * b.hidden * h * h
            params += b.hidden * b.out_channels + 2 * b.out_channels
            macs += b.hidden * b.out_channels * h * h
            c = b.out_channels
        parts.append((c, macs))
    head = head_channels(config.width)
    params += c * head + 2 * head + head * config.num_classes + config.num_classes
    parts.append((head, c * head * h * h + head * config.num_classes))
    return params, parts


def analytic_counts(config: MobileNetV2Config, resolution: int | None = None) -> Counts:
    """Parameters and conv + linear multiply-adds in closed form (tests hold them to the built model)."""
    params, parts = _count_parts(config, resolution)
    return Counts(params=params, macs=sum(m for _, m in parts))


def effective_multipliers(config: MobileNetV2Config, base: MobileNetV2Config) -> Effective:
    """Real depth (blocks), width (channel ratio of each part, weighted by the baseline's MACs in it), resolution
    and MACs of ``config`` over ``base``."""
    _, parts = _count_parts(config)
    _, ref = _count_parts(base)
    total = sum(m for _, m in ref)
    return Effective(
        depth=len(blocks(config)) / len(blocks(base)),
        width=sum(m * c / rc for (c, _), (rc, m) in zip(parts, ref)) / total,
        resolution=config.resolution / base.resolution,
        macs=sum(m for _, m in parts) / total,
    )
