"""What a proxy training does (``Recipe``) and where it runs (``Runtime``).

The ``proxy`` section of a search space is a ``Recipe`` key for key, and the
``train`` command builds the same object from its flags, so a recipe is
validated here and nowhere else. Pure: no torch import.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import UsageError

OPTIMIZERS = ("sgd", "adamw", "rmsprop")
SCHEDULES = ("cosine", "constant", "step")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
# bf16 autocast pays on CUDA cards of compute capability 8.0 (Ampere) and newer; older cards (T4, the
# RTX 20 series) have no fast bf16 convolutions and run fp16 with loss scaling instead.
BF16_CAPABILITY = (8, 0)
MEMORY_FORMATS = ("auto", "channels_last", "nchw")
# channels_last on the CPU: benchmarks/proxy_throughput.py, EfficientNet w=0.25 d=0.25 (the
# CPU preset's baseline) at 32 px, batch 64, on a 2-core AMD EPYC (torch 2.13 CPU, 1 thread,
# shared and under load): the trainer ran at 2,024 img/s in channels_last against 1,222 in
# NCHW (best of 5 interleaved rounds; channels_last ahead 1.57x-2.06x in every round). The bare
# train step of B0 at 32 px and of w=d=0.5 at 64 px was 1.4x-2x faster in channels_last as well.
CPU_CHANNELS_LAST = True
_FLOAT32_MAX = 3.4028234663852886e38  # the optimizer converts the lr to the weights' float32


def invalid(key: str, message: str) -> UsageError:
    """A bad setting; ``key`` names the field, so a search space can point at proxy.KEY."""
    error = UsageError(message)
    error.key = key
    return error


def positive_int(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise invalid(name, f"{name.replace('_', ' ')} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class Recipe:
    """A short proxy training.

    The defaults suit very short proxies (a few epochs on a subset): SGD with
    Nesterov momentum at lr 0.1 for batch 128, a cosine decay after 0.3
    epochs of warmup, label smoothing 0.1, no dropout or drop path. On
    CIFAR-10 (5,000 images, 2 epochs, width and depth 0.25 at 32 px) that
    reached 0.29-0.34 top-1 (measured with dropout and drop path 0.2).
    """

    epochs: int = 5
    batch_size: int = 128
    optimizer: str = "sgd"  # sgd (Nesterov momentum) | adamw | rmsprop
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-5  # on conv and linear weights, not on BN or biases
    schedule: str = "cosine"  # cosine | constant | step (x0.1 at 1/2 and 3/4), after warmup
    warmup_epochs: float = 0.3
    label_smoothing: float = 0.1
    # Off by default: regularisation that pays off over a long schedule only slows a few-epoch proxy.
    dropout: float = 0.0  # before the classifier
    drop_path: float = 0.0  # stochastic depth of the last block
    train_subset: int | None = None  # first N of a seeded, class-balanced order
    test_subset: int | None = None  # the same, with a fixed seed
    # Every residual block starts as the identity (its last BN scale at zero; Goyal et al. 2017).
    # Off here for the record of earlier runs; the shipped spaces turn it on: without it a
    # few-epoch proxy cannot train deep stacks and ranks depth below what it is worth
    # (benchmarks/RESULTS.md, "Depth-fair initialisation").
    zero_init_residual: bool = False

    def __post_init__(self) -> None:
        positive_int("epochs", self.epochs)
        positive_int("batch_size", self.batch_size)
        positive_int("train_subset", self.train_subset, allow_none=True)
        positive_int("test_subset", self.test_subset, allow_none=True)
        if not isinstance(self.zero_init_residual, bool):
            raise invalid(
                "zero_init_residual", f"zero_init_residual must be true or false, got {self.zero_init_residual!r}"
            )
        if self.batch_size < 2:
            raise invalid(
                "batch_size", "batch size must be at least 2 (batch norm needs more than one image per batch)"
            )
        if self.optimizer not in OPTIMIZERS:
            raise invalid("optimizer", f"unknown optimizer {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise invalid("schedule", f"unknown schedule {self.schedule!r}: choose one of {', '.join(SCHEDULES)}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and 0 < self.lr <= _FLOAT32_MAX):
            raise invalid(
                "lr", f"learning rate must be a positive number up to {_FLOAT32_MAX:.3g} (float32), got {self.lr!r}"
            )
        if not 0 <= self.momentum < 1:
            raise invalid("momentum", f"momentum must be in [0, 1), got {self.momentum!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise invalid("weight_decay", f"weight decay must be >= 0, got {self.weight_decay!r}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise invalid(
                "warmup_epochs",
                f"warmup epochs must be between 0 and the {self.epochs} epochs, got {self.warmup_epochs!r}",
            )
        if not 0 <= self.label_smoothing < 1:
            raise invalid("label_smoothing", f"label smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if not (0 <= self.dropout < 1 and 0 <= self.drop_path < 1):
            raise invalid(
                "dropout", f"dropout and drop_path must be in [0, 1), got {self.dropout!r} and {self.drop_path!r}"
            )


@dataclass(frozen=True)
class Runtime:
    """Where and how fast: none of it changes which network a trial trains or on what.

    Precision is the one setting that touches the numerics (bf16 and fp16 round the
    activations), yet it lives here: it exists for speed and is chosen per card
    (``auto``: ``resolve_precision``). A search space that names one other than
    ``auto`` hashes it into its fingerprint, so a study never mixes precisions by
    request, and every run names the precision it ran in.
    """

    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto (resolve_precision) | bf16 | fp16 (with loss scaling) | fp32
    memory_format: str = "auto"  # auto (measured per device: see uses_channels_last) | channels_last | nchw
    jobs: int = 1
    # cuDNN autotuning. Off: every trial of a search is a new set of shapes, and
    # autotuning them costs 20-50 s, more than it saves in a 10-30 s trial.
    cudnn_benchmark: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UsageError(f"unknown precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.memory_format not in MEMORY_FORMATS:
            raise UsageError(f"unknown memory format {self.memory_format!r}: choose one of {', '.join(MEMORY_FORMATS)}")
        positive_int("jobs", self.jobs)
        if not isinstance(self.cudnn_benchmark, bool):
            raise UsageError(f"cudnn_benchmark must be true or false, got {self.cudnn_benchmark!r}")

    def uses_channels_last(self, device_type: str) -> bool:
        """Whether the model and its inputs run in channels_last on a device of this type ('cuda', 'cpu', 'mps')."""
        if self.memory_format != "auto":
            return self.memory_format == "channels_last"
        # CUDA: NCHW. The project's EfficientNet-B0 at 64 px, batch 512, bf16 autocast, on one
        # NVIDIA H200 (torch 2.11.0+cu130) trained at 12,038 img/s in NCHW against 8,070 in
        # channels_last (cudnn.benchmark off; 11,473 and 6,860 with it on).
        # CPU: CPU_CHANNELS_LAST, measured with benchmarks/proxy_throughput.py.
        # MPS: not measured; PyTorch's default layout.
        return device_type == "cpu" and CPU_CHANNELS_LAST

    def precision_on(self, device_type: str, capability: tuple[int, int] | None = None) -> str:
        """The precision a trial runs in on a device of this type (and CUDA compute capability)."""
        return resolve_precision(self.precision, device_type, capability)


def resolve_precision(asked: str, device_type: str, capability: tuple[int, int] | None = None) -> str:
    """``auto``: bf16 on CUDA cards of compute capability 8.0 and newer (or unknown), fp16 with loss
    scaling on older ones, fp32 on the CPU and MPS (bf16 autocast ran at 0.49-0.60x of fp32 on a
    2-core x86 CPU); anything else as asked."""
    if asked != "auto":
        return asked
    if device_type != "cuda":
        return "fp32"
    return "bf16" if capability is None or tuple(capability) >= BF16_CAPABILITY else "fp16"
