"""Per-image conversions applied by the datasets: uint8 -> [-1, 1] floats, channel count, resize and crop.

Everything works on torch tensors in [C, H, W] layout, so the data layer needs no torchvision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# ITU-R BT.601 luma weights, the ones Pillow's convert("L") uses.
_LUMA = (0.299, 0.587, 0.114)


def to_signed_unit(image: Tensor) -> Tensor:
    """Map a uint8 image (any shape) to float32 in [-1, 1]: 0 -> -1, 255 -> 1."""
    return image.to(torch.float32).div_(127.5).sub_(1.0)


def convert_channels(image: Tensor, channels: int) -> Tensor:
    """Convert a float [C, H, W] image between grey (C=1) and RGB (C=3); RGBA (C=4) drops alpha."""
    if channels not in (1, 3):
        raise ValueError(f"convert_channels: channels must be 1 or 3, got {channels}")
    have = image.shape[-3]
    if have == 4:
        image, have = image[..., :3, :, :], 3
    if have == channels:
        return image
    if have == 1:
        return image.expand(*image.shape[:-3], 3, *image.shape[-2:]).contiguous()
    if have == 3:
        weights = image.new_tensor(_LUMA).view(3, 1, 1)
        return (image * weights).sum(dim=-3, keepdim=True)
    raise ValueError(f"convert_channels: cannot convert an image with {have} channels (expected 1, 3 or 4)")


def resize(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinearly resize a float [C, H, W] image to ``size`` = (H, W), antialiased when shrinking."""
    height, width = image.shape[-2:]
    if (height, width) == tuple(size):
        return image
    shrinking = size[0] < height or size[1] < width
    out = F.interpolate(image.unsqueeze(0), size=size, mode="bilinear", align_corners=False, antialias=shrinking)
    # Bilinear weights are convex, so only float rounding can leave [-1, 1]; clamp that away.
    return out.squeeze(0).clamp_(-1.0, 1.0)


def resize_short_side(image: Tensor, size: int) -> Tensor:
    """Resize a float [C, H, W] image so its short side is ``size``, keeping the aspect ratio (long side >= size)."""
    height, width = image.shape[-2:]
    scale = size / min(height, width)
    return resize(image, (max(size, round(height * scale)), max(size, round(width * scale))))


def crop(image: Tensor, size: int, top: float = 0.5, left: float = 0.5) -> Tensor:
    """The ``size`` x ``size`` window of a [C, H, W] image at relative position ``top``, ``left`` in [0, 1) of the
    free range (0.5: the centre, rounded towards the top-left)."""
    height, width = image.shape[-2:]
    y, x = min(int(top * (height - size + 1)), height - size), min(int(left * (width - size + 1)), width - size)
    return image[..., y : y + size, x : x + size]


def resize_center_crop(image: Tensor, size: int) -> Tensor:
    """Resize a float [C, H, W] image so its short side is ``size``, then crop the centre ``size`` x ``size``."""
    image = resize_short_side(image, size)
    height, width = image.shape[-2:]
    top, left = (height - size) // 2, (width - size) // 2
    return image[..., top : top + size, left : left + size]


def prepare_image(image: Tensor, image_size: int | None, channels: int) -> Tensor:
    """Turn a stored uint8 [C, H, W] image into the float32 [channels, S, S] tensor in [-1, 1] a dataset yields.

    ``image_size=None`` keeps the stored size. Channel reduction happens before resizing and expansion after,
    so the resize always runs on the fewer channels.
    """
    out = to_signed_unit(image)
    if out.shape[-3] > channels:
        out = convert_channels(out, channels)
    if image_size is not None:
        out = resize(out, (image_size, image_size))
    if out.shape[-3] < channels:
        out = convert_channels(out, channels)
    return out


def float_to_uint8(image: Tensor) -> Tensor:
    """Map a float image in [-1, 1] back to uint8 (rounding to nearest)."""
    return image.add(1.0).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8)
