"""Building blocks of the model families: a (transposed) convolution with its norm and activation, fused.

``conv_block`` returns ``fastgan.nn.FusedConv2d`` / ``FusedConvTranspose2d``, so ``impl=`` reaches the convolution,
the norm and the activation of every layer.
"""

from __future__ import annotations

import torch
from torch import nn

from ..nn import FusedConv2d, FusedConvTranspose2d

NORMS = (None, "batch", "instance")


def conv_block(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
    *,
    output_padding: int = 0,
    bias: bool = True,
    norm: str | None = None,
    act: str = "linear",
    alpha: float | None = None,
    transposed: bool = False,
    impl: str = "auto",
) -> nn.Module:
    """A (transposed) convolution, then ``norm`` (None, "batch", "instance"), then ``act``.

    Batch norm is affine and the convolution before it has no bias (the norm's shift replaces it), as in DCGAN;
    instance norm is non-affine, as in the CycleGAN authors' code. Input [N, in_channels, H, W] ->
    [N, out_channels, H', W'].
    """
    if norm not in NORMS:
        raise ValueError(f"conv_block: norm must be one of {NORMS}, got {norm!r}")
    options = {
        "bias": bias and norm != "batch",
        "norm": norm,
        "act": act,
        "alpha": alpha,
        "impl": impl,
        "norm_kwargs": {"affine": False} if norm == "instance" else None,
    }
    if transposed:
        return FusedConvTranspose2d(in_channels, out_channels, kernel_size, stride, padding, output_padding, **options)
    return FusedConv2d(in_channels, out_channels, kernel_size, stride, padding, **options)


def dcgan_init(module: nn.Module) -> None:
    """DCGAN initialisation: conv/linear weights N(0, 0.02), norm scales N(1, 0.02), biases and shifts zero.

    Works by parameter name and rank, so it covers fused modules as well as ``torch.nn`` ones: a ``weight`` of rank
    >= 2 is a conv/linear weight, a rank-1 ``weight`` is a norm scale.
    """
    with torch.no_grad():
        for name, param in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf.endswith("weight") and param.dim() >= 2:
                param.normal_(0.0, 0.02)
            elif leaf.endswith("weight"):
                param.normal_(1.0, 0.02)
            elif leaf.endswith("bias"):
                param.zero_()
