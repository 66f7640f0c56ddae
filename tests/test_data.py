"""Every data source on fixture files made here, including corrupt and mismatched ones."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ganops.config import validate_params
from ganops.data import DataError, load_manifest, load_split
from ganops.data.images import fit_array, fit_pil
from ganops.stages.prepare import prepare


def params(**data):
    return validate_params({"data": data})


def prepared_files(root: Path) -> dict[str, bytes]:
    folder = root / "data" / "prepared"
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- bundled sets -------------------------------------------------------------------------------


@pytest.mark.stage
def test_mnist5k_pads_28_to_32_and_splits_by_class(tmp_path):
    manifest = prepare(params(source="mnist5k", resolution=32), tmp_path)
    train_x, train_y = load_split(tmp_path / "data" / "prepared", "train")
    test_x, test_y = load_split(tmp_path / "data" / "prepared", "test")
    assert train_x.dtype == np.uint8 and train_x.shape == (4500, 1, 32, 32)
    assert test_x.shape == (500, 1, 32, 32)
    assert manifest.num_train == 4500 and manifest.num_test == 500
    # 28x28 digits centred on a 2-pixel zero border, not resampled
    assert train_x[:, :, :2].max() == 0 and train_x[:, :, -2:].max() == 0
    assert train_x.max() == 255
    assert sum(manifest.counts["train"].values()) == 4500
    assert manifest.class_names == [str(d) for d in range(10)]
    # stratified: every class is in the test split in about its share
    for name, count in manifest.counts["test"].items():
        assert abs(count - 0.1 * (count + manifest.counts["train"][name])) <= 1
    # shuffled, not class-sorted
    assert len(set(train_y[:20].tolist())) > 3
    assert manifest.source_checksum.startswith("sha256:")


@pytest.mark.stage
def test_digits_scaled_to_full_range(tmp_path):
    manifest = prepare(params(source="digits", resolution=8, channels=3), tmp_path)
    images, labels = load_split(tmp_path / "data" / "prepared", "train")
    assert images.shape[1:] == (3, 8, 8)
    assert images.max() == 255
    assert manifest.num_train + manifest.num_test == 1797
    assert np.array_equal(images[:, 0], images[:, 2])  # gray repeated into RGB


@pytest.mark.stage
def test_sources_without_a_validation_split_prepare_as_before(tmp_path):
    """Only the sources that set images aside for choosing (mnist, fashion-mnist) get a third split:
    every other prepared folder is byte for byte what it was before validation splits existed (these
    digests were recorded then), so the default pipeline's data/prepared does not change."""
    import hashlib

    manifest = prepare(params(source="mnist5k"), tmp_path / "mnist5k")
    assert list(manifest.files) == ["train", "test"] and list(manifest.counts) == ["train", "test"]
    manifest_file = prepared_files(tmp_path / "mnist5k")["manifest.json"]
    assert hashlib.sha256(manifest_file).hexdigest() == "3fe976ded7d03e4280b8dcf1636023994c9d5432563a21384c3eb444d3d14d97"
    manifest = prepare(params(source="digits", resolution=8), tmp_path / "digits")
    assert (manifest.checksum("train"), manifest.checksum("test")) == (
        "sha256:2d1bb3ebe4ffb29a4b35e996999b091b7fb3dea30d9c7323e182e2ec51c84768",
        "sha256:b7ea4c23935678f6eb5ca934bd5becff235ba33c8d92550c465dc2c93589c636")
    with pytest.raises(DataError, match="no 'validation' split \\(has train, test\\); the mnist and fashion-mnist"):
        load_split(tmp_path / "digits" / "data" / "prepared", "validation")


@pytest.mark.stage
def test_prepare_is_deterministic_for_a_seed(tmp_path):
    prepare(params(source="digits", resolution=16), tmp_path / "a")
    prepare(params(source="digits", resolution=16), tmp_path / "b")
    prepare(params(source="digits", resolution=16, seed=1), tmp_path / "c")
    assert prepared_files(tmp_path / "a") == prepared_files(tmp_path / "b")
    assert prepared_files(tmp_path / "a")["train/images-00000.npy"] != prepared_files(tmp_path / "c")["train/images-00000.npy"]


# --- image folders ------------------------------------------------------------------------------


def _png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def make_imagefolder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for class_name in ("cat", "dog"):
        folder = root / class_name
        folder.mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 256, (30 + i, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels, "RGB").save(folder / f"{i}.jpg", quality=95)
        Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8), "L").save(folder / "gray.png")
        Image.fromarray(rng.integers(0, 256, (16, 16, 4), dtype=np.uint8), "RGBA").save(folder / "alpha.webp")
        Image.fromarray(rng.integers(0, 256, (64, 24, 3), dtype=np.uint8), "RGB").convert("P").save(folder / "pal.png")
    (root / "cat" / ".DS_Store").write_bytes(b"\0\0junk")  # hidden files are not images and not errors
    return root


@pytest.mark.stage
def test_imagefolder_any_size_and_mode(tmp_path):
    source = make_imagefolder(tmp_path / "raw")
    manifest = prepare(params(source="imagefolder", path=str(source), resolution=16, channels=3, test_fraction=0.25), tmp_path)
    images, labels = load_split(tmp_path / "data" / "prepared", "train")
    assert images.shape[1:] == (3, 16, 16)
    assert manifest.class_names == ["cat", "dog"]
    assert manifest.num_train + manifest.num_test == 14
    assert manifest.counts["test"] == {"cat": 2, "dog": 2}
    assert manifest.skipped["count"] == 0

    gray = prepare(params(source="imagefolder", path=str(source), resolution=8, channels=1), tmp_path / "gray")
    images, _ = load_split(tmp_path / "gray" / "data" / "prepared", "train")
    assert images.shape[1:] == (1, 8, 8) and gray.channels == 1


@pytest.mark.stage
@pytest.mark.parametrize(
    ("name", "payload", "reason"),
    [
        ("corrupt.png", b"\x89PNG\r\n\x1a\n" + b"garbage" * 20, "corrupt or truncated"),
        ("random.jpg", os.urandom(300), "corrupt or truncated"),
        ("notes.txt", b"not an image", "not an image file"),
        ("anim.png", None, "unsupported image format GIF"),  # a GIF named .png
        ("cut.png", "truncated", "corrupt or truncated"),
    ],
)
def test_imagefolder_bad_file_named_or_skipped(tmp_path, name, payload, reason):
    source = make_imagefolder(tmp_path / "raw")
    bad = source / "dog" / name
    if payload is None:
        payload = _png_bytes(Image.new("P", (8, 8)), "GIF")
    elif payload == "truncated":
        whole = _png_bytes(Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)))
        payload = whole[: len(whole) // 2]
    bad.write_bytes(payload)

    with pytest.raises(DataError) as error:
        prepare(params(source="imagefolder", path=str(source), resolution=16), tmp_path)
    assert str(bad) in str(error.value) and reason in str(error.value)
    assert not (tmp_path / "data" / "prepared").exists()

    manifest = prepare(params(source="imagefolder", path=str(source), resolution=16, skip_invalid=True), tmp_path)
    assert manifest.skipped["count"] == 1
    assert str(bad) in manifest.skipped["files"][0]
    assert manifest.num_train + manifest.num_test == 14


@pytest.mark.stage
def test_imagefolder_layout_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        prepare(params(source="imagefolder", path=str(tmp_path / "missing")), tmp_path)
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("L", (8, 8)).save(flat / "a.png")
    with pytest.raises(DataError, match="a.png: a file at the top of data.path"):
        prepare(params(source="imagefolder", path=str(flat)), tmp_path)
    empty = tmp_path / "empty"
    (empty / "only").mkdir(parents=True)
    with pytest.raises(DataError, match="no readable"):
        prepare(params(source="imagefolder", path=str(empty)), tmp_path)


@pytest.mark.stage
def test_failed_prepare_keeps_previous_outputs(tmp_path):
    source = make_imagefolder(tmp_path / "raw")
    prepare(params(source="imagefolder", path=str(source), resolution=16), tmp_path)
    before = prepared_files(tmp_path)
    (source / "cat" / "broken.png").write_bytes(b"broken")
    with pytest.raises(DataError):
        prepare(params(source="imagefolder", path=str(source), resolution=16), tmp_path)
    assert prepared_files(tmp_path) == before
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["prepared"]  # no staging left behind


# --- IDX (MNIST, Fashion-MNIST) -----------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def make_idx(root: Path, n_train=40, n_test=10, gz=True, dotted=False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        for kind, array in (("images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28))), ("labels-idx1-ubyte", np.arange(n) % 10)):
            name = f"{split}-{kind}".replace("-idx", ".idx") if dotted else f"{split}-{kind}"
            data = idx_bytes(array)
            if gz:
                (root / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (root / name).write_bytes(data)
    return root


@pytest.mark.stage
@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_keeps_its_split(tmp_path, gz):
    source = make_idx(tmp_path / "idx", gz=gz, dotted=not gz)
    manifest = prepare(params(source="mnist-idx", path=str(source)), tmp_path)
    images, labels = load_split(tmp_path / "data" / "prepared", "test")
    assert manifest.num_train == 40 and manifest.num_test == 10
    assert images.shape == (10, 1, 32, 32)
    assert sorted(labels.tolist()) == list(range(10))


@pytest.mark.stage
def test_mnist_idx_errors_name_the_file(tmp_path):
    source = make_idx(tmp_path / "idx", gz=False)
    labels_file = source / "train-labels-idx1-ubyte"
    labels_file.write_bytes(idx_bytes(np.arange(39) % 10))
    with pytest.raises(DataError) as error:
        prepare(params(source="mnist-idx", path=str(source)), tmp_path)
    assert "40 images" in str(error.value) and "39 labels" in str(error.value) and str(labels_file) in str(error.value)

    images_file = source / "train-images-idx3-ubyte"
    images_file.write_bytes(images_file.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated or corrupt") as error:
        prepare(params(source="mnist-idx", path=str(source)), tmp_path)
    assert str(images_file) in str(error.value)

    images_file.write_bytes(b"PK\x03\x04 a zip, not idx")
    with pytest.raises(DataError, match="bad magic"):
        prepare(params(source="mnist-idx", path=str(source)), tmp_path)

    images_file.write_bytes(idx_bytes(np.zeros((40, 28, 28))))
    labels_file.write_bytes(idx_bytes(np.zeros((40, 28, 28))))  # images where labels belong
    with pytest.raises(DataError, match="3 dimensions, labels need 1"):
        prepare(params(source="mnist-idx", path=str(source)), tmp_path)


@pytest.mark.stage
def test_mnist_idx_corrupt_test_files_skipped_when_allowed(tmp_path):
    source = make_idx(tmp_path / "idx", gz=True)
    (source / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00broken")
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: corrupt gzip"):
        prepare(params(source="mnist-idx", path=str(source)), tmp_path)
    manifest = prepare(params(source="mnist-idx", path=str(source), skip_invalid=True, test_fraction=0.25), tmp_path)
    assert manifest.skipped["count"] == 1
    assert manifest.num_train + manifest.num_test == 40  # split from train instead


# --- CIFAR-10 python batches ----------------------------------------------------------------------


def cifar_batch(n: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": [int(i % 10) for i in range(n)],
             b"batch_label": b"fixture"}
    return pickle.dumps(batch, protocol=2)


def make_cifar(root: Path) -> Path:
    root.mkdir(parents=True)
    for i in range(1, 3):
        (root / f"data_batch_{i}").write_bytes(cifar_batch(20, i))
    (root / "test_batch").write_bytes(cifar_batch(10, 9))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))
    return root


@pytest.mark.stage
def test_cifar10_folder_and_archive(tmp_path):
    source = make_cifar(tmp_path / "cifar-10-batches-py")
    manifest = prepare(params(source="cifar10", path=str(source), channels=3), tmp_path / "a")
    assert manifest.num_train == 40 and manifest.num_test == 10
    assert manifest.class_names[0] == "airplane"
    images, _ = load_split(tmp_path / "a" / "data" / "prepared", "train")
    assert images.shape == (40, 3, 32, 32)

    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname="cifar-10-batches-py")
    from_archive = prepare(params(source="cifar10", path=str(archive), channels=3), tmp_path / "b")
    assert from_archive.source_checksum == manifest.source_checksum
    a, b = prepared_files(tmp_path / "a"), prepared_files(tmp_path / "b")
    assert a.keys() == b.keys() and all(a[name] == b[name] for name in a if name != "manifest.json")

    gray = prepare(params(source="cifar10", path=str(source), channels=1, resolution=16), tmp_path / "c")
    images, _ = load_split(tmp_path / "c" / "data" / "prepared", "train")
    assert images.shape == (40, 1, 16, 16) and gray.channels == 1


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.stage
def test_cifar10_refuses_code_in_pickles(tmp_path):
    source = make_cifar(tmp_path / "cifar")
    (source / "data_batch_2").write_bytes(pickle.dumps({b"data": _Exploit()}))
    with pytest.raises(DataError) as error:
        prepare(params(source="cifar10", path=str(source)), tmp_path)
    assert "data_batch_2" in str(error.value) and "refusing to load" in str(error.value)
    assert not Path("pwned").exists() and not (tmp_path / "pwned").exists()


@pytest.mark.stage
def test_cifar10_bad_batches_named_or_skipped(tmp_path):
    source = make_cifar(tmp_path / "cifar")
    (source / "data_batch_2").write_bytes(cifar_batch(20, 2)[:500])
    with pytest.raises(DataError, match="data_batch_2: corrupt or truncated pickle"):
        prepare(params(source="cifar10", path=str(source)), tmp_path)
    manifest = prepare(params(source="cifar10", path=str(source), skip_invalid=True), tmp_path)
    assert manifest.num_train == 20 and manifest.skipped["count"] == 1

    (source / "data_batch_2").write_bytes(pickle.dumps({b"data": np.zeros((5, 100), np.uint8), b"labels": [0] * 5}))
    with pytest.raises(DataError, match=r"data_batch_2: 'data' is not a uint8 \(N, 3072\) array"):
        prepare(params(source="cifar10", path=str(source)), tmp_path)


# --- fitting ------------------------------------------------------------------------------------


def test_fit_keeps_or_pads_or_resizes():
    batch = np.full((2, 1, 28, 28), 200, np.uint8)
    padded = fit_array(batch, 32, 1)
    assert padded.shape == (2, 1, 32, 32) and padded[0, 0, 0, 0] == 0 and padded[0, 0, 16, 16] == 200
    assert fit_array(batch, 16, 3).shape == (2, 3, 16, 16)
    wide = Image.new("RGB", (100, 50), (255, 0, 0))
    fitted = fit_pil(wide, 32, 1)
    assert fitted.shape == (1, 32, 32) and fitted[0, 16, 16] == 76  # luma of pure red


@pytest.mark.stage
def test_manifest_is_readable_json(tmp_path):
    prepare(params(source="digits", resolution=8), tmp_path)
    manifest = load_manifest(tmp_path / "data" / "prepared")
    assert json.loads((tmp_path / "data" / "prepared" / "manifest.json").read_text()) == manifest.model_dump(mode="json")
    assert manifest.checksum("train").startswith("sha256:")


def test_every_registered_source_is_a_valid_setting():
    """A new source is one SOURCES entry plus its name in DataParams.source: the lists must agree."""
    import typing

    from ganops.config import SOURCES_READING_A_PATH, DataParams
    from ganops.data.sources import SOURCES

    assert set(typing.get_args(DataParams.model_fields["source"].annotation)) == set(SOURCES)
    assert {name for name, source in SOURCES.items() if source.needs_path} == set(SOURCES_READING_A_PATH)


# --- bounds: what one small file may cost ------------------------------------------------------


def _peak_bytes(work) -> tuple[object, int]:
    """``work()``'s result (or the exception it raised) and the peak of Python allocations during it."""
    import tracemalloc

    tracemalloc.start()
    try:
        result = work()
    except Exception as error:  # noqa: BLE001 -- returned for the test to inspect
        result = error
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, peak


@pytest.mark.stage
def test_an_idx_gzip_bomb_is_refused_from_its_header(tmp_path):
    """A gzipped IDX file whose header promises 64 MB (and whose body is 64 MB of zeros, 64 KB once
    compressed) is refused before it is decompressed, over a 1 MiB data.max_file_bytes."""
    source = make_idx(tmp_path / "idx")
    header = bytes([0, 0, 0x08, 3]) + b"".join(struct.pack(">I", d) for d in (1000, 256, 256))
    bomb = source / "train-images-idx3-ubyte.gz"
    bomb.write_bytes(gzip.compress(header + bytes(1000 * 256 * 256)))
    assert bomb.stat().st_size < 200_000
    error, peak = _peak_bytes(lambda: prepare(params(source="mnist-idx", path=str(source),
                                                     max_file_bytes=2**20), tmp_path))
    assert isinstance(error, DataError), error
    assert str(bomb) in str(error) and "promises 65536016 bytes, over data.max_file_bytes=1048576" in str(error)
    assert peak < 16 * 2**20  # not the 64 MB it decompresses to
    longer = source / "train-labels-idx1-ubyte.gz"  # a file longer than its header says is corrupt
    longer.write_bytes(gzip.compress(idx_bytes(np.arange(40) % 10) + b"extra"))
    bomb.write_bytes(gzip.compress(idx_bytes(np.random.default_rng(0).integers(0, 256, (40, 28, 28)))))
    with pytest.raises(DataError, match="IDX header promises 48 bytes, file holds more"):
        prepare(params(source="mnist-idx", path=str(source)), tmp_path)


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height RGBA pixels (what a decoder would allocate)."""
    import zlib

    data = bytearray(_png_bytes(Image.new("RGBA", (1, 1))))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.mark.stage
def test_image_files_are_bounded_in_bytes_and_pixels_before_decoding(tmp_path):
    source = make_imagefolder(tmp_path / "raw")
    huge = source / "dog" / "huge.png"
    huge.write_bytes(_png_declaring(9500, 9500))  # 90 M pixels: 1.7 GB through PIL's alpha compositing
    assert huge.stat().st_size < 1000
    error, peak = _peak_bytes(lambda: prepare(params(source="imagefolder", path=str(source), resolution=16,
                                                     workers=1), tmp_path))
    assert isinstance(error, DataError) and str(huge) in str(error)
    assert "9500x9500 pixels, over data.max_image_pixels=16777216" in str(error)
    assert peak < 64 * 2**20
    manifest = prepare(params(source="imagefolder", path=str(source), resolution=16, skip_invalid=True), tmp_path)
    assert manifest.skipped["count"] == 1 and manifest.num_train + manifest.num_test == 14
    huge.unlink()
    big = source / "cat" / "big.png"
    big.write_bytes(_png_bytes(Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), np.uint8))))
    with pytest.raises(DataError, match=rf"{big}: \d+ bytes, over data.max_file_bytes=4096"):
        prepare(params(source="imagefolder", path=str(source), resolution=16, max_file_bytes=4096, workers=1), tmp_path)


@pytest.mark.stage
def test_cifar_reads_only_its_batches_each_bounded(tmp_path):
    source = make_cifar(tmp_path / "cifar")
    (source / "data_batch_2").write_bytes(cifar_batch(20, 2) + bytes(200_000))  # over the bound below
    (source / "notes.bin").write_bytes(bytes(300_000))  # not a batch: never read
    archive = tmp_path / "cifar.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname="cifar-10-batches-py")
    for path in (source, archive):
        with pytest.raises(DataError, match=r"data_batch_2: \d+ bytes, over data.max_file_bytes=100000"):
            prepare(params(source="cifar10", path=str(path), max_file_bytes=100_000), tmp_path)
        manifest = prepare(params(source="cifar10", path=str(path), max_file_bytes=100_000, skip_invalid=True), tmp_path)
        assert manifest.num_train == 20 and manifest.skipped["count"] == 1


@pytest.mark.stage
def test_imagefolder_reads_nothing_outside_data_path(tmp_path):
    source = make_imagefolder(tmp_path / "raw")
    secret = tmp_path / "elsewhere" / "secret.png"
    secret.parent.mkdir()
    secret.write_bytes(_png_bytes(Image.new("L", (8, 8), 255)))
    link = source / "cat" / "link.png"
    link.symlink_to(secret)
    (source / "dog" / "inside.png").symlink_to(source / "cat" / "gray.png")  # a link within data.path is fine
    with pytest.raises(DataError, match=f"{link}: a symbolic link to {secret}, outside data.path"):
        prepare(params(source="imagefolder", path=str(source), resolution=16), tmp_path)
    manifest = prepare(params(source="imagefolder", path=str(source), resolution=16, skip_invalid=True), tmp_path)
    assert manifest.skipped["count"] == 1 and manifest.num_train + manifest.num_test == 15
    (source / "bird").symlink_to(secret.parent)  # a whole class folder elsewhere
    with pytest.raises(DataError, match="bird: a symbolic link to .*elsewhere, outside data.path"):
        prepare(params(source="imagefolder", path=str(source), resolution=16, skip_invalid=True), tmp_path)


# --- labels against the class list, empty classes and splits (issue 37, item 4) -------------------


@pytest.fixture
def good_prepared(tmp_path) -> dict[str, bytes]:
    """A project whose data/prepared/ holds a good prepare: every refusal below must leave it as it is."""
    prepare(params(source="digits", resolution=8), tmp_path)
    return prepared_files(tmp_path)


def refused_leaving_previous(root: Path, before: dict[str, bytes], match: str, **data) -> DataError:
    with pytest.raises(DataError, match=match) as error:
        prepare(params(**data), root)
    assert prepared_files(root) == before  # byte for byte
    assert [p.name for p in (root / "data").iterdir()] == ["prepared"]  # no staging left behind
    return error.value


@pytest.mark.stage
@pytest.mark.parametrize("split", ["train", "t10k"])
def test_an_idx_label_outside_the_ten_classes_is_refused(tmp_path, good_prepared, split):
    """One label byte of 255 (counts still equal) made a 256-class data set, 245 classes empty."""
    source = make_idx(tmp_path / "idx", gz=False)
    labels_file = source / f"{split}-labels-idx1-ubyte"
    labels = np.arange(40 if split == "train" else 10) % 10
    labels[7] = 255
    labels_file.write_bytes(idx_bytes(labels))
    error = refused_leaving_previous(tmp_path, good_prepared, "outside MNIST and Fashion-MNIST's classes 0..9",
                                     source="mnist-idx", path=str(source))
    assert f"{labels_file}: label 255 at index 7" in str(error)


@pytest.mark.stage
def test_an_idx_data_set_missing_a_class_is_refused(tmp_path, good_prepared):
    source = make_idx(tmp_path / "idx", gz=False)
    for split, n in (("train", 40), ("t10k", 10)):
        (source / f"{split}-labels-idx1-ubyte").write_bytes(idx_bytes(np.arange(n) % 9))  # no 9 anywhere
    error = refused_leaving_previous(tmp_path, good_prepared, "class\\(es\\) with no images: 9 ",
                                     source="mnist-idx", path=str(source))
    assert str(source) in str(error)


@pytest.mark.stage
def test_cifar_labels_are_checked_against_cifar10s_classes(tmp_path, good_prepared):
    source = make_cifar(tmp_path / "cifar")
    for name, n, seed in (("data_batch_1", 20, 1), ("data_batch_2", 20, 2), ("test_batch", 10, 9)):
        batch = pickle.loads(cifar_batch(n, seed))
        batch[b"labels"] = [label if label != 3 else 4 for label in batch[b"labels"]]  # no cat anywhere
        (source / name).write_bytes(pickle.dumps(batch, protocol=2))
    refused_leaving_previous(tmp_path, good_prepared, f"cifar10 at {source}: class\\(es\\) with no images: cat ",
                             source="cifar10", path=str(source), channels=3)

    batch = pickle.loads(cifar_batch(20, 2))
    batch[b"labels"][5] = 10
    (source / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=2))
    refused_leaving_previous(tmp_path, good_prepared, "data_batch_2: label 10 at index 5 is outside CIFAR-10's "
                             "classes 0..9", source="cifar10", path=str(source), channels=3)

    make_cifar(tmp_path / "other")
    (tmp_path / "other" / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a", b"b"]}, protocol=2))
    refused_leaving_previous(tmp_path, good_prepared, "batches.meta: label_names \\['a', 'b'\\] are not CIFAR-10's",
                             source="cifar10", path=str(tmp_path / "other"), channels=3)


@pytest.mark.stage
def test_an_empty_split_is_refused(tmp_path, good_prepared):
    """A tiny data set whose split by class holds nothing out: 7 images a class and data.test_fraction
    0.05 round to no test image; no setting asks for an empty test split (test_fraction > 0)."""
    source = make_imagefolder(tmp_path / "raw")
    error = refused_leaving_previous(tmp_path, good_prepared, "the test split is empty", source="imagefolder",
                                     path=str(source), resolution=16, test_fraction=0.05)
    assert "data.test_fraction=0.05" in str(error) and "has 7" in str(error)

    idx = make_idx(tmp_path / "idx", n_train=20)  # no t10k files: split by class, 2 images a class
    for name in idx.glob("t10k-*"):
        name.unlink()
    refused_leaving_previous(tmp_path, good_prepared, f"mnist-idx at {idx}: the test split is empty",
                             source="mnist-idx", path=str(idx))
    (idx / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros((0, 28, 28)))))
    (idx / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(0))))
    refused_leaving_previous(tmp_path, good_prepared, "the test split is empty: the format's own files",
                             source="mnist-idx", path=str(idx))


@pytest.mark.stage
def test_a_split_emptied_by_skipped_files_is_refused(tmp_path, good_prepared):
    from ganops.data.prepare import _split
    from ganops.data.sources import list_imagefolder

    source = make_imagefolder(tmp_path / "raw")
    settings = {"source": "imagefolder", "path": str(source), "resolution": 16, "skip_invalid": True}
    listing = list_imagefolder(params(**settings).data)
    _, test = _split(listing.labels, None, 0.1, 0)
    assert len(test) == 2
    for i in test:  # the test split's images, each unreadable: skipped, and nothing is left of the split
        (source / listing.files[i]).write_bytes(b"not an image")
    refused_leaving_previous(tmp_path, good_prepared, "the test split is empty: each of its images was unreadable",
                             **settings)
