"""``FusedLinear``: ``nn.Linear`` followed by an activation, the bias added in the activation's fused kernel."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._backend import layer_runs_ref
from ..ops.bias_act import activation, bias_act
from .common import activation_of, copy_state, fused_extra_repr

__all__ = ["FusedLinear"]


class FusedLinear(nn.Linear):
    """``act(x @ weight.T + bias)``: the matmul without bias, then :func:`fastgan.ops.bias_act` on the last dim.

    Args mirror ``nn.Linear`` plus ``act``/``alpha`` (an activation of ``fastgan.ops.ACTIVATIONS``) and ``impl``;
    ``weight``/``bias`` keep torch.nn's names, shapes and initialisation. Differentiable twice.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        act: str = "linear",
        alpha: float | None = None,
        impl: str = "auto",
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        activation("FusedLinear", act, alpha)
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.act, self.alpha, self.impl = act, alpha, impl

    @classmethod
    def from_modules(cls, linear: nn.Linear, act: nn.Module | None = None, impl: str = "auto") -> FusedLinear:
        """The fused equivalent of ``linear`` -> ``act`` (copied values, same mode)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"FusedLinear.from_modules: linear must be an nn.Linear, got {type(linear).__name__}")
        name, alpha = activation_of(act)
        fused = cls(linear.in_features, linear.out_features, linear.bias is not None, name, alpha, impl,
                    device=linear.weight.device, dtype=linear.weight.dtype)
        return copy_state(fused, linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and layer_runs_ref(
            self.impl, x, "act", lambda: max(x.numel(), x.numel() // max(self.in_features, 1) * self.out_features)
        ):
            spec, alpha = activation("FusedLinear", self.act, self.alpha)
            return spec.fn(F.linear(x, self.weight, self.bias), alpha)
        return bias_act(F.linear(x, self.weight), self.bias, -1, self.act, self.alpha, impl=self.impl)

    def extra_repr(self) -> str:
        return fused_extra_repr(self, [super().extra_repr()])
