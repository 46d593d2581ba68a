"""gan_loss: the adversarial losses ``d_loss`` and ``g_loss``, fused on every implementation.

A loss is a sum of at most two *terms*, each the mean over one logits tensor of an elementwise function. The fast
paths (``fastgan::gan_loss``: csrc/losses.cpp + .cu; ``fastgan::gan_loss_triton``: fastgan/kernels/triton/losses.py)
compute every term's mean and its gradient ``f'(z) / numel`` in one kernel and save the gradient (float32, float64
for float64 logits); the backward (``gan_loss_backward``) is one kernel that scales it by the incoming gradient.
Eager PyTorch runs about ten kernels for the same forward+backward.

Shapes: the mean runs over all elements, so ``[B]``, ``[B, 1]`` and PatchGAN maps ``[B, 1, H, W]`` all work. Real
and fake logits must have the same shape except for the batch dimension (the two means are separate, so batch sizes
may differ), the same dtype and device, and at least one element.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._autotune import autotuned
from .._backend import custom_ops, declare_custom_ops, register_autograd, register_fake, resolve_impl
from .._dtypes import check_dtype, math_dtype

__all__ = ["LOSS_KINDS", "d_loss", "d_loss_ref", "g_loss", "g_loss_ref", "loss_kind"]


@dataclass(frozen=True)
class Term:
    index: int  # csrc/losses.h::LossTerm and the Triton kernels' TERM
    fn: Callable[[torch.Tensor], torch.Tensor]  # reference f(z), in PyTorch
    grad2: Callable[[torch.Tensor], torch.Tensor] | None  # f''(z) for double backward; None: identically zero


def _sigmoid_slope(u: torch.Tensor) -> torch.Tensor:
    """softplus''(u) as PyTorch's double backward computes it: zero from its threshold of 20 on (a multiply by the
    mask, so a NaN u stays NaN)."""
    s = torch.sigmoid(u)
    return s * (1 - s) * (u < 20).to(u.dtype)


TERMS: dict[str, Term] = {
    "softplus_neg": Term(0, lambda z: F.softplus(-z), lambda z: _sigmoid_slope(-z)),
    "softplus": Term(1, F.softplus, _sigmoid_slope),
    "neg_softplus": Term(2, lambda z: -F.softplus(z), lambda z: -_sigmoid_slope(z)),
    "hinge_real": Term(3, lambda z: F.relu(1 - z), None),
    "hinge_fake": Term(4, lambda z: F.relu(1 + z), None),
    "identity": Term(5, lambda z: z, None),
    "negate": Term(6, lambda z: -z, None),
    "square_one": Term(7, lambda z: (z - 1).square(), lambda z: torch.full_like(z, 2.0)),
    "square": Term(8, torch.square, lambda z: torch.full_like(z, 2.0)),
}
_BY_INDEX = {term.index: term for term in TERMS.values()}


@dataclass(frozen=True)
class LossKind:
    d_real: str  # term of the discriminator's real logits
    d_fake: str  # term of the discriminator's fake logits
    g_fake: str  # term of the generator's fake logits


LOSS_KINDS: dict[str, LossKind] = {
    "minimax": LossKind("softplus_neg", "softplus", "neg_softplus"),
    "nonsaturating": LossKind("softplus_neg", "softplus", "softplus_neg"),
    "hinge": LossKind("hinge_real", "hinge_fake", "negate"),
    "wasserstein": LossKind("negate", "identity", "negate"),
    "least_squares": LossKind("square_one", "square", "square_one"),
}


def loss_kind(owner: str, kind: str) -> LossKind:
    """The table entry of ``kind``; ValueError naming ``owner`` (the op or module) for an unknown kind."""
    spec = LOSS_KINDS.get(kind)
    if spec is None:
        raise ValueError(f"{owner}: unknown loss kind {kind!r}; expected one of {', '.join(LOSS_KINDS)}")
    return spec


def _check_logits(t: torch.Tensor, name: str, op: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    check_dtype(op, name, t)
    if t.dim() == 0:
        raise ValueError(f"{op}: {name} must have a batch dimension ([B], [B, 1] or [B, 1, H, W]), got a scalar")
    if t.numel() == 0:
        raise ValueError(f"{op}: {name} has shape {tuple(t.shape)} (an empty batch): the mean loss is undefined")


def _check_pair(real: torch.Tensor, fake: torch.Tensor, op: str) -> None:
    _check_logits(real, "real_logits", op)
    _check_logits(fake, "fake_logits", op)
    if real.shape[1:] != fake.shape[1:] or real.dim() != fake.dim():
        raise ValueError(
            f"{op}: real_logits {tuple(real.shape)} and fake_logits {tuple(fake.shape)} must have the same shape "
            "(batch sizes may differ); did the discriminator see inputs of different sizes?"
        )
    if real.device != fake.device:
        raise ValueError(f"{op}: real_logits are on {real.device} but fake_logits on {fake.device}")
    if real.dtype != fake.dtype:
        raise TypeError(f"{op}: real_logits are {real.dtype} but fake_logits {fake.dtype}; cast one to the other")


def d_loss_ref(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str = "nonsaturating") -> torch.Tensor:
    """The specification of ``d_loss`` in plain PyTorch (the formulas of the table in ``d_loss``)."""
    spec = loss_kind("d_loss", kind)
    _check_pair(real_logits, fake_logits, "d_loss")
    return TERMS[spec.d_real].fn(real_logits).mean() + TERMS[spec.d_fake].fn(fake_logits).mean()


def g_loss_ref(fake_logits: torch.Tensor, kind: str = "nonsaturating") -> torch.Tensor:
    """The specification of ``g_loss`` in plain PyTorch."""
    spec = loss_kind("g_loss", kind)
    _check_logits(fake_logits, "fake_logits", "g_loss")
    return TERMS[spec.g_fake].fn(fake_logits).mean()


@autotuned("d_loss")
def d_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str = "nonsaturating", impl: str = "auto"
) -> torch.Tensor:
    """Discriminator (critic) loss, a scalar, with its gradient computed in the same kernel.

    ==================  ===========================================
    kind                d_loss(r, f)
    ==================  ===========================================
    ``minimax``         softplus(-r).mean() + softplus(f).mean()
    ``nonsaturating``   softplus(-r).mean() + softplus(f).mean()
    ``hinge``           relu(1 - r).mean() + relu(1 + f).mean()
    ``wasserstein``     f.mean() - r.mean()
    ``least_squares``   ((r - 1)^2).mean() + (f^2).mean()
    ==================  ===========================================

    Args:
        real_logits: discriminator outputs on real data, ``[B]``, ``[B, 1]`` or ``[B, 1, H, W]`` (any shape with a
            batch dimension), float16, bfloat16, float32 or float64; any layout.
        fake_logits: outputs on generated data: the same shape except possibly the batch size, dtype and device.
        kind: one of ``LOSS_KINDS``.
        impl: ``"auto"``, ``"ref"``, ``"triton"`` or ``"native"``.

    Returns:
        A 0-dim tensor in the logits' dtype; softplus is evaluated stably for any |logit| and sums accumulate in
        float32 (float64 for float64). Differentiable w.r.t. both inputs to any order (the second derivative is
        computed in PyTorch; it is zero for hinge and wasserstein).
    """
    spec = loss_kind("d_loss", kind)
    _check_pair(real_logits, fake_logits, "d_loss")
    impl = resolve_impl(impl, real_logits.device, "d_loss", dtype=real_logits.dtype, kind=kind)
    if impl == "ref":
        return d_loss_ref(real_logits, fake_logits, kind)
    forward = custom_ops("gan_loss", impl).gan_loss
    return forward(real_logits, fake_logits, TERMS[spec.d_real].index, TERMS[spec.d_fake].index)[0]


@autotuned("g_loss")
def g_loss(fake_logits: torch.Tensor, kind: str = "nonsaturating", impl: str = "auto") -> torch.Tensor:
    """Generator loss, a scalar, with its gradient computed in the same kernel.

    ``minimax``: -softplus(f).mean(); ``nonsaturating``: softplus(-f).mean(); ``hinge`` and ``wasserstein``:
    -f.mean(); ``least_squares``: ((f - 1)^2).mean(). Shapes, dtypes, gradient order and implementations as
    ``d_loss``.
    """
    spec = loss_kind("g_loss", kind)
    _check_logits(fake_logits, "fake_logits", "g_loss")
    impl = resolve_impl(impl, fake_logits.device, "g_loss", dtype=fake_logits.dtype, kind=kind)
    if impl == "ref":
        return g_loss_ref(fake_logits, kind)
    forward = custom_ops("gan_loss", impl).gan_loss
    return forward(fake_logits, None, TERMS[spec.g_fake].index, 0)[0]


# --- custom-op plumbing shared by the native and Triton implementations ------------------------------------------


def _second_order(g: torch.Tensor | None, z: torch.Tensor, grad: torch.Tensor, term: int) -> torch.Tensor | None:
    """The logits' gradient from a gradient flowing into the saved ``grad = f'(z) / numel``: g * f''(z) / numel."""
    grad2 = _BY_INDEX[term].grad2
    if g is None or grad2 is None or grad.numel() == 0:
        return None
    math = g.dtype
    return (g * grad2(z.to(math)) / z.numel()).to(z.dtype)


def _add(x: torch.Tensor | None, y: torch.Tensor | None) -> torch.Tensor | None:
    return y if x is None else x if y is None else x + y


def _register(forward, backward) -> None:
    """Fake implementations and autograd formulas for one implementation's two ops."""

    def fake_forward(a, b, term_a, term_b):
        mt = math_dtype(a.dtype)
        grad_b = torch.empty_like(b, dtype=mt) if b is not None else a.new_empty(0, dtype=mt)
        return a.new_empty(()), torch.empty_like(a, dtype=mt), grad_b

    def fake_backward(go, grad_a, grad_b):
        return torch.empty_like(grad_a, dtype=go.dtype), torch.empty_like(grad_b, dtype=go.dtype)

    def setup_forward(ctx, inputs, output):
        a, b, ctx.term_a, ctx.term_b = inputs
        _, grad_a, grad_b = output
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(a, b, grad_a, grad_b)

    def grad_forward(ctx, g_loss_, g_grad_a, g_grad_b):
        # The loss's gradient is the saved one scaled (one kernel); gradients reaching the saved f'(z)/numel (only
        # in double backward) need f''(z), computed here in PyTorch: rare, and differentiable to any order.
        a, b, grad_a, grad_b = ctx.saved_tensors
        da = db = None
        if g_loss_ is not None:
            da, db = backward(g_loss_, grad_a, grad_b)
            db = db if b is not None else None
        da = _add(da, _second_order(g_grad_a, a, grad_a, ctx.term_a))
        if b is not None:
            db = _add(db, _second_order(g_grad_b, b, grad_b, ctx.term_b))
        return da, db, None, None

    def setup_backward(ctx, inputs, output):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*inputs)

    def grad_backward(ctx, g_da, g_db):
        # (da, db) = go * (grad_a, grad_b) is bilinear: its gradients are plain products, differentiable again.
        go, grad_a, grad_b = ctx.saved_tensors
        d_go = d_grad_a = d_grad_b = None
        if g_da is not None:
            if ctx.needs_input_grad[0]:
                d_go = (g_da.to(grad_a.dtype) * grad_a).sum().to(go.dtype)
            if ctx.needs_input_grad[1]:
                d_grad_a = g_da.to(grad_a.dtype) * go.to(grad_a.dtype)
        if g_db is not None and grad_b.numel():
            if ctx.needs_input_grad[0]:
                d_go = _add(d_go, (g_db.to(grad_b.dtype) * grad_b).sum().to(go.dtype))
            if ctx.needs_input_grad[2]:
                d_grad_b = g_db.to(grad_b.dtype) * go.to(grad_b.dtype)
        return d_go, d_grad_a, d_grad_b

    register_fake(forward, fake_forward)
    register_fake(backward, fake_backward)
    register_autograd(forward, grad_forward, setup_context=setup_forward)
    register_autograd(backward, grad_backward, setup_context=setup_backward)


declare_custom_ops("gan_loss", ("gan_loss", "gan_loss_backward"), "losses", _register)
