"""Image grids for reports, `ganops generate` and the HTTP service."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def tile(images: np.ndarray, rows: int, min_cell: int = 32) -> np.ndarray:
    """Tile uint8 (N, C, H, W) images into ``rows`` rows with a 2-pixel border -> (H', W', C); small
    images are enlarged (nearest neighbour) so each cell is at least ``min_cell`` pixels wide."""
    count, channels, height, width = images.shape
    cols = -(-count // rows)
    zoom = max(1, -(-min_cell // width))
    pad = 2
    cell_h, cell_w = height * zoom + pad, width * zoom + pad
    grid = np.zeros(tile_shape(images.shape, rows, min_cell), dtype=np.uint8)
    for index, image in enumerate(images):
        r, c = divmod(index, cols)
        cell = image.transpose(1, 2, 0).repeat(zoom, axis=0).repeat(zoom, axis=1)
        grid[pad + r * cell_h : pad + r * cell_h + height * zoom, pad + c * cell_w : pad + c * cell_w + width * zoom] = cell
    return grid


def tile_shape(shape: tuple[int, int, int, int], rows: int, min_cell: int = 32) -> tuple[int, int, int]:
    """The (H', W', C) of :func:`tile`'s grid for images of ``shape`` (N, C, H, W), without making it."""
    count, channels, height, width = shape
    zoom, pad = max(1, -(-min_cell // width)), 2
    return rows * (height * zoom + pad) + pad, -(-count // rows) * (width * zoom + pad) + pad, channels


def _png(picture: np.ndarray) -> bytes:
    """A uint8 (H, W, C) picture as PNG: grayscale for one channel, RGB for three."""
    buffer = io.BytesIO()
    as_pil(picture).save(buffer, format="PNG")
    return buffer.getvalue()


def image_png(image: np.ndarray) -> bytes:
    """One uint8 (C, H, W) image as PNG, at its own size."""
    return _png(image.transpose(1, 2, 0))


def grid_png(images: np.ndarray, rows: int, min_cell: int = 32) -> bytes:
    """:func:`tile`'s grid encoded as PNG."""
    return _png(tile(images, rows, min_cell))


def sample_grid(images: np.ndarray, labels: np.ndarray | None, num_classes: int, per_class: int = 8) -> np.ndarray:
    """The sample grid of every report and of `ganops generate`, uint8 (H, W, C): with labels, one row
    per class holding its first ``per_class`` images in order (short rows padded black, classes
    without images left out); without, the first 64 images in 8 rows."""
    if labels is None:
        return tile(images[:64], 8)
    rows = []
    for label in range(num_classes):
        picked = images[labels == label][:per_class]
        if len(picked):
            rows.append(np.concatenate([picked, np.zeros((per_class - len(picked), *picked.shape[1:]), np.uint8)]))
    return tile(np.concatenate(rows), len(rows))


def sample_grid_png(images: np.ndarray, labels: np.ndarray | None, num_classes: int, per_class: int = 8) -> bytes:
    """:func:`sample_grid` encoded as PNG."""
    return _png(sample_grid(images, labels, num_classes, per_class))


def as_pil(picture: np.ndarray) -> Image.Image:
    """A uint8 (H, W, C) picture as a PIL image: grayscale for one channel, RGB for three."""
    return Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture)
