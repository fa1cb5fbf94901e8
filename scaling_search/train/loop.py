"""One short proxy training: ``TrialConfig -> TrialResult``.

The images stay on the device as uint8 for the whole trial; cropping,
flipping, resizing to the trial's resolution and normalisation run there in
batches (``augment``), so a small model is not starved by a CPU data loader.
On CUDA the model runs in bf16 autocast and channels_last, with cuDNN
autotuning off by default: every trial of a search is a new shape, and
autotuning a new shape costs tens of seconds, more than a short trial.

A trial that diverges (non-finite loss) or runs out of memory raises
``TrialFailed`` with a reason; a search's per-epoch callback may raise
``TrialPruned`` to stop it, and that propagates unchanged.

Fault injection: a real out-of-memory error is hard to cause on purpose, so
``SCALING_SEARCH_INJECT_OOM="STEP[@key=value,...]"`` makes the trainer raise
``torch.OutOfMemoryError`` at optimizer step STEP (from 1, counted over the
whole trial) of every trial whose settings match all the given keys (seed,
width, depth, resolution), e.g. ``"3@seed=1"``. It exists to test how a search
survives the failure; unset, it costs one environment lookup per trial.
"""

from __future__ import annotations

import gc
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np
import torch
from torch import nn

from ..data.sources import Dataset, DataSpec, balanced_subset, load_dataset
from ..errors import UsageError
from ..models import EfficientNetConfig, build
from ..progress import progress_bar
from .augment import channel_stats, crop_flip, to_input
from .devices import device_name, resolve_device
from .recipe import Recipe, Runtime, positive_int

# The held-out subset is drawn with this seed whatever the trial's seed, so
# every trial of a search is scored on the same images.
TEST_SUBSET_SEED = 0
ENV_INJECT_OOM = "SCALING_SEARCH_INJECT_OOM"


@dataclass(frozen=True)
class TrialConfig:
    """A model, a dataset and a short training recipe.

    The defaults are a recipe for very short proxies (a few epochs on a
    subset): SGD with Nesterov momentum at lr 0.1 for batch 128, a cosine
    decay after 0.3 epochs of warmup, label smoothing 0.1, a zero-initialised
    classifier, and batch-norm statistics that follow the recent batches and
    are recomputed before every evaluation. On CIFAR-10 (5,000 images, 2
    epochs, width and depth 0.25 at 32 px) that reaches 0.29-0.34 top-1 over
    seeds; without the BN and classifier changes it stayed near 0.10-0.20.
    """

    model: EfficientNetConfig  # .resolution is the training and evaluation size
    data: DataSpec
    epochs: int = 5
    batch_size: int = 128
    optimizer: str = "sgd"  # sgd (Nesterov momentum) | adamw | rmsprop
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-5  # on conv and linear weights, not on BN or biases
    schedule: str = "cosine"  # cosine | constant | step (x0.1 at 1/2 and 3/4), after warmup
    warmup_epochs: float = 0.3
    label_smoothing: float = 0.1
    seed: int = 0
    train_subset: int | None = None  # first N of a seeded, class-balanced order
    test_subset: int | None = None  # the same, with a fixed seed
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    crop_padding: float = 0.125  # random-crop shift, as a fraction of the stored side (4 px at 32)
    hflip: bool = True
    # BN running-average momentum during the trial. The model's own 0.01 is
    # meant for hundreds of thousands of steps; a proxy of a few hundred steps
    # evaluated with statistics still close to their initial values (top-1 0.10).
    bn_momentum: float | None = 0.1
    # Before each evaluation, recompute BN statistics of the current weights
    # from this many un-augmented training batches (0: keep the running averages).
    bn_recalibration_batches: int = 4
    # Start from zero logits (loss = log(classes)) instead of the random
    # classifier's confident guesses, which cost a short run its first epoch.
    zero_init_classifier: bool = True
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    channels_last: bool = True
    cudnn_benchmark: bool = False
    eval_batch_size: int | None = None  # default: batch_size

    def __post_init__(self) -> None:
        # One place validates a recipe and a runtime: building them is the check.
        self.recipe()
        Runtime(device=self.device, precision=self.precision)
        positive_int("eval_batch_size", self.eval_batch_size, allow_none=True)
        if not 0 <= self.crop_padding < 1:
            raise UsageError(f"crop padding must be a fraction in [0, 1), got {self.crop_padding!r}")
        if not isinstance(self.bn_recalibration_batches, int) or self.bn_recalibration_batches < 0:
            raise UsageError(f"BN recalibration batches must be an integer >= 0, got {self.bn_recalibration_batches!r}")
        if self.bn_momentum is not None and not 0 < self.bn_momentum <= 1:
            raise UsageError(f"batch-norm momentum must be in (0, 1], got {self.bn_momentum!r}")

    def recipe(self) -> Recipe:
        return Recipe(
            **{f.name: getattr(self, f.name) for f in fields(Recipe) if f.name not in ("dropout", "drop_path")},
            dropout=self.model.dropout,
            drop_path=self.model.drop_path,
        )

    @classmethod
    def of(cls, model: EfficientNetConfig, data: DataSpec, recipe: Recipe, runtime: Runtime, seed: int) -> TrialConfig:
        """The trainer's settings from a model, a recipe and a runtime (the recipe's dropout goes to the model)."""
        model = model.with_(dropout=recipe.dropout, drop_path=recipe.drop_path)
        settings = {f.name: getattr(recipe, f.name) for f in fields(Recipe) if f.name not in ("dropout", "drop_path")}
        return cls(
            model=model,
            data=data,
            seed=seed,
            device=runtime.device,
            precision=runtime.precision,
            channels_last=runtime.channels_last,
            **settings,
        )


@dataclass(frozen=True)
class TrainedState:
    """The trained network as scored: weights (on the CPU) and the input
    normalisation (per-channel mean and std of the training images, 0..255)."""

    state_dict: dict[str, torch.Tensor]
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class TrialResult:
    accuracy: float  # top-1 on the held-out split after the last epoch
    epoch_losses: tuple[float, ...]  # mean training loss per epoch
    epoch_accuracies: tuple[float, ...]  # held-out top-1 per epoch
    images_per_second: float  # training throughput (augmentation included, evaluation not)
    wall_seconds: float  # the whole call: data, model, training, evaluation
    params: int
    macs: int  # conv + linear multiply-adds at the trial resolution
    device: str
    epochs: int  # epochs actually run
    train_images: int = 0
    test_images: int = 0
    resolution: int = 0
    device_name: str = ""
    # Only with train_trial(..., keep_state=True); never part of the record.
    state: TrainedState | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict:
        d = asdict(replace(self, state=None))
        del d["state"]
        d["epoch_losses"] = list(self.epoch_losses)
        d["epoch_accuracies"] = list(self.epoch_accuracies)
        return d


class TrialFailed(Exception):
    """The trial ran but produced no trustworthy score; ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class TrialPruned(Exception):
    """Raised by an ``on_epoch`` callback to stop a trial early."""


EpochCallback = Callable[[int, float, float], None]  # (epoch from 0, mean train loss, held-out top-1)


# ------------------------------------------------------------------ helpers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # CPU and every CUDA device: weight init, dropout, drop path


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (from 0)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 0.1 ** sum(progress >= m for m in (0.5, 0.75))  # step


def make_optimizer(model: nn.Module, config: TrialConfig) -> torch.optim.Optimizer:
    # Decay conv and linear weights only: decaying BN scales and biases only hurts short runs.
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    # TensorFlow-style RMSProp as in the EfficientNet paper: decay 0.9, large epsilon.
    return torch.optim.RMSprop(groups, lr=config.lr, alpha=0.9, eps=1e-3, momentum=config.momentum)


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text or "cudnn_status_alloc_failed" in text
    )


def injected_oom_step(config: TrialConfig) -> int | None:
    """The step at which ``SCALING_SEARCH_INJECT_OOM`` fails this trial, if it names it."""
    text = os.environ.get(ENV_INJECT_OOM, "").strip()
    if not text:
        return None
    step, _, where = text.partition("@")
    values = {
        "seed": config.seed,
        "width": config.model.width,
        "depth": config.model.depth,
        "resolution": config.model.resolution,
    }
    try:
        at = int(step)
        wanted = dict(item.split("=", 1) for item in where.split(",")) if where else {}
        matches = all(math.isclose(float(v), values[k.strip()], rel_tol=1e-6) for k, v in wanted.items())
    except (ValueError, KeyError):
        raise UsageError(
            f"{ENV_INJECT_OOM}={text!r}: expected STEP or STEP@key=value,... with keys {', '.join(values)}"
        ) from None
    return at if matches else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches, autocast: bool, device_type: str) -> None:
    """Replace BN running statistics by their exact average over ``batches`` (inputs
    ready for the model), computed with the current weights; dropout and drop
    path stay off, as at evaluation."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
        m.train()
    for x in batches:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
            model(x)
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    model.eval()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    resolution: int,
    mean: torch.Tensor,
    std: torch.Tensor,
    batch_size: int,
    channels_last: bool,
    autocast: bool,
) -> float:
    """Top-1 of ``model`` (eval mode, no augmentation) on uint8 NHWC ``images``."""
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=images.device)
    for start in range(0, images.shape[0], batch_size):
        x = to_input(
            images[start : start + batch_size].permute(0, 3, 1, 2), resolution, mean, std, channels_last=channels_last
        )
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(x)
        correct += (logits.argmax(1) == labels[start : start + batch_size]).sum()
    return correct.item() / max(1, images.shape[0])


# -------------------------------------------------------------------- trial


def train_trial(
    config: TrialConfig,
    *,
    data: Dataset | None = None,
    on_epoch: EpochCallback | None = None,
    progress: bool = False,
    keep_state: bool = False,
) -> TrialResult:
    """Train ``config.model`` on ``config.data`` for ``config.epochs`` and score it.

    ``data`` lets a search load the dataset once for many trials; ``keep_state``
    hands back the scored weights and input normalisation in ``result.state``. Raises
    TrialFailed (diverged, out of memory), UsageError (a config that cannot
    run here), and whatever ``on_epoch`` raises (TrialPruned).
    """
    started = time.perf_counter()
    device = torch.device(resolve_device(config.device))
    dataset = data if data is not None else load_dataset(config.data, progress=progress)
    if config.model.num_classes != dataset.num_classes:
        raise UsageError(
            f"the model has {config.model.num_classes} outputs but the dataset has {dataset.num_classes} classes: "
            f"set num_classes={dataset.num_classes}"
        )
    from ..flops import count

    counted = count(config.model)
    previous_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = config.cudnn_benchmark
    failure = None
    try:
        return _run(config, dataset, device, counted, started, on_epoch, progress, keep_state)
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        failure = (
            f"out of memory on {device} at batch size {config.batch_size} "
            f"({config.model.width:g}x width, {config.model.depth:g}x depth, {config.model.resolution} px): "
            f"try a smaller batch size (--batch-size {max(2, config.batch_size // 2)} with 'train', "
            "proxy.batch_size in a search space)"
        )
    finally:
        torch.backends.cudnn.benchmark = previous_benchmark
    # Outside the except block the traceback, and the tensors its frames hold, are gone.
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    raise TrialFailed(failure)


def _run(
    config: TrialConfig,
    dataset: Dataset,
    device: torch.device,
    counted,
    started: float,
    on_epoch,
    progress: bool,
    keep_state: bool = False,
) -> TrialResult:
    seed_everything(config.seed)
    train_index = balanced_subset(dataset.train_y, config.train_subset, config.seed) if config.train_subset else None
    test_index = balanced_subset(dataset.test_y, config.test_subset, TEST_SUBSET_SEED) if config.test_subset else None

    def upload(x: np.ndarray, y: np.ndarray, index: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
        if index is not None:
            x, y = x[index], y[index]
        return torch.from_numpy(np.ascontiguousarray(x)).to(device), torch.from_numpy(np.ascontiguousarray(y)).to(
            device
        )

    train_x, train_y = upload(dataset.train_x, dataset.train_y, train_index)
    test_x, test_y = upload(dataset.test_x, dataset.test_y, test_index)
    n = train_x.shape[0]
    if n < 2:
        raise UsageError(f"training needs at least 2 images, the training split has {n}")
    if test_x.shape[0] == 0:
        raise UsageError("the held-out split is empty: nothing to score the trial on")
    mean, std = channel_stats(train_x)

    model = build(config.model)
    if config.bn_momentum is not None:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = config.bn_momentum
    classifier = getattr(model, "classifier", None)
    if config.zero_init_classifier and isinstance(classifier, nn.Linear):
        nn.init.zeros_(classifier.weight)
        nn.init.zeros_(classifier.bias)
    channels_last = config.channels_last
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    autocast = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
    optimizer = make_optimizer(model, config)

    batch = min(config.batch_size, n)
    steps = n // batch  # the incomplete last batch is dropped: equal-size steps, no 1-image BN batch
    total = steps * config.epochs
    warmup = round(config.warmup_epochs * steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup, config.schedule))
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    pad = round(config.crop_padding * dataset.image_size)
    resolution = config.model.resolution
    eval_batch = config.eval_batch_size or config.batch_size
    # A host sync per step is free on the CPU; on a GPU check every few steps.
    check_every = 1 if device.type == "cpu" else 20

    oom_at = injected_oom_step(config)
    losses: list[float] = []
    accuracies: list[float] = []
    train_seconds = 0.0
    text = "loss {task.fields[loss]} acc {task.fields[acc]}"
    with progress_bar(progress, "training", total, text=text) as advance:
        for epoch in range(config.epochs):
            model.train()
            epoch_start = time.perf_counter()
            order = torch.randperm(n, device=device, generator=generator)
            loss_sum = torch.zeros((), dtype=torch.float32, device=device)
            reported = 0
            for step in range(steps):
                index = order[step * batch : (step + 1) * batch]
                x = to_input(
                    crop_flip(train_x, index, pad=pad, flip=config.hflip, generator=generator),
                    resolution,
                    mean,
                    std,
                    channels_last=channels_last,
                )
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    loss = criterion(model(x), train_y[index])
                if oom_at == epoch * steps + step + 1:
                    raise torch.OutOfMemoryError(f"injected by {ENV_INJECT_OOM} at step {oom_at}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                loss_sum += loss.detach().float()
                if (step + 1) % check_every == 0 or step + 1 == steps:
                    running = loss_sum.item()
                    if not math.isfinite(running):
                        kind = "NaN" if math.isnan(running) else "inf"
                        raise TrialFailed(
                            f"training loss became {kind} in epoch {epoch + 1} by step {step + 1} (lr {config.lr:g}, "
                            f"{config.optimizer}): the training diverged; lower the learning rate or add warmup"
                        )
                    advance(step + 1 - reported, loss=f"{running / (step + 1):.3f}")
                    reported = step + 1
            _sync(device)
            train_seconds += time.perf_counter() - epoch_start
            epoch_loss = loss_sum.item() / steps
            if config.bn_recalibration_batches:
                # The epoch's first images, un-augmented: no extra random draws, so
                # switching recalibration on or off leaves the training identical.
                picks = order[: config.bn_recalibration_batches * batch].split(batch)
                inputs = (
                    to_input(train_x[p].permute(0, 3, 1, 2), resolution, mean, std, channels_last=channels_last)
                    for p in picks
                )
                recalibrate_bn(model, inputs, autocast, device.type)
            accuracy = evaluate(
                model,
                test_x,
                test_y,
                resolution=resolution,
                mean=mean,
                std=std,
                batch_size=eval_batch,
                channels_last=channels_last,
                autocast=autocast,
            )
            losses.append(epoch_loss)
            accuracies.append(accuracy)
            advance(0, acc=f"{accuracy:.3f}")
            if on_epoch is not None:
                on_epoch(epoch, epoch_loss, accuracy)

    state = None
    if keep_state:
        weights = {
            k: v.detach().to("cpu", memory_format=torch.contiguous_format).clone()
            for k, v in model.state_dict().items()
        }
        state = TrainedState(weights, tuple(mean.tolist()), tuple(std.tolist()))
    return TrialResult(
        accuracy=accuracies[-1],
        epoch_losses=tuple(losses),
        epoch_accuracies=tuple(accuracies),
        images_per_second=steps * batch * len(losses) / max(train_seconds, 1e-9),
        wall_seconds=time.perf_counter() - started,
        params=counted.params,
        macs=counted.macs,
        device=device.type if device.type == "cpu" else str(device),
        epochs=len(losses),
        train_images=n,
        test_images=int(test_x.shape[0]),
        resolution=resolution,
        device_name=device_name(str(device)),
        state=state,
    )
