"""CycleGAN (Zhu et al., 2017): the ResNet generator and the 70x70 PatchGAN discriminator.

Both use instance norm (non-affine, as in the authors' code) and the generator reflection padding. Convolutions
are ``conv_block``s, so ``impl=`` reaches the fused norm/activation ops.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import conv_block


def check_cyclegan_size(image_size: int) -> None:
    """ValueError unless the generator can return ``image_size`` (two stride-2 levels) and the PatchGAN sees >= 1
    patch (three stride-2 levels then two 4x4 convolutions)."""
    if image_size < 32 or image_size % 4:
        raise ValueError(
            f"CycleGAN: cannot use {image_size}x{image_size} images; image_size must be a multiple of 4 and >= 32 "
            "(the original uses 256)"
        )


class ResnetBlock(nn.Module):
    """``x + conv(pad(relu(norm(conv(pad(x))))))`` with 3x3 convolutions and reflection padding."""

    def __init__(self, channels: int, impl: str = "auto") -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            conv_block(channels, channels, 3, norm="instance", act="relu", impl=impl),
            nn.ReflectionPad2d(1),
            conv_block(channels, channels, 3, norm="instance", impl=impl),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """Images [N, in_channels, S, S] -> images [N, out_channels, S, S] in (-1, 1), S a multiple of 4.

    c7s1-ngf, two stride-2 downsamplings, ``n_blocks`` residual blocks (6 for 128x128, 9 for 256x256 in the paper),
    two stride-2 transposed-conv upsamplings, c7s1-out with tanh.
    """

    def __init__(
        self, in_channels: int = 3, out_channels: int = 3, ngf: int = 64, n_blocks: int = 9, impl: str = "auto"
    ) -> None:
        super().__init__()
        if n_blocks < 1:
            raise ValueError(f"ResnetGenerator: n_blocks must be >= 1, got {n_blocks}")
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            conv_block(in_channels, ngf, 7, norm="instance", act="relu", impl=impl),
            conv_block(ngf, ngf * 2, 3, 2, 1, norm="instance", act="relu", impl=impl),
            conv_block(ngf * 2, ngf * 4, 3, 2, 1, norm="instance", act="relu", impl=impl),
        ]
        layers += [ResnetBlock(ngf * 4, impl) for _ in range(n_blocks)]
        layers += [
            conv_block(ngf * 4, ngf * 2, 3, 2, 1, output_padding=1, norm="instance", act="relu", transposed=True,
                       impl=impl),
            conv_block(ngf * 2, ngf, 3, 2, 1, output_padding=1, norm="instance", act="relu", transposed=True,
                       impl=impl),
            nn.ReflectionPad2d(3),
            conv_block(ngf, out_channels, 7, act="tanh", impl=impl),
        ]
        self.net = nn.Sequential(*layers)
        init_normal(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PatchDiscriminator(nn.Module):
    """Images [N, channels, S, S] -> patch logits [N, 1, S/8 - 2, S/8 - 2]; each sees a 70x70 receptive field.

    C64 (no norm) - C128 - C256 - C512 (stride 1) - 1-channel 4x4 convolution; leaky ReLU 0.2, instance norm.
    """

    def __init__(self, channels: int = 3, ndf: int = 64, impl: str = "auto") -> None:
        super().__init__()
        lrelu = {"act": "lrelu", "alpha": 0.2, "impl": impl}
        self.net = nn.Sequential(
            conv_block(channels, ndf, 4, 2, 1, **lrelu),
            conv_block(ndf, ndf * 2, 4, 2, 1, norm="instance", **lrelu),
            conv_block(ndf * 2, ndf * 4, 4, 2, 1, norm="instance", **lrelu),
            conv_block(ndf * 4, ndf * 8, 4, 1, 1, norm="instance", **lrelu),
            conv_block(ndf * 8, 1, 4, 1, 1, impl=impl),
        )
        init_normal(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def init_normal(module: nn.Module) -> None:
    """The CycleGAN code's ``normal`` initialisation: weights N(0, 0.02), biases zero."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("weight") and param.dim() >= 2:
                param.normal_(0.0, 0.02)
            elif name.endswith("bias"):
                param.zero_()
