"""Batch transforms that run where the images live (CPU or GPU), in torch ops.

The dataset stays on the device as uint8 NHWC; a training batch is gathered,
randomly cropped (with reflect padding) and flipped in one indexing operation
on uint8, then converted to float, resized to the trial's resolution and
normalised. Nothing is done per sample in Python.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Map positions in [-pad, size - 1 + pad] onto [0, size) as reflect padding does."""
    index = torch.where(index < 0, -index, index)
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def crop_flip(
    images: torch.Tensor,
    batch: torch.Tensor,
    *,
    pad: int,
    flip: bool,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``images[batch]`` (uint8 [N, H, W, C]), each randomly shifted by up to
    ``pad`` pixels (reflect-padded crop) and mirrored with probability 1/2.

    Returns uint8 [B, C, H, W] in channels_last memory layout (a view of NHWC).
    """
    n, h, w = batch.numel(), images.shape[1], images.shape[2]
    device = images.device
    pad = max(0, min(pad, h - 1, w - 1))  # reflect needs pad < size
    rows = torch.arange(h, device=device).expand(n, h)
    cols = torch.arange(w, device=device).expand(n, w)
    if pad:
        dy = torch.randint(-pad, pad + 1, (n, 1), device=device, generator=generator)
        dx = torch.randint(-pad, pad + 1, (n, 1), device=device, generator=generator)
        rows = _reflect(rows + dy, h)
        cols = _reflect(cols + dx, w)
    if flip:
        mirror = torch.rand((n, 1), device=device, generator=generator) < 0.5
        cols = torch.where(mirror, cols.flip(1), cols)
    out = images[batch[:, None, None], rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2)


def to_input(
    images: torch.Tensor,
    resolution: int,
    mean: torch.Tensor,
    std: torch.Tensor,
    *,
    channels_last: bool,
) -> torch.Tensor:
    """uint8 [B, C, H, W] -> normalised float [B, C, resolution, resolution].

    Bilinear resize; antialiased when shrinking so that a smaller trial
    resolution sees a low-passed image rather than aliasing.
    """
    x = images.float()
    if x.shape[-2:] != (resolution, resolution):
        shrink = resolution < x.shape[-1] or resolution < x.shape[-2]
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=shrink)
    x = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (in 0..255 units) of uint8 [N, H, W, C] images."""
    channels = images.shape[-1]
    chunk = max(1, (1 << 22) // max(1, images[0].numel()))  # ~4M values (32 MB of float64) at a time
    total = torch.zeros(channels, dtype=torch.float64, device=images.device)
    squares = torch.zeros(channels, dtype=torch.float64, device=images.device)
    for start in range(0, images.shape[0], chunk):
        part = images[start : start + chunk].reshape(-1, channels).double()
        total += part.sum(0)
        squares += (part * part).sum(0)
    count = images.numel() // channels
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(1e-6).sqrt()
    return mean.float(), std.float()
