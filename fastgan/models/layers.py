"""Building blocks of the model families: convolution + optional norm + activation, built from fastgan layers.

``conv_block`` returns ``fastgan.nn.FusedConv2d`` / ``FusedConvTranspose2d`` (one fused unit, ``impl=`` reaching
every op) when those modules exist, and otherwise the same math as ``torch.nn`` convolution, norm and a
``fastgan.nn.BiasAct`` epilogue (the bias and activation still run through fastgan's ``bias_act``).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import nn as fnn

NORMS = (None, "batch", "instance")


def _fused_class(transposed: bool) -> type[nn.Module] | None:
    """The fused conv module of fastgan.nn, or None where it has not been built."""
    return getattr(fnn, "FusedConvTranspose2d" if transposed else "FusedConv2d", None)


class ConvNormAct(nn.Module):
    """``act(norm(conv(x)) + bias)`` as separate modules, for when the fused conv module is unavailable.

    The conv carries no bias (a norm would cancel it, and ``BiasAct`` adds one after the norm otherwise); the norm
    is affine for batch norm (DCGAN) and non-affine for instance norm (CycleGAN), as in the papers' code.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        output_padding: int = 0,
        bias: bool = True,
        norm: str | None = None,
        act: str = "linear",
        alpha: float | None = None,
        transposed: bool = False,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        if transposed:
            self.conv = nn.ConvTranspose2d(
                in_channels, out_channels, kernel_size, stride, padding, output_padding, bias=False
            )
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        if norm == "batch":
            self.norm = nn.BatchNorm2d(out_channels)
        elif norm == "instance":
            self.norm = nn.InstanceNorm2d(out_channels)
        else:
            self.norm = nn.Identity()
        # After an affine batch norm the norm's shift is the bias.
        self.act = fnn.BiasAct(out_channels, act, alpha, bias=bias and norm != "batch", impl=impl)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


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
    """A (transposed) convolution, then ``norm`` (None, "batch", "instance"), then bias and ``act``.

    Input [N, in_channels, H, W] -> [N, out_channels, H', W'], any float dtype the convolution accepts.
    """
    if norm not in NORMS:
        raise ValueError(f"conv_block: norm must be one of {NORMS}, got {norm!r}")
    fused = _fused_class(transposed)
    if fused is not None:
        extra = {"output_padding": output_padding} if transposed else {}
        return fused(
            in_channels, out_channels, kernel_size, stride, padding, bias=bias, norm=norm, act=act, alpha=alpha,
            impl=impl, **extra,
        )
    return ConvNormAct(
        in_channels, out_channels, kernel_size, stride, padding, output_padding, bias, norm, act, alpha, transposed,
        impl,
    )


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
