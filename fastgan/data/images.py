"""Image grids and PNG files: turn generator outputs into pictures, and read images back.

Pillow is imported lazily inside the functions that encode or decode, so ``import fastgan.data`` works
without it; a function that needs it raises an ImportError saying to ``pip install pillow``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .._io import atomic_writer
from ._io import require_pil

_PNG_CHANNELS = (1, 3, 4)  # grey, RGB, RGBA


def _as_batch(images: Tensor | Sequence[Tensor]) -> Tensor:
    """Stack a sequence and add a batch dimension to a single [C, H, W] image."""
    if not isinstance(images, Tensor):
        images = torch.stack([torch.as_tensor(image) for image in images])
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4:
        raise ValueError(f"expected images of shape [N, C, H, W] or [C, H, W], got {tuple(images.shape)}")
    if images.shape[1] not in _PNG_CHANNELS:
        raise ValueError(f"expected 1, 3 or 4 channels (dim 1 of [N, C, H, W]), got shape {tuple(images.shape)}")
    return images.detach().cpu()


def _to_uint8_nchw(images: Tensor | Sequence[Tensor], value_range: tuple[float, float]) -> Tensor:
    """Batch ``images`` and map floats in ``value_range`` to uint8 (uint8 input passes through)."""
    batch = _as_batch(images)
    if batch.dtype == torch.uint8:
        return batch
    low, high = value_range
    if not high > low:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    scaled = (batch.to(torch.float32) - low) * (255.0 / (high - low))
    return scaled.round_().clamp_(0, 255).to(torch.uint8)


def to_uint8_hwc(images: Tensor | Sequence[Tensor], value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Convert images to a uint8 numpy array [N, H, W, C].

    Args:
        images: a tensor [N, C, H, W] or [C, H, W] (or a sequence of [C, H, W]), C in {1, 3, 4}; floats are
            read as lying in ``value_range`` and clamped to it, uint8 is taken as is. Any device.
        value_range: the float values that map to 0 and 255.

    Returns:
        A C-contiguous uint8 array [N, H, W, C], the layout image libraries and metrics (FID) expect.
    """
    return np.ascontiguousarray(_to_uint8_nchw(images, value_range).permute(0, 2, 3, 1).numpy())


def make_grid(
    images: Tensor | Sequence[Tensor],
    nrow: int | None = None,
    padding: int = 2,
    value_range: tuple[float, float] = (-1.0, 1.0),
    pad_value: int = 0,
) -> Tensor:
    """Tile images into one uint8 picture [H, W, C].

    Args:
        images: [N, C, H, W] or [C, H, W] (or a sequence of [C, H, W]), floats in ``value_range`` or uint8.
        nrow: images per row (at most N); default ``ceil(sqrt(N))``, a near-square grid.
        padding: pixels between images and around the border.
        value_range: the float values that map to 0 and 255.
        pad_value: uint8 value of the padding and of unused cells in the last row.

    Returns:
        A uint8 tensor [rows * (h + padding) + padding, nrow * (w + padding) + padding, C]; image ``k`` has its
        top-left pixel at ``(padding + (k // nrow) * (h + padding), padding + (k % nrow) * (w + padding))``.
    """
    batch = _to_uint8_nchw(images, value_range)
    count, channels, height, width = batch.shape
    if count == 0:
        raise ValueError("make_grid: got no images")
    if padding < 0:
        raise ValueError(f"make_grid: padding must be >= 0, got {padding}")
    columns = nrow if nrow is not None else math.ceil(math.sqrt(count))
    if columns < 1:
        raise ValueError(f"make_grid: nrow must be >= 1, got {nrow}")
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    cell_h, cell_w = height + padding, width + padding
    grid = torch.full((rows * cell_h + padding, columns * cell_w + padding, channels), pad_value, dtype=torch.uint8)
    for k in range(count):
        top, left = padding + (k // columns) * cell_h, padding + (k % columns) * cell_w
        grid[top : top + height, left : left + width] = batch[k].permute(1, 2, 0)
    return grid


def _write_png(array: np.ndarray, path: Path) -> None:
    """Encode one uint8 [H, W, C] array as a PNG at ``path``, atomically."""
    image_module = require_pil("writing PNG files")
    # Pillow infers L / RGB / RGBA from the array shape (its ``mode`` argument is deprecated).
    picture = image_module.fromarray(np.ascontiguousarray(array[:, :, 0] if array.shape[2] == 1 else array))
    with atomic_writer(path) as handle:
        picture.save(handle, format="PNG")


def save_image_grid(
    images: Tensor | Sequence[Tensor],
    path: str | os.PathLike[str],
    nrow: int | None = None,
    padding: int = 2,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> Path:
    """Write ``make_grid(images, nrow, padding, value_range)`` as a PNG at ``path``; return the path.

    The file is written to a temporary file in the same folder and moved into place with ``os.replace``, so a
    reader never sees a partial PNG and an interrupted write leaves nothing behind. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_png(make_grid(images, nrow=nrow, padding=padding, value_range=value_range).numpy(), path)
    return path


def save_images(
    images: Tensor | Sequence[Tensor],
    directory: str | os.PathLike[str],
    start: int = 0,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> list[Path]:
    """Write one PNG per image into ``directory`` as ``000000.png``, ``000001.png``, ...; return the paths.

    ``start`` offsets the numbering so successive batches can go to the same folder (e.g. samples for FID).
    Each file is written atomically; the folder is created if needed.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = to_uint8_hwc(images, value_range)
    paths = []
    for offset, array in enumerate(arrays):
        path = directory / f"{start + offset:06d}.png"
        _write_png(array, path)
        paths.append(path)
    return paths


def read_image(path: str | os.PathLike[str], channels: int = 3) -> Tensor:
    """Decode an image file (PNG, JPEG, ...) with Pillow into a uint8 tensor [channels, H, W].

    ``channels`` is 1 (grey) or 3 (RGB); palette, alpha and CMYK images are converted by Pillow, and the EXIF
    orientation of photos is applied. Raises ValueError naming the file when it cannot be decoded.
    """
    if channels not in (1, 3):
        raise ValueError(f"read_image: channels must be 1 or 3, got {channels}")
    image_module = require_pil("reading image files")
    from PIL import ImageOps

    try:
        with image_module.open(path) as picture:
            picture = ImageOps.exif_transpose(picture).convert("L" if channels == 1 else "RGB")
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError) as err:  # PIL.UnidentifiedImageError is an OSError
        raise ValueError(f"could not decode image file {path}: {err}") from err
    array = np.asarray(picture, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
