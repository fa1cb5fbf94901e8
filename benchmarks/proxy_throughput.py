"""Training throughput of the proxy trainer against the loop most users write.

Three measurements of the same model, batch size, images and epochs, in one
process, on one device:

1. the usual loop: a ``torch.utils.data.DataLoader`` over the decoded uint8
   images with per-sample CPU transforms (reflect-pad + random crop, flip,
   resize, to-tensor, normalise: what torchvision's transforms do, written
   out because torchvision is not a dependency), model in default NCHW;
   once more with the model in channels_last, to separate the memory-format
   gain from the data-path gain;
2. ``scaling_search.train.loop.train_trial`` (device-resident uint8, batched
   device-side transforms), in NCHW and in channels_last: the faster of the
   two is what ``--memory-format auto`` should pick on this device
   (``Runtime.uses_channels_last``); the trainer's per-phase fixed costs
   (data, model, recalibration, evaluation) are printed beside the training;
3. the bare train step on random tensors of the trainer's shape, in the
   format ``auto`` picks, the upper bound: 1 - (2) / (3) is the trainer's
   data-handling overhead.

Measured under benchmarks/protocol.py: one warm-up round, ``--repeats``
interleaved rounds, best / min / median / max, machine and load printed.
Goals: trainer >= 1.5x either DataLoader loop on the CPU (>= 3x for B0 at
64 px on a GPU); trainer >= 80% of the bare step; ``auto`` picks the faster
memory format.

    python benchmarks/proxy_throughput.py                 # CPU: B0 at 32 px, 2,000 images
    python benchmarks/proxy_throughput.py --device cuda   # GPU: B0 at 64 px (default there)
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import protocol  # noqa: E402

from scaling_search.data.sources import DataSpec, balanced_subset, load_dataset  # noqa: E402
from scaling_search.models import EfficientNetConfig, build  # noqa: E402
from scaling_search.train.devices import AMP_DTYPES, precision_for, resolve_device  # noqa: E402
from scaling_search.train.loop import CROP_PADDING, TrialSpec, amp, make_optimizer, train_trial  # noqa: E402
from scaling_search.train.recipe import Recipe, Runtime  # noqa: E402


class PerSampleTransforms:
    """RandomCrop(padding, reflect) -> RandomHorizontalFlip -> Resize -> ToTensor -> Normalize, per image."""

    def __init__(self, resolution: int, pad: int, mean: np.ndarray, std: np.ndarray):
        self.resolution, self.pad = resolution, pad
        self.mean = torch.tensor(mean / 255.0, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std / 255.0, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        h, w, _ = image.shape
        p = self.pad
        padded = np.pad(image, ((p, p), (p, p), (0, 0)), mode="reflect")
        top, left = random.randint(0, 2 * p), random.randint(0, 2 * p)
        crop = padded[top : top + h, left : left + w]
        if random.random() < 0.5:
            crop = crop[:, ::-1]
        pil = Image.fromarray(np.ascontiguousarray(crop))
        if pil.size != (self.resolution, self.resolution):
            pil = pil.resize((self.resolution, self.resolution), Image.Resampling.BILINEAR)
        x = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (x - self.mean) / self.std


class ArrayImages(torch.utils.data.Dataset):
    def __init__(self, x: np.ndarray, y: np.ndarray, transform):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.transform(self.x[i]), int(self.y[i])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def dataloader_loop(
    spec: TrialSpec, x: np.ndarray, y: np.ndarray, device: torch.device, workers: int, channels_last: bool
) -> float:
    """Images per second of the usual DataLoader loop (one pass per epoch, workers started per epoch)."""
    recipe = spec.recipe
    torch.manual_seed(spec.seed)
    random.seed(spec.seed)
    mean, std = x.reshape(-1, 3).mean(0), x.reshape(-1, 3).std(0)
    data = ArrayImages(x, y, PerSampleTransforms(spec.model.resolution, round(CROP_PADDING * x.shape[1]), mean, std))
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=recipe.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build(spec.model).to(device, memory_format=fmt)
    optimizer = make_optimizer(model, recipe)
    criterion = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    autocast = _amp_dtype(device)
    model.train()
    images, seconds = 0, 0.0
    for _ in range(recipe.epochs):
        start = time.perf_counter()
        for xb, yb in loader:
            xb = xb.to(device, non_blocking=True).contiguous(memory_format=fmt)
            yb = yb.to(device, non_blocking=True)
            with amp(device.type, autocast):
                loss = criterion(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            images += xb.shape[0]
        loss.item()
        _sync(device)
        seconds += time.perf_counter() - start
    return images / seconds


def _amp_dtype(device: torch.device):
    """The autocast dtype the trainer uses on ``device`` (precision auto), None for fp32."""
    return AMP_DTYPES.get(precision_for(Runtime(device=str(device)), str(device)))


def bare_train_step(spec: TrialSpec, steps: int, device: torch.device, channels_last: bool) -> float:
    """Images per second of the trainer's train step alone, on random tensors already on the device."""
    recipe = spec.recipe
    torch.manual_seed(spec.seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build(spec.model).to(device, memory_format=fmt)
    optimizer = make_optimizer(model, recipe)
    criterion = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    r = spec.model.resolution
    x = torch.randn(recipe.batch_size, 3, r, r, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, spec.model.num_classes, (recipe.batch_size,), device=device)
    autocast = _amp_dtype(device)
    model.train()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        with amp(device.type, autocast):
            loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    loss.item()
    _sync(device)
    return steps * recipe.batch_size / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--data-dir",
        default=os.environ.get("SCALING_SEARCH_DATA") or str(Path(__file__).resolve().parents[2] / "shared" / "data"),
    )
    ap.add_argument("--data", default="cifar10", help="cifar10 (default) or imagenette, in --data-dir")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--depth", type=float, default=1.0)
    ap.add_argument("--resolution", type=int, help="default 32 on the CPU, 64 on a GPU")
    ap.add_argument("--batch-size", type=int, help="default 64 on the CPU, 512 on a GPU")
    ap.add_argument("--images", type=int, help="training images (default 2,000 on the CPU, 20,000 on a GPU)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument(
        "--workers", type=int, default=min(4, os.cpu_count() or 1), help="DataLoader workers (default: min(4, cores))"
    )
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds of every path; each keeps its best")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    args = ap.parse_args()

    device = torch.device(resolve_device(args.device))  # resolve_device returns the checked name
    gpu = device.type == "cuda"
    # Random inputs drive some CPU activations into subnormal floats, which
    # are slow on x86 and would make the bare step look slower than training
    # on real images; flush them to zero for every path alike.
    flushed = torch.set_flush_denormal(True)
    resolution = args.resolution or (64 if gpu else 32)
    batch = args.batch_size or (512 if gpu else 64)
    images = args.images or (20000 if gpu else 2000)
    data = DataSpec(args.data, data_dir=args.data_dir)
    dataset = load_dataset(data, progress=sys.stderr.isatty())
    model = EfficientNetConfig(
        width=args.width, depth=args.depth, resolution=resolution, num_classes=dataset.num_classes
    )
    spec = TrialSpec(model, data, Recipe(epochs=args.epochs, batch_size=batch, train_subset=images, test_subset=100))
    runtimes = {fmt: Runtime(device=str(device), memory_format=fmt) for fmt in ("nchw", "channels_last")}
    auto_cl = Runtime(device=str(device)).uses_channels_last(device.type)
    index = balanced_subset(dataset.train_y, images, spec.seed)
    x, y = np.ascontiguousarray(dataset.train_x[index]), dataset.train_y[index]
    steps = images // batch

    protocol.header("training throughput: proxy trainer against the DataLoader loop, NCHW against channels_last")
    print(
        f"workload    {device}, {args.data}, EfficientNet w={args.width:g} d={args.depth:g} at {resolution} px, "
        f"batch {batch}, "
        f"{steps * batch:,} images x {args.epochs} epoch(s), {args.workers} DataLoader workers"
        f"{', subnormals flushed' if flushed and not gpu else ''}",
        flush=True,
    )
    print(
        "paths       DataLoader loop: per-sample CPU transforms in workers; proxy trainer: device-resident uint8, "
        "batched transforms; bare train step: random tensors already on the device, in the format auto picks "
        f"({'channels_last' if auto_cl else 'NCHW'})"
    )
    phases: dict[str, list[dict[str, float]]] = {fmt: [] for fmt in runtimes}

    def trainer(fmt: str) -> float:
        result = train_trial(spec, runtimes[fmt], dataset=dataset)
        phases[fmt].append(result.timings | {"wall": result.wall_seconds})
        return result.images_per_second

    series = protocol.interleave(
        {
            "DataLoader loop, NCHW": lambda: dataloader_loop(spec, x, y, device, args.workers, channels_last=False),
            "DataLoader loop, channels_last": lambda: dataloader_loop(
                spec, x, y, device, args.workers, channels_last=True
            ),
            "proxy trainer, NCHW": lambda: trainer("nchw"),
            "proxy trainer, channels_last": lambda: trainer("channels_last"),
            "bare train step": lambda: bare_train_step(spec, steps * args.epochs, device, auto_cl),
        },
        args.repeats,
        warmup=args.warmup,
        unit="img/s",
        higher_is_better=True,
    )
    loader, loader_cl, trainer_nchw, trainer_cl, bare = series.values()
    trainer_auto = trainer_cl if auto_cl else trainer_nchw
    goal = 3.0 if gpu else 1.5
    share = trainer_auto.best / bare.best
    faster_cl = trainer_cl.best > trainer_nchw.best
    protocol.report(
        series,
        [
            protocol.ratio(trainer_auto, loader, goal, "trainer vs DataLoader loop, NCHW (as usually written)"),
            protocol.ratio(trainer_auto, loader_cl, goal, "trainer vs DataLoader loop, channels_last"),
            protocol.ratio(trainer_cl, trainer_nchw, 1.0, "memory format: trainer in channels_last vs NCHW"),
            protocol.Verdict(
                f"--memory-format auto picks {'channels_last' if auto_cl else 'NCHW'} on {device.type}; "
                f"{'channels_last' if faster_cl else 'NCHW'} measured faster here",
                "auto = the faster",
                auto_cl == faster_cl,
            ),
            protocol.Verdict(
                f"trainer at {100 * share:.0f}% of the bare train step "
                f"({100 * (1 - share):.1f}% lost to data handling)",
                ">= 80%",
                share >= 0.8,
            ),
        ],
    )
    for fmt, runs in phases.items():
        runs = runs[args.warmup :]  # the timed rounds: the warm-up round also paid the one upload
        median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        fixed = median["wall"] - median["train"]
        parts = ", ".join(f"{k} {1000 * v:.0f}" for k, v in median.items() if k not in ("wall", "train"))
        print(
            f"per trial   {fmt}: wall {median['wall']:.2f} s, training {median['train']:.2f} s, fixed costs "
            f"{fixed:.2f} s ({100 * fixed / median['wall']:.0f}%; ms: {parts}; median of {len(runs)} trials)"
        )
    protocol.footer()


if __name__ == "__main__":
    main()
