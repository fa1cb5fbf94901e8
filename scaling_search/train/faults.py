"""Failures of the machine, told apart from failures of the candidate.

A trial that diverges, or runs out of memory alone on its device at the study's
batch size, failed because of what it is: that is its result (``TrialFailed``,
stored as FAIL). An error of the device itself (a CUDA error, a GPU that a
process cannot open) or an out-of-memory while other jobs share the device says
nothing about the candidate: it is a ``DeviceFault``, nothing is stored for the
unit, and it is trained again (alone at once after a shared out-of-memory, on
resume after a device error).

Fault injection, like ``SCALING_SEARCH_INJECT_OOM``:
``SCALING_SEARCH_INJECT_DEVICE_ERROR="STEP[@key=value,...]"`` raises a real
``torch.AcceleratorError`` (what PyTorch raises for a CUDA error) at optimizer
step STEP of every matching trial; STEP 0 fails the device's start in every
worker process instead (what a GPU in exclusive-process mode does to the second
process that opens it).
"""

from __future__ import annotations

import os

ENV_INJECT_DEVICE_ERROR = "SCALING_SEARCH_INJECT_DEVICE_ERROR"

# Words of the errors CUDA, cuDNN, cuBLAS and the driver raise through PyTorch (an
# out-of-memory is told apart first: its text names CUDA too).
_DEVICE_ERROR_TEXT = (
    "cuda error",
    "cudnn error",
    "cublas_status",
    "cudnn_status",
    "cusolver_status",
    "cufft_internal_error",
    "device-side assert",
    "cuda driver",
    "cuda-capable device",
    "hip error",
    "nccl error",
)


class DeviceFault(Exception):
    """The machine failed a trial: nothing about the candidate is learnt, the unit is trained again.

    ``shared_oom``: an out-of-memory while other jobs shared the device (retried alone);
    otherwise a device error (the worker stops; the unit waits for a resume).
    ``unit``: the unit's key, set by whoever knows it (``run_unit``).
    """

    def __init__(self, reason: str, *, shared_oom: bool = False, unit: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.shared_oom = shared_oom
        self.unit = unit


def is_device_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an error of the device (CUDA, cuDNN, the driver), not of the program or the candidate."""
    import torch

    accelerator_error = getattr(torch, "AcceleratorError", None)  # torch >= 2.8: every CUDA error
    if accelerator_error is not None and isinstance(exc, accelerator_error):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(words in text for words in _DEVICE_ERROR_TEXT)


def device_error(text: str) -> RuntimeError:
    """The exception PyTorch raises for a CUDA error, with ``text``."""
    import torch

    kind = getattr(torch, "AcceleratorError", RuntimeError)
    return kind(f"CUDA error: {text}")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def injected_start_failure() -> bool:
    """Whether ``SCALING_SEARCH_INJECT_DEVICE_ERROR`` asks every worker's device start to fail (STEP 0)."""
    return os.environ.get(ENV_INJECT_DEVICE_ERROR, "").strip().partition("@")[0].strip() == "0"


def open_device(device: str) -> None:
    """Touch ``device`` as a worker does before its first trial; a device that cannot be used raises
    ``DeviceFault`` with the cause, before any unit is claimed."""
    import torch

    try:
        if injected_start_failure():
            raise device_error(
                f"all CUDA-capable devices are busy or unavailable (injected by {ENV_INJECT_DEVICE_ERROR})"
            )
        probe = torch.ones(1, device=device) + 1
        if probe.device.type == "cuda":
            torch.cuda.synchronize(probe.device)
    except RuntimeError as exc:
        raise DeviceFault(f"device {device} could not be started: {first_line(exc)}") from None
