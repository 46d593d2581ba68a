"""Gradient penalties: WGAN-GP (``gradient_penalty``), R1/R2 (``r1_penalty``), lazy regularization, modules.

Each penalty takes the critic's input gradient with ``create_graph=True`` and feeds it to the fused penalty head of
:mod:`fastgan.ops.penalty` (``interpolate`` and ``grad_norm_penalty``), so ``.backward()`` on a penalty trains the
critic and every order of differentiation works.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._autotune import measures
from .._backend import resolve_impl
from ..ops.penalty import (
    check_batch,
    check_interpolate,
    grad_norm_penalty,
    grad_norm_penalty_ref,
    interpolate,
    interpolate_ref,
)

__all__ = [
    "GradientPenalty",
    "LazyRegularizer",
    "R1Penalty",
    "gradient_penalty",
    "gradient_penalty_ref",
    "r1_penalty",
    "r1_penalty_ref",
]


def _input_gradient(output: torch.Tensor, inputs: torch.Tensor, scaler, op: str) -> torch.Tensor:
    """d output.sum() / d inputs with ``create_graph=True``. With a GradScaler the seed is scaled (so float16
    gradients do not underflow) and the gradient unscaled in float32 by the scale tensor itself: ``get_scale()``
    would read it on the host, a synchronisation in every step (and impossible inside a CUDA graph)."""
    seed = output.sum()
    if scaler is not None:
        seed = scaler.scale(seed)
    try:
        (grad,) = torch.autograd.grad(seed, inputs, create_graph=True)
    except RuntimeError as error:
        raise RuntimeError(f"{op}: the critic's output does not depend on its input ({error})") from error
    if scaler is not None:
        grad = grad.float() / scaler.scale(torch.ones((), device=grad.device))
    return grad


def _eps(real: torch.Tensor, eps: torch.Tensor | None) -> torch.Tensor:
    return torch.rand(real.shape[0], device=real.device) if eps is None else eps


def gradient_penalty_ref(
    critic: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    weight: float = 10.0,
    center: float = 1.0,
    eps: torch.Tensor | None = None,
    scaler=None,
) -> torch.Tensor:
    """The textbook WGAN-GP penalty in plain PyTorch (Gulrajani et al. 2017; PyTorch's AMP recipe with a scaler)."""
    eps = _eps(real, eps)
    check_interpolate(real, fake, eps, "gradient_penalty")
    x_hat = interpolate_ref(real, fake, eps)
    if not x_hat.requires_grad:
        x_hat.requires_grad_(True)
    grad = _input_gradient(critic(x_hat), x_hat, scaler, "gradient_penalty")
    return grad_norm_penalty_ref(grad, weight, center)


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    weight: float = 10.0,
    center: float = 1.0,
    eps: torch.Tensor | None = None,
    impl: str = "auto",
    scaler=None,
) -> torch.Tensor:
    """WGAN-GP: ``weight * mean_i((||d critic(x_hat).sum() / d x_hat_i||_2 - center)^2)``.

    ``x_hat = eps * real + (1 - eps) * fake`` with ``eps`` ``[B]`` (uniform in [0, 1) when None). ``.backward()`` on
    the result trains the critic (its parameters get the gradients of the textbook implementation);
    ``center=0`` gives the zero-centred variant.

    Args:
        critic: a callable ``[B, ...] -> logits`` (any module; fastgan layers skip all-zero second derivatives).
        real, fake: ``[B, ...]`` of one shape; float16, bfloat16, float32 or float64.
        weight, center: the penalty's lambda and target norm.
        eps: optional ``[B]`` interpolation weights.
        impl: ``"auto"``, ``"ref"``, ``"triton"`` or ``"native"`` for the interpolation and the penalty ops.
        scaler: a ``torch.amp.GradScaler`` when training in float16: the input gradient is taken of the scaled
            output and unscaled in float32 (PyTorch's AMP gradient-penalty recipe, without its host read of the
            scale).

    Returns:
        A 0-dim tensor in the gradient's dtype (float32 for float32 inputs under autocast, and with a scaler: the
        norms and the mean are computed in float32 in every case).
    """
    eps = _eps(real, eps)
    check_interpolate(real, fake, eps, "gradient_penalty")
    # Where "auto" measures, the interpolation and the penalty op each choose their own implementation.
    impl = "auto" if measures(impl, real.device) else resolve_impl(impl, real.device, "gradient_penalty")
    if impl == "ref":
        return gradient_penalty_ref(critic, real, fake, weight, center, eps, scaler)
    x_hat = interpolate(real, fake, eps, impl=impl)
    if not x_hat.requires_grad:
        x_hat.requires_grad_(True)
    grad = _input_gradient(critic(x_hat), x_hat, scaler, "gradient_penalty")
    return grad_norm_penalty(grad, weight, center, impl=impl)


def _check_r1(real_logits: torch.Tensor, real: torch.Tensor) -> None:
    check_batch(real, "real", "r1_penalty")
    if not real.requires_grad:
        raise ValueError(
            "r1_penalty: real does not require grad; call real.requires_grad_(True) before running the critic, "
            "so the same forward serves the loss and the penalty"
        )
    if not isinstance(real_logits, torch.Tensor) or real_logits.grad_fn is None:
        raise ValueError("r1_penalty: real_logits must be the critic's output on real (with an autograd graph)")


def r1_penalty_ref(real_logits: torch.Tensor, real: torch.Tensor, gamma: float = 10.0, scaler=None) -> torch.Tensor:
    """The textbook R1 penalty in plain PyTorch (Mescheder et al. 2018, as StyleGAN2 computes it)."""
    _check_r1(real_logits, real)
    grad = _input_gradient(real_logits, real, scaler, "r1_penalty")
    return gamma / 2 * grad.reshape(grad.shape[0], -1).square().sum(1).mean()


def r1_penalty(
    real_logits: torch.Tensor, real: torch.Tensor, gamma: float = 10.0, impl: str = "auto", scaler=None
) -> torch.Tensor:
    """R1: ``gamma / 2 * mean_i(||d real_logits.sum() / d real_i||^2)``; applied to fakes it is R2.

    ``real`` must have required grad before the critic ran, so one forward serves the loss and the penalty::

        real.requires_grad_(True)
        logits = D(real)
        loss = d_loss(logits, D(fake)) + r1_penalty(logits, real)

    Args:
        real_logits: the critic's output on ``real`` (any shape; summed).
        real: ``[B, ...]`` critic input that requires grad.
        gamma: the penalty weight.
        impl: implementation of the penalty op.
        scaler: a GradScaler when training in float16 (see ``gradient_penalty``).

    Returns:
        A 0-dim tensor in the gradient's dtype; ``.backward()`` trains the critic.
    """
    _check_r1(real_logits, real)
    impl = "auto" if measures(impl, real.device) else resolve_impl(impl, real.device, "r1_penalty")
    if impl == "ref":
        return r1_penalty_ref(real_logits, real, gamma, scaler)
    grad = _input_gradient(real_logits, real, scaler, "r1_penalty")
    return grad_norm_penalty(grad, gamma / 2, 0.0, impl=impl)


class LazyRegularizer:
    """Lazy regularization (StyleGAN2): apply a penalty every ``every`` steps, scaled by ``every``.

    ``reg = LazyRegularizer(16)``; in the step: ``if reg.due(step): (reg.scale(r1_penalty(...))).backward()``.
    """

    def __init__(self, every: int) -> None:
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"LazyRegularizer: every must be a positive int, got {every!r}")
        self.every = every

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def scale(self, penalty: torch.Tensor) -> torch.Tensor:
        return penalty * self.every


class GradientPenalty(torch.nn.Module):
    """Module form of ``gradient_penalty``: ``GradientPenalty(weight, center)(critic, real, fake, eps=None)``."""

    def __init__(self, weight: float = 10.0, center: float = 1.0, impl: str = "auto") -> None:
        super().__init__()
        self.weight, self.center, self.impl = weight, center, impl

    def forward(self, critic, real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor | None = None, scaler=None):
        return gradient_penalty(critic, real, fake, self.weight, self.center, eps, self.impl, scaler)


class R1Penalty(torch.nn.Module):
    """Module form of ``r1_penalty``: ``R1Penalty(gamma)(real_logits, real)``."""

    def __init__(self, gamma: float = 10.0, impl: str = "auto") -> None:
        super().__init__()
        self.gamma, self.impl = gamma, impl

    def forward(self, real_logits: torch.Tensor, real: torch.Tensor, scaler=None) -> torch.Tensor:
        return r1_penalty(real_logits, real, self.gamma, self.impl, scaler)
