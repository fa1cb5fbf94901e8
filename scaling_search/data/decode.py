"""Decode images into one uint8 array, in parallel.

Every image becomes ``size x size x 3`` uint8: the largest centred square of
the image (so nothing is stretched) resized with PIL's antialiasing filter.
Decoding 60,000 small JPEGs costs ~20-35 s on one core, so large batches are
spread over a pool of processes, in chunks, in order. ``spawn`` processes are
used because the parent may hold torch threads and a progress-bar thread,
which make ``fork`` unsafe; this module imports neither torch nor rich.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from itertools import chain, islice

import numpy as np
from PIL import Image, ImageOps

from ..errors import UsageError
from ..progress import progress_bar

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"})

# (name shown in errors, payload): bytes of an encoded image, a path to read, or
# an HxWx3 uint8 array that only needs resizing.
Payload = bytes | str | np.ndarray
Item = tuple[str, Payload]

# What PIL raises for unreadable, truncated or hostile files.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error, Image.DecompressionBombError)

_CHUNK = 256  # images per task: big enough to amortise pickling, small enough to balance
_INLINE_LIMIT = 2048  # below this, starting processes costs more than it saves


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def to_square(image: Image.Image, size: int) -> np.ndarray:
    """RGB, centre square, ``size x size``: uint8 [size, size, 3]."""
    if image.mode != "RGB":
        image = image.convert("RGBA" if "transparency" in image.info else image.mode).convert("RGB")
    if image.size != (size, size):
        image = ImageOps.fit(image, (size, size), method=Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def decode_one(payload: Payload, size: int) -> np.ndarray:
    if isinstance(payload, np.ndarray):
        return to_square(Image.fromarray(payload), size)
    source = io.BytesIO(payload) if isinstance(payload, bytes) else payload
    with Image.open(source) as image:
        if image.format == "JPEG":
            image.draft("RGB", (size, size))  # let libjpeg downscale big photos by 2-8x for free
        image.load()
        return to_square(image, size)


def _decode_chunk(task: tuple[int, list[Item]]) -> tuple[np.ndarray | None, tuple[str, str] | None]:
    """Runs in a worker: the decoded chunk, or (name, reason) of the first bad image."""
    size, items = task
    out = np.empty((len(items), size, size, 3), dtype=np.uint8)
    for i, (name, payload) in enumerate(items):
        try:
            out[i] = decode_one(payload, size)
        except _DECODE_ERRORS as exc:  # the file's fault: report which file (bugs still raise)
            return None, (name, f"{type(exc).__name__}: {exc}")
    return out, None


def _chunks(items: Iterable[Item], n: int) -> Iterator[list[Item]]:
    it = iter(items)
    while chunk := list(islice(it, n)):
        yield chunk


def worker_count() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 16))


def decode_all(
    items: Iterable[Item],
    size: int,
    *,
    total: int | None = None,
    progress: bool = False,
    description: str = "decoding images",
    workers: int | None = None,
) -> np.ndarray:
    """All images of ``items``, in order, as uint8 [N, size, size, 3].

    An image that cannot be decoded raises UsageError naming it.
    """
    it = iter(items)
    head = list(islice(it, _INLINE_LIMIT))
    workers = worker_count() if workers is None else workers
    tasks = ((size, chunk) for chunk in _chunks(chain(head, it), _CHUNK))
    parts: list[np.ndarray] = []
    with progress_bar(progress, description, total) as advance:
        if len(head) < _INLINE_LIMIT or workers <= 1:
            results: Iterable = map(_decode_chunk, tasks)
            _collect(results, parts, advance)
        else:
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                _collect(pool.imap(_decode_chunk, tasks), parts, advance)
    if not parts:
        return np.empty((0, size, size, 3), dtype=np.uint8)
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _collect(results: Iterable, parts: list[np.ndarray], advance) -> None:
    for array, error in results:
        if error is not None:
            name, reason = error
            reason = " ".join(reason.split())  # one line, whatever the decoder said
            raise UsageError(f"cannot read image {name}: {reason}; replace or remove the file")
        parts.append(array)
        advance(len(array))
