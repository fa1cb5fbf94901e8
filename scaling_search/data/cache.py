"""A file of named numpy arrays with a checksummed header, written atomically.

Layout: MAGIC, an 8-byte little-endian header length, a JSON header (free
metadata plus, per array, dtype, shape, byte offset and sha256), then the raw
array bytes. Reading checks every array's size and sha256, so a truncated or
damaged file is reported as ``CacheCorrupt`` instead of loading wrong pixels.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_open

MAGIC = b"scaling-search arrays v1\n"
_LEN = struct.Struct("<Q")
_MAX_HEADER = 1 << 26


class CacheCorrupt(Exception):
    """The file exists but cannot be trusted (truncated, damaged, other format)."""


def save_arrays(path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    entries, offset = [], 0
    contiguous = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
    for name, a in contiguous.items():
        entries.append(
            {
                "name": name,
                "dtype": a.dtype.str,
                "shape": list(a.shape),
                "offset": offset,
                "nbytes": int(a.nbytes),
                "sha256": hashlib.sha256(memoryview(a).cast("B")).hexdigest(),
            }
        )
        offset += a.nbytes
    header = json.dumps({"meta": meta, "arrays": entries}).encode("utf-8")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:
        f.write(MAGIC)
        f.write(_LEN.pack(len(header)))
        f.write(header)
        for a in contiguous.values():
            f.write(memoryview(a).cast("B"))


def load_arrays(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and metadata saved at ``path``; CacheCorrupt if anything is off.

    FileNotFoundError propagates, so callers can tell "absent" from "damaged".
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if f.read(len(MAGIC)) != MAGIC:
            raise CacheCorrupt("not an array cache file")
        raw = f.read(_LEN.size)
        if len(raw) != _LEN.size:
            raise CacheCorrupt("truncated header")
        (length,) = _LEN.unpack(raw)
        if length > _MAX_HEADER:
            raise CacheCorrupt("implausible header length")
        try:
            header = json.loads(f.read(length).decode("utf-8"))
            entries = header["arrays"]
            start = len(MAGIC) + _LEN.size + length
            expected = start + sum(int(e["nbytes"]) for e in entries)
        except (ValueError, KeyError, TypeError) as exc:
            raise CacheCorrupt(f"unreadable header ({exc})") from None
        if size != expected:
            raise CacheCorrupt(f"size {size} bytes, expected {expected}")
        arrays = {}
        for e in entries:
            try:
                dtype = np.dtype(e["dtype"])
                if dtype.hasobject:  # raw bytes must never become Python objects
                    raise ValueError(f"dtype {dtype} holds objects")
                a = np.empty(tuple(e["shape"]), dtype=dtype)
            except (TypeError, ValueError) as exc:
                raise CacheCorrupt(f"bad array entry ({exc})") from None
            if a.nbytes != e["nbytes"]:
                raise CacheCorrupt(f"array {e['name']}: shape and size disagree")
            f.seek(start + e["offset"])
            view = memoryview(a).cast("B")
            if f.readinto(view) != a.nbytes:
                raise CacheCorrupt(f"array {e['name']} is truncated")
            if hashlib.sha256(view).hexdigest() != e["sha256"]:
                raise CacheCorrupt(f"array {e['name']} fails its checksum")
            arrays[e["name"]] = a
    return arrays, header.get("meta", {})
