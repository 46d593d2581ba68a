"""DCGAN (Radford et al., 2015) for any power-of-two image size from 16 to 128 and for MNIST's 28x28.

The generator starts from a 4x4 map made by a transposed convolution of the noise, then doubles the size with
stride-2 4x4 transposed convolutions; the discriminator mirrors it. At 28x28 the maps are 4 -> 7 -> 14 -> 28, as in
the usual MNIST DCGAN (4 -> 7 by a stride-2 3x3 kernel). Widths double per level towards the start map (capped at
8x ``ngf``/``ndf``): 256-128-64 at 28x28 with the default 64. WGAN and WGAN-GP critics are this discriminator with
``norm=None``.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import conv_block, dcgan_init

POWER_OF_TWO_SIZES = (16, 32, 64, 128)
_START = 4
_MAX_MULT = 8


def dcgan_sizes(image_size: int) -> list[int]:
    """Feature-map sizes from the start map to the image, e.g. [4, 8, 16, 32]; ValueError if not buildable."""
    if image_size == 28:
        return [4, 7, 14, 28]
    if image_size in POWER_OF_TWO_SIZES:
        return [_START * 2**i for i in range(image_size.bit_length() - 2)]
    raise ValueError(
        f"DCGAN: cannot make {image_size}x{image_size} images; image_size must be 28 (MNIST) or a power of two "
        f"in {', '.join(map(str, POWER_OF_TWO_SIZES))}"
    )


def _kernel(small: int, large: int) -> int:
    """The stride-2, padding-1 kernel between maps of these sizes: 4 doubles, 3 gives 2 * small - 1 (4 <-> 7)."""
    return 4 if large == 2 * small else 3


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
        sizes = dcgan_sizes(image_size)
        self.z_dim, self.image_size, self.channels = z_dim, image_size, channels
        widths = _widths(ngf, len(sizes) - 1)[::-1] + [channels]  # coarsest first
        layers = [conv_block(z_dim, widths[0], _START, 1, 0, norm=norm, act="relu", transposed=True, impl=impl)]
        for i in range(len(sizes) - 1):
            last = i == len(sizes) - 2
            layers.append(conv_block(widths[i], widths[i + 1], _kernel(sizes[i], sizes[i + 1]), 2, 1,
                                     norm=None if last else norm, act="tanh" if last else "relu", transposed=True,
                                     impl=impl))
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
        sizes = dcgan_sizes(image_size)[::-1]  # the image first
        widths = [channels] + _widths(ndf, len(sizes) - 1)
        layers = [conv_block(widths[i], widths[i + 1], _kernel(sizes[i + 1], sizes[i]), 2, 1,
                             norm=norm if i > 0 else None, act="lrelu", alpha=0.2, impl=impl)
                  for i in range(len(sizes) - 1)]
        layers.append(conv_block(widths[-1], 1, _START, 1, 0, impl=impl))
        self.net = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1)
