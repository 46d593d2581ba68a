"""The original GAN (Goodfellow et al., 2014): multilayer perceptrons for the generator and the discriminator.

Leaky ReLU replaces the paper's maxout units (the common modern reading of the 2014 formulation); every hidden layer
is a ``fastgan.nn.FusedLinear`` (matmul, then the fused bias + activation), so ``impl=`` reaches every activation.
"""

from __future__ import annotations

import torch
from torch import nn

from ..nn import FusedLinear


def _mlp(sizes: list[int], act: str, alpha: float | None, last_act: str, impl: str) -> nn.Sequential:
    """Fused linear layers of ``sizes`` with ``act`` (``last_act`` after the last)."""
    pairs = list(zip(sizes[:-1], sizes[1:]))
    return nn.Sequential(*(
        FusedLinear(fan_in, fan_out, act=last_act if i == len(pairs) - 1 else act,
                    alpha=None if i == len(pairs) - 1 else alpha, impl=impl)
        for i, (fan_in, fan_out) in enumerate(pairs)
    ))


class MLPGenerator(nn.Module):
    """Noise [N, z_dim] -> images [N, channels, image_size, image_size] in (-1, 1) through a tanh MLP."""

    def __init__(
        self,
        z_dim: int = 100,
        image_size: int = 28,
        channels: int = 1,
        hidden: tuple[int, ...] = (256, 512, 1024),
        impl: str = "auto",
    ) -> None:
        super().__init__()
        self.z_dim, self.image_size, self.channels = z_dim, image_size, channels
        self.net = _mlp([z_dim, *hidden, channels * image_size * image_size], "lrelu", 0.2, "tanh", impl)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.flatten(1)).view(-1, self.channels, self.image_size, self.image_size)


class MLPDiscriminator(nn.Module):
    """Images [N, channels, image_size, image_size] -> logits [N] through a leaky-ReLU MLP."""

    def __init__(
        self,
        image_size: int = 28,
        channels: int = 1,
        hidden: tuple[int, ...] = (512, 256),
        impl: str = "auto",
    ) -> None:
        super().__init__()
        self.net = _mlp([channels * image_size * image_size, *hidden, 1], "lrelu", 0.2, "linear", impl)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1)).view(-1)
