"""How long a study will take: timed steps of the cheapest and the dearest candidate, scaled to the plan.

``calibrate`` times a few real train steps (the trainer's augmentation, precision
and memory format) and evaluation batches of the two candidates at the ends of
the plan's MACs range, at the study's batch size, and on a GPU records the
dearest one's peak memory (what the default job count is sized from).
``estimate_from`` is pure: every other unit is interpolated by its MACs, and
the sum is divided by what running ``jobs`` trials at once gains, never more
than was measured (``concurrency``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..records import TrialRecord
from ..space import SearchSpace
from ..train.recipe import Runtime

# What concurrent jobs gain on a GPU: four processes of B0 at 64 px (bf16, batch 512,
# channels_last) on one H200 trained 26,000 img/s together against 6,900-8,000 for one alone,
# 3.25-3.8x. No other count was measured, and without MPS the processes take turns on the GPU,
# so the estimate assumes the low end: each extra job adds (3.25 - 1) / 3 = 0.75 of one, and
# no count gains more than 3.25x. Every run prints its wall time beside the estimate.
MEASURED_JOBS = 4
MEASURED_GAIN = (3.25, 3.8)  # at MEASURED_JOBS, one H200
CUDA_JOB_EFFICIENCY = (MEASURED_GAIN[0] - 1) / (MEASURED_JOBS - 1)
# cuDNN autotuning (--cudnn-benchmark) times every new set of shapes, 20-50 s each a worker
# (Runtime.cudnn_benchmark); a trial is a new network to its worker: the middle, per trial.
CUDNN_AUTOTUNE_SECONDS = 35.0
BN_RECALIBRATION_BATCHES = 4  # forward passes per epoch before each evaluation (the trainer's default)
TIMED_STEPS = 3


@dataclass(frozen=True)
class Calibration:
    """Seconds per image of the plan's cheapest and dearest candidate, at the study's batch size."""

    batch: int
    macs: tuple[int, int]  # cheapest, dearest
    train_seconds_per_image: tuple[float, float]
    eval_seconds_per_image: tuple[float, float]
    setup_seconds: float  # per trial: the dearest model built, moved and given an optimizer (autotuning included)
    peak_bytes: int  # the dearest candidate's peak device memory in its train steps (0 on the CPU)
    threads: int  # torch CPU threads the steps ran with
    startup_seconds: float = (
        0.0  # this process's age before calibrating: what a fresh worker spends on imports and data
    )


def interpolate(cal: Calibration, macs: int, which: tuple[float, float]) -> float:
    """Seconds per image at ``macs``, on the line through the two timed candidates (flat past their ends)."""
    lo, hi = cal.macs
    if hi <= lo:
        return which[1]
    t = min(1.0, max(0.0, (macs - lo) / (hi - lo)))
    return which[0] + t * (which[1] - which[0])


def unit_seconds(cal: Calibration, macs: int, n_train: int, n_test: int, epochs: int) -> float:
    """One trial alone: setup, then per epoch the train steps, BN recalibration and the evaluation."""
    batch = min(cal.batch, n_train)
    steps = max(1, n_train // batch)
    train = interpolate(cal, macs, cal.train_seconds_per_image)
    infer = interpolate(cal, macs, cal.eval_seconds_per_image)
    per_epoch = steps * batch * train + (n_test + BN_RECALIBRATION_BATCHES * batch) * infer
    return cal.setup_seconds + epochs * per_epoch


def concurrency(device_type: str, jobs: int, threads: int, cores: int) -> float:
    """How many times one job's speed ``jobs`` processes reach together.

    On a CPU the cores bound it: each job gets threads // jobs threads, and the
    jobs together use at most the machine's cores (one job's calibration ran
    with ``threads``). On a GPU each extra job adds ``CUDA_JOB_EFFICIENCY``, up to
    the gain measured (``MEASURED_GAIN``'s low end) and no further.
    """
    if jobs <= 1:
        return 1.0
    if device_type == "cuda":
        return min(1.0 + (jobs - 1) * CUDA_JOB_EFFICIENCY, MEASURED_GAIN[0])
    per_job = max(1, threads // jobs)
    return max(1.0, min(jobs * per_job, cores) / max(1, threads))


def gain_note(device_type: str, jobs: int) -> str:
    """What the estimate assumes the jobs gain, and on what it rests (empty for one job or a CPU)."""
    if jobs <= 1 or device_type != "cuda":
        return ""
    gain = concurrency(device_type, jobs, 1, 1)
    capped = " (capped: no more jobs were measured)" if jobs > MEASURED_JOBS else ""
    return (
        f"{jobs} jobs assumed to train {gain:.2f}x one{capped}; measured {MEASURED_GAIN[0]:g}-{MEASURED_GAIN[1]:g}x "
        f"at {MEASURED_JOBS} jobs on one H200"
    )


def autotune_seconds(device_type: str, cudnn_benchmark: bool) -> float:
    """Seconds of cuDNN autotuning a trial adds: only on CUDA with --cudnn-benchmark."""
    return CUDNN_AUTOTUNE_SECONDS if cudnn_benchmark and device_type == "cuda" else 0.0


def worker_startup(age_before_data: float, load_seconds: float, from_cache: bool) -> float:
    """What a fresh worker spends before its first trial: this process's start-up before the data
    (interpreter, imports), and the data load when it came from the decode cache, as a worker's does;
    a first decode of the images is the parent's alone (workers read the cache it wrote)."""
    return age_before_data + (load_seconds if from_cache else 0.0)


def estimate_from(
    cal: Calibration,
    plan: Sequence[TrialRecord],
    *,
    n_train: int,
    n_test: int,
    epochs: int,
    jobs: int,
    speedup: float,
    startup_seconds: float = 0.0,
) -> float:
    """Wall seconds for ``plan`` with ``jobs`` workers that together run ``speedup`` times one job's speed.

    ``startup_seconds`` is what a fresh worker spends before its first trial
    (interpreter, imports, data); one job runs in the process that is already up.
    """
    lo = cal.macs[0]
    serial = sum(unit_seconds(cal, p.macs or lo, n_train, n_test, epochs) for p in plan)
    # No job can finish before the longest trial it holds: the dearest unit bounds a short plan.
    longest = max((unit_seconds(cal, p.macs or lo, n_train, n_test, epochs) for p in plan), default=0.0)
    if jobs <= 1:
        return serial
    return startup_seconds + max(serial / max(speedup, 1.0), longest)


def process_age() -> float:
    """Seconds since this process started (Linux; 0 elsewhere): what a fresh worker spends getting here."""
    import os

    try:
        with open("/proc/self/stat") as f:
            started_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def calibrate(
    space: SearchSpace,
    plan: Sequence[TrialRecord],
    num_classes: int,
    runtime: Runtime,
    image_size: int,
    startup_seconds: float | None = None,
) -> Calibration:
    """Time the cheapest and the dearest candidate of ``plan`` on ``runtime.device`` (raises torch's OOM).

    ``startup_seconds``: a fresh worker's start-up (``worker_startup``); None: this process's age."""
    import torch

    from .trials import trial_model, unit_of

    startup = process_age() if startup_seconds is None else startup_seconds
    cheap = min(plan, key=lambda p: p.macs or 0)
    dear = max(plan, key=lambda p: p.macs or 0)
    # Seconds per image hardly depend on the batch on a CPU, where a big one is slow to time.
    batch = space.proxy.batch_size if torch.device(runtime.device).type == "cuda" else min(space.proxy.batch_size, 64)
    timed = []
    for p in (cheap, dear) if dear is not cheap else (cheap,):
        timed.append(_time_steps(trial_model(space, unit_of(p), num_classes), batch, runtime, image_size))
    if torch.device(runtime.device).type == "cuda":
        torch.cuda.empty_cache()  # the timed models are gone: their cached blocks go back before free memory is read
    if len(timed) == 1:
        timed.append(timed[0])
    (t0, e0, _, _), (t1, e1, setup, peak) = timed
    return Calibration(
        batch=space.proxy.batch_size,
        macs=(int(cheap.macs or 0), int(dear.macs or 0)),
        train_seconds_per_image=(t0, t1),
        eval_seconds_per_image=(e0, e1),
        setup_seconds=setup + autotune_seconds(torch.device(runtime.device).type, runtime.cudnn_benchmark),
        peak_bytes=peak,
        threads=torch.get_num_threads(),
        startup_seconds=startup,
    )


def _time_steps(config, batch: int, runtime: Runtime, image_size: int) -> tuple[float, float, float, int]:
    """(train s/image, eval s/image, setup s, peak bytes) of ``config`` as the trainer runs it."""
    import torch

    from ..models import build
    from ..train.augment import crop_flip, to_input
    from ..train.devices import AMP_DTYPES, precision_for
    from ..train.loop import amp

    device = torch.device(runtime.device)
    cuda = device.type == "cuda"
    precision = precision_for(runtime, str(device))
    autocast = AMP_DTYPES.get(precision)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    channels_last = runtime.uses_channels_last(device.type)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    sync()
    started = time.perf_counter()
    model = build(config).to(device, memory_format=memory_format).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    sync()
    setup = time.perf_counter() - started
    images = torch.randint(0, 256, (batch, image_size, image_size, 3), dtype=torch.uint8, device=device)
    labels = torch.randint(0, config.num_classes, (batch,), device=device)
    mean = torch.full((3,), 120.0, device=device)
    std = torch.full((3,), 60.0, device=device)
    order = torch.arange(batch, device=device)
    pad = max(1, image_size // 8)

    def step() -> None:
        cropped = crop_flip(images, order, pad=pad, flip=True)
        x = to_input(cropped, config.resolution, mean, std, channels_last=channels_last)
        with amp(device.type, autocast):
            loss = torch.nn.functional.cross_entropy(model(x), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def infer() -> None:
        x = to_input(images.permute(0, 3, 1, 2), config.resolution, mean, std, channels_last=channels_last)
        with torch.no_grad(), amp(device.type, autocast):
            model(x).argmax(1)

    step()  # first-shape costs (allocator, kernels) are not a step's
    sync()
    started = time.perf_counter()
    for _ in range(TIMED_STEPS):
        step()
    sync()
    train = (time.perf_counter() - started) / (TIMED_STEPS * batch)
    peak = int(torch.cuda.max_memory_allocated(device)) if cuda else 0
    model.eval()
    infer()
    sync()
    started = time.perf_counter()
    for _ in range(2):
        infer()
    sync()
    evaluate = (time.perf_counter() - started) / (2 * batch)
    return train, evaluate, setup, peak
