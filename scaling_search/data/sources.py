"""Datasets for proxy trainings: found, decoded once, cached as uint8 arrays.

``load_dataset(DataSpec("cifar10", data_dir=...))`` accepts CIFAR-10 in the
forms users have it: the official python-pickle folder
(``cifar-10-batches-py/``) or its ``cifar-10-python.tar.gz``, an ImageFolder
tree (``train/<class>/*``, ``test/<class>/*``) or an archive of such a tree.
``DataSpec("imagenette")`` takes Imagenette2 at 128 px (the 10-class ImageNet
subset, official train/val split) as ``imagenette2-128.tar.gz``, checked
against its sha256, or as the extracted ``imagenette2-128/`` tree, checked by
its image counts. ``DataSpec("imagefolder:PATH")`` takes any tree (or
archive) with train and test (or val) splits. Images are stored as
``storage_size`` squares (default: the dataset's native size), uint8, NHWC,
and written to a checksummed cache file keyed by the source and the settings,
so only the first load pays for decoding. Each dataset knows its native size,
the resolution up to which its pixels carry real detail (``upsampled``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import tarfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import UsageError
from .cache import CacheCorrupt, load_arrays, save_arrays
from .decode import decode_all, is_image_name

log = logging.getLogger(__name__)

ENV_DATA = "SCALING_SEARCH_DATA"
ENV_CACHE = "SCALING_SEARCH_CACHE"
DEFAULT_CACHE = Path("~/.cache/scaling-search")

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_CHECKSUM = "md5:c58f30108f718f92721af3b95e74349a"  # the one published with the archive
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
_CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR10_FILES = _CIFAR10_TRAIN + ("test_batch", "batches.meta")

CIFAR10_SIZE = 32

IMAGENETTE_ARCHIVE = "imagenette2-128.tar.gz"
IMAGENETTE_FOLDER = "imagenette2-128"
IMAGENETTE_CHECKSUM = "sha256:2f97c81b7804a2fca8268024517dd43913bf2c72ee43d35573f37a43be1d32f5"
IMAGENETTE_SIZE = 128  # stored at 128 px, downscaled from 224 px: real detail up to 128
# wnid -> name, in wnid order (the label order), as the archive's README.txt lists them.
IMAGENETTE_CLASSES = {
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888257": "parachute",
}
# Images per class (wnid order) of the official imagenette2 split: 9,469 train, 3,925 val.
# An extracted tree has no archive checksum; these counts are what it is checked against.
IMAGENETTE_COUNTS = {
    "train": (963, 955, 993, 858, 941, 956, 961, 931, 951, 960),
    "val": (387, 395, 357, 386, 409, 394, 389, 419, 399, 390),
}

DATASETS = ("cifar10", "imagenette")  # by name; any other tree is imagefolder:PATH
# The side, in pixels, of the images as the dataset publishes them.
NATIVE_SIZES = {"cifar10": CIFAR10_SIZE, "imagenette": IMAGENETTE_SIZE}
DEFAULT_STORAGE_SIZE = 32  # imagefolder trees, whose native size is unknown

_TEST_SPLITS = ("test", "val")
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz", ".zip")
# Bump when decoding changes what ends up in the arrays, so old caches are not reused.
_CACHE_FORMAT = 1


@dataclass(frozen=True)
class DataSpec:
    """Which dataset, where to find it, and how to store it."""

    name: str  # "cifar10", "imagenette" or "imagefolder:PATH"
    data_dir: str | None = None  # default: $SCALING_SEARCH_DATA
    # Images are stored as storage_size x storage_size uint8; None: the native size (imagefolder: 32).
    storage_size: int | None = None
    allow_download: bool = False  # fetch CIFAR-10 into the cache when it is not found
    download_url: str | None = None  # default CIFAR10_URL (a mirror, or a test server)
    download_checksum: str | None = None  # 'md5:HEX' or 'sha256:HEX'; default CIFAR10_CHECKSUM
    archive_checksum: str | None = None  # what an Imagenette archive must match; default IMAGENETTE_CHECKSUM

    def __post_init__(self) -> None:
        if self.name not in DATASETS and not (
            self.name.startswith("imagefolder:") and self.name[len("imagefolder:") :].strip()
        ):
            raise UsageError(
                f"unknown dataset {self.name!r}: use {', '.join(repr(d) for d in DATASETS)} or 'imagefolder:PATH' "
                "(a folder with train/ and test/ class folders)"
            )
        size = self.storage_size
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
            raise UsageError(f"storage size must be a positive number of pixels, got {size!r}")
        if self.allow_download and self.name != "cifar10":
            raise UsageError(
                f"--download fetches CIFAR-10 only: put {IMAGENETTE_ARCHIVE} in the data folder for {self.name}"
                if self.name == "imagenette"
                else "--download fetches CIFAR-10 only: an imagefolder dataset must already be on disk"
            )
        if self.archive_checksum is not None:
            from .download import parse_checksum

            parse_checksum(self.archive_checksum)

    @property
    def kind(self) -> str:
        return self.name.split(":", 1)[0]

    @property
    def native_size(self) -> int | None:
        """Side in pixels of the images as the dataset publishes them; None when unknown (imagefolder)."""
        return NATIVE_SIZES.get(self.kind)

    @property
    def image_size(self) -> int:
        """Side of the stored squares: ``storage_size``, else the native size."""
        return self.storage_size or self.native_size or DEFAULT_STORAGE_SIZE


@dataclass(frozen=True, eq=False)
class Dataset:
    """Decoded images, NHWC uint8, and int64 labels indexing ``classes``."""

    train_x: np.ndarray  # uint8 [N, S, S, 3]
    train_y: np.ndarray  # int64 [N]
    test_x: np.ndarray  # uint8 [M, S, S, 3]
    test_y: np.ndarray  # int64 [M]
    classes: tuple[str, ...]
    source: str = ""  # where the images came from, for messages
    from_cache: bool = field(default=False, compare=False)
    native_size: int | None = None  # side of the images as published; None: unknown, the stored size stands in

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3:
                raise ValueError(f"{split}_x must be uint8 [N, H, W, 3], got {x.dtype} {x.shape}")
            if y.dtype != np.int64 or y.shape != (x.shape[0],):
                raise ValueError(f"{split}_y must be int64 [{x.shape[0]}], got {y.dtype} {y.shape}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def detail_size(self) -> int:
        """The largest side at which these images carry real detail: the native
        size, or the stored size where that is smaller (or the native one unknown)."""
        return min(self.native_size or self.image_size, self.image_size)


def upsampled(resolution: int, native: int) -> bool:
    """Whether training at ``resolution`` px enlarges images that hold detail only up to
    ``native`` px (Dataset.detail_size): the extra pixels are interpolated, not seen."""
    for name, value in (("resolution", resolution), ("native size", native)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UsageError(f"{name} must be a positive number of pixels, got {value!r}")
    return resolution > native


def resolution_statement(native_size: int, stored_size: int, resolutions: Iterable[int]) -> str:
    """One sentence for a report: the images' native and stored sizes, and which of the
    trained ``resolutions`` exceed the detail they hold (upsampled)."""
    detail = min(native_size, stored_size)
    trained = sorted(set(resolutions))
    stored = "" if stored_size == native_size else f", stored at {stored_size} px"
    head = f"images are {native_size} px natively{stored}"
    if not trained:
        return head + "."
    above = [r for r in trained if upsampled(r, detail)]
    span = f"{trained[0]}-{trained[-1]} px" if len(trained) > 1 else f"{trained[0]} px"
    if not above:
        return f"{head}; trained at {span}, all within the {detail} px of real detail."
    return (
        f"{head}; trained at {span}: {', '.join(str(r) for r in above)} px exceed the {detail} px of real detail, "
        "so those candidates see upsampled images (interpolated pixels, not more detail)."
    )


# ----------------------------------------------------------------- subsets


def balanced_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """Indices of ``labels`` in a seeded order whose every prefix is class-balanced.

    Each class is shuffled on its own, then the classes are interleaved round
    robin, so the first N indices hold N / classes images of each class (up
    to one) and a smaller subset is always part of a larger one.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    rank = np.empty(len(labels), dtype=np.int64)
    for members in per_class:
        rank[members] = np.arange(len(members))
    klass = np.searchsorted(np.unique(labels), labels)
    # Sort by (position within its class, class): round robin over the classes.
    position = np.lexsort((klass, rank))
    return position


def balanced_subset(labels: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """The first ``n`` of ``balanced_order`` (all indices, in that order, when n is None)."""
    order = balanced_order(labels, seed)
    if n is None:
        return order
    if n > len(order):
        raise UsageError(f"subset of {n} images asked for, but the split has only {len(order)}")
    return order[:n]


# ------------------------------------------------------------------ sources


def _file_fingerprint(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


class _Source(Protocol):
    """Somewhere a dataset lives."""

    label: str  # names the cache file
    native_size: int | None  # side of the published images; None: unknown (the stored size stands in)

    def fingerprint(self) -> dict:
        """What identifies this exact content (paths, sizes, modification times)."""
        ...

    def decode(self, size: int, progress: bool) -> Dataset:
        """Read and decode every image into ``size``-pixel squares."""
        ...


class _PickleSource:
    """The official CIFAR-10 python version: a folder of pickles or its archive."""

    label = "cifar10"
    native_size = CIFAR10_SIZE

    def __init__(self, path: Path):
        self.path = path

    def _files(self) -> Iterator[tuple[str, bytes]]:
        if self.path.is_dir():
            for name in _CIFAR10_FILES:
                yield name, (self.path / name).read_bytes()
        else:
            for name, data in _archive_members(self.path):
                base = name.rsplit("/", 1)[-1]
                if base in _CIFAR10_FILES:
                    yield base, data

    def fingerprint(self) -> dict:
        if self.path.is_dir():
            return {"kind": "cifar10-pickle", "files": [_file_fingerprint(self.path / n) for n in _CIFAR10_FILES]}
        return {"kind": "cifar10-pickle", "archive": _file_fingerprint(self.path)}

    def decode(self, size: int, progress: bool) -> Dataset:
        try:
            batches = {name: _safe_unpickle(data, f"{self.path}:{name}") for name, data in self._files()}
        except OSError as exc:
            raise UsageError(f"cannot read CIFAR-10 from {self.path}: {exc}") from None
        except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
            raise UsageError(f"cannot read CIFAR-10 archive {self.path}: {exc}") from None
        missing = [n for n in _CIFAR10_FILES if n not in batches]
        if missing:
            raise UsageError(f"CIFAR-10 at {self.path} lacks {', '.join(missing)}")
        classes = tuple(_text(n) for n in batches["batches.meta"][b"label_names"])

        def split(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
            try:
                x = np.concatenate([np.asarray(batches[n][b"data"], dtype=np.uint8) for n in names])
                y = np.concatenate([np.asarray(batches[n][b"labels"], dtype=np.int64) for n in names])
                x = x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # planes (CHW) -> NHWC
            except (KeyError, ValueError, TypeError) as exc:
                raise UsageError(f"CIFAR-10 at {self.path} is not in the expected pickle layout ({exc})") from None
            if size != 32:
                items = ((f"{self.path}:{i}", img) for i, img in enumerate(x))
                x = decode_all(items, size, total=len(x), progress=progress, description="resizing CIFAR-10")
            return np.ascontiguousarray(x), y

        train_x, train_y = split(_CIFAR10_TRAIN)
        test_x, test_y = split(("test_batch",))
        return Dataset(train_x, train_y, test_x, test_y, classes, source=str(self.path), native_size=CIFAR10_SIZE)


class _TreeSource:
    """An ImageFolder tree, ``train/<class>/...`` and ``test/<class>/...`` (or ``val/``),
    in a folder or inside a tar/zip archive."""

    def __init__(self, path: Path, label: str, native_size: int | None = None):
        self.path = path
        self.label = label
        self.native_size = native_size
        self._listing: list[tuple[str, str, str]] | None = None  # (split, class, relative path), folders only

    def _scan_folder(self) -> list[tuple[str, str, str]]:
        if self._listing is None:
            test = next((s for s in _TEST_SPLITS if (self.path / s).is_dir()), None)
            if not (self.path / "train").is_dir() or test is None:
                raise UsageError(
                    f"{self.path} needs train/ and test/ (or val/) folders with one folder of images per class"
                )
            listing = []
            for split in ("train", test):
                for klass in _class_dirs(self.path / split):
                    for rel in _walk_images(self.path / split / klass):
                        listing.append((split, klass, f"{split}/{klass}/{rel}"))
            self._listing = listing
        return self._listing

    def fingerprint(self) -> dict:
        if self.path.is_file():
            return {"kind": "imagefolder-archive", "archive": _file_fingerprint(self.path)}
        digest = hashlib.sha256()
        for _, _, rel in self._scan_folder():
            st = (self.path / rel).stat()
            digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return {"kind": "imagefolder", "path": str(self.path.resolve()), "files": digest.hexdigest()}

    def decode(self, size: int, progress: bool) -> Dataset:
        if self.path.is_dir():
            listing = self._scan_folder()
            _check_classes(self.path, listing)
            items = ((str(self.path / rel), str(self.path / rel)) for _, _, rel in listing)
            x = decode_all(items, size, total=len(listing), progress=progress, description=f"decoding {self.label}")
        else:
            listing = []
            members = _tree_members(self.path, listing)
            x = decode_all(members, size, progress=progress, description=f"decoding {self.label}")
            test = next((s for s in _TEST_SPLITS if any(e[0] == s for e in listing)), None)
            keep = [i for i, e in enumerate(listing) if e[0] in ("train", test)]
            order = sorted(keep, key=lambda i: listing[i])
            listing = [listing[i] for i in order]
            x = x[order]
            _check_classes(self.path, listing)
        classes = tuple(sorted({k for s, k, _ in listing if s == "train"}))
        index = {k: i for i, k in enumerate(classes)}
        is_train = np.array([s == "train" for s, _, _ in listing], dtype=bool)
        y = np.array([index[k] for _, k, _ in listing], dtype=np.int64)
        return Dataset(
            np.ascontiguousarray(x[is_train]),
            y[is_train],
            np.ascontiguousarray(x[~is_train]),
            y[~is_train],
            classes,
            source=str(self.path),
            native_size=self.native_size or size,
        )


class _ImagenetteSource(_TreeSource):
    """Imagenette2 at 128 px: the archive (checked against its sha256 before any
    decoding) or its extracted tree (checked by its image counts per class)."""

    def __init__(self, path: Path, checksum: str):
        super().__init__(path, "imagenette", IMAGENETTE_SIZE)
        self.checksum = checksum

    def fingerprint(self) -> dict:
        # The checksum is part of the key: a cache is only reused for the archive it was verified against.
        return {**super().fingerprint(), "kind": "imagenette", "checksum": self.checksum}

    def verify(self) -> str:
        """Refuse a damaged or foreign source before decoding; says how it was checked."""
        if self.path.is_file():
            from .download import parse_checksum

            algorithm, expected = parse_checksum(self.checksum)
            got = _file_digest(self.path, algorithm)
            if got != expected:
                raise UsageError(
                    f"Imagenette archive {self.path} fails its checksum ({algorithm} expected {expected}, got {got}): "
                    f"it is truncated, damaged or not {IMAGENETTE_ARCHIVE}; copy it again, or load another "
                    "release with --data imagefolder:PATH"
                )
            return f"{algorithm} verified"
        listing = self._scan_folder()
        for split, expected_counts in IMAGENETTE_COUNTS.items():
            counts = {k: 0 for k in IMAGENETTE_CLASSES}
            strays = set()
            for s, klass, _ in listing:
                if s == split:
                    if klass in counts:
                        counts[klass] += 1
                    else:
                        strays.add(klass)
            if strays:
                raise UsageError(
                    f"Imagenette tree {self.path} has class folders that imagenette2 lacks: {split}/"
                    f"{', '.join(sorted(strays))}; remove them, or load the tree with --data imagefolder:PATH"
                )
            for (klass, n), want in zip(counts.items(), expected_counts, strict=True):
                if n != want:
                    raise UsageError(
                        f"Imagenette tree {self.path} does not hold the imagenette2 split: {split}/{klass} has {n} "
                        f"images, expected {want} ({sum(counts.values()):,} of {sum(expected_counts):,} in {split}); "
                        f"extract {IMAGENETTE_ARCHIVE} again"
                    )
        return "extracted tree, no archive checksum: image counts verified"

    def decode(self, size: int, progress: bool) -> Dataset:
        how = self.verify()
        log.info("Imagenette at %s: %s", self.path, how)
        dataset = super().decode(size, progress)
        if set(dataset.classes) != set(IMAGENETTE_CLASSES):
            raise UsageError(
                f"{self.path} does not hold the ten imagenette2 classes (found {', '.join(dataset.classes)})"
            )
        return replace(
            dataset, classes=tuple(IMAGENETTE_CLASSES[k] for k in dataset.classes), source=f"{self.path} ({how})"
        )


def _file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in 1 MiB blocks (archives do not need to fit in memory)."""
    digest = hashlib.new(algorithm)
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    return digest.hexdigest()


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def _walk_images(root: Path) -> list[str]:
    """Image files under ``root`` (recursively), as sorted relative paths."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = os.path.relpath(folder, root)
        for f in files:
            if is_image_name(f) and not f.startswith("."):
                found.append(f if rel == "." else f"{rel}/{f}")
    return sorted(found)


def _check_classes(root: Path, listing: list[tuple[str, str, str]]) -> None:
    """One clear complaint about empty splits, empty classes, or splits that disagree."""
    splits = {s for s, _, _ in listing}
    test = next((s for s in _TEST_SPLITS if s in splits), "test")
    train_classes = {k for s, k, _ in listing if s == "train"}
    test_classes = {k for s, k, _ in listing if s == test}
    if root.is_dir():  # folders can hold a class folder with no images: name it
        for split in ("train", test):
            if (root / split).is_dir():
                for klass in _class_dirs(root / split):
                    if klass not in (train_classes if split == "train" else test_classes):
                        raise UsageError(
                            f"class folder {root / split / klass} has no images: add its images or remove the folder"
                        )
    if not train_classes:
        raise UsageError(f"no images in {root}: expected train/<class>/<image> and test/<class>/<image> files")
    if not test_classes:
        raise UsageError(f"no test images in {root}: expected test/<class>/<image> (or val/<class>/<image>) files")
    if train_classes != test_classes:
        only_train, only_test = sorted(train_classes - test_classes), sorted(test_classes - train_classes)
        detail = "; ".join(
            part
            for part in (
                f"only in train: {', '.join(only_train)}" if only_train else "",
                f"only in {test}: {', '.join(only_test)}" if only_test else "",
            )
            if part
        )
        raise UsageError(f"train and {test} splits of {root} have different classes ({detail})")


def _archive_members(path: Path, read: bool = True) -> Iterator[tuple[str, bytes | None]]:
    """(name, bytes) of every regular file in a tar (any compression) or zip
    archive, in archive order; bytes is None when ``read`` is False."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    yield info.filename, zf.read(info) if read else None
        return
    with tarfile.open(path, "r:*") as tf:
        for member in tf:
            if member.isfile():
                f = tf.extractfile(member) if read else None
                yield member.name, f.read() if f is not None else None


def _tree_parts(name: str) -> tuple[str, str, str, str] | None:
    """(prefix, split, class, path) of an archive member inside a dataset tree, else None."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p.startswith(".") or p == "__MACOSX" for p in parts) or not is_image_name(parts[-1] if parts else ""):
        return None
    for k, p in enumerate(parts[:-2]):
        if p in ("train",) + _TEST_SPLITS:
            return "/".join(parts[:k]), p, parts[k + 1], "/".join(parts[k:])
    return None


def _tree_members(path: Path, listing: list[tuple[str, str, str]]) -> Iterator[tuple[str, bytes]]:
    """Images of a tree inside an archive; appends (split, class, path) to ``listing`` as it yields."""
    prefix = None
    try:
        for name, data in _archive_members(path):
            parts = _tree_parts(name)
            if parts is None:
                continue
            if prefix is None:
                prefix = parts[0]
            elif parts[0] != prefix:
                raise UsageError(
                    f"archive {path} holds more than one dataset tree ({prefix or '.'}/ and {parts[0] or '.'}/)"
                )
            listing.append(parts[1:])
            yield f"{path}:{name}", data
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise UsageError(f"cannot read archive {path}: {exc}") from None


def _peek_archive(path: Path, limit: int = 64) -> str | None:
    """'pickle' (official CIFAR-10 python archive), 'tree' (ImageFolder inside) or None."""
    try:
        for i, (name, _) in enumerate(_archive_members(path, read=False)):
            if name.rsplit("/", 1)[-1] in _CIFAR10_FILES:
                return "pickle"
            if _tree_parts(name) is not None:
                return "tree"
            if i >= limit:
                break
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise UsageError(f"cannot read archive {path}: {exc}") from None
    return None


def _is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(_ARCHIVE_SUFFIXES)


class _RestrictedUnpickler(pickle.Unpickler):
    """CIFAR-10 pickles hold dicts, lists, bytes and numpy arrays; refuse anything
    else, so a doctored file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a dataset file")
        return super().find_class(module, name)


def _safe_unpickle(data: bytes, where: str) -> dict:
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # a damaged or foreign file: say which one
        raise UsageError(f"cannot read {where}: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, dict):
        raise UsageError(f"cannot read {where}: not a CIFAR-10 batch")
    return obj


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# ----------------------------------------------------------------- locating


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else $SCALING_SEARCH_CACHE, else ~/.cache/scaling-search."""
    chosen = cache_dir or os.environ.get(ENV_CACHE) or DEFAULT_CACHE
    return Path(chosen).expanduser()


def _data_dir(spec: DataSpec) -> tuple[Path | None, str]:
    if spec.data_dir:
        return Path(spec.data_dir).expanduser(), "data folder"
    env = os.environ.get(ENV_DATA)
    if env:
        return Path(env).expanduser(), f"data folder {ENV_DATA}="
    return None, ""


def _find_cifar10(root: Path) -> _Source | None:
    if root.is_file():
        kind = _peek_archive(root)
        if kind == "pickle":
            return _PickleSource(root)
        return _TreeSource(root, "cifar10", CIFAR10_SIZE) if kind == "tree" else None
    for folder in (root, root / CIFAR10_FOLDER):
        if (folder / "data_batch_1").is_file():
            return _PickleSource(folder)
    for folder in (root, root / "cifar10", root / "cifar-10"):
        if (folder / "train").is_dir() and any((folder / s).is_dir() for s in _TEST_SPLITS):
            return _TreeSource(folder, "cifar10", CIFAR10_SIZE)
    if (root / CIFAR10_ARCHIVE).is_file():
        return _PickleSource(root / CIFAR10_ARCHIVE)
    for entry in sorted(root.iterdir()):
        name = entry.name.lower()
        if name.startswith(("cifar10", "cifar-10")) and _is_archive(entry):
            kind = _peek_archive(entry)
            if kind == "pickle":
                return _PickleSource(entry)
            if kind == "tree":
                return _TreeSource(entry, "cifar10", CIFAR10_SIZE)
    return None


def _find_imagenette(root: Path, checksum: str) -> _Source | None:
    """The archive (preferred: it has a checksum) or the extracted tree, in or at ``root``."""
    if root.is_file():
        return _ImagenetteSource(root, checksum) if _is_archive(root) else None
    if (root / IMAGENETTE_ARCHIVE).is_file():
        return _ImagenetteSource(root / IMAGENETTE_ARCHIVE, checksum)
    for folder in (root / IMAGENETTE_FOLDER, root):
        if (folder / "train").is_dir() and (folder / "val").is_dir():
            if any((folder / "train" / wnid).is_dir() for wnid in IMAGENETTE_CLASSES):
                return _ImagenetteSource(folder, checksum)
    for entry in sorted(root.iterdir()):
        if entry.name.lower().startswith("imagenette") and _is_archive(entry):
            return _ImagenetteSource(entry, checksum)
    return None


def _download_cifar10(spec: DataSpec, cache: Path, progress: bool) -> Path:
    from .download import download

    target = cache / "downloads" / CIFAR10_ARCHIVE
    return download(
        spec.download_url or CIFAR10_URL, target, spec.download_checksum or CIFAR10_CHECKSUM, progress=progress
    )


def _locate(spec: DataSpec, cache: Path, progress: bool) -> _Source:
    root, what = _data_dir(spec)
    if spec.kind == "imagefolder":
        path = Path(spec.name.split(":", 1)[1]).expanduser()
        if not path.is_absolute() and root is not None:
            path = root / path
        if not path.exists():
            raise UsageError(
                f"imagefolder {path} does not exist: give a folder (or archive) with train/ and test/ class folders"
            )
        if path.is_file() and not _is_archive(path):
            raise UsageError(f"imagefolder {path} is a file but not a tar or zip archive")
        return _TreeSource(path, _safe_label(path.name))
    if spec.kind == "imagenette":
        if root is None:
            raise UsageError(
                f"Imagenette needs a data folder: pass --data-dir DIR (the folder holding {IMAGENETTE_ARCHIVE}) or "
                f"set {ENV_DATA}"
            )
        if not root.exists():
            raise UsageError(
                f"{what}{'' if what.endswith('=') else ' '}{root} does not exist: point it at the folder that "
                "holds the dataset"
            )
        found = _find_imagenette(root, spec.archive_checksum or IMAGENETTE_CHECKSUM)
        if found is None:
            raise UsageError(
                f"no Imagenette in {root}: expected {IMAGENETTE_ARCHIVE} or its extracted {IMAGENETTE_FOLDER}/ "
                "(train/<wnid>/, val/<wnid>/): put it there or point to the folder that holds it"
            )
        return found
    found = None
    if root is not None:
        if not root.exists():
            raise UsageError(
                f"{what}{'' if what.endswith('=') else ' '}{root} does not exist: point it at the folder that "
                "holds the dataset"
            )
        found = _find_cifar10(root)
        if found is not None:
            return found
        if not spec.allow_download:  # a folder was named: a download elsewhere would surprise
            raise UsageError(
                f"no CIFAR-10 in {root}: expected {CIFAR10_FOLDER}/, {CIFAR10_ARCHIVE}, train/ and test/ class "
                "folders, "
                "or an archive of them (cifar10*.tar.gz): put the dataset there or point to the folder that holds it"
            )
    downloaded = cache / "downloads" / CIFAR10_ARCHIVE  # a download from an earlier run
    if downloaded.is_file():
        return _PickleSource(downloaded)
    if spec.allow_download:
        return _PickleSource(_download_cifar10(spec, cache, progress))
    raise UsageError(
        f"CIFAR-10 needs a data folder: pass --data-dir DIR or set {ENV_DATA}, or fetch it once with "
        "'scaling-search train --download'"
    )


def _safe_label(name: str) -> str:
    label = "".join(c if c.isalnum() or c in "-_" else "-" for c in name.split(".")[0])
    return label or "imagefolder"


# ------------------------------------------------------------------- loading


def load_dataset(spec: DataSpec, cache_dir: str | Path | None = None, progress: bool = False) -> Dataset:
    """The dataset of ``spec``, from the decode cache when it is there and sound.

    A missing or damaged cache file is (re)built from the source and written
    atomically; a cache folder that cannot be written only costs the reuse.
    """
    cache = cache_root(cache_dir)
    source = _locate(spec, cache, progress)
    size = spec.image_size
    key_text = json.dumps(
        {
            "format": _CACHE_FORMAT,
            "label": source.label,
            "source": source.fingerprint(),
            "storage_size": size,
        },
        sort_keys=True,
    )
    key = hashlib.sha256(key_text.encode()).hexdigest()[:20]
    path = cache / "datasets" / f"{source.label}-{size}px-{key}.arrays"
    try:
        arrays, meta = load_arrays(path)
        return Dataset(
            arrays["train_x"],
            arrays["train_y"],
            arrays["test_x"],
            arrays["test_y"],
            tuple(meta["classes"]),
            source=meta.get("source", ""),
            from_cache=True,
            native_size=int(meta.get("native_size") or source.native_size or size),
        )
    except FileNotFoundError:
        pass
    except (CacheCorrupt, KeyError, ValueError, TypeError) as exc:
        log.warning("decode cache %s is damaged (%s); rebuilding it", path, exc)
    dataset = source.decode(size, progress)
    try:
        save_arrays(
            path,
            {
                "train_x": dataset.train_x,
                "train_y": dataset.train_y,
                "test_x": dataset.test_x,
                "test_y": dataset.test_y,
            },
            {
                "classes": list(dataset.classes),
                "source": dataset.source,
                "storage_size": size,
                "native_size": dataset.native_size,
            },
        )
    except OSError as exc:
        log.warning("could not write the decode cache %s (%s); the next load decodes again", path, exc)
    return dataset
