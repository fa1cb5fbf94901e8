"""EfficientNet as data: the B0 stage table, the official coefficient table,
and the pure scaling step that turns (width, depth) into concrete stages.

No torch here: the candidate search asks for params and MACs of thousands of
rounded networks, so both are also computed in closed form from the scaled
stages (``analytic_counts``); tests hold them equal to the built model's
parameters and to the meta-device FLOP counter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from ..errors import UsageError
from ..scaling import Coefficients, extrapolate


@dataclass(frozen=True)
class StageSpec:
    """One row of the baseline table: a stage of identical MBConv blocks."""

    kernel: int
    stride: int
    expand: int
    in_channels: int
    out_channels: int
    repeats: int


# EfficientNet-B0 (paper Table 1). Only the first block of a stage strides.
B0_STAGES: tuple[StageSpec, ...] = (
    StageSpec(kernel=3, stride=1, expand=1, in_channels=32, out_channels=16, repeats=1),
    StageSpec(kernel=3, stride=2, expand=6, in_channels=16, out_channels=24, repeats=2),
    StageSpec(kernel=5, stride=2, expand=6, in_channels=24, out_channels=40, repeats=2),
    StageSpec(kernel=3, stride=2, expand=6, in_channels=40, out_channels=80, repeats=3),
    StageSpec(kernel=5, stride=1, expand=6, in_channels=80, out_channels=112, repeats=3),
    StageSpec(kernel=5, stride=2, expand=6, in_channels=112, out_channels=192, repeats=4),
    StageSpec(kernel=3, stride=1, expand=6, in_channels=192, out_channels=320, repeats=1),
)
B0_STEM_CHANNELS = 32
B0_HEAD_CHANNELS = 1280
SE_RATIO = 0.25
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # PyTorch convention; TensorFlow's 0.99


@dataclass(frozen=True)
class OfficialEntry:
    width: float
    depth: float
    resolution: int
    dropout: float


# The official coefficient table (the one place it lives in the project).
OFFICIAL: dict[str, OfficialEntry] = {
    "b0": OfficialEntry(1.0, 1.0, 224, 0.2),
    "b1": OfficialEntry(1.0, 1.1, 240, 0.2),
    "b2": OfficialEntry(1.1, 1.2, 260, 0.3),
    "b3": OfficialEntry(1.2, 1.4, 300, 0.3),
    "b4": OfficialEntry(1.4, 1.8, 380, 0.4),
    "b5": OfficialEntry(1.6, 2.2, 456, 0.4),
    "b6": OfficialEntry(1.8, 2.6, 528, 0.5),
    "b7": OfficialEntry(2.0, 3.1, 600, 0.5),
    "b8": OfficialEntry(2.2, 3.6, 672, 0.5),
    "l2": OfficialEntry(4.3, 5.3, 800, 0.5),
}


@dataclass(frozen=True)
class EfficientNetConfig:
    """Everything that defines one network; training settings live elsewhere."""

    width: float = 1.0
    depth: float = 1.0
    resolution: int = 224  # nominal input size; the layers accept any size
    dropout: float = 0.2
    drop_path: float = 0.2
    num_classes: int = 1000
    name: str = "efficientnet"
    stages: tuple[StageSpec, ...] = field(default=B0_STAGES, repr=False)
    stem_channels: int = B0_STEM_CHANNELS
    head_channels: int = B0_HEAD_CHANNELS
    divisor: int = 8

    def __post_init__(self) -> None:
        for key in ("width", "depth"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise UsageError(f"{key} must be a positive number, got {value!r}")
        if not isinstance(self.resolution, int) or isinstance(self.resolution, bool) or self.resolution <= 0:
            raise UsageError(f"resolution must be a positive integer number of pixels, got {self.resolution!r}")
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise UsageError(f"num_classes must be a positive integer, got {self.num_classes!r}")
        for key in ("dropout", "drop_path"):
            value = getattr(self, key)
            if not 0.0 <= value < 1.0:
                raise UsageError(f"{key} must be in [0, 1), got {value!r}")

    def with_(self, **changes) -> EfficientNetConfig:
        return replace(self, **changes)


def official_config(variant: str, num_classes: int = 1000) -> EfficientNetConfig:
    """The published configuration of ``efficientnet-<variant>`` (b0..b8, l2)."""
    entry = OFFICIAL[variant]
    return EfficientNetConfig(
        width=entry.width,
        depth=entry.depth,
        resolution=entry.resolution,
        dropout=entry.dropout,
        num_classes=num_classes,
        name=f"efficientnet-{variant}",
    )


def compound_config(
    coeffs: Coefficients,
    phi: float,
    base: EfficientNetConfig | None = None,
    multiple: int = 8,
) -> EfficientNetConfig:
    """The baseline scaled by alpha^phi, beta^phi and gamma^phi (resolution to ``multiple``).

    Lives beside the config (not in ``extrapolate``) because detector configs
    take their backbone from it, and models must not import the table layer.
    """
    base = base or EfficientNetConfig()
    dims = extrapolate(coeffs, phi, base.resolution, multiple)
    return base.with_(
        width=base.width * dims.width,
        depth=base.depth * dims.depth,
        resolution=dims.resolution,
        dropout=dims.dropout,
        name=f"compound-phi{phi:g}",
    )


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by ``width``: nearest multiple of ``divisor``, at
    least ``divisor``, plus one more ``divisor`` if rounding lost over 10%."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    """Scale a stage's block count by ``depth``, rounding up (B1: 16 -> 23 blocks)."""
    # The tiny epsilon keeps 1.1 * 10 (= 11.000000000000002 in floats) at 11.
    return max(1, int(math.ceil(repeats * depth - 1e-9)))


@dataclass(frozen=True)
class ScaledNetwork:
    """Concrete channel and block counts after width and depth scaling."""

    stem_channels: int
    stages: tuple[StageSpec, ...]
    head_channels: int

    @property
    def num_blocks(self) -> int:
        return sum(s.repeats for s in self.stages)


def scale_network(config: EfficientNetConfig) -> ScaledNetwork:
    """Apply width (round_filters) and depth (ceil per stage) to the stage table."""
    w, d = config.width, config.depth
    stages = tuple(
        replace(
            s,
            in_channels=round_filters(s.in_channels, w, config.divisor),
            out_channels=round_filters(s.out_channels, w, config.divisor),
            repeats=round_repeats(s.repeats, d),
        )
        for s in config.stages
    )
    return ScaledNetwork(
        stem_channels=round_filters(config.stem_channels, w, config.divisor),
        stages=stages,
        head_channels=round_filters(config.head_channels, w, config.divisor),
    )


def se_channels(block_in: int) -> int:
    """Squeeze width from the block input (not the expanded width)."""
    return max(1, int(block_in * SE_RATIO))


@dataclass(frozen=True)
class BlockSpec:
    """One MBConv block as built."""

    in_channels: int
    out_channels: int
    expanded: int
    kernel: int
    stride: int
    drop_path: float

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels


def block_specs(config: EfficientNetConfig, net: ScaledNetwork | None = None) -> list[list[BlockSpec]]:
    """Blocks per stage; stochastic depth grows linearly with the global block index."""
    net = net or scale_network(config)
    total = net.num_blocks
    index = 0
    stages = []
    for s in net.stages:
        blocks = []
        for r in range(s.repeats):
            cin = s.in_channels if r == 0 else s.out_channels
            blocks.append(
                BlockSpec(
                    in_channels=cin,
                    out_channels=s.out_channels,
                    expanded=cin * s.expand,
                    kernel=s.kernel,
                    stride=s.stride if r == 0 else 1,
                    drop_path=config.drop_path * index / total,
                )
            )
            index += 1
        stages.append(blocks)
    return stages


def _conv_out(size: int, kernel: int, stride: int) -> int:
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


@dataclass(frozen=True)
class Counts:
    params: int
    macs: int


def analytic_counts(config: EfficientNetConfig, resolution: int | None = None) -> Counts:
    """Trainable parameters and conv + linear multiply-adds, in closed form."""
    params, parts = _counts_by_part(config, resolution)
    return Counts(params=params, macs=sum(parts))


def _counts_by_part(config: EfficientNetConfig, resolution: int | None = None) -> tuple[int, list[int]]:
    """Parameters, and multiply-adds of the stem, of each stage and of the head (classifier included)."""
    res = config.resolution if resolution is None else resolution
    net = scale_network(config)
    h = _conv_out(res, 3, 2)
    c = net.stem_channels
    params = 3 * 9 * c + 2 * c
    parts = [3 * 9 * c * h * h]
    for stage in block_specs(config, net):
        macs = 0
        for b in stage:
            e, sq = b.expanded, se_channels(b.in_channels)
            if e != b.in_channels:
                params += b.in_channels * e + 2 * e
                macs += b.in_channels * e * h * h
            h = _conv_out(h, b.kernel, b.stride)
            params += e * b.kernel**2 + 2 * e
            macs += e * b.kernel**2 * h * h
            params += (e * sq + sq) + (sq * e + e)
            macs += 2 * e * sq
            params += e * b.out_channels + 2 * b.out_channels
            macs += e * b.out_channels * h * h
            c = b.out_channels
        parts.append(macs)
    head = net.head_channels
    params += c * head + 2 * head + head * config.num_classes + config.num_classes
    parts.append(c * head * h * h + head * config.num_classes)
    return params, parts


@dataclass(frozen=True)
class Effective:
    """What a scaled network really multiplies over its baseline, after rounding.

    ``depth``: blocks over the baseline's blocks. ``width``: the channel ratio of each
    part (stem, each stage's output channels, head), averaged with the baseline's MACs
    in that part as weights (the layers where the baseline spends its compute count most).
    ``resolution``: input side over the baseline's. ``macs``: multiply-adds over the baseline's.
    """

    depth: float
    width: float
    resolution: float
    macs: float


def effective_multipliers(config: EfficientNetConfig, base: EfficientNetConfig) -> Effective:
    """The real depth, width, resolution and MACs multipliers of ``config`` over ``base`` (closed form)."""
    net, ref = scale_network(config), scale_network(base)
    _, weights = _counts_by_part(base)
    channels = [
        (net.stem_channels, ref.stem_channels),
        *((s.out_channels, r.out_channels) for s, r in zip(net.stages, ref.stages)),
        (net.head_channels, ref.head_channels),
    ]
    width = sum(w * a / b for w, (a, b) in zip(weights, channels)) / sum(weights)
    return Effective(
        depth=net.num_blocks / ref.num_blocks,
        width=width,
        resolution=config.resolution / base.resolution,
        macs=analytic_counts(config).macs / sum(weights),
    )


def feature_strides(config: EfficientNetConfig) -> list[tuple[int, int, int]]:
    """(stage index, stride, channels) of the last stage at each output stride.

    These are the detector's C-levels: the output of the stage just before each
    stride-2 stage, and of the last stage (before the head conv).
    """
    net = scale_network(config)
    out = []
    stride = 2  # the stem
    for i, s in enumerate(net.stages):
        stride *= s.stride
        nxt = net.stages[i + 1] if i + 1 < len(net.stages) else None
        if nxt is None or nxt.stride == 2:
            out.append((i, stride, s.out_channels))
    return out
