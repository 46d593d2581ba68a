"""What every fused module shares: the activation it takes over from a torch.nn module (``activation_of``, used by
each ``from_modules`` and by ``fastgan.optimize``), copying a torch.nn module's state (``copy_state``), how it
prints its activation and implementation (``fused_extra_repr``), and whether a layer led by a convolution is small
enough to run its reference on the CPU (``conv_runs_ref``) and that convolution (``conv_reference``, its arguments
checked only when PyTorch refuses them: ``fastgan._backend.checked_on_failure``)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .._backend import checked_on_failure, layer_runs_ref
from ..ops.conv_act import autocast_operands, check_conv, cpu_route, output_size

__all__ = ["activation_of", "conv_reference", "conv_runs_ref", "copy_state", "fused_extra_repr"]


def activation_of(module: nn.Module | None) -> tuple[str, float | None]:
    """``(act, alpha)`` of ``fastgan.ops.ACTIVATIONS`` computing the same function as a torch.nn activation module.

    Maps None/Identity, ReLU, LeakyReLU(negative_slope), Tanh, Sigmoid, SiLU, ELU(alpha), SELU and Softplus (beta=1,
    threshold=20); raises ValueError for anything else.
    """
    if module is None or isinstance(module, nn.Identity):
        return "linear", None
    if isinstance(module, nn.LeakyReLU):
        return "lrelu", float(module.negative_slope)
    if isinstance(module, nn.ELU):
        return "elu", float(module.alpha)
    if isinstance(module, nn.Softplus) and module.beta == 1 and module.threshold == 20:
        return "softplus", None
    simple = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.SiLU: "silu", nn.SELU: "selu"}
    for kind, name in simple.items():
        if type(module) is kind:
            return name, None
    raise ValueError(f"no fastgan activation computes {module!r}; supported: ReLU, LeakyReLU, Tanh, Sigmoid, SiLU, "
                     "ELU, SELU, Softplus(beta=1, threshold=20), Identity")


def copy_state(fused: nn.Module, source: nn.Module) -> nn.Module:
    """``fused`` with ``source``'s parameters and buffers (copied, same names) and its train/eval mode."""
    fused.load_state_dict(source.state_dict())
    return fused.train(source.training)


def fused_extra_repr(module: nn.Module, head: Iterable[str], show_act: bool = True, tail: Iterable[str] = ()) -> str:
    """``head``, then ``act``/``alpha`` (when ``show_act``), then ``tail``, then ``impl`` unless it is "auto"."""
    parts = [part for part in head if part]
    if show_act:
        parts.append(f"act={module.act!r}")
        if module.alpha is not None:
            parts.append(f"alpha={module.alpha}")
    parts += tail
    if module.impl != "auto":
        parts.append(f"impl={module.impl!r}")
    return ", ".join(parts)


def conv_runs_ref(impl: str, conv: nn.Conv2d | nn.ConvTranspose2d, x, output_padding=None, kind: str = "act") -> bool:
    """``layer_runs_ref`` for a layer of ``kind`` led by ``conv`` (``output_padding``: a transposed convolution's) on
    input ``x``: its largest tensor is the input or the convolution's output; never where the native path has a
    convolution of its own (``cpu_route``)."""
    if impl != "auto" or not isinstance(x, torch.Tensor) or x.dim() != 4:
        return False
    weight, stride, padding = conv.weight, conv.stride, conv.padding

    def largest() -> int:
        h, w = output_size(x, weight, stride, padding, output_padding)
        return max(x.numel(), x.shape[0] * conv.out_channels * h * w)

    return layer_runs_ref(impl, x, kind, largest) and not cpu_route(x, weight, stride, padding, output_padding)


def conv_reference(op: str, conv: nn.Conv2d | nn.ConvTranspose2d, x: torch.Tensor, output_padding=None) -> torch.Tensor:
    """``conv``'s convolution of ``x`` (with its bias) by PyTorch; arguments PyTorch refuses raise the fused op
    ``op``'s error (``checked_on_failure``); ``output_padding``: a transposed convolution's."""

    def run() -> torch.Tensor:
        if output_padding is None:
            return F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding)
        return F.conv_transpose2d(x, conv.weight, conv.bias, conv.stride, conv.padding, output_padding)

    def check() -> None:
        xc, weight, bias = autocast_operands(x, conv.weight, conv.bias)
        check_conv(op, xc, weight, bias, conv.stride, conv.padding, output_padding, "linear", None)

    return checked_on_failure(run, check)
