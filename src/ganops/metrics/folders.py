"""FID of image folders (`ganops fid A B`): two folders, or a folder against the cached reference
statistics, under a named protocol — what `python -m pytorch_fid A B` and torch-fidelity's
`fidelity --fid` offer, on ganops' network and protocols, so samples from any model score on the
pipeline's scale.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ganops import GanopsError
from ganops.config import Params
from ganops.data import load_manifest
from ganops.device import resolve_device
from ganops.metrics.backbones import InceptionBackbone, resolve_backbone
from ganops.metrics.frechet import FrechetReference, feature_statistics
from ganops.metrics.inception import PROTOCOLS
from ganops.metrics.reference import ReferenceRecord, load_reference, resolve_reference
from ganops.paths import ProjectPaths

REFERENCE = "reference"  # as the second argument: the cached reference statistics
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, in name order (pytorch-fid reads them likewise)."""
    if not folder.is_dir():
        raise GanopsError(f"{folder}: not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if len(files) < 2:
        raise GanopsError(f"{folder}: {len(files)} image file(s) ({', '.join(IMAGE_SUFFIXES)}); a Fréchet distance "
                          "needs at least 2")
    return files


def read_rgb(path: Path, max_bytes: int, max_pixels: int) -> np.ndarray:
    """One image file as uint8 RGB (3, H, W), as pytorch-fid reads it (PIL, converted to RGB); a clear
    error for a file too large, an image of too many pixels, or one PIL cannot read."""
    size = path.stat().st_size
    if size > max_bytes:
        raise GanopsError(f"{path}: {size} bytes, over data.max_file_bytes={max_bytes}")
    try:
        with Image.open(path) as image:
            if image.width * image.height > max_pixels:
                raise GanopsError(f"{path}: {image.width}x{image.height} pixels, over data.max_image_pixels={max_pixels}")
            return np.asarray(image.convert("RGB")).transpose(2, 0, 1).copy()
    except GanopsError:
        raise
    except Exception as error:  # PIL's many ways of saying "not an image I can read"
        raise GanopsError(f"{path}: not a readable image ({type(error).__name__}: {str(error)[:200]})") from None


def _batches(files: list[Path], batch_size: int, max_bytes: int, max_pixels: int) -> Iterator[torch.Tensor]:
    """Batches of images of one size each (a folder may mix sizes; the protocol resizes each to 299)."""
    pending: dict[tuple, list[np.ndarray]] = {}
    for path in files:
        image = read_rgb(path, max_bytes, max_pixels)
        group = pending.setdefault(image.shape, [])
        group.append(image)
        if len(group) == batch_size:
            yield torch.from_numpy(np.stack(pending.pop(image.shape)))
    for group in pending.values():
        yield torch.from_numpy(np.stack(group))


def folder_features(backbone: InceptionBackbone, folder: Path, batch_size: int, max_bytes: int,
                    max_pixels: int) -> np.ndarray:
    """The backbone's float64 features of every image in ``folder``."""
    files = image_files(folder)
    with torch.no_grad():
        parts = [backbone(batch).double().cpu().numpy() for batch in _batches(files, batch_size, max_bytes, max_pixels)]
    return np.concatenate(parts)


def fid_of_folders(backbone: InceptionBackbone, first: Path, second: Path | None,
                   reference: tuple[Path, ReferenceRecord] | None,
                   batch_size: int, max_bytes: int, max_pixels: int) -> dict:
    """The FID between ``first`` and ``second``, or ``first`` and the cached reference statistics
    (``reference``: their folder and the record they must match). Returns the value with its name
    (``fid_<protocol>``) and what was compared."""
    features = folder_features(backbone, first, batch_size, max_bytes, max_pixels)
    if second is not None:
        other = folder_features(backbone, second, batch_size, max_bytes, max_pixels)
        value = FrechetReference(*feature_statistics(other)).distance(features)
        against, count = str(second), len(other)
    else:
        folder, expected = reference
        cached = load_reference(folder, expected)
        value = cached.frechet.distance(features)
        against, count = f"{folder} (the {expected.reference} split's statistics)", cached.record.get("num_reference")
    if not np.isfinite(value):
        raise GanopsError(f"the Fréchet distance of {first} came out {value}: not a finite number")
    return {"metric": f"fid_{backbone.feature_space}", "value": float(value), "first": str(first),
            "first_images": int(len(features)), "second": against, "second_images": count,
            "fid_protocol": backbone.feature_space, "weights_digest": backbone.extractor.weights_digest}


def score_folders(params: Params, first: Path, second: str, protocol: str | None, root: Path = Path(".")) -> dict:
    """`ganops fid FIRST SECOND`: SECOND a folder, or ``reference`` for the reference_stats stage's
    cached statistics (which must have been computed under the same protocol and weights)."""
    cfg = params.eval
    protocol = protocol or cfg.fid_protocol
    if protocol not in PROTOCOLS:
        raise GanopsError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    device = resolve_device(cfg.device, "eval.device")
    paths = ProjectPaths(root)
    limits = (cfg.batch_size, params.data.max_file_bytes, params.data.max_image_pixels)
    if second == REFERENCE:
        expected, backbone = resolve_reference("inception", cfg.inception_weights, protocol, cfg.reference, device,
                                               load_manifest(paths.prepared), cfg.reference_max_features, cfg.native_size)
        return fid_of_folders(backbone, first, None, (paths.reference, expected), *limits)
    _, weights, _ = resolve_backbone("inception", cfg.inception_weights)
    return fid_of_folders(InceptionBackbone(weights, protocol, device), first, Path(second), None, *limits)
