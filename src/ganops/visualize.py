"""Image grids for reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ganops.io import atomic_path


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Model output in [-1, 1] (N, C, H, W) -> uint8 array of the same layout."""
    return ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def save_grid(images: np.ndarray, rows: int, path: Path, min_cell: int = 32) -> None:
    """Tile uint8 (N, C, H, W) images into ``rows`` rows with a 2-pixel border; small images are
    enlarged (nearest neighbour) so each cell is at least ``min_cell`` pixels wide."""
    count, channels, height, width = images.shape
    cols = -(-count // rows)
    zoom = max(1, -(-min_cell // width))
    pad = 2
    cell_h, cell_w = height * zoom + pad, width * zoom + pad
    grid = np.zeros((rows * cell_h + pad, cols * cell_w + pad, channels), dtype=np.uint8)
    for index, image in enumerate(images):
        r, c = divmod(index, cols)
        tile = image.transpose(1, 2, 0).repeat(zoom, axis=0).repeat(zoom, axis=1)
        grid[pad + r * cell_h : pad + r * cell_h + height * zoom, pad + c * cell_w : pad + c * cell_w + width * zoom] = tile
    picture = Image.fromarray(grid[..., 0] if channels == 1 else grid, mode="L" if channels == 1 else "RGB")
    with atomic_path(Path(path)) as tmp:
        picture.save(tmp, format="PNG")
