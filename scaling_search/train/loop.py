"""One short proxy training: ``TrialSpec`` x ``Runtime`` -> ``TrialResult``.

A ``TrialSpec`` is what a trial means (network, data, ``Recipe``, seed); a
``Runtime`` is where and how fast it runs, and never changes the meaning.

The images go to the device as uint8 once per process (``device_data``) and
stay there for every trial; each trial gathers its subset there, and
cropping, flipping, resizing to the trial's resolution and normalisation run
on the device in batches (``augment``), so a small model is not starved by a
CPU data loader. The model runs in the precision ``Runtime.precision`` resolves
(``auto``: bf16 autocast on CUDA cards of compute capability 8.0 and newer, fp16
autocast with loss scaling on older ones, fp32 on the CPU), in the memory
format ``Runtime.uses_channels_last`` picks, with cuDNN autotuning off by
default (``Runtime.cudnn_benchmark``).

Not done: capturing the train step in a CUDA graph. It needs a CUDA device to
test, and no CPU run can show that the captured step trains as the eager one.

A trial that diverges (non-finite loss) or runs out of memory raises
``TrialFailed`` with a reason; a search's per-epoch callback may raise
``TrialPruned`` to stop it, and that propagates unchanged.

Fault injection: a real out-of-memory error is hard to cause on purpose, so
``SCALING_SEARCH_INJECT_OOM="STEP[@key=value,...]"`` makes the trainer raise
``torch.OutOfMemoryError`` at optimizer step STEP (from 1, counted over the
whole trial) of every trial whose settings match all the given keys (seed,
width, depth, resolution), e.g. ``"3@seed=1"``. It exists to test how a search
survives the failure; unset, it costs one environment lookup per trial.
``SCALING_SEARCH_INJECT_DEVICE_ERROR`` does the same with a CUDA error (``faults.py``).

An out-of-memory is the candidate's failure only when the trial has the device
to itself (``Runtime.jobs`` 1); beside other jobs, and for any error of the
device itself, ``DeviceFault`` is raised instead and nothing is concluded about
the candidate (``faults.py``).
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.sources import Dataset, DataSpec, balanced_subset, load_dataset
from ..errors import UsageError
from ..models import build
from ..models.residual import zero_init_residual
from ..progress import progress_bar
from .augment import channel_stats, crop_flip, to_input
from .devices import AMP_DTYPES, device_name, precision_for, resolve_device
from .faults import ENV_INJECT_DEVICE_ERROR, DeviceFault, device_error, first_line, is_device_error
from .recipe import Recipe, Runtime

# The held-out subset is drawn with this seed whatever the trial's seed, so
# every trial of a search is scored on the same images.
TEST_SUBSET_SEED = 0
ENV_INJECT_OOM = "SCALING_SEARCH_INJECT_OOM"

# Fixed parts of the proxy recipe. On CIFAR-10 (5,000 images, 2 epochs, width
# and depth 0.25 at 32 px) the recipe reaches 0.29-0.34 top-1 over seeds;
# without the BN and classifier changes below it stayed near 0.10-0.20.
CROP_PADDING = 0.125  # random-crop shift, as a fraction of the stored side (4 px at 32); flips always on
# BN running-average momentum during the trial. The model's own 0.01 is meant
# for hundreds of thousands of steps; a proxy of a few hundred steps evaluated
# with statistics still close to their initial values (top-1 0.10).
BN_MOMENTUM = 0.1
# Before each evaluation, BN statistics of the current weights are recomputed
# from this many un-augmented training batches.
BN_RECALIBRATION_BATCHES = 4
# The classifier starts at zero (loss = log(classes)) instead of the random
# classifier's confident guesses, which cost a short run its first epoch.


@dataclass(frozen=True)
class TrialSpec:
    """What one trial means: a network, the data, a recipe and a seed.

    The recipe owns dropout and drop path; ``model`` is stored with the
    recipe's values where its family has them (a user's function keeps its
    own), so it is the network as trained (and as saved).
    """

    model: Any  # a scalable family's config; .resolution is the training and evaluation size
    data: DataSpec
    recipe: Recipe = Recipe()
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise UsageError(f"seed must be an integer, got {self.seed!r}")
        own = {f.name for f in dataclasses.fields(self.model)}
        recipe = {k: getattr(self.recipe, k) for k in ("dropout", "drop_path") if k in own}
        object.__setattr__(self, "model", self.model.with_(**recipe))  # frozen: normalised once, here


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
    memory_format: str = ""  # the layout the model ran in: nchw | channels_last
    precision: str = ""  # what the model ran in: bf16 | fp16 | fp32
    loss_scale: float | None = None  # fp16: the loss scale after the last step; None without loss scaling
    # Seconds per phase: data (load, upload, subset, statistics), model (count, build,
    # optimizer), train (the steps), recalibrate (BN), evaluate, state (keep_state copy).
    timings: dict[str, float] = field(default_factory=dict, compare=False)
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


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    # Decay conv and linear weights only: decaying BN scales and biases only hurts short runs.
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.momentum > 0)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr)
    # TensorFlow-style RMSProp as in the EfficientNet paper: decay 0.9, large epsilon.
    return torch.optim.RMSprop(groups, lr=recipe.lr, alpha=0.9, eps=1e-3, momentum=recipe.momentum)


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text or "cudnn_status_alloc_failed" in text
    )


def injected_oom_step(spec: TrialSpec) -> int | None:
    """The step at which ``SCALING_SEARCH_INJECT_OOM`` fails this trial, if it names it."""
    return injected_step(ENV_INJECT_OOM, spec)


def injected_step(variable: str, spec: TrialSpec) -> int | None:
    """The step at which the fault switch ``variable`` fails this trial, if it names it."""
    text = os.environ.get(variable, "").strip()
    if not text:
        return None
    step, _, where = text.partition("@")
    values = {
        "seed": spec.seed,
        "width": spec.model.width,
        "depth": spec.model.depth,
        "resolution": spec.model.resolution,
    }
    try:
        at = int(step)
        wanted = dict(item.split("=", 1) for item in where.split(",")) if where else {}
        matches = all(math.isclose(float(v), values[k.strip()], rel_tol=1e-6) for k, v in wanted.items())
    except (ValueError, KeyError):
        raise UsageError(
            f"{variable}={text!r}: expected STEP or STEP@key=value,... with keys {', '.join(values)}"
        ) from None
    return at if matches else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def _phase(timings: dict[str, float], name: str, device: torch.device) -> Iterator[None]:
    """Add the wall time of the block (device work included) to ``timings[name]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        _sync(device)
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


# ------------------------------------------------------------ device data


@dataclass(frozen=True)
class DeviceData:
    """A dataset's images (uint8 NHWC) and labels (int64) on one device."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


class UploadCache:
    """Each dataset's tensors go to a device once per process and serve every trial there.

    At most one dataset per device is held, and only while the dataset itself
    is alive (a weak reference), so a finished search frees the device memory.
    ``uploads`` counts the uploads made, for tests and logs.
    """

    def __init__(self) -> None:
        self._held: dict[str, tuple[weakref.ref, DeviceData]] = {}
        self._lock = threading.Lock()  # trials of one process may run in threads
        self.uploads = 0

    def get(self, dataset: Dataset, device: torch.device) -> DeviceData:
        key = str(device)
        with self._lock:
            held = self._held.get(key)
            if held is not None and held[0]() is dataset:
                return held[1]
            self._held.pop(key, None)  # the previous dataset's tensors go before the new ones arrive

            def tensor(a: np.ndarray) -> torch.Tensor:
                return torch.from_numpy(np.ascontiguousarray(a)).to(device)

            data = DeviceData(*(tensor(a) for a in (dataset.train_x, dataset.train_y, dataset.test_x, dataset.test_y)))
            self._held[key] = (weakref.ref(dataset, lambda _, key=key: self._forget(key)), data)
            self.uploads += 1
            return data

    def __len__(self) -> int:
        """The datasets held now."""
        return len(self._held)

    def _forget(self, key: str) -> None:
        held = self._held.get(key)
        if held is not None and held[0]() is None:
            self._held.pop(key, None)


UPLOADS = UploadCache()


@torch.no_grad()
def amp(device_type: str, autocast) -> torch.autocast:
    """Autocast to ``autocast``: a dtype (bf16, fp16), True for bf16, False or None for none (fp32)."""
    dtype = torch.bfloat16 if autocast is True else (autocast or None)
    return torch.autocast(device_type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def recalibrate_bn(model: nn.Module, batches, autocast, device_type: str) -> None:
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
        with amp(device_type, autocast):
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
    autocast,
) -> float:
    """Top-1 of ``model`` (eval mode, no augmentation) on uint8 NHWC ``images``."""
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=images.device)
    for start in range(0, images.shape[0], batch_size):
        x = to_input(
            images[start : start + batch_size].permute(0, 3, 1, 2), resolution, mean, std, channels_last=channels_last
        )
        with amp(images.device.type, autocast):
            logits = model(x)
        correct += (logits.argmax(1) == labels[start : start + batch_size]).sum()
    return correct.item() / max(1, images.shape[0])


# -------------------------------------------------------------------- trial


def prepared_model(config: Any, recipe: Recipe) -> nn.Module:
    """The network as a trial starts it: built, with the proxy's BN momentum, the
    recipe's residual initialisation and a zero classifier."""
    model = build(config)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = BN_MOMENTUM
    if recipe.zero_init_residual:
        zero_init_residual(model)
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, nn.Linear):
        nn.init.zeros_(classifier.weight)
        nn.init.zeros_(classifier.bias)
    return model


def train_trial(
    spec: TrialSpec,
    runtime: Runtime | None = None,
    *,
    dataset: Dataset | None = None,
    on_epoch: EpochCallback | None = None,
    progress: bool = False,
    keep_state: bool = False,
) -> TrialResult:
    """Train ``spec.model`` on ``spec.data`` with ``spec.recipe`` and score it.

    ``runtime`` defaults to ``Runtime()``. ``dataset`` is ``spec.data`` already
    loaded, so that a search loads it once for many trials (and uploads it once
    per device); ``keep_state`` hands back the scored weights and input
    normalisation in ``result.state``. Raises
    TrialFailed (diverged, out of memory alone), DeviceFault (a device error, or an
    out-of-memory beside other jobs), UsageError (a spec that cannot run
    here), and whatever ``on_epoch`` raises (TrialPruned).
    """
    started = time.perf_counter()
    runtime = runtime or Runtime()
    device = torch.device(resolve_device(runtime.device))
    timings: dict[str, float] = {}
    with _phase(timings, "data", device):
        dataset = dataset if dataset is not None else load_dataset(spec.data, progress=progress)
    if spec.model.num_classes != dataset.num_classes:
        raise UsageError(
            f"the model has {spec.model.num_classes} outputs but the dataset has {dataset.num_classes} classes: "
            f"set num_classes={dataset.num_classes}"
        )
    previous_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = runtime.cudnn_benchmark
    failure = fault = None
    try:
        return _run(spec, runtime, dataset, device, started, timings, on_epoch, progress, keep_state)
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        if is_out_of_memory(exc):
            model, batch = spec.model, spec.recipe.batch_size
            failure = (
                f"out of memory on {device} at batch size {batch} "
                f"({model.width:g}x width, {model.depth:g}x depth, {model.resolution} px): "
                f"try a smaller batch size (--batch-size {max(2, batch // 2)} with 'train', "
                "proxy.batch_size in a search space)"
            )
        elif is_device_error(exc):
            fault = DeviceFault(f"device error on {device}: {first_line(exc)}")
        else:
            raise
    finally:
        torch.backends.cudnn.benchmark = previous_benchmark
    # Outside the except block the traceback, and the tensors its frames hold, are gone.
    gc.collect()
    if device.type == "cuda" and fault is None:
        torch.cuda.empty_cache()
    if fault is not None:
        raise fault
    if runtime.jobs > 1:
        # Beside other jobs the memory was theirs too: the candidate alone may well fit.
        raise DeviceFault(f"{failure.split(':')[0]} while {runtime.jobs} jobs shared the device", shared_oom=True)
    raise TrialFailed(failure)


def _run(
    spec: TrialSpec,
    runtime: Runtime,
    dataset: Dataset,
    device: torch.device,
    started: float,
    timings: dict[str, float],
    on_epoch: EpochCallback | None,
    progress: bool,
    keep_state: bool,
) -> TrialResult:
    recipe = spec.recipe
    seed_everything(spec.seed)
    with _phase(timings, "data", device):
        on_device = UPLOADS.get(dataset, device)

        def subset(x: torch.Tensor, y: torch.Tensor, labels: np.ndarray, size: int | None, seed: int):
            if not size:
                return x, y
            index = torch.from_numpy(balanced_subset(labels, size, seed)).to(device)
            return x[index], y[index]  # gathered on the device: nothing crosses the bus again

        train_x, train_y = subset(on_device.train_x, on_device.train_y, dataset.train_y, recipe.train_subset, spec.seed)
        test_x, test_y = subset(
            on_device.test_x, on_device.test_y, dataset.test_y, recipe.test_subset, TEST_SUBSET_SEED
        )
        n = train_x.shape[0]
        if n < 2:
            raise UsageError(f"training needs at least 2 images, the training split has {n}")
        if test_x.shape[0] == 0:
            raise UsageError("the held-out split is empty: nothing to score the trial on")
        mean, std = channel_stats(train_x)

    with _phase(timings, "model", device):
        from ..flops import count

        counted = count(spec.model)
        model = prepared_model(spec.model, recipe)
        channels_last = runtime.uses_channels_last(device.type)
        model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        precision = precision_for(runtime, str(device))
        autocast = AMP_DTYPES.get(precision)  # None: fp32
        optimizer = make_optimizer(model, recipe)
        # fp16 needs its gradients scaled up (and checked) to keep small ones from flushing to zero.
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    batch = min(recipe.batch_size, n)
    steps = n // batch  # the incomplete last batch is dropped: equal-size steps, no 1-image BN batch
    total = steps * recipe.epochs
    warmup = round(recipe.warmup_epochs * steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup, recipe.schedule))
    criterion = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    generator = torch.Generator(device=device).manual_seed(spec.seed)
    pad = round(CROP_PADDING * dataset.image_size)
    resolution = spec.model.resolution
    # A host sync per step is free on the CPU; on a GPU check every few steps.
    check_every = 1 if device.type == "cpu" else 20

    def prepared(images: torch.Tensor) -> torch.Tensor:
        return to_input(images, resolution, mean, std, channels_last=channels_last)

    scoring = dict(
        resolution=resolution, mean=mean, std=std, batch_size=batch, channels_last=channels_last, autocast=autocast
    )
    oom_at = injected_oom_step(spec)
    fault_at = injected_step(ENV_INJECT_DEVICE_ERROR, spec)
    losses: list[float] = []
    accuracies: list[float] = []
    text = "loss {task.fields[loss]} acc {task.fields[acc]}"
    with progress_bar(progress, "training", total, text=text) as advance:
        for epoch in range(recipe.epochs):
            with _phase(timings, "train", device):
                model.train()
                order = torch.randperm(n, device=device, generator=generator)
                loss_sum = torch.zeros((), dtype=torch.float32, device=device)
                reported = 0
                for step in range(steps):
                    index = order[step * batch : (step + 1) * batch]
                    x = prepared(crop_flip(train_x, index, pad=pad, flip=True, generator=generator))
                    with amp(device.type, autocast):
                        loss = criterion(model(x), train_y[index])
                    if oom_at == epoch * steps + step + 1:
                        raise torch.OutOfMemoryError(f"injected by {ENV_INJECT_OOM} at step {oom_at}")
                    if fault_at == epoch * steps + step + 1:
                        raise device_error(f"unspecified launch failure (injected by {ENV_INJECT_DEVICE_ERROR})")
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)  # skipped by fp16 loss scaling when a gradient overflowed
                    scaler.update()
                    scheduler.step()
                    loss_sum += loss.detach().float()
                    if (step + 1) % check_every == 0 or step + 1 == steps:
                        running = loss_sum.item()
                        if not math.isfinite(running):
                            kind = "NaN" if math.isnan(running) else "inf"
                            raise TrialFailed(
                                f"training loss became {kind} in epoch {epoch + 1} by step {step + 1} "
                                f"(lr {recipe.lr:g}, {recipe.optimizer}): the training diverged; "
                                "lower the learning rate or add warmup"
                            )
                        advance(step + 1 - reported, loss=f"{running / (step + 1):.3f}")
                        reported = step + 1
            epoch_loss = loss_sum.item() / steps
            with _phase(timings, "recalibrate", device):
                # The epoch's first images, un-augmented: no extra random draws, so
                # recalibration leaves the training itself unchanged.
                picks = order[: BN_RECALIBRATION_BATCHES * batch].split(batch)
                recalibrate_bn(model, (prepared(train_x[p].permute(0, 3, 1, 2)) for p in picks), autocast, device.type)
            with _phase(timings, "evaluate", device):
                accuracy = evaluate(model, test_x, test_y, **scoring)
            losses.append(epoch_loss)
            accuracies.append(accuracy)
            advance(0, acc=f"{accuracy:.3f}")
            if on_epoch is not None:
                on_epoch(epoch, epoch_loss, accuracy)

    state = None
    if keep_state:
        with _phase(timings, "state", device):
            weights = {
                k: v.detach().to("cpu", memory_format=torch.contiguous_format).clone()
                for k, v in model.state_dict().items()
            }
            state = TrainedState(weights, tuple(mean.tolist()), tuple(std.tolist()))
    return TrialResult(
        accuracy=accuracies[-1],
        epoch_losses=tuple(losses),
        epoch_accuracies=tuple(accuracies),
        images_per_second=steps * batch * len(losses) / max(timings["train"], 1e-9),
        wall_seconds=time.perf_counter() - started,
        params=counted.params,
        macs=counted.macs,
        device=device.type if device.type == "cpu" else str(device),
        epochs=len(losses),
        train_images=n,
        test_images=int(test_x.shape[0]),
        resolution=resolution,
        device_name=device_name(str(device)),
        memory_format="channels_last" if channels_last else "nchw",
        precision=precision,
        loss_scale=scaler.get_scale() if scaler.is_enabled() else None,
        timings=timings,
        state=state,
    )
