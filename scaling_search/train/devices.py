"""The one place that turns a device name into a checked device, and a device into words."""

from __future__ import annotations

import os
import platform

import torch

from ..errors import UsageError

_KNOWN = "use auto, cpu, cuda, cuda:N or mps"


def resolve_device(name: str) -> str:
    """'auto' -> the first GPU if there is one, else the CPU; any other name is checked here."""
    if name == "auto":
        return f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"unknown device {name!r}: {_KNOWN}") from None
    if device.type == "cpu":
        return "cpu"
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(f"device {name!r} asked for, but this machine has no usable Apple GPU: use cpu or auto")
        return "mps"
    if device.type != "cuda":
        raise UsageError(f"device {name!r} is not supported: {_KNOWN}")
    if not torch.cuda.is_available():
        raise UsageError(
            f"device {name!r} asked for, but this machine has no usable CUDA GPU: use --device cpu or auto"
        )
    index = torch.cuda.current_device() if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise UsageError(f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    return f"cuda:{index}"


def compute_capability(device: str) -> tuple[int, int] | None:
    """A CUDA device's compute capability (major, minor); None for any other device."""
    if torch.device(device).type != "cuda":
        return None
    return tuple(torch.cuda.get_device_capability(torch.device(device)))


def precision_for(runtime, device: str) -> str:
    """The precision ``runtime`` runs in on ``device`` (a resolved name): bf16, fp16 or fp32."""
    return runtime.precision_on(torch.device(device).type, compute_capability(device))


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # fp32: no autocast


def device_name(device: str) -> str:
    """What the device is, in words, for logs and run.json."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    if kind == "mps":
        return f"Apple GPU ({platform.machine()})"
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"
