"""Writes that never leave a truncated file: write a sibling, fsync, rename.

A write the disk refuses (full, over quota, read-only) ends in ``OutputRefused``:
one line naming the file, the free space and what it needed, nothing half-written.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .errors import UsageError

FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left, or the user's quota spent
REFUSED = (errno.EROFS, errno.EACCES, errno.EPERM)  # a read-only mount or folder


class OutputRefused(UsageError):
    """The disk refused an output: full, over quota or read-only. Earlier files are intact."""

    def __init__(self, message: str, path: Path):
        super().__init__(message)
        self.path = path


def free_bytes(folder: str | os.PathLike) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def human_bytes(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def refused(path: str | os.PathLike, exc: OSError, need: int | None) -> OutputRefused | None:
    """The one-line error for a write of ``need`` bytes to ``path`` that failed with ``exc``; None if the
    failure is not the disk's (a missing folder, a bad name: the caller's own error stands)."""
    target = Path(path)
    if exc.errno in FULL:
        free = free_bytes(target.parent)
        needed = f"{human_bytes(need)} needed" if need else "more needed"
        what = "no space left" if exc.errno == errno.ENOSPC else "the disk quota is spent"
        return OutputRefused(
            f"cannot write {target}: {what} on its device ({human_bytes(free)} free, {needed}): free space there "
            "and run the same command again; everything written before is intact",
            target,
        )
    if exc.errno in REFUSED:
        return OutputRefused(
            f"cannot write {target}: {exc.strerror.lower()} (the folder stopped taking writes): make it writable "
            "and run the same command again; everything written before is intact",
            target,
        )
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_open(path: str | os.PathLike, size: int | None = None) -> Iterator[BinaryIO]:
    """A binary file to stream into; it appears at ``path`` only if the block
    finishes without an exception (large outputs that should not sit in memory).
    ``size`` (when known) is what a refusal says the file needed."""
    target = Path(path)
    tmp = None
    written = 0
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as f:
            try:
                yield f
                f.flush()
                os.fsync(f.fileno())
            finally:
                try:
                    written = f.tell()
                except (OSError, ValueError):  # a buffer the disk refused cannot say where it is
                    pass
        os.replace(tmp, target)
    except BaseException as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        if isinstance(exc, OSError):
            error = refused(target, exc, max(size or 0, written))
            if error is not None:
                raise error from None
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, len(data)) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
