"""``BiasAct``: a learnable per-channel bias followed by an activation, as one fused op."""

from __future__ import annotations

import torch
from torch import nn

from .._backend import layer_runs_ref
from ..ops.bias_act import activation, bias_act
from .common import fused_extra_repr


class BiasAct(nn.Module):
    """``y = clamp(act(x + bias) * gain)`` with ``bias`` (shape ``[num_channels]``) a parameter broadcast on ``dim``.

    Args mirror :func:`fastgan.ops.bias_act` (``defaults="stylegan"`` included); ``bias=False`` keeps only the
    activation.
    """

    def __init__(
        self,
        num_channels: int,
        act: str = "linear",
        alpha: float | None = None,
        gain: float | None = None,
        clamp: float | None = None,
        dim: int = 1,
        bias: bool = True,
        impl: str = "auto",
        defaults: str = "torch",
    ) -> None:
        super().__init__()
        activation("BiasAct", act, alpha)
        self.num_channels, self.act, self.alpha, self.gain, self.clamp = num_channels, act, alpha, gain, clamp
        self.dim, self.impl, self.defaults = dim, impl, defaults
        self.bias = nn.Parameter(torch.zeros(num_channels)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        impl = "ref" if isinstance(x, torch.Tensor) and layer_runs_ref(self.impl, x, "act") else self.impl
        return bias_act(x, self.bias, self.dim, self.act, self.alpha, self.gain, self.clamp, impl,
                        defaults=self.defaults)

    def extra_repr(self) -> str:
        tail = [f"{k}={getattr(self, k)}" for k in ("gain", "clamp") if getattr(self, k) is not None]
        if self.dim != 1:
            tail.append(f"dim={self.dim}")
        if self.defaults != "torch":
            tail.append(f"defaults={self.defaults!r}")
        return fused_extra_repr(self, [str(self.num_channels)], tail=tail)
