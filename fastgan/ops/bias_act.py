"""bias_act: fused bias + activation + gain + clamp, with first- and second-order gradients on every implementation.

The whole story of the op is here: the activation table, the reference (the specification), argument checks, and
the autograd formulas shared by the compiled (``fastgan::bias_act*``, csrc/bias_act.cpp + .cu) and Triton
(``fastgan::bias_act*_triton``, fastgan/kernels/triton/bias_act.py) custom ops.

Why a custom op: inside a gradient penalty PyTorch differentiates ``leaky_relu`` twice, materialises a second
derivative that is identically zero (``zeros_like``) and, where nothing else adds to it, runs the preceding
convolution's backward on it. Here the backward is itself a registered op whose own backward returns no gradient
w.r.t. ``x`` for piecewise-linear activations, so that work never runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._autotune import autotuned
from .._backend import custom_ops, declare_custom_ops, register_autograd, register_fake, resolve_impl
from .._dtypes import check_dtype
from .._layout import dense

__all__ = [
    "ACTIVATIONS", "ACTIVATION_ALIASES", "STYLEGAN_DEFAULTS", "activation", "activation_at", "bias_act", "bias_act_ref",
]


@dataclass(frozen=True)
class Activation:
    index: int  # csrc/bias_act.h::Act and the Triton kernel's ACT; custom ops take the activation by this index
    fn: Callable[[torch.Tensor, float], torch.Tensor]  # reference, in PyTorch
    default_alpha: float | None  # None: the activation takes no alpha
    has_grad2: bool  # False: f'' == 0 (piecewise linear), so double backward skips x


ACTIVATIONS: dict[str, Activation] = {
    "linear": Activation(0, lambda z, a: z, None, False),
    "relu": Activation(1, lambda z, a: F.relu(z), None, False),
    "lrelu": Activation(2, lambda z, a: F.leaky_relu(z, a), 0.01, False),
    "tanh": Activation(3, lambda z, a: torch.tanh(z), None, True),
    "sigmoid": Activation(4, lambda z, a: torch.sigmoid(z), None, True),
    "elu": Activation(5, lambda z, a: F.elu(z, a), 1.0, True),
    "selu": Activation(6, lambda z, a: F.selu(z), None, True),
    "softplus": Activation(7, lambda z, a: F.softplus(z), None, True),
    "silu": Activation(8, lambda z, a: F.silu(z), None, True),
}
# Other names of the same functions: StyleGAN's "swish" is silu.
ACTIVATION_ALIASES = {"swish": "silu"}

# StyleGAN2/3's bias_act defaults (their published activation table), per activation: (alpha, gain). Gain sqrt(2)
# after relu, lrelu and swish keeps He-initialised layers at unit variance; lrelu's slope is 0.2. Every other
# activation takes gain 1, and elu PyTorch's alpha 1, as with defaults="torch".
STYLEGAN_DEFAULTS: dict[str, tuple[float | None, float]] = {
    "relu": (None, math.sqrt(2)),
    "lrelu": (0.2, math.sqrt(2)),
    "silu": (None, math.sqrt(2)),
}
_DEFAULTS = ("torch", "stylegan")


def activation(owner: str, act: str, alpha: float | None) -> tuple[Activation, float]:
    """Validate an activation name (or alias) and alpha for ``owner`` (the op or module named in errors); return its
    table entry and the alpha to use (the default where none is given, 0 where the activation takes none)."""
    spec = ACTIVATIONS.get(ACTIVATION_ALIASES.get(act, act)) if isinstance(act, str) else None
    if spec is None:
        names = ", ".join([*ACTIVATIONS, *ACTIVATION_ALIASES])
        raise ValueError(f"{owner}: unknown activation {act!r}; expected one of {names}")
    if alpha is None or spec.default_alpha is None:
        if alpha is not None:
            raise ValueError(f"{owner}: act={act!r} takes no alpha (only lrelu and elu do); drop alpha={alpha}")
        return spec, float(spec.default_alpha or 0.0)
    return spec, float(alpha)


def _with_defaults(act: str, alpha: float | None, gain: float | None, defaults: str):
    """(alpha, gain) with ``defaults``' values filled in where None was given."""
    if defaults not in _DEFAULTS:
        raise ValueError(f"bias_act: defaults must be one of {', '.join(map(repr, _DEFAULTS))}, got {defaults!r}")
    if defaults == "stylegan" and isinstance(act, str):
        default_alpha, default_gain = STYLEGAN_DEFAULTS.get(ACTIVATION_ALIASES.get(act, act), (None, 1.0))
        alpha = default_alpha if alpha is None else alpha
        gain = default_gain if gain is None else gain
    return alpha, gain


def _check(
    x: torch.Tensor, b: torch.Tensor | None, dim: int, act: str, alpha: float | None, clamp: float | None
) -> tuple[Activation, int, float]:
    """Validate arguments the same way for every implementation; return (activation, dim >= 0, alpha)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"bias_act: x must be a torch.Tensor, got {type(x).__name__}")
    check_dtype("bias_act", "x", x)
    spec, alpha_ = activation("bias_act", act, alpha)
    if x.dim() == 0 or not -x.dim() <= dim < x.dim():
        raise IndexError(f"bias_act: dim={dim} is out of range for x of shape {tuple(x.shape)}")
    dim %= x.dim()
    if b is not None:
        if not isinstance(b, torch.Tensor) or b.dim() != 1 or b.shape[0] != x.shape[dim]:
            shape = tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__
            raise ValueError(f"bias_act: b must be 1-D of length x.shape[{dim}] = {x.shape[dim]}, got {shape}")
        if b.device != x.device:
            raise ValueError(f"bias_act: b is on {b.device} but x is on {x.device}; move b to x's device")
        check_dtype("bias_act", "b", b)
    if clamp is not None and not clamp >= 0:
        raise ValueError(f"bias_act: clamp must be >= 0 (or None), got {clamp}")
    return spec, dim, alpha_


def bias_act_ref(
    x: torch.Tensor,
    b: torch.Tensor | None = None,
    dim: int = 1,
    act: str = "linear",
    alpha: float | None = None,
    gain: float | None = None,
    clamp: float | None = None,
    *,
    defaults: str = "torch",
) -> torch.Tensor:
    """The specification of ``bias_act`` in plain PyTorch, computed in ``x``'s dtype (``b`` is cast to it)."""
    alpha, gain = _with_defaults(act, alpha, gain, defaults)
    spec, dim, alpha_ = _check(x, b, dim, act, alpha, clamp)
    if b is not None:
        x = x + b.to(x.dtype).reshape([-1 if d == dim else 1 for d in range(x.dim())])
    y = spec.fn(x, alpha_)
    if gain is not None and gain != 1:
        y = y * gain
    if clamp is not None:
        # Gradients pass at the bounds, as torch.clamp's backward did up to PyTorch 2.13 (2.14 drops them there): one
        # answer on every PyTorch version, the kernels' (csrc/bias_act.h::clamp_passes). A NaN stays NaN, gradient 0.
        kept = (y >= -clamp) & (y <= clamp)
        y = torch.where(kept, y, y.detach().clamp(-clamp, clamp))
    return y


@autotuned("bias_act")
def bias_act(
    x: torch.Tensor,
    b: torch.Tensor | None = None,
    dim: int = 1,
    act: str = "linear",
    alpha: float | None = None,
    gain: float | None = None,
    clamp: float | None = None,
    impl: str = "auto",
    *,
    defaults: str = "torch",
) -> torch.Tensor:
    """Fused bias + activation: ``y = clamp(act(x + b, alpha) * gain, -clamp, clamp)``.

    Args:
        x: input of any shape, float16, bfloat16, float32 (or float64 with ``impl`` ``"ref"``, ``"native"`` or
            ``"triton"``); contiguous, channels_last (kept as given) or non-contiguous (computed densely in its own
            dimension order, the layout PyTorch's elementwise ops give it).
        b: optional 1-D bias of length ``x.shape[dim]``, broadcast along ``dim``; cast to ``x.dtype``.
        dim: the dimension ``b`` runs along (1 for NCHW activations, -1 for ``Linear`` outputs).
        act: ``linear``, ``relu``, ``lrelu``, ``tanh``, ``sigmoid``, ``elu``, ``selu``, ``softplus`` or ``silu``
            (also called ``swish``).
        alpha: negative slope of ``lrelu`` (default 0.01) or ``alpha`` of ``elu`` (default 1); others take none.
        gain: scale applied after the activation (default 1).
        clamp: if given, the output is clamped to ``[-clamp, clamp]``.
        impl: ``"auto"``, ``"ref"``, ``"triton"`` or ``"native"`` (see ``fastgan.available_impls()``).
        defaults: ``"torch"`` (the defaults above, ``torch.nn``'s) or ``"stylegan"``: StyleGAN2/3's bias_act
            defaults (``STYLEGAN_DEFAULTS``: gain sqrt(2) for relu, lrelu and silu/swish, lrelu alpha 0.2), so code
            written for StyleGAN's op runs unchanged with ``functools.partial(bias_act, defaults="stylegan")``.

    Returns:
        A tensor shaped and typed like ``x``. Differentiable twice w.r.t. ``x`` and ``b`` on every implementation
        (any order for linear/relu/lrelu, whose second derivative is zero and never computed; a third order of the
        smooth activations raises on the compiled and Triton paths).
    """
    alpha, gain = _with_defaults(act, alpha, gain, defaults)
    spec, dim_, alpha_ = _check(x, b, dim, act, alpha, clamp)
    impl = resolve_impl(impl, x.device, "bias_act", act, x.dtype)
    if impl == "ref":
        return bias_act_ref(x, b, dim, act, alpha, gain, clamp)
    forward = custom_ops("bias_act", impl).bias_act
    return forward(x, b, dim_, spec.index, alpha_, 1.0 if gain is None else float(gain), clamp)


# --- custom-op plumbing shared by the native and Triton implementations ------------------------------------------

# Custom ops take the activation as its kernel index; this is the one map back (norm_act and conv_act use it too).
_BY_INDEX = {spec.index: (name, spec) for name, spec in ACTIVATIONS.items()}


def activation_at(index: int) -> tuple[str, Activation]:
    """The name and table entry that a custom op's integer ``act`` argument stands for."""
    return _BY_INDEX[index]


def _reduce_to_bias(grad: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum ``grad`` over every dimension but ``dim`` (accumulating in at least float32), in ``b``'s dtype."""
    dims = [d for d in range(grad.dim()) if d != dim]
    acc = torch.promote_types(grad.dtype, torch.float32)
    return grad.sum(dims, dtype=acc).to(b.dtype) if dims else grad.to(b.dtype)


def _register(forward, backward, backward2) -> None:
    """Fake implementations and autograd formulas for one implementation's three ops."""

    def fake_forward(x, b, dim, act, alpha, gain, clamp):
        return torch.empty_like(dense(x))

    def fake_backward(dy, x, b, dim, act, alpha, gain, clamp):
        return torch.empty_like(dense(x))

    def fake_backward2(g, dy, x, b, dim, act, alpha, gain, clamp):
        return torch.empty_like(dense(x))

    def setup_forward(ctx, inputs, output):
        x, b, *ctx.args = inputs
        ctx.save_for_backward(x, b)

    def grad_forward(ctx, dy):
        x, b = ctx.saved_tensors
        dx = backward(dy, x, b, *ctx.args)
        db = _reduce_to_bias(dx, b, ctx.args[0]) if b is not None and ctx.needs_input_grad[1] else None
        return dx, db, None, None, None, None, None

    def setup_backward(ctx, inputs, output):
        dy, x, b, *ctx.args = inputs
        ctx.save_for_backward(dy, x, b)

    def grad_backward(ctx, g):
        # dx = dy * f'(x + b) * gain is linear in dy (so its dy-gradient is this op again); its x- and b-gradients
        # carry f'', which is identically zero for piecewise-linear activations: return None, run nothing.
        dy, x, b = ctx.saved_tensors
        dim, act = ctx.args[0], ctx.args[1]
        ddy = _transposed_backward(g, x, b, *ctx.args) if ctx.needs_input_grad[0] else None
        dx = db = None
        if activation_at(act)[1].has_grad2 and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
            d2 = backward2(g, dy, x, b, *ctx.args)
            dx = d2 if ctx.needs_input_grad[1] else None
            db = _reduce_to_bias(d2, b, dim) if b is not None and ctx.needs_input_grad[2] else None
        return ddy, dx, db, None, None, None, None, None

    def _transposed_backward(g, x, b, dim, act, alpha, gain, clamp):
        # The dy-gradient of dx = act_backward(z, where(passes, dy, 0) * gain) is where(passes, act_backward(z, g)
        # * gain, 0), the reference's chain in reverse. With a finite gain and no clamp that is the backward op
        # itself; otherwise the order matters at NaN/inf (an unclamped gain of inf times a zero derivative is NaN,
        # a clamped-out NaN z gives 0), so it is composed as the reference composes it.
        if clamp is None and math.isfinite(gain):
            return backward(g, x, b, dim, act, alpha, gain, clamp)
        out = backward(g, x, b, dim, act, alpha, 1.0, None) * gain
        if clamp is None:
            return out
        y = forward(x.detach(), b.detach() if b is not None else None, dim, act, alpha, gain, None)
        return torch.where((y >= -clamp) & (y <= clamp), out, torch.zeros((), dtype=out.dtype, device=out.device))

    def setup_backward2(ctx, inputs, output):
        ctx.act = inputs[5]

    def grad_backward2(ctx, grad):
        name, spec = activation_at(ctx.act)
        if not spec.has_grad2:  # f'' == 0: this op's output is identically zero, and so is its gradient
            return (None,) * 9
        raise RuntimeError(
            f"bias_act: third-order gradients of act={name!r} are not supported by the compiled and "
            "Triton implementations (linear, relu and lrelu support any order); use impl='ref' for higher orders"
        )

    for op, fake in ((forward, fake_forward), (backward, fake_backward), (backward2, fake_backward2)):
        register_fake(op, fake)
    register_autograd(forward, grad_forward, setup_context=setup_forward)
    register_autograd(backward, grad_backward, setup_context=setup_backward)
    register_autograd(backward2, grad_backward2, setup_context=setup_backward2)


declare_custom_ops("bias_act", ("bias_act", "bias_act_backward", "bias_act_backward2"), "bias_act", _register)
