"""Triton kernels for ``fastgan.ops.bias_act`` and the ``fastgan::bias_act_triton*`` custom ops that launch them.

One elementwise kernel serves the forward (KIND=0), the gradient dx (KIND=1) and the second-derivative term
(KIND=2); the activation is a compile-time constant. The formulas mirror ``csrc/bias_act.h`` exactly: PyTorch's
conventions at the kinks and its NaN/inf propagation (selects, never min/max, which drop NaN). Math runs in float32
(float64 for float64 tensors, with float64 alpha/gain/clamp).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from ..._backend import triton_interpreting
from ..._layout import dense, like
from .launch import launch
from .scalars import f64_from_halves, f64_halves

# Activation indices: fastgan/ops/bias_act.py::ACTIVATIONS and csrc/bias_act.h::Act.
LINEAR, RELU, LRELU, TANH, SIGMOID, ELU, SELU, SOFTPLUS, SILU = range(9)
SELU_ALPHA = tl.constexpr(1.6732632423543772848170429916717)  # a plain global cannot be read by a compiled kernel
SELU_SCALE = tl.constexpr(1.0507009873554804934193349852946)


@triton.jit
def _round_to_bf16(v):
    """float32 ``v`` rounded to the nearest-even bfloat16 value (still float32). Triton's interpreter casts float32
    to bfloat16 by truncation, which biases every value toward zero; the GPU cast rounds to nearest even."""
    bits = v.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return tl.where(v != v, v, bits.to(tl.float32, bitcast=True))  # a NaN's carry could make it infinite


@triton.jit
def _sigmoid(z):
    return 1.0 / (1.0 + tl.exp(-z))


@triton.jit
def _tanh(z):
    return 1.0 - 2.0 / (tl.exp(2.0 * z) + 1.0)


@triton.jit
def _log1p(e):
    """log(1 + e) for e >= 0 to a few ulps without a log1p (Goldberg): exact where 1 + e rounds to 1."""
    u = 1.0 + e
    return tl.where(u == 1.0, e, tl.log(u) * (e / (u - 1.0)))


@triton.jit
def _act(z, alpha, ACT: tl.constexpr):
    # csrc/bias_act.h::act_forward. A NaN z stays NaN in every branch (tl.minimum/maximum would drop it), and a
    # branch not taken is evaluated on a harmless value (exp of 0, not of a large z).
    if ACT == 1:
        return tl.where(z < 0, 0.0, z)
    elif ACT == 2:
        return tl.where(z > 0, z, z * alpha)
    elif ACT == 3:
        return _tanh(z)
    elif ACT == 4:
        return _sigmoid(z)
    elif ACT == 5:
        return tl.where(z > 0, z, alpha * (tl.exp(tl.where(z > 0, 0.0, z)) - 1.0))
    elif ACT == 6:
        return SELU_SCALE * tl.where(z > 0, z, SELU_ALPHA * (tl.exp(tl.where(z > 0, 0.0, z)) - 1.0))
    elif ACT == 7:
        return tl.where(z > 20.0, z, _log1p(tl.exp(tl.where(z > 20.0, 0.0, z))))
    elif ACT == 8:
        return z * _sigmoid(z)
    else:
        return z


@triton.jit
def _act_backward(z, d, alpha, ACT: tl.constexpr):
    # csrc/bias_act.h::act_backward: dL/dz from d = dL/df(z), with PyTorch's backward kernels' selects and products.
    if ACT == 1:
        return tl.where(z <= 0, 0.0, d)
    elif ACT == 2:
        return tl.where(z > 0, d, d * alpha)
    elif ACT == 3:
        t = _tanh(z)
        return d * (1.0 - t * t)
    elif ACT == 4:
        s = _sigmoid(z)
        return d * (1.0 - s) * s
    elif ACT == 5:  # NaN at a NaN z, as PyTorch's vectorized CPU elu_backward (csrc/bias_act.h)
        return tl.where(z > 0, d, d * alpha * tl.exp(tl.where(z > 0, 0.0, z)))
    elif ACT == 6:
        return tl.where(z > 0, d * SELU_SCALE, d * (SELU_ALPHA * SELU_SCALE) * tl.exp(tl.where(z > 0, 0.0, z)))
    elif ACT == 7:
        e = tl.exp(tl.where(z > 20.0, 0.0, z))
        return tl.where(z > 20.0, d, d * e / (e + 1.0))
    elif ACT == 8:
        s = _sigmoid(z)
        return d * s * (1.0 + z * (1.0 - s))
    else:
        return d


@triton.jit
def _act_double_backward(z, d, g, alpha, ACT: tl.constexpr):
    # csrc/bias_act.h::act_double_backward: d/dz of <g, _act_backward(z, d)>.
    if ACT == 3:
        t = _tanh(z)
        return g * (-2.0 * t * d) * (1.0 - t * t)
    elif ACT == 4:
        s = _sigmoid(z)
        return g * d * (-2.0 * s + 1.0) * (1.0 - s) * s
    elif ACT == 5 or ACT == 6:
        return _act_backward(z, g * d, alpha, ACT) * tl.where(z < 0, 1.0, 0.0)
    elif ACT == 7:
        s = _sigmoid(z)
        return g * d * (1.0 - s) * s * tl.where(z < 20.0, 1.0, 0.0)
    elif ACT == 8:
        s = _sigmoid(z)
        return g * d * s * (1.0 - s) * (2.0 + z * (1.0 - 2.0 * s))
    else:
        return tl.zeros(z.shape, z.dtype)


@triton.jit
def _clamp(v, clamp):
    # torch.clamp(v, -clamp, clamp): a NaN v stays NaN.
    return tl.where(v < -clamp, -clamp, tl.where(v > clamp, clamp, v))


@triton.jit
def _bias_act_kernel(
    x_ptr, b_ptr, dy_ptr, g_ptr, out_ptr,
    numel, bias_size, bias_stride,
    alpha_hi, alpha_lo, gain_hi, gain_lo, clamp_hi, clamp_lo,
    ACT: tl.constexpr, KIND: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_CLAMP: tl.constexpr,
    MATH: tl.constexpr, INT64: tl.constexpr, BLOCK: tl.constexpr,
):
    # csrc/bias_act.h::bias_act_forward / _backward / _backward2; the scalars arrive as float64 bit halves
    # (scalars.py), so a float64 kernel computes with their exact values.
    pid = tl.program_id(0)
    if INT64:
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    else:
        offs = pid * BLOCK + tl.arange(0, BLOCK)
    alpha = f64_from_halves(alpha_hi, alpha_lo).to(MATH)
    gain = f64_from_halves(gain_hi, gain_lo).to(MATH)
    clamp = f64_from_halves(clamp_hi, clamp_lo).to(MATH)
    mask = offs < numel
    z = tl.load(x_ptr + offs, mask=mask, other=0.0).to(MATH)
    if HAS_BIAS:
        z += tl.load(b_ptr + (offs // bias_stride) % bias_size, mask=mask, other=0.0).to(MATH)
    if KIND == 0:
        v = _act(z, alpha, ACT) * gain
        if HAS_CLAMP:
            v = _clamp(v, clamp)
    else:
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(MATH)
        if HAS_CLAMP:
            # Gradients pass where clamp kept the value (bounds inclusive, as torch.clamp's backward).
            y = _act(z, alpha, ACT) * gain
            dy = tl.where((y >= -clamp) & (y <= clamp), dy, 0.0)
        d = dy * gain
        if KIND == 1:
            v = _act_backward(z, d, alpha, ACT)
        else:
            g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(MATH)
            v = _act_double_backward(z, d, g, alpha, ACT)
    tl.store(out_ptr + offs, v.to(out_ptr.dtype.element_ty), mask=mask)


def _launch(kind: int, x, b, dy, g, dim: int, act: int, alpha: float, gain: float, clamp) -> torch.Tensor:
    # Same preparation as csrc/bias_act.cpp: a dense x (layout kept), b cast to x's dtype, gradients laid out as x.
    x = dense(x)
    out = torch.empty_like(x)
    numel = x.numel()
    if numel == 0:
        return out
    dim = dim % x.dim()
    bias = b.to(x.dtype).contiguous() if b is not None else x
    dy = like(dy, x) if dy is not None else x
    g = like(g, x) if g is not None else x
    # The interpreter pays per program and per element of a block: one block of just the size needed (up to 8192)
    # keeps CPU tests fast.
    block = min(8192, triton.next_power_of_2(numel)) if triton_interpreting() else 1024
    grid = (triton.cdiv(numel, block),)
    launch(
        _bias_act_kernel, grid,
        x, bias, dy, g, out,
        numel, x.shape[dim], max(x.stride(dim), 1),
        *f64_halves(alpha), *f64_halves(gain), *f64_halves(clamp if clamp is not None else 0.0),
        ACT=act, KIND=kind, HAS_BIAS=b is not None, HAS_CLAMP=clamp is not None,
        MATH=tl.float64 if x.dtype == torch.float64 else tl.float32,
        INT64=numel >= 2**31 - block, BLOCK=block,
    )
    return out


@triton_op("fastgan::bias_act_triton", mutates_args=())
def bias_act_triton(
    x: torch.Tensor, b: torch.Tensor | None, dim: int, act: int, alpha: float, gain: float, clamp: float | None
) -> torch.Tensor:
    return _launch(0, x, b, None, None, dim, act, alpha, gain, clamp)


@triton_op("fastgan::bias_act_backward_triton", mutates_args=())
def bias_act_backward_triton(
    dy: torch.Tensor, x: torch.Tensor, b: torch.Tensor | None, dim: int, act: int, alpha: float, gain: float,
    clamp: float | None,
) -> torch.Tensor:
    return _launch(1, x, b, dy, None, dim, act, alpha, gain, clamp)


@triton_op("fastgan::bias_act_backward2_triton", mutates_args=())
def bias_act_backward2_triton(
    g: torch.Tensor, dy: torch.Tensor, x: torch.Tensor, b: torch.Tensor | None, dim: int, act: int, alpha: float,
    gain: float, clamp: float | None,
) -> torch.Tensor:
    return _launch(2, x, b, dy, g, dim, act, alpha, gain, clamp)
