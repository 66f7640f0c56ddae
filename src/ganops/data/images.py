"""Bringing images of any size and mode to the pipeline's layout: uint8, NCHW, square, fixed channels."""

from __future__ import annotations

import numpy as np
from PIL import Image


def _pad_is_enough(size: int, resolution: int) -> bool:
    # A slightly smaller square (MNIST's 28 in a 32 grid) is centred on a zero border, not resampled,
    # so strokes stay sharp; anything further off is resized.
    return size < resolution and (resolution - size) * 8 <= resolution


def fit_pil(image: Image.Image, resolution: int, channels: int) -> np.ndarray:
    """Convert one PIL image to ``channels`` and centre-fit it into ``resolution``²; returns CHW uint8."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become black, the pipeline's background, before the alpha is dropped.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    image = image.convert("L" if channels == 1 else "RGB")
    width, height = image.size
    if width == height and _pad_is_enough(width, resolution):
        canvas = Image.new(image.mode, (resolution, resolution), 0)
        offset = (resolution - width) // 2
        canvas.paste(image, (offset, offset))
        image = canvas
    elif (width, height) != (resolution, resolution):
        scale = resolution / min(width, height)
        new_size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
        image = image.resize(new_size, Image.Resampling.LANCZOS)
        left = (new_size[0] - resolution) // 2
        top = (new_size[1] - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[None]
    else:
        array = array.transpose(2, 0, 1)
    return np.ascontiguousarray(array)


def fit_array(images: np.ndarray, resolution: int, channels: int) -> np.ndarray:
    """Fit a uint8 batch (N, C, H, W) with C in {1, 3}; fast paths avoid per-image resampling."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected a uint8 (N, 1|3, H, W) array, got {images.dtype} {images.shape}")
    if images.shape[1] != channels:
        if channels == 3:
            images = np.repeat(images, 3, axis=1)
        else:  # ITU-R 601-2 luma, the formula PIL's "L" conversion uses
            weights = np.array([299, 587, 114], dtype=np.uint32).reshape(1, 3, 1, 1)
            images = ((images.astype(np.uint32) * weights).sum(axis=1, keepdims=True) + 500) // 1000
            images = images.astype(np.uint8)
    height, width = images.shape[2:]
    if (height, width) == (resolution, resolution):
        return np.ascontiguousarray(images)
    if height == width and _pad_is_enough(height, resolution):
        before = (resolution - height) // 2
        after = resolution - height - before
        return np.pad(images, ((0, 0), (0, 0), (before, after), (before, after)))
    mode = "L" if channels == 1 else "RGB"
    out = np.empty((len(images), channels, resolution, resolution), dtype=np.uint8)
    for index, chw in enumerate(images):
        hwc = chw[0] if channels == 1 else chw.transpose(1, 2, 0)
        out[index] = fit_pil(Image.fromarray(hwc, mode=mode), resolution, channels)
    return out
