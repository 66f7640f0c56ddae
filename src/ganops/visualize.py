"""Image grids for reports."""

from __future__ import annotations

import io

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ganops.io import write_bytes_atomic


def to_uint8_tensor(images: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] -> uint8, on the tensor's own device."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Model output in [-1, 1] (N, C, H, W) -> uint8 array of the same layout."""
    return to_uint8_tensor(images).cpu().numpy()


def tile(images: np.ndarray, rows: int, min_cell: int = 32) -> np.ndarray:
    """Tile uint8 (N, C, H, W) images into ``rows`` rows with a 2-pixel border -> (H', W', C); small
    images are enlarged (nearest neighbour) so each cell is at least ``min_cell`` pixels wide."""
    count, channels, height, width = images.shape
    cols = -(-count // rows)
    zoom = max(1, -(-min_cell // width))
    pad = 2
    cell_h, cell_w = height * zoom + pad, width * zoom + pad
    grid = np.zeros((rows * cell_h + pad, cols * cell_w + pad, channels), dtype=np.uint8)
    for index, image in enumerate(images):
        r, c = divmod(index, cols)
        cell = image.transpose(1, 2, 0).repeat(zoom, axis=0).repeat(zoom, axis=1)
        grid[pad + r * cell_h : pad + r * cell_h + height * zoom, pad + c * cell_w : pad + c * cell_w + width * zoom] = cell
    return grid


def _png(picture: np.ndarray) -> bytes:
    """A uint8 (H, W, C) picture as PNG: grayscale for one channel, RGB for three."""
    buffer = io.BytesIO()
    Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture).save(buffer, format="PNG")
    return buffer.getvalue()


def image_png(image: np.ndarray) -> bytes:
    """One uint8 (C, H, W) image as PNG, at its own size."""
    return _png(image.transpose(1, 2, 0))


def grid_png(images: np.ndarray, rows: int, min_cell: int = 32) -> bytes:
    """:func:`tile`'s grid encoded as PNG."""
    return _png(tile(images, rows, min_cell))


def save_grid(images: np.ndarray, rows: int, path: Path, min_cell: int = 32) -> None:
    """Write :func:`tile`'s grid as a PNG, atomically."""
    write_bytes_atomic(Path(path), grid_png(images, rows, min_cell))
