"""interpolate / grad_norm_penalty: the two fused ops of a gradient penalty's head, on every implementation.

The whole story of both ops is here: references (the specification), argument checks, and the autograd formulas
shared by the compiled (``fastgan::penalty_interpolate``, ``fastgan::grad_norm_penalty[_backward]``: csrc/losses.cpp
+ .cu) and Triton (``*_triton``: fastgan/kernels/triton/losses.py) custom ops.

- ``interpolate(real, fake, eps)``: ``x_hat = eps_i * real_i + (1 - eps_i) * fake_i`` in one kernel;
- ``grad_norm_penalty(g, weight, center)``: per-sample norms and ``weight * mean_i((||g_i|| - center)^2)`` in one
  op, and its backward ``dg_i = weight * 2 / B * (||g_i|| - center) * g_i / ||g_i||`` in one kernel. Eager PyTorch
  runs about fifteen kernels for the same head.

``fastgan.losses.gradient_penalty`` (WGAN-GP) and ``r1_penalty`` (R1/R2) compose them with the critic's input
gradient. Training differentiates the penalty once, through ``g`` (which carries the critic's double-backward
graph); the penalty's own second derivative (needed only when differentiating it twice) is computed in PyTorch, so
every order works.
"""

from __future__ import annotations

import torch

from .._autotune import autotuned
from .._backend import custom_ops, declare_custom_ops, register_autograd, register_fake, resolve_impl
from .._dtypes import check_dtype, math_dtype

__all__ = ["grad_norm_penalty", "grad_norm_penalty_ref", "interpolate", "interpolate_ref"]


def check_batch(t: torch.Tensor, name: str, op: str) -> None:
    """TypeError / ValueError naming ``op`` unless ``t`` is a tensor of a kernel dtype with a non-empty batch."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    check_dtype(op, name, t)
    if t.dim() == 0 or t.shape[0] == 0:
        raise ValueError(f"{op}: {name} has shape {tuple(t.shape)}: it needs a non-empty batch dimension")


def check_interpolate(real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor, op: str) -> None:
    """The argument checks of ``interpolate``, naming ``op`` (also run by the penalties built on it)."""
    check_batch(real, "real", op)
    check_batch(fake, "fake", op)
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
    check_interpolate(real, fake, eps, "interpolate")
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
    check_interpolate(real, fake, eps, "interpolate")
    impl = resolve_impl(impl, real.device, "interpolate")
    if impl == "ref":
        return interpolate_ref(real, fake, eps)
    return custom_ops("penalty", impl).penalty_interpolate(real, fake, eps)


def grad_norm_penalty_ref(grad: torch.Tensor, weight: float = 10.0, center: float = 1.0, scale: float = 1.0):
    """The specification of ``grad_norm_penalty`` in plain PyTorch. A zero-centred penalty is the squared norm, written
    (and so differentiated) as a sum of squares, as R1 is: its gradient never divides by the norm."""
    check_batch(grad, "grad", "grad_norm_penalty")
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
    check_batch(grad, "grad", "grad_norm_penalty")
    impl = resolve_impl(impl, grad.device, "grad_norm_penalty")
    if impl == "ref":
        return grad_norm_penalty_ref(grad, weight, center, scale)
    return custom_ops("penalty", impl).grad_norm_penalty(grad, float(weight), float(center), float(scale))[0]


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

    register_fake(interp, fake_interp)
    register_fake(penalty, fake_penalty)
    register_fake(penalty_backward, fake_penalty_backward)
    register_autograd(interp, grad_interp, setup_context=setup_interp)
    register_autograd(penalty, grad_penalty, setup_context=setup_penalty)
    register_autograd(penalty_backward, grad_penalty_backward, setup_context=setup_penalty_backward)


declare_custom_ops(
    "penalty", ("penalty_interpolate", "grad_norm_penalty", "grad_norm_penalty_backward"), "losses", _register
)
