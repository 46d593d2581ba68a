"""DCGAN (Radford et al., 2015) for any power-of-two image size from 16 to 128 and for MNIST's 28x28.

The generator starts from a ``start x start`` map (4 for powers of two, 7 for 28) made by a transposed convolution
of the noise, then doubles the size with stride-2 4x4 transposed convolutions; the discriminator mirrors it. Widths
double per level (capped at 8x ``ngf``/``ndf``). WGAN and WGAN-GP critics are this discriminator with ``norm=None``.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import conv_block, dcgan_init

POWER_OF_TWO_SIZES = (16, 32, 64, 128)
_MAX_MULT = 8


def dcgan_levels(image_size: int) -> tuple[int, int]:
    """``(start, upsamplings)`` such that ``start * 2**upsamplings == image_size``; ValueError if not buildable."""
    if image_size == 28:
        return 7, 2
    if image_size in POWER_OF_TWO_SIZES:
        return 4, image_size.bit_length() - 3
    raise ValueError(
        f"DCGAN: cannot make {image_size}x{image_size} images; image_size must be 28 (MNIST) or a power of two "
        f"in {', '.join(map(str, POWER_OF_TWO_SIZES))}"
    )


def _widths(base: int, levels: int) -> list[int]:
    """Channel widths from the finest level (``base``) to the coarsest, doubling and capped at 8x."""
    return [base * min(2**i, _MAX_MULT) for i in range(levels)]


class DCGANGenerator(nn.Module):
    """Noise [N, z_dim] (or [N, z_dim, 1, 1]) -> images [N, channels, image_size, image_size] in (-1, 1).

    Transposed convolutions with batch norm and ReLU, tanh at the output, DCGAN initialisation.
    """

    def __init__(
        self,
        image_size: int = 64,
        channels: int = 3,
        z_dim: int = 100,
        ngf: int = 64,
        norm: str | None = "batch",
        impl: str = "auto",
    ) -> None:
        super().__init__()
        start, ups = dcgan_levels(image_size)
        self.z_dim, self.image_size, self.channels = z_dim, image_size, channels
        widths = _widths(ngf, ups)[::-1]  # coarsest first
        layers = [conv_block(z_dim, widths[0], start, 1, 0, norm=norm, act="relu", transposed=True, impl=impl)]
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            layers.append(conv_block(fan_in, fan_out, 4, 2, 1, norm=norm, act="relu", transposed=True, impl=impl))
        layers.append(conv_block(widths[-1], channels, 4, 2, 1, act="tanh", transposed=True, impl=impl))
        self.net = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], self.z_dim, 1, 1))


class DCGANDiscriminator(nn.Module):
    """Images [N, channels, image_size, image_size] -> logits [N].

    Stride-2 4x4 convolutions with leaky ReLU (0.2), batch norm from the second layer on (``norm=None`` gives the
    WGAN / WGAN-GP critic), then a ``start x start`` convolution to one logit. DCGAN initialisation.
    """

    def __init__(
        self,
        image_size: int = 64,
        channels: int = 3,
        ndf: int = 64,
        norm: str | None = "batch",
        impl: str = "auto",
    ) -> None:
        super().__init__()
        start, downs = dcgan_levels(image_size)
        widths = _widths(ndf, downs)
        layers = [conv_block(channels, widths[0], 4, 2, 1, act="lrelu", alpha=0.2, impl=impl)]
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            layers.append(conv_block(fan_in, fan_out, 4, 2, 1, norm=norm, act="lrelu", alpha=0.2, impl=impl))
        layers.append(conv_block(widths[-1], 1, start, 1, 0, impl=impl))
        self.net = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1)
