"""Gradient penalties: WGAN-GP (``gradient_penalty``), R1/R2 (``r1_penalty``) and lazy regularization.

The penalty head is two fused ops on every implementation (``fastgan::penalty_interpolate`` and
``fastgan::grad_norm_penalty[_backward]``: csrc/losses.cpp + .cu; ``*_triton``: fastgan/kernels/triton/losses.py):

- ``interpolate(real, fake, eps)``: ``x_hat = eps_i * real_i + (1 - eps_i) * fake_i`` in one kernel;
- ``grad_norm_penalty(g, weight, center)``: per-sample norms and ``weight * mean_i((||g_i|| - center)^2)`` in one
  op, and its backward ``dg_i = weight * 2 / B * (||g_i|| - center) * g_i / ||g_i||`` in one kernel. Eager PyTorch
  runs about fifteen kernels for the same head.

Training differentiates the penalty once, through ``g`` (which carries the critic's double-backward graph), so
``.backward()`` on a penalty trains the critic. The penalty's own second derivative (needed only when
differentiating the penalty twice) is computed in PyTorch, so every order works.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._autotune import autotuned, measures
from .._backend import custom_ops, declare_custom_ops, resolve_impl
from .._dtypes import check_dtype, math_dtype

__all__ = [
    "GradientPenalty",
    "LazyRegularizer",
    "R1Penalty",
    "grad_norm_penalty",
    "grad_norm_penalty_ref",
    "gradient_penalty",
    "gradient_penalty_ref",
    "interpolate",
    "interpolate_ref",
    "r1_penalty",
    "r1_penalty_ref",
]


def _check_batch(t: torch.Tensor, name: str, op: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    check_dtype(op, name, t)
    if t.dim() == 0 or t.shape[0] == 0:
        raise ValueError(f"{op}: {name} has shape {tuple(t.shape)}: it needs a non-empty batch dimension")


def _check_interpolate(real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor, op: str) -> None:
    _check_batch(real, "real", op)
    _check_batch(fake, "fake", op)
    if real.shape != fake.shape:
        raise ValueError(f"{op}: real {tuple(real.shape)} and fake {tuple(fake.shape)} must have the same shape")
    if fake.device != real.device:
        raise ValueError(f"{op}: real is on {real.device} but fake on {fake.device}")
    if not isinstance(eps, torch.Tensor) or eps.shape != real.shape[:1]:
        shape = tuple(eps.shape) if isinstance(eps, torch.Tensor) else type(eps).__name__
        raise ValueError(f"{op}: eps must have shape [B] = [{real.shape[0]}] (one weight per sample), got {shape}")
    if not eps.is_floating_point() or eps.device != real.device:
        raise TypeError(f"{op}: eps must be a floating-point tensor on {real.device}, got {eps.dtype} on {eps.device}")


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``v`` of shape [B] viewed to broadcast over ``like`` [B, ...]."""
    return v.reshape(-1, *[1] * (like.dim() - 1))


def interpolate_ref(real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The specification of ``interpolate`` in plain PyTorch."""
    _check_interpolate(real, fake, eps, "interpolate")
    e = _per_sample(eps, real).to(real.dtype)
    return e * real + (1 - e) * fake.to(real.dtype)


@autotuned("interpolate")
def interpolate(real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """WGAN-GP's interpolation ``x_hat_i = eps_i * real_i + (1 - eps_i) * fake_i`` in one kernel.

    Args:
        real, fake: ``[B, ...]`` float16, bfloat16, float32 or float64 of one shape; real's layout is kept when it
            is contiguous or channels_last.
        eps: ``[B]`` per-sample weights (any float dtype; used in float32, float64 for float64 inputs).
        impl: ``"auto"``, ``"ref"``, ``"triton"`` or ``"native"``.

    Returns:
        ``x_hat`` shaped and typed like ``real``; differentiable w.r.t. all three inputs to any order.
    """
    _check_interpolate(real, fake, eps, "interpolate")
    impl = resolve_impl(impl, real.device, "interpolate")
    if impl == "ref":
        return interpolate_ref(real, fake, eps)
    return custom_ops("penalty", impl).penalty_interpolate(real, fake, eps)


def grad_norm_penalty_ref(grad: torch.Tensor, weight: float = 10.0, center: float = 1.0, scale: float = 1.0):
    """The specification of ``grad_norm_penalty`` in plain PyTorch. A zero-centred penalty is the squared norm, written
    (and so differentiated) as a sum of squares, as R1 is: its gradient never divides by the norm."""
    _check_batch(grad, "grad", "grad_norm_penalty")
    if center == 0:
        return weight * (scale * grad).reshape(grad.shape[0], -1).square().sum(1).mean()
    norms = torch.linalg.vector_norm(grad.reshape(grad.shape[0], -1), dim=1)
    return weight * (scale * norms - center).square().mean()


@autotuned("grad_norm_penalty")
def grad_norm_penalty(
    grad: torch.Tensor, weight: float = 10.0, center: float = 1.0, scale: float = 1.0, impl: str = "auto"
) -> torch.Tensor:
    """``weight * mean_i((scale * ||grad_i||_2 - center)^2)``, the norm over all of a sample's elements.

    Args:
        grad: ``[B, ...]`` gradients (e.g. of a critic w.r.t. its input), float16, bfloat16, float32 or float64,
            any layout. Norms accumulate in float32 (float64 for float64).
        weight: the penalty's weight (WGAN-GP's lambda; ``gamma / 2`` for R1).
        center: 1 for WGAN-GP, 0 for zero-centred penalties (R1/R2).
        scale: multiplies ``grad`` first; ``1 / scaler.get_scale()`` unscales gradients of a GradScaler-scaled loss.
        impl: ``"auto"``, ``"ref"``, ``"triton"`` or ``"native"``.

    Returns:
        A 0-dim tensor in ``grad``'s dtype. Its backward is one fused kernel; differentiable to any order (orders
        above one computed in PyTorch). The norm's gradient at a zero ``grad_i`` is taken as 0, as PyTorch does;
        ``center=0`` is the squared norm, differentiated as a sum of squares (R1's form: no division by the norm).
    """
    _check_batch(grad, "grad", "grad_norm_penalty")
    impl = resolve_impl(impl, grad.device, "grad_norm_penalty")
    if impl == "ref":
        return grad_norm_penalty_ref(grad, weight, center, scale)
    return custom_ops("penalty", impl).grad_norm_penalty(grad, float(weight), float(center), float(scale))[0]


def _unscale(scaler) -> float:
    return 1.0 if scaler is None else 1.0 / scaler.get_scale()


def _input_gradient(output: torch.Tensor, inputs: torch.Tensor, scaler, op: str) -> torch.Tensor:
    """d output.sum() / d inputs with ``create_graph=True`` (scaled by ``scaler`` when given)."""
    seed = output.sum()
    if scaler is not None:
        seed = scaler.scale(seed)
    try:
        (grad,) = torch.autograd.grad(seed, inputs, create_graph=True)
    except RuntimeError as error:
        raise RuntimeError(f"{op}: the critic's output does not depend on its input ({error})") from error
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
    _check_interpolate(real, fake, eps, "gradient_penalty")
    x_hat = interpolate_ref(real, fake, eps)
    if not x_hat.requires_grad:
        x_hat.requires_grad_(True)
    grad = _input_gradient(critic(x_hat), x_hat, scaler, "gradient_penalty")
    return grad_norm_penalty_ref(grad, weight, center, _unscale(scaler))


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
            output and unscaled inside the penalty kernel (PyTorch's AMP gradient-penalty recipe).

    Returns:
        A 0-dim tensor in the gradient's dtype (float32 for float32 inputs under autocast: the norms and the mean
        are computed in float32 in every case).
    """
    eps = _eps(real, eps)
    _check_interpolate(real, fake, eps, "gradient_penalty")
    # Where "auto" measures, the interpolation and the penalty op each choose their own implementation.
    impl = "auto" if measures(impl, real.device) else resolve_impl(impl, real.device, "gradient_penalty")
    if impl == "ref":
        return gradient_penalty_ref(critic, real, fake, weight, center, eps, scaler)
    x_hat = interpolate(real, fake, eps, impl=impl)
    if not x_hat.requires_grad:
        x_hat.requires_grad_(True)
    grad = _input_gradient(critic(x_hat), x_hat, scaler, "gradient_penalty")
    return grad_norm_penalty(grad, weight, center, _unscale(scaler), impl=impl)


def _check_r1(real_logits: torch.Tensor, real: torch.Tensor) -> None:
    _check_batch(real, "real", "r1_penalty")
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
    return gamma / 2 * (_unscale(scaler) * grad).reshape(grad.shape[0], -1).square().sum(1).mean()


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
    return grad_norm_penalty(grad, gamma / 2, 0.0, _unscale(scaler), impl=impl)


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


# --- custom-op plumbing shared by the native and Triton implementations ------------------------------------------



def _penalty_grad2(gg, go, g, weight, center, scale):
    """Gradients of <gg, dg> w.r.t. go and g, where dg = go * d grad_norm_penalty_ref(g) / dg: the double backward of
    the reference itself (torch.func, in float32; float64 for float64), so NaN and inf come out where PyTorch's do
    (a zero norm included). Only a second derivative of the penalty needs it, never a WGAN-GP or R1 step."""
    math = torch.promote_types(g.dtype, torch.float32)

    def first(go_, g_):
        _, vjp = torch.func.vjp(lambda t: grad_norm_penalty_ref(t, weight, center, scale), g_)
        return vjp(go_)[0]

    _, vjp2 = torch.func.vjp(first, go.to(math).reshape(()), g.to(math))
    d_go, d_g = vjp2(gg.to(math))
    return d_go.to(go.dtype).reshape(go.shape), d_g.to(g.dtype)


def _register(interp, penalty, penalty_backward) -> None:
    """Fake implementations and autograd formulas for one implementation's three ops."""

    def fake_interp(real, fake, eps):
        return torch.empty_like(real)

    def fake_penalty(g, weight, center, scale):
        return g.new_empty(()), g.new_empty(g.shape[0], dtype=math_dtype(g.dtype))

    def fake_penalty_backward(go, g, norms, weight, center, scale):
        return torch.empty_like(g)

    def setup_interp(ctx, inputs, output):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*inputs)

    def grad_interp(ctx, g):
        # Linear in real and fake, bilinear with eps: plain products, differentiable to any order.
        real, fake, eps = ctx.saved_tensors
        if g is None:
            return None, None, None
        e = _per_sample(eps, real).to(g.dtype)
        d_real = g * e if ctx.needs_input_grad[0] else None
        d_fake = (g * (1 - e)).to(fake.dtype) if ctx.needs_input_grad[1] else None
        d_eps = None
        if ctx.needs_input_grad[2]:
            d_eps = (g * (real - fake.to(real.dtype))).reshape(real.shape[0], -1).sum(1).to(eps.dtype)
        return d_real, d_fake, d_eps

    def setup_penalty(ctx, inputs, output):
        g, ctx.weight, ctx.center, ctx.scale = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)  # no zeros for the norms' (absent) gradient
        ctx.save_for_backward(g, output[1])

    def grad_penalty(ctx, go, _norms):
        if go is None:
            return None, None, None, None
        g, norms = ctx.saved_tensors
        return penalty_backward(go, g, norms, ctx.weight, ctx.center, ctx.scale), None, None, None

    def setup_penalty_backward(ctx, inputs, output):
        go, g, _, ctx.weight, ctx.center, ctx.scale = inputs
        ctx.save_for_backward(go, g)

    def grad_penalty_backward(ctx, gg):
        go, g = ctx.saved_tensors
        d_go, d_g = _penalty_grad2(gg, go, g, ctx.weight, ctx.center, ctx.scale)
        return d_go, d_g, None, None, None, None

    torch.library.register_fake(interp, fake_interp)
    torch.library.register_fake(penalty, fake_penalty)
    torch.library.register_fake(penalty_backward, fake_penalty_backward)
    torch.library.register_autograd(interp, grad_interp, setup_context=setup_interp)
    torch.library.register_autograd(penalty, grad_penalty, setup_context=setup_penalty)
    torch.library.register_autograd(penalty_backward, grad_penalty_backward, setup_context=setup_penalty_backward)


declare_custom_ops(
    "penalty", ("penalty_interpolate", "grad_norm_penalty", "grad_norm_penalty_backward"), "losses", _register
)
