"""What every fused module shares: the activation it takes over from a torch.nn module (``activation_of``, used by
each ``from_modules`` and by ``fastgan.optimize``), copying a torch.nn module's state (``copy_state``), and how it
prints its activation and implementation (``fused_extra_repr``)."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

__all__ = ["activation_of", "copy_state", "fused_extra_repr"]


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
