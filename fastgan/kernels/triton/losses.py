"""Triton kernels for ``fastgan.losses`` and the ``fastgan::*_triton`` custom ops that launch them.

- ``_gan_loss_fwd_kernel``: walks both logits tensors, writing each term's gradient f'(z)/numel and the summed means
  (one program for small logits; partial sums plus ``_sum_partials_kernel`` for PatchGAN maps of large batches).
- ``_gan_loss_bwd_kernel``: scales the saved gradients by the incoming scalar.
- ``_interpolate_kernel``, ``_sample_norm_kernel`` + ``_penalty_kernel``, ``_penalty_bwd_kernel``: the gradient-penalty
  head. The formulas mirror ``csrc/losses.h``; math runs in float32 (float64 for float64 tensors).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from ..._backend import triton_interpreting
from ..._layout import dense, like
from .bias_act import _log1p
from .launch import check_int32_elements, launch
from .scalars import f64_from_halves, f64_halves


def _math(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tl_math(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _block(numel: int, default: int = 1024) -> int:
    """Elements per program (or per loop trip): no larger than the work, since the interpreter pays per element of
    a block and per program, so tiny CPU tests run tiny blocks and larger ones 8192-element blocks."""
    cap = 8192 if triton_interpreting() else default
    return min(cap, triton.next_power_of_2(max(numel, 16)))


@triton.jit
def _softplus(u):
    # csrc/losses.h::stable_softplus: u above PyTorch's threshold of 20, else max(u, 0) + log1p(exp(-|u|)), NaN kept (a
    # select, not tl.maximum); log1p by Goldberg's formula, exact to a few ulps in float32 and float64 alike.
    e = tl.exp(-tl.abs(u))
    return tl.where(u > 20.0, u, tl.where(u > 0, u, 0.0) + _log1p(e))


@triton.jit
def _relu(u):
    return tl.where(u < 0, 0.0, u)  # torch.relu: NaN stays NaN


@triton.jit
def _sigmoid(u):
    # softplus'(u): exactly 1 above the threshold of 20, as PyTorch's softplus_backward.
    e = tl.exp(-tl.abs(u))
    return tl.where(u > 20.0, 1.0, tl.where(u >= 0, 1.0 / (1.0 + e), e / (1.0 + e)))


@triton.jit
def _term_value(z, TERM: tl.constexpr):
    if TERM == 0:
        return _softplus(-z)
    elif TERM == 1:
        return _softplus(z)
    elif TERM == 2:
        return -_softplus(z)
    elif TERM == 3:
        return _relu(1.0 - z)
    elif TERM == 4:
        return _relu(1.0 + z)
    elif TERM == 5:
        return z
    elif TERM == 6:
        return -z
    elif TERM == 7:
        return (z - 1.0) * (z - 1.0)
    else:
        return z * z


@triton.jit
def _term_grad(z, TERM: tl.constexpr):
    if TERM == 0:
        return -_sigmoid(-z)
    elif TERM == 1:
        return _sigmoid(z)
    elif TERM == 2:
        return -_sigmoid(z)
    elif TERM == 3:  # relu's backward passes where relu(u) <= 0 is false: a NaN logit too, as in PyTorch
        return tl.where(1.0 - z <= 0, 0.0, -1.0).to(z.dtype)  # the literals are float32: keep float64 math
    elif TERM == 4:
        return tl.where(1.0 + z <= 0, 0.0, 1.0).to(z.dtype)
    elif TERM == 5:
        return tl.full(z.shape, 1.0, z.dtype)
    elif TERM == 6:
        return tl.full(z.shape, -1.0, z.dtype)
    elif TERM == 7:
        return 2.0 * (z - 1.0)
    else:
        return 2.0 * z


@triton.jit
def _term_partial(z_ptr, grad_ptr, numel, pid, programs, TERM: tl.constexpr, MATH: tl.constexpr,
                  BLOCK: tl.constexpr):
    # This program's share (blocks pid, pid + programs, ...) of mean(f(z)), writing f'(z) / numel on the way.
    acc = tl.zeros([BLOCK], MATH)
    for start in range(pid * BLOCK, numel, programs * BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < numel
        z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(MATH)
        acc += tl.where(mask, _term_value(z, TERM), 0.0)
        tl.store(grad_ptr + offs, (_term_grad(z, TERM) / numel).to(grad_ptr.dtype.element_ty), mask=mask)
    return tl.sum(acc, axis=0) / numel


@triton.jit
def _gan_loss_fwd_kernel(
    a_ptr, b_ptr, loss_ptr, partials_ptr, grad_a_ptr, grad_b_ptr, numel_a, numel_b,
    TERM_A: tl.constexpr, TERM_B: tl.constexpr, HAS_B: tl.constexpr, MATH: tl.constexpr, BLOCK: tl.constexpr,
):
    # One program (small logits) writes the loss; several write partial sums for _sum_partials_kernel.
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    loss = _term_partial(a_ptr, grad_a_ptr, numel_a, pid, programs, TERM_A, MATH, BLOCK)
    if HAS_B:
        loss += _term_partial(b_ptr, grad_b_ptr, numel_b, pid, programs, TERM_B, MATH, BLOCK)
    if programs == 1:
        tl.store(loss_ptr, loss.to(loss_ptr.dtype.element_ty))
    else:
        tl.store(partials_ptr + pid, loss)


@triton.jit
def _sum_partials_kernel(partials_ptr, loss_ptr, count, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    v = tl.load(partials_ptr + offs, mask=offs < count, other=0.0)
    tl.store(loss_ptr, tl.sum(v, axis=0).to(loss_ptr.dtype.element_ty))


@triton.jit
def _scale_block(go, src_ptr, dst_ptr, pid, numel, BLOCK: tl.constexpr):
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    g = tl.load(src_ptr + offs, mask=mask, other=0.0)
    tl.store(dst_ptr + offs, (go * g).to(dst_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gan_loss_bwd_kernel(
    go_ptr, grad_a_ptr, grad_b_ptr, da_ptr, db_ptr, numel_a, numel_b, programs_a,
    MATH: tl.constexpr, BLOCK: tl.constexpr,
):
    # Programs [0, programs_a) scale grad_a, the rest grad_b: one launch for both terms.
    pid = tl.program_id(0)
    go = tl.load(go_ptr).to(MATH)
    if pid < programs_a:
        _scale_block(go, grad_a_ptr, da_ptr, pid, numel_a, BLOCK)
    else:
        _scale_block(go, grad_b_ptr, db_ptr, pid - programs_a, numel_b, BLOCK)


@triton.jit
def _interpolate_kernel(real_ptr, fake_ptr, eps_ptr, out_ptr, numel, per_sample, MATH: tl.constexpr,
                        BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    e = tl.load(eps_ptr + offs // per_sample, mask=mask, other=0.0).to(MATH)
    x = tl.load(real_ptr + offs, mask=mask, other=0.0).to(MATH)
    y = tl.load(fake_ptr + offs, mask=mask, other=0.0).to(MATH)
    tl.store(out_ptr + offs, (e * x + (1.0 - e) * y).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _sample_norm_kernel(g_ptr, norms_ptr, per_sample, MATH: tl.constexpr, BLOCK: tl.constexpr):
    sample = tl.program_id(0)
    base = g_ptr + sample.to(tl.int64) * per_sample
    acc = tl.zeros([BLOCK], MATH)
    for start in range(0, per_sample, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        v = tl.load(base + offs, mask=offs < per_sample, other=0.0).to(MATH)
        acc += v * v
    tl.store(norms_ptr + sample, tl.sqrt(tl.sum(acc, axis=0)))


@triton.jit
def _penalty_kernel(norms_ptr, out_ptr, batch, weight_hi, weight_lo, center_hi, center_lo, scale_hi, scale_lo,
                    MATH: tl.constexpr, BLOCK: tl.constexpr):
    weight = f64_from_halves(weight_hi, weight_lo).to(MATH)
    center = f64_from_halves(center_hi, center_lo).to(MATH)
    scale = f64_from_halves(scale_hi, scale_lo).to(MATH)
    acc = tl.zeros([BLOCK], MATH)
    for start in range(0, batch, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        n = tl.load(norms_ptr + offs, mask=offs < batch, other=0.0)
        d = scale * n - center
        acc += tl.where(offs < batch, d * d, 0.0)
    tl.store(out_ptr, (weight * tl.sum(acc, axis=0) / batch).to(out_ptr.dtype.element_ty))


@triton.jit
def _penalty_bwd_kernel(
    go_ptr, g_ptr, norms_ptr, out_ptr, numel, per_sample, batch, weight_hi, weight_lo, center_hi, center_lo,
    scale_hi, scale_lo, MATH: tl.constexpr, BLOCK: tl.constexpr,
):
    weight = f64_from_halves(weight_hi, weight_lo).to(MATH)
    center = f64_from_halves(center_hi, center_lo).to(MATH)
    scale = f64_from_halves(scale_hi, scale_lo).to(MATH)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    go = tl.load(go_ptr).to(MATH)
    n = tl.load(norms_ptr + offs // per_sample, mask=mask, other=1.0)
    # csrc/losses.h::penalty_coef: the norm's gradient is taken as 0 where n == 0, as PyTorch's vector_norm does (an
    # inf or NaN norm: NaN); center 0 is the squared norm, whose gradient does not divide by n.
    up = go * weight * 2.0 / batch * (scale * n - center) * scale
    coef = tl.where(n == 0, up * 0.0, up / tl.where(n == 0, 1.0, n))
    coef = tl.where(center == 0, go * weight * 2.0 / batch * scale * scale + tl.zeros_like(n), coef)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(MATH)
    tl.store(out_ptr + offs, (coef * g).to(out_ptr.dtype.element_ty), mask=mask)


def sample_major(t: torch.Tensor) -> torch.Tensor:
    """Dense with each sample's elements contiguous (contiguous, channels_last); anything else is copied."""
    t = dense(t)
    return t if t.shape[0] <= 1 or t.stride(0) * t.shape[0] == t.numel() else t.contiguous()


# Up to this many logits one program does everything (one launch); beyond, up to _MAX_PROGRAMS programs write partial
# sums that a second tiny kernel adds in a fixed order (deterministic, no atomics).
_SINGLE_PROGRAM_MAX = 65536
_MAX_PROGRAMS = 256


@triton_op("fastgan::gan_loss_triton", mutates_args=())
def gan_loss_triton(
    a: torch.Tensor, b: torch.Tensor | None, term_a: int, term_b: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    check_int32_elements("gan_loss", a, *([b] if b is not None else []))
    a = dense(a)
    mt = _math(a.dtype)
    loss = a.new_empty(())
    grad_a = torch.empty_like(a, dtype=mt)
    if b is not None:
        b = dense(b)
        grad_b = torch.empty_like(b, dtype=mt)
    else:  # a one-element buffer behind the empty output: the kernel's unused pointer, distinct from grad_a (see
        grad_b = a.new_empty(1, dtype=mt)[:0]  # conv._launch: Inductor may write back a copy of every argument)
    total = a.numel() + (b.numel() if b is not None else 0)
    block = _block(max(a.numel(), b.numel() if b is not None else 0), 4096)
    programs = 1 if total <= _SINGLE_PROGRAM_MAX else min(_MAX_PROGRAMS, triton.cdiv(total, block))
    partials = a.new_empty(programs, dtype=mt)
    launch(
        _gan_loss_fwd_kernel, (programs,),
        a, b if b is not None else a, loss, partials, grad_a, grad_b,
        a.numel(), b.numel() if b is not None else 0,
        TERM_A=term_a, TERM_B=term_b, HAS_B=b is not None, MATH=_tl_math(a.dtype), BLOCK=block, num_warps=8,
    )
    if programs > 1:
        launch(_sum_partials_kernel, (1,), partials, loss, programs, BLOCK=triton.next_power_of_2(programs))
    return loss, grad_a, grad_b


@triton_op("fastgan::gan_loss_backward_triton", mutates_args=())
def gan_loss_backward_triton(
    go: torch.Tensor, grad_a: torch.Tensor, grad_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    check_int32_elements("gan_loss_backward", grad_a, grad_b)
    go = go.reshape(())
    da = torch.empty_like(grad_a, dtype=go.dtype)
    db = torch.empty_like(grad_b, dtype=go.dtype)
    block = _block(max(grad_a.numel(), grad_b.numel()))
    programs_a = triton.cdiv(grad_a.numel(), block)
    programs = programs_a + triton.cdiv(grad_b.numel(), block)
    if programs:
        launch(
            _gan_loss_bwd_kernel, (programs,),
            go, grad_a, grad_b, da, db, grad_a.numel(), grad_b.numel(), programs_a,
            MATH=_tl_math(grad_a.dtype), BLOCK=block,
        )
    return da, db


@triton_op("fastgan::penalty_interpolate_triton", mutates_args=())
def penalty_interpolate_triton(real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    check_int32_elements("penalty_interpolate", real)
    layout = torch.empty_like(real)  # PyTorch's layout of e * real + (1 - e) * fake (csrc/losses.cpp)
    real = sample_major(real)
    fake = like(fake, real)
    eps = eps.to(_math(real.dtype)).contiguous()
    out = torch.empty_like(real)
    numel = real.numel()
    if numel:
        block = _block(numel)
        launch(
            _interpolate_kernel, (triton.cdiv(numel, block),),
            real, fake, eps, out, numel, numel // real.shape[0], MATH=_tl_math(real.dtype), BLOCK=block,
        )
    return out if out.stride() == layout.stride() else layout.copy_(out)


@triton_op("fastgan::grad_norm_penalty_triton", mutates_args=())
def grad_norm_penalty_triton(
    g: torch.Tensor, weight: float, center: float, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    g = sample_major(g)
    batch = g.shape[0]
    norms = g.new_empty(batch, dtype=_math(g.dtype))
    out = g.new_empty(())
    math = _tl_math(g.dtype)
    per_sample = g.numel() // batch
    launch(_sample_norm_kernel, (batch,), g, norms, per_sample, MATH=math, BLOCK=_block(per_sample))
    launch(
        _penalty_kernel, (1,),
        norms, out, batch, *f64_halves(weight), *f64_halves(center), *f64_halves(scale), MATH=math,
        BLOCK=_block(batch),
    )
    return out, norms


@triton_op("fastgan::grad_norm_penalty_backward_triton", mutates_args=())
def grad_norm_penalty_backward_triton(
    go: torch.Tensor, g: torch.Tensor, norms: torch.Tensor, weight: float, center: float, scale: float
) -> torch.Tensor:
    check_int32_elements("grad_norm_penalty_backward", g)
    g = sample_major(g)
    out = torch.empty_like(g)
    numel = g.numel()
    if numel:
        block = _block(numel)
        launch(
            _penalty_bwd_kernel, (triton.cdiv(numel, block),),
            go.reshape(()), g, norms.contiguous(), out, numel, numel // g.shape[0], g.shape[0],
            *f64_halves(weight), *f64_halves(center), *f64_halves(scale), MATH=_tl_math(g.dtype), BLOCK=block,
        )
    return out
