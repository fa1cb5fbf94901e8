"""Datasets: every accepted form of CIFAR-10, image folders, the decode cache,
the checked download (against a loopback HTTP server) and the error messages."""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import CIFAR10_ARCHIVE, SHARED_DATA, assert_run_outputs, read_csv
from PIL import Image

from scaling_search.data.cache import load_arrays
from scaling_search.data.sources import (
    IMAGENETTE_CLASSES,
    IMAGENETTE_COUNTS,
    Dataset,
    DataSpec,
    balanced_order,
    balanced_subset,
    load_dataset,
    resolution_statement,
    upsampled,
)
from scaling_search.errors import UsageError

CLASSES = ("cat", "dog", "frog")


def _write_image(path: Path, size: tuple[int, int], color, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def _make_tree(root: Path, per_class: int = 4, test_split: str = "test") -> Path:
    """A tiny ImageFolder tree: a solid colour per class, varied sizes and formats."""
    colors = {"cat": (250, 10, 10), "dog": (10, 250, 10), "frog": (10, 10, 250)}
    sizes = [(40, 30), (17, 33), (64, 64), (8, 8)]
    for split, n in (("train", per_class), (test_split, 2)):
        for klass in CLASSES:
            for i in range(n):
                suffix = ".png" if i % 2 else ".jpg"
                _write_image(root / split / klass / f"{i:03d}{suffix}", sizes[i % len(sizes)], colors[klass])
    return root


def _cifar_batches(n: int, seed: int = 0) -> dict[str, dict]:
    """Small batches in the official python-pickle layout (CHW planes, uint8)."""
    rng = np.random.default_rng(seed)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = {
            b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, size=n)],
        }
    batches["batches.meta"] = {
        b"label_names": [
            c.encode()
            for c in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
        ]
    }
    return batches


def _write_pickles(folder: Path, batches: dict[str, dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in batches.items():
        (folder / name).write_bytes(pickle.dumps(content, protocol=2))
    return folder


def _expected_train(batches: dict[str, dict]) -> tuple[np.ndarray, np.ndarray]:
    names = [f"data_batch_{i}" for i in range(1, 6)]
    x = np.concatenate([batches[n][b"data"] for n in names]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    y = np.concatenate([batches[n][b"labels"] for n in names])
    return x, y


def _tar(source: Path, archive: Path, arcname: str) -> Path:
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(source, arcname=arcname)
    return archive


# ------------------------------------------------------------ CIFAR-10


def test_cifar10_from_the_shared_jpeg_archive(cifar10, data_cache, monkeypatch):
    assert cifar10.train_x.shape == (50000, 32, 32, 3) and cifar10.test_x.shape == (10000, 32, 32, 3)
    assert cifar10.train_x.dtype == np.uint8 and cifar10.train_y.dtype == np.int64
    assert cifar10.classes == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    assert np.bincount(cifar10.train_y).tolist() == [5000] * 10
    assert np.bincount(cifar10.test_y).tolist() == [1000] * 10
    # The published CIFAR-10 channel means (0.491, 0.482, 0.447), in 0..255.
    mean = cifar10.train_x.reshape(-1, 3).mean(0)
    np.testing.assert_allclose(mean, [125.3, 123.0, 113.9], atol=1.0)

    decoded = []
    real_open = Image.open
    # Instead of a wall-clock limit: a cached load decodes no image (decoding 60,000 JPEGs is what takes time).
    monkeypatch.setattr(Image, "open", lambda *a, **k: decoded.append(a) or real_open(*a, **k))
    again = load_dataset(DataSpec("cifar10", data_dir=str(SHARED_DATA)), cache_dir=data_cache)
    assert again.from_cache and not cifar10.from_cache and decoded == []
    assert np.array_equal(again.train_x, cifar10.train_x) and np.array_equal(again.test_y, cifar10.test_y)


def test_cifar10_archive_given_directly_and_through_the_environment(cifar10, data_cache, monkeypatch):
    direct = load_dataset(DataSpec("cifar10", data_dir=str(CIFAR10_ARCHIVE)), cache_dir=data_cache)
    assert direct.from_cache and np.array_equal(direct.test_x, cifar10.test_x)
    monkeypatch.setenv("SCALING_SEARCH_DATA", str(SHARED_DATA))
    from_env = load_dataset(DataSpec("cifar10"), cache_dir=data_cache)
    assert from_env.from_cache and np.array_equal(from_env.train_y, cifar10.train_y)


def test_cifar10_pickle_folder_and_archive(tmp_path):
    batches = _cifar_batches(20)
    folder = _write_pickles(tmp_path / "data" / "cifar-10-batches-py", batches)
    x, y = _expected_train(batches)
    ds = load_dataset(DataSpec("cifar10", data_dir=str(tmp_path / "data")), cache_dir=tmp_path / "cache")
    assert np.array_equal(ds.train_x, x) and np.array_equal(ds.train_y, y)
    assert ds.test_x.shape == (20, 32, 32, 3) and ds.classes[0] == "airplane"

    archive_dir = tmp_path / "archived"
    archive_dir.mkdir()
    _tar(folder, archive_dir / "cifar-10-python.tar.gz", "cifar-10-batches-py")
    ds2 = load_dataset(DataSpec("cifar10", data_dir=str(archive_dir)), cache_dir=tmp_path / "cache")
    assert not ds2.from_cache  # a different source is a different cache entry
    assert np.array_equal(ds2.train_x, x) and np.array_equal(ds2.test_y, batches["test_batch"][b"labels"])


def test_cifar10_pickle_resized_to_the_storage_size(tmp_path):
    batches = _cifar_batches(4)
    _write_pickles(tmp_path / "cifar-10-batches-py", batches)
    ds = load_dataset(DataSpec("cifar10", data_dir=str(tmp_path), storage_size=16), cache_dir=tmp_path / "cache")
    assert ds.train_x.shape == (20, 16, 16, 3) and ds.test_x.shape == (4, 16, 16, 3)


def test_cifar10_pickle_that_would_run_code_is_refused(tmp_path):
    import os

    batches = _cifar_batches(2)
    folder = _write_pickles(tmp_path / "cifar-10-batches-py", batches)

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo owned",))

    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": Exploit()}))
    with pytest.raises(UsageError, match="batches.meta"):
        load_dataset(DataSpec("cifar10", data_dir=str(tmp_path)), cache_dir=tmp_path / "cache")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def loopback_server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *a, **k: _QuietHandler(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_checked_against_its_checksum(tmp_path, loopback_server, monkeypatch):
    monkeypatch.delenv("SCALING_SEARCH_DATA", raising=False)
    www, base = loopback_server
    batches = _cifar_batches(10, seed=3)
    folder = _write_pickles(tmp_path / "build" / "cifar-10-batches-py", batches)
    archive = _tar(folder, www / "cifar-10-python.tar.gz", "cifar-10-batches-py")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    url = f"{base}/cifar-10-python.tar.gz"

    # Not allowed to download: says how to get the data.
    with pytest.raises(UsageError, match="--data-dir"):
        load_dataset(DataSpec("cifar10"), cache_dir=tmp_path / "none")

    # Wrong checksum: refused, nothing left behind.
    bad_cache = tmp_path / "bad-cache"
    spec = DataSpec("cifar10", allow_download=True, download_url=url, download_checksum="sha256:" + "0" * 64)
    with pytest.raises(UsageError, match="checksum"):
        load_dataset(spec, cache_dir=bad_cache)
    assert not [p for p in bad_cache.rglob("*") if p.is_file()]

    # Right checksum (sha256, then md5): downloaded, verified, loaded.
    good_cache = tmp_path / "good-cache"
    spec = DataSpec("cifar10", allow_download=True, download_url=url, download_checksum="sha256:" + digest)
    ds = load_dataset(spec, cache_dir=good_cache)
    x, y = _expected_train(batches)
    assert np.array_equal(ds.train_x, x) and np.array_equal(ds.train_y, y)
    assert (good_cache / "downloads" / "cifar-10-python.tar.gz").read_bytes() == archive.read_bytes()
    # Later runs find the earlier download without being allowed to download.
    assert load_dataset(DataSpec("cifar10"), cache_dir=good_cache).from_cache
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    ds_md5 = load_dataset(
        DataSpec("cifar10", allow_download=True, download_url=url, download_checksum="md5:" + md5),
        cache_dir=tmp_path / "md5-cache",
    )
    assert np.array_equal(ds_md5.test_x, ds.test_x)

    # A missing file on the server: a clear error, nothing kept.
    gone = tmp_path / "gone-cache"
    with pytest.raises(UsageError, match="could not download"):
        load_dataset(
            DataSpec(
                "cifar10", allow_download=True, download_url=f"{base}/nothing.tar.gz", download_checksum="md5:" + md5
            ),
            cache_dir=gone,
        )
    assert not [p for p in gone.rglob("*") if p.is_file()]


# --------------------------------------------------------- image folders


def test_imagefolder_of_varied_sizes_is_resized_to_the_storage_size(tmp_path):
    root = _make_tree(tmp_path / "pets")
    _write_image(root / "train" / "cat" / "gray.png", (30, 50), 128, mode="L")
    _write_image(root / "train" / "dog" / "alpha.png", (21, 13), (10, 250, 10, 128), mode="RGBA")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    ds = load_dataset(DataSpec(f"imagefolder:{root}", storage_size=24), cache_dir=tmp_path / "cache")
    assert ds.classes == CLASSES
    assert ds.train_x.shape == (14, 24, 24, 3) and ds.test_x.shape == (6, 24, 24, 3)
    assert np.bincount(ds.train_y).tolist() == [5, 5, 4] and np.bincount(ds.test_y).tolist() == [2, 2, 2]
    # Each class is a solid colour: its dominant channel survives decoding and resizing.
    for x, y in ((ds.train_x, ds.train_y), (ds.test_x, ds.test_y)):
        for label in range(3):
            pixels = x[y == label].reshape(-1, 3).astype(int)
            colored = pixels[(pixels.max(1) - pixels.min(1)) > 100]  # skip the gray image
            assert (colored.argmax(1) == label).all()


def test_imagefolder_with_val_split_and_as_archive(tmp_path):
    root = _make_tree(tmp_path / "tree", test_split="val")
    folder = load_dataset(DataSpec(f"imagefolder:{root}", storage_size=8), cache_dir=tmp_path / "cache")
    archive = _tar(root, tmp_path / "tree.tar.gz", "nested/tree")
    packed = load_dataset(DataSpec(f"imagefolder:{archive}", storage_size=8), cache_dir=tmp_path / "cache")
    assert packed.classes == folder.classes
    assert np.array_equal(packed.train_x, folder.train_x) and np.array_equal(packed.test_y, folder.test_y)
    # Relative paths resolve against the data folder.
    rel = load_dataset(
        DataSpec("imagefolder:tree", data_dir=str(tmp_path), storage_size=8), cache_dir=tmp_path / "cache"
    )
    assert rel.from_cache and np.array_equal(rel.train_x, folder.train_x)


def test_cifar10_as_image_tree_folder(tmp_path):
    _make_tree(tmp_path / "data" / "cifar10")
    ds = load_dataset(
        DataSpec("cifar10", data_dir=str(tmp_path / "data"), storage_size=8), cache_dir=tmp_path / "cache"
    )
    assert ds.classes == CLASSES and ds.train_x.shape == (12, 8, 8, 3)


def test_unreadable_image_is_named(tmp_path):
    root = _make_tree(tmp_path / "broken")
    bad = root / "train" / "dog" / "001.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(UsageError, match="cannot read image") as err:
        load_dataset(DataSpec(f"imagefolder:{root}"), cache_dir=tmp_path / "cache")
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    truncated = root / "train" / "dog" / "001.jpg"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(UsageError, match=str(truncated)):
        load_dataset(DataSpec(f"imagefolder:{root}"), cache_dir=tmp_path / "cache")
    # Inside an archive the member is named too.
    archive = _tar(root, tmp_path / "broken.tar.gz", "broken")
    with pytest.raises(UsageError, match="broken/train/dog/001.jpg"):
        load_dataset(DataSpec(f"imagefolder:{archive}"), cache_dir=tmp_path / "cache")


@pytest.mark.parametrize(
    "arrange, fragment",
    [
        (lambda root: None, "does not exist"),
        (lambda root: root.mkdir(), "needs train/ and test/"),
        (lambda root: ((root / "train").mkdir(parents=True), (root / "test").mkdir()), "no images"),
        (lambda root: (_make_tree(root), (root / "train" / "empty").mkdir()), "has no images"),
        (
            lambda root: (_make_tree(root), _write_image(root / "test" / "newt" / "a.png", (4, 4), 0)),
            "only in test: newt",
        ),
    ],
    ids=["missing", "empty", "no-classes", "empty-class", "classes-differ"],
)
def test_imagefolder_problems_are_one_clear_line(tmp_path, arrange, fragment):
    root = tmp_path / "ds"
    arrange(root)
    with pytest.raises(UsageError) as err:
        load_dataset(DataSpec(f"imagefolder:{root}"), cache_dir=tmp_path / "cache")
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_cifar10_folder_problems(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_dataset(DataSpec("cifar10", data_dir=str(tmp_path / "nowhere")), cache_dir=tmp_path / "cache")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no CIFAR-10 in"):
        load_dataset(DataSpec("cifar10", data_dir=str(tmp_path / "empty")), cache_dir=tmp_path / "cache")
    with pytest.raises(UsageError, match="unknown dataset"):
        DataSpec("mnist")
    with pytest.raises(UsageError, match="storage size"):
        DataSpec("cifar10", storage_size=0)


# ----------------------------------------------------------- decode cache


def test_damaged_cache_is_detected_and_rebuilt(tmp_path, caplog):
    root = _make_tree(tmp_path / "pets")
    spec = DataSpec(f"imagefolder:{root}", storage_size=16)
    cache = tmp_path / "cache"
    first = load_dataset(spec, cache_dir=cache)
    (cache_file,) = (cache / "datasets").glob("*.arrays")
    assert load_dataset(spec, cache_dir=cache).from_cache

    size = cache_file.stat().st_size
    with open(cache_file, "r+b") as f:
        f.truncate(size - 100)
    with caplog.at_level(logging.WARNING, logger="scaling_search.data.sources"):
        rebuilt = load_dataset(spec, cache_dir=cache)
    assert not rebuilt.from_cache and "damaged" in caplog.text
    assert np.array_equal(rebuilt.train_x, first.train_x) and np.array_equal(rebuilt.test_y, first.test_y)
    assert cache_file.stat().st_size == size and load_dataset(spec, cache_dir=cache).from_cache

    # Same length, one pixel changed: the checksum catches it.
    data = bytearray(cache_file.read_bytes())
    data[-50] ^= 0xFF
    cache_file.write_bytes(bytes(data))
    again = load_dataset(spec, cache_dir=cache)
    assert not again.from_cache and np.array_equal(again.train_x, first.train_x)
    assert not [p for p in (cache / "datasets").iterdir() if p.suffix != ".arrays"]  # no temporary files left


def test_changed_images_are_decoded_again(tmp_path):
    root = _make_tree(tmp_path / "pets")
    spec = DataSpec(f"imagefolder:{root}", storage_size=8)
    load_dataset(spec, cache_dir=tmp_path / "cache")
    _write_image(root / "train" / "cat" / "extra.png", (9, 9), (1, 1, 1))
    changed = load_dataset(spec, cache_dir=tmp_path / "cache")
    assert not changed.from_cache and changed.train_x.shape[0] == 13


# ---------------------------------------------------------------- subsets


def test_balanced_subsets_are_balanced_nested_and_seeded():
    labels = np.repeat(np.arange(10), [50] * 9 + [20])
    order = balanced_order(labels, seed=1)
    assert sorted(order.tolist()) == list(range(len(labels)))
    for n in (10, 35, 200):
        counts = np.bincount(labels[order[:n]], minlength=10)
        assert counts.max() - counts.min() <= 1
    assert np.array_equal(balanced_subset(labels, 30, seed=1), order[:30])
    assert np.array_equal(balanced_order(labels, seed=1), order)
    assert not np.array_equal(balanced_order(labels, seed=2), order)
    # Once the small class runs out, the rest stay balanced among themselves.
    rest = np.bincount(labels[order[:400]], minlength=10)
    assert rest[9] == 20 and rest[:9].max() - rest[:9].min() <= 1
    with pytest.raises(UsageError, match="only 470"):
        balanced_subset(labels, 1000, seed=0)


def test_dataset_checks_its_arrays():
    x = np.zeros((2, 4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match=r"train_y must be int64 \[2\], got int32"):
        Dataset(x, np.zeros(2, np.int32), x, np.zeros(2, np.int64), ("a",))
    with pytest.raises(ValueError, match=r"train_x must be uint8 \[N, H, W, 3\], got float32"):
        Dataset(x.astype(np.float32), np.zeros(2, np.int64), x, np.zeros(2, np.int64), ("a",))


# ------------------------------------------------------------- Imagenette

IMAGENETTE_ARCHIVE = SHARED_DATA / "imagenette2-128.tar.gz"
WNIDS = tuple(IMAGENETTE_CLASSES)


def _fake_imagenette(root: Path, train: int = 3, val: int = 2) -> Path:
    """An Imagenette-shaped tree (the ten wnids, train/ and val/, a README) of
    128 px JPEGs, one solid colour per class, under root/imagenette2-128."""
    tree = root / "imagenette2-128"
    for k, wnid in enumerate(WNIDS):
        color = (25 * k, 255 - 25 * k, (97 * k) % 256)
        for split, n in (("train", train), ("val", val)):
            for i in range(n):
                _write_image(tree / split / wnid / f"ILSVRC2012_val_{k:04d}{i:04d}.jpg", (128, 128), color)
    (tree / "README.txt").write_text("a test tree\n")
    return tree


def _fake_imagenette_archive(root: Path) -> tuple[Path, str]:
    """The fake tree packed as data/imagenette2-128.tar.gz, and its 'sha256:...'."""
    tree = _fake_imagenette(root / "build")
    (root / "data").mkdir()
    archive = _tar(tree, root / "data" / "imagenette2-128.tar.gz", "imagenette2-128")
    return archive, "sha256:" + hashlib.sha256(archive.read_bytes()).hexdigest()


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


@pytest.fixture(scope="module")
def imagenette(data_cache):
    """The real shared archive, verified against the shipped checksum, stored at 48 px
    (a small cache: decoding at 48 px lets libjpeg scale by 2 for free)."""
    assert IMAGENETTE_ARCHIVE.is_file(), f"test data missing: {IMAGENETTE_ARCHIVE}"
    return load_dataset(DataSpec("imagenette", data_dir=str(SHARED_DATA), storage_size=48), cache_dir=data_cache)


def test_imagenette_archive_found_verified_decoded_and_cached(tmp_path):
    archive, checksum = _fake_imagenette_archive(tmp_path)
    spec = DataSpec("imagenette", data_dir=str(archive.parent), archive_checksum=checksum)
    cache = tmp_path / "cache"
    ds = load_dataset(spec, cache_dir=cache)
    assert not ds.from_cache and "sha256 verified" in ds.source
    assert ds.train_x.shape == (30, 128, 128, 3) and ds.test_x.shape == (20, 128, 128, 3)  # stored at native 128
    assert ds.classes == (
        "tench",
        "English springer",
        "cassette player",
        "chain saw",
        "church",
        "French horn",
        "garbage truck",
        "gas pump",
        "golf ball",
        "parachute",
    )
    assert ds.native_size == 128 and ds.detail_size == 128
    # Labels follow the wnid order: class k is the colour written for the k-th wnid (JPEG is lossy: near it).
    for x, y in ((ds.train_x, ds.train_y), (ds.test_x, ds.test_y)):
        centre = x[:, 64, 64].astype(int)
        expected = np.array([(25 * k, 255 - 25 * k, (97 * k) % 256) for k in y])
        assert np.abs(centre - expected).max() <= 6
    assert np.bincount(ds.train_y).tolist() == [3] * 10 and np.bincount(ds.test_y).tolist() == [2] * 10

    (cache_file,) = (cache / "datasets").glob("imagenette-128px-*.arrays")
    _, meta = load_arrays(cache_file)
    assert meta["native_size"] == 128 and meta["classes"][0] == "tench"
    again = load_dataset(spec, cache_dir=cache)
    assert again.from_cache and again.native_size == 128 and again.classes == ds.classes
    assert np.array_equal(again.train_x, ds.train_x) and np.array_equal(again.test_y, ds.test_y)
    # The archive named directly is the same source; stored smaller, the images hold detail only up to that size.
    small = load_dataset(
        DataSpec("imagenette", data_dir=str(archive), archive_checksum=checksum, storage_size=32), cache_dir=cache
    )
    assert small.image_size == 32 and small.native_size == 128 and small.detail_size == 32


def test_imagenette_wrong_checksum_or_truncated_archive_is_refused(tmp_path):
    archive, checksum = _fake_imagenette_archive(tmp_path)
    cache = tmp_path / "cache"
    # The real constant is the default: this archive is not the published one.
    with pytest.raises(UsageError, match="fails its checksum") as err:
        load_dataset(DataSpec("imagenette", data_dir=str(archive.parent)), cache_dir=cache)
    assert "\n" not in str(err.value) and "2f97c81b" in str(err.value)
    assert _files(cache) == []

    # A truncated copy: caught by the checksum before any decoding ...
    cut = tmp_path / "cut" / "imagenette2-128.tar.gz"
    cut.parent.mkdir()
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size * 2 // 3])
    with pytest.raises(UsageError, match="truncated, damaged"):
        load_dataset(DataSpec("imagenette", data_dir=str(cut.parent), archive_checksum=checksum), cache_dir=cache)
    assert _files(cache) == []
    # ... and, vouched for by its own checksum, by the decoder: one line, nothing cached.
    own = "sha256:" + hashlib.sha256(cut.read_bytes()).hexdigest()
    with pytest.raises(UsageError, match="cannot read archive") as err:
        load_dataset(DataSpec("imagenette", data_dir=str(cut.parent), archive_checksum=own), cache_dir=cache)
    assert "\n" not in str(err.value)
    assert _files(cache) == []

    with pytest.raises(UsageError, match="is not ALGORITHM:HEX"):
        DataSpec("imagenette", archive_checksum="abc")
    with pytest.raises(UsageError, match="CIFAR-10 only"):
        DataSpec("imagenette", allow_download=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no Imagenette in"):
        load_dataset(DataSpec("imagenette", data_dir=str(tmp_path / "empty")), cache_dir=cache)


def test_imagenette_tree_is_checked_by_its_image_counts(tmp_path):
    # A tree of the wrong size: refused before decoding, naming the first short class.
    _fake_imagenette(tmp_path / "small")
    with pytest.raises(UsageError, match=r"train/n01440764 has 3 images, expected 963") as err:
        load_dataset(DataSpec("imagenette", data_dir=str(tmp_path / "small")), cache_dir=tmp_path / "cache")
    assert "\n" not in str(err.value) and _files(tmp_path / "cache") == []

    # The real tree, extracted: accepted on its counts (stored at 8 px to keep the decode short).
    with tarfile.open(IMAGENETTE_ARCHIVE) as tf:
        tf.extractall(tmp_path / "real", filter="data")
    spec = DataSpec("imagenette", data_dir=str(tmp_path / "real"), storage_size=8)
    ds = load_dataset(spec, cache_dir=tmp_path / "cache")
    assert "image counts verified" in ds.source and ds.classes[-1] == "parachute" and ds.native_size == 128
    assert tuple(np.bincount(ds.train_y)) == IMAGENETTE_COUNTS["train"]
    assert tuple(np.bincount(ds.test_y)) == IMAGENETTE_COUNTS["val"]
    # One image gone: the counts no longer match.
    next((tmp_path / "real" / "imagenette2-128" / "val" / "n03888257").iterdir()).unlink()
    with pytest.raises(UsageError, match=r"val/n03888257 has 389 images, expected 390 \(3,924 of 3,925"):
        load_dataset(spec, cache_dir=tmp_path / "cache")


def test_shared_imagenette_archive_matches_the_shipped_checksum(imagenette):
    assert "sha256 verified" in imagenette.source
    assert imagenette.train_x.shape == (9469, 48, 48, 3) and imagenette.test_x.shape == (3925, 48, 48, 3)
    assert tuple(np.bincount(imagenette.train_y)) == IMAGENETTE_COUNTS["train"]
    assert tuple(np.bincount(imagenette.test_y)) == IMAGENETTE_COUNTS["val"]
    assert imagenette.classes[0] == "tench" and imagenette.classes[4] == "church"
    assert imagenette.native_size == 128 and imagenette.detail_size == 48
    # Real photographs, not solid test colours: a wide spread of pixel values in every image.
    assert imagenette.train_x[:200].reshape(200, -1).std(axis=1).min() > 10


def test_tiny_imagenette_training_beats_chance(imagenette):
    from scaling_search.models import get_config
    from scaling_search.train.loop import TrialSpec, train_trial
    from scaling_search.train.recipe import Recipe, Runtime

    spec = DataSpec("imagenette", data_dir=str(SHARED_DATA), storage_size=48)
    model = get_config("efficientnet", width=0.25, depth=0.25, resolution=40, num_classes=10)
    recipe = Recipe(train_subset=600, test_subset=500, epochs=3, batch_size=32, lr=0.1)
    result = train_trial(TrialSpec(model, spec, recipe), Runtime(device="cpu"), dataset=imagenette)
    # Chance is 0.10; 500 held-out images put its 99.99% upper bound near 0.16. Measured: 0.256 (seed 0).
    assert result.accuracy > 0.16, result.epoch_accuracies


def test_upsampled_resolutions_are_those_above_the_detail_size():
    from scaling_search.scaling import Coefficients, extrapolate

    assert upsampled(129, 128) and not upsampled(128, 128) and not upsampled(88, 128)
    assert DataSpec("imagenette").native_size == 128 and DataSpec("imagenette").image_size == 128
    assert DataSpec("cifar10").native_size == 32 and DataSpec("cifar10", storage_size=64).image_size == 64
    assert DataSpec("imagefolder:x").native_size is None and DataSpec("imagefolder:x").image_size == 32
    grid = [Coefficients(1.0, 1.1, 1.3), Coefficients(1.2, 1.1, 1.15), Coefficients(2.0, 1.0, 1.0)]
    # A baseline above the stored size: every candidate, the baseline included, is upsampled.
    assert all(upsampled(extrapolate(c, 1, 144).resolution, 128) for c in grid)
    # The shipped space's 88 px baseline: none of these is.
    assert [extrapolate(c, 1, 88).resolution for c in grid] == [112, 104, 88]
    assert not any(upsampled(extrapolate(c, 1, 88).resolution, 128) for c in grid)
    with pytest.raises(UsageError, match="resolution"):
        upsampled(0, 128)
    assert resolution_statement(128, 128, [88, 120, 104, 88]) == (
        "images are 128 px natively; trained at 88-120 px, all within the 128 px of real detail."
    )
    flagged = resolution_statement(128, 128, [extrapolate(c, 1, 144).resolution for c in grid] + [144])
    assert "144, 168, 184 px exceed the 128 px of real detail" in flagged and "upsampled" in flagged
    # CIFAR-10 stored at 32: the default GPU study's 64-88 px are all upsampled.
    assert "64, 88 px exceed the 32 px" in resolution_statement(32, 32, [64, 88])
    smaller = resolution_statement(128, 48, [64])
    assert "stored at 48 px" in smaller and "64 px exceed the 48 px" in smaller


def test_train_command_on_imagenette(imagenette, data_cache, cli):
    env = {"SCALING_SEARCH_CACHE": str(data_cache), "OMP_NUM_THREADS": "1"}
    args = ("train", "--data", "imagenette", "--data-dir", str(SHARED_DATA), "--storage-size", "48")
    proc = cli(
        *args,
        *("--width", "0.25", "--depth", "0.25", "--resolution", "32", "--epochs", "1"),
        *("--subset", "64", "--test-subset", "64", "--batch-size", "16", "--device", "cpu", "--json"),
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["resolution"] == 32 and result["train_images"] == 64 and result["test_images"] == 64
    from conftest import assert_usage_error

    assert_usage_error(cli("train", "--data", "imagenet", env=env), "unknown dataset", "imagenette")
    assert_usage_error(cli(*args, "--download", env=env), "CIFAR-10 only")


def test_imagenette_space_validates_and_its_smoke_run_writes_every_output(imagenette, data_cache, cli, tmp_path):
    import yaml

    from scaling_search.space import load_space, preset_path

    space = load_space(preset_path("imagenette"))
    assert space.data.name == "imagenette" and space.data.storage_size == 128
    assert space.constraint.mode == "measured" and not space.pruning.enabled and space.seeds == (0, 1)
    assert 80 <= space.baseline.resolution <= 96 and not upsampled(space.baseline.resolution, 128)
    assert DataSpec(space.data.name, storage_size=space.data.storage_size).image_size == 128

    # The same space at smoke size: a quarter-size network on 128 images, 1 epoch, at 48 px.
    raw = yaml.safe_load(preset_path("imagenette").read_text())
    raw.update(name="imagenette-smoke", baseline={"model": "efficientnet", "width": 0.25, "depth": 0.25})
    raw["baseline"]["resolution"] = 48
    raw["data"]["storage_size"] = 48
    raw["grid"].update(max_alpha=1.2, max_beta=1.2)
    raw["constraint"].update(tolerance=0.1, resolution_multiple=4)
    raw["proxy"].update(epochs=1, batch_size=32, lr=0.1, train_subset=128, test_subset=128)
    raw["extrapolation"].update(max_phi=2, detection=False)
    # One round of the space's two seeds: the race and the fidelity check have tests of their own.
    raw["racing"]["enabled"] = False
    raw["fidelity"]["enabled"] = False
    small = tmp_path / "smoke.yaml"
    small.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    env = {"SCALING_SEARCH_CACHE": str(data_cache), "OMP_NUM_THREADS": "1"}
    proc = cli("run", "--space", str(small), "--data-dir", str(SHARED_DATA), "--out", str(out), env=env)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert_run_outputs(out)
    rows = read_csv(out / "trials.csv")
    assert rows and all(r["state"] == "COMPLETE" for r in rows) and {r["seed"] for r in rows} == {"0", "1"}
    assert "imagenette" in proc.stdout and "10 classes" in proc.stdout
