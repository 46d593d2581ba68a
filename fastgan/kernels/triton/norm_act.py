"""Triton kernels for ``fastgan.ops.batch_norm_act`` / ``instance_norm_act`` and the ``fastgan::norm_act*_triton``
custom ops that launch them.

The structure mirrors csrc/norm_act_kernels.cuh: x is seen as [N, C, L] with strides (sN, sC, sL) (contiguous or
channels_last); a statistic group is a channel (batch norm) or a (sample, channel) pair (instance norm). Reductions
run one program per (group, chunk of CHUNK values) with float64 sums of shifted values (a [rows, channels] tile for
channels_last, so loads stay coalesced), then one merge per group over its chunks in a fixed order (Chan's formula),
so they are deterministic; the elementwise kernels write y and dx. The activation
math is bias_act's (``_act``, ``_act_backward``), the same formulas as csrc/bias_act.h.
"""

from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from ..._backend import triton_interpreting
from .bias_act import _act, _act_backward, _round_to_bf16
from .launch import launch
from .scalars import f64_from_halves, f64_halves

CHUNK = 4096  # values of one group reduced by one program (csrc/norm_act.h::kNormActChunk)


@triton.jit
def _finite_or_zero(v):
    """csrc/norm_act.h::shift_of: a group's first value as the shift of its sums, 0 if it is inf or NaN."""
    return tl.where(v - v == 0, v, 0.0)


@triton.jit
def _chunk_m2(s1, s2, n):
    """csrc/norm_act.h::shifted_moments' m2: max(s2 - s1^2 / n, 0), NaN kept (data holding an inf or a NaN: PyTorch's
    variance is NaN), inf where finite data overflow their squares."""
    m = s2 - s1 * (s1 / n)
    m = tl.where(m < 0, 0.0, m)
    return tl.where((s1 - s1 == 0) & (s2 == float("inf")), s2, m)


@triton.jit
def _group_offsets(g, j, C, L, sN, sC, sL, INSTANCE: tl.constexpr):
    """Memory offsets of values j of group g (csrc/norm_act.h::group_offset)."""
    c = g % C
    if INSTANCE:
        return (g // C) * sN + c * sC + j * sL
    return (j // L) * sN + c * sC + (j % L) * sL


@triton.jit
def _element_groups(i, C, sN, sC, INSTANCE: tl.constexpr):
    """Group of the value at memory offset i (csrc/norm_act.h::element_group)."""
    c = (i // sC) % C
    if INSTANCE:
        return (i // sN) * C + c
    return c


@triton.jit
def _norm_partial_kernel(
    x_ptr, dy_ptr, w_ptr, b_ptr, mean_ptr, var_ptr, part_ptr,
    group_size, chunks, C, L, sN, sC, sL, eps_hi, eps_lo, alpha_hi, alpha_lo,
    GRAD: tl.constexpr, INSTANCE: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, ACT: tl.constexpr,
    MATH: tl.constexpr, INT64: tl.constexpr, CHUNK_SIZE: tl.constexpr, BLOCK: tl.constexpr,
    PER_SAMPLE: tl.constexpr = False,
):
    # GRAD=0: shifted sums -> (count, mean, m2) of the chunk. GRAD=1: sums of dz and dz * xhat.
    # PER_SAMPLE (conditional batch norm, with INSTANCE groups): w and b per (sample, channel) group, not per channel.
    eps = f64_from_halves(eps_hi, eps_lo).to(MATH)  # float64 halves (scalars.py): exact for float64 math
    alpha = f64_from_halves(alpha_hi, alpha_lo).to(MATH)
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    g = pid // chunks
    k = pid % chunks
    j0 = k * CHUNK_SIZE
    lanes = tl.arange(0, BLOCK)
    a = tl.zeros([BLOCK], tl.float64)  # float64 sums: accurate at any chunk size, cheap in a memory-bound pass
    s = tl.zeros([BLOCK], tl.float64)
    if GRAD:
        c = g % C
        mean = tl.load(mean_ptr + g).to(MATH)
        invstd = 1.0 / tl.sqrt(tl.load(var_ptr + g).to(MATH) + eps)
        w = tl.load(w_ptr + (g if PER_SAMPLE else c)).to(MATH) if HAS_W else 1.0
        b = tl.load(b_ptr + (g if PER_SAMPLE else c)).to(MATH) if HAS_B else 0.0
    else:
        shift = _finite_or_zero(tl.load(x_ptr + _group_offsets(g, 0, C, L, sN, sC, sL, INSTANCE)).to(MATH))
    for start in range(0, tl.minimum(group_size - j0, CHUNK_SIZE), BLOCK):
        j = j0 + start + lanes
        mask = j < group_size
        offs = _group_offsets(g, j, C, L, sN, sC, sL, INSTANCE)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(MATH)
        if GRAD:
            xhat = (x - mean) * invstd
            dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(MATH)
            dz = tl.where(mask, _act_backward(xhat * w + b, dy, alpha, ACT), 0.0).to(tl.float64)
            a += dz
            s += dz * xhat
        else:
            d = tl.where(mask, x - shift, 0.0).to(tl.float64)
            a += d
            s += d * d
    s1 = tl.sum(a, 0)
    s2 = tl.sum(s, 0)
    if GRAD:
        tl.store(part_ptr + pid * 2, s1)
        tl.store(part_ptr + pid * 2 + 1, s2)
    else:
        n = tl.minimum(group_size - j0, CHUNK_SIZE).to(tl.float64)
        m2 = _chunk_m2(s1, s2, n)
        tl.store(part_ptr + pid * 3, n)
        tl.store(part_ptr + pid * 3 + 1, shift.to(tl.float64) + s1 / n)
        tl.store(part_ptr + pid * 3 + 2, m2)


@triton.jit
def _norm_partial_cl_kernel(
    x_ptr, dy_ptr, w_ptr, b_ptr, mean_ptr, var_ptr, part_ptr,
    group_size, chunks, C, L, sN, sL, eps_hi, eps_lo, alpha_hi, alpha_lo,
    GRAD: tl.constexpr, INSTANCE: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, ACT: tl.constexpr,
    MATH: tl.constexpr, CHUNK_SIZE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
    PER_SAMPLE: tl.constexpr = False,
):
    # _norm_partial_kernel for channels_last (channel stride 1): a [rows, channels] tile per step, so a warp reads
    # consecutive channels (coalesced) instead of one group's values C apart. Same partials, same order of merging.
    # One flat grid of (sample, channel block, chunk) programs: a 2-D grid would cap one of them at 65,535.
    eps = f64_from_halves(eps_hi, eps_lo).to(MATH)
    alpha = f64_from_halves(alpha_hi, alpha_lo).to(MATH)
    cblocks = tl.cdiv(C, BLOCK_C)
    tile = tl.program_id(0) // chunks
    k = tl.program_id(0) % chunks
    sample = tile // cblocks
    c = (tile % cblocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    g = sample.to(tl.int64) * C + c if INSTANCE else c.to(tl.int64)
    j0 = k.to(tl.int64) * CHUNK_SIZE
    base = sample.to(tl.int64) * sN if INSTANCE else 0
    a = tl.zeros([BLOCK_R, BLOCK_C], tl.float64)
    s = tl.zeros([BLOCK_R, BLOCK_C], tl.float64)
    if GRAD:
        mean = tl.load(mean_ptr + g, mask=cmask, other=0.0).to(MATH)
        invstd = 1.0 / tl.sqrt(tl.load(var_ptr + g, mask=cmask, other=1.0).to(MATH) + eps)
        w = tl.load(w_ptr + (g if PER_SAMPLE else c), mask=cmask, other=1.0).to(MATH) if HAS_W else 1.0
        b = tl.load(b_ptr + (g if PER_SAMPLE else c), mask=cmask, other=0.0).to(MATH) if HAS_B else 0.0
    else:
        shift = _finite_or_zero(tl.load(x_ptr + base + c, mask=cmask, other=0.0).to(MATH))
    for start in range(0, tl.minimum(group_size - j0, CHUNK_SIZE), BLOCK_R):
        j = j0 + start + tl.arange(0, BLOCK_R)
        rows = base + j * sL if INSTANCE else (j // L) * sN + (j % L) * sL
        mask = (j < group_size)[:, None] & cmask[None, :]
        offs = rows[:, None] + c[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(MATH)
        if GRAD:
            xhat = (x - mean[None, :]) * invstd[None, :]
            dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(MATH)
            dz = tl.where(mask, _act_backward(xhat * w + b, dy, alpha, ACT), 0.0).to(tl.float64)
            a += dz
            s += dz * xhat
        else:
            d = tl.where(mask, x - shift[None, :], 0.0).to(tl.float64)
            a += d
            s += d * d
    s1 = tl.sum(a, 0)
    s2 = tl.sum(s, 0)
    slot = g * chunks + k
    if GRAD:
        tl.store(part_ptr + slot * 2, s1, mask=cmask)
        tl.store(part_ptr + slot * 2 + 1, s2, mask=cmask)
    else:
        n = tl.minimum(group_size - j0, CHUNK_SIZE).to(tl.float64)
        tl.store(part_ptr + slot * 3, tl.zeros([BLOCK_C], tl.float64) + n, mask=cmask)
        tl.store(part_ptr + slot * 3 + 1, shift.to(tl.float64) + s1 / n, mask=cmask)
        tl.store(part_ptr + slot * 3 + 2, _chunk_m2(s1, s2, n), mask=cmask)


@triton.jit
def _norm_merge_kernel(
    part_ptr, out0_ptr, out1_ptr, groups, chunks, GRAD: tl.constexpr, MATH: tl.constexpr, BLOCK: tl.constexpr
):
    # Per group, in chunk order: GRAD=0 Chan's merge -> (mean, biased var); GRAD=1 plain sums. Math in float64.
    g = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = g < groups
    width = 2 if GRAD else 3
    base = g.to(tl.int64) * chunks * width
    count = tl.zeros([BLOCK], tl.float64)
    mean = tl.zeros([BLOCK], tl.float64)
    m2 = tl.zeros([BLOCK], tl.float64)
    for k in range(0, chunks):
        p = part_ptr + base + k * width
        if GRAD:
            count += tl.load(p, mask=mask, other=0.0).to(tl.float64)
            mean += tl.load(p + 1, mask=mask, other=0.0).to(tl.float64)
        else:
            n_b = tl.load(p, mask=mask, other=0.0).to(tl.float64)
            mean_b = tl.load(p + 1, mask=mask, other=0.0).to(tl.float64)
            m2_b = tl.load(p + 2, mask=mask, other=0.0).to(tl.float64)
            n = count + n_b
            ratio = tl.where(n > 0, n_b / tl.where(n > 0, n, 1.0), 0.0)
            # csrc/norm_act.h::Moments::merge: a non-finite mean adds (inf + inf = inf, inf - inf = NaN), with m2
            # already NaN there; finite ones merge by Chan's formula.
            finite = (mean - mean == 0) & (mean_b - mean_b == 0)
            delta = tl.where(finite, mean_b - mean, 0.0)
            mean = tl.where(finite, mean + delta * ratio, mean + mean_b)
            m2 += m2_b + delta * (delta * (count * ratio))  # not delta^2 first: inf * 0 on the first merge
            count = n
    if GRAD:
        tl.store(out0_ptr + g, count.to(MATH), mask=mask)
        tl.store(out1_ptr + g, mean.to(MATH), mask=mask)
    else:
        tl.store(out0_ptr + g, mean.to(MATH), mask=mask)
        tl.store(out1_ptr + g, tl.where(count > 0, m2 / tl.where(count > 0, count, 1.0), 0.0).to(MATH), mask=mask)


@triton.jit
def _norm_elementwise_kernel(
    x_ptr, dy_ptr, out_ptr, w_ptr, b_ptr, mean_ptr, var_ptr, sdz_ptr, sdzx_ptr,
    numel, group_size, C, sN, sC, eps_hi, eps_lo, alpha_hi, alpha_lo,
    GRAD: tl.constexpr, TRAINING: tl.constexpr, INSTANCE: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    ACT: tl.constexpr, MATH: tl.constexpr, INT64: tl.constexpr, BLOCK: tl.constexpr,
    PER_SAMPLE: tl.constexpr = False,
):
    # GRAD=0: y = act(z). GRAD=1: dx (TRAINING adds the mean and variance terms).
    # PER_SAMPLE (conditional batch norm, INSTANCE groups, statistics repeated per sample): w, b per group, and the
    # sums are of w * dz and w * dz * xhat over the channel (group_size: the channel's count).
    eps = f64_from_halves(eps_hi, eps_lo).to(MATH)
    alpha = f64_from_halves(alpha_hi, alpha_lo).to(MATH)
    pid = tl.program_id(0)
    if INT64:
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    else:
        offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    g = _element_groups(offs, C, sN, sC, INSTANCE)
    c = g % C
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(MATH)
    mean = tl.load(mean_ptr + g, mask=mask, other=0.0).to(MATH)
    invstd = 1.0 / tl.sqrt(tl.load(var_ptr + g, mask=mask, other=1.0).to(MATH) + eps)
    w = tl.load(w_ptr + (g if PER_SAMPLE else c), mask=mask, other=1.0).to(MATH) if HAS_W else 1.0
    b = tl.load(b_ptr + (g if PER_SAMPLE else c), mask=mask, other=0.0).to(MATH) if HAS_B else 0.0
    xhat = (x - mean) * invstd
    z = xhat * w + b
    if GRAD:
        dz = _act_backward(z, tl.load(dy_ptr + offs, mask=mask, other=0.0).to(MATH), alpha, ACT)
        if TRAINING:
            sdz = tl.load(sdz_ptr + g, mask=mask, other=0.0).to(MATH)
            sdzx = tl.load(sdzx_ptr + g, mask=mask, other=0.0).to(MATH)
            if PER_SAMPLE:
                v = invstd * (w * dz - sdz / group_size - xhat * (sdzx / group_size))
            else:
                v = w * invstd * (dz - sdz / group_size - xhat * (sdzx / group_size))
        else:
            v = dz * w * invstd
    else:
        v = _act(z, alpha, ACT)
    tl.store(out_ptr + offs, v.to(out_ptr.dtype.element_ty), mask=mask)


def merge_partials(
    part: torch.Tensor, groups: int, chunks: int, grad: bool, math: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group, its ``chunks`` float64 partials merged in order: (mean, biased var) from (count, mean, M2) triples,
    or the sums of (sum dz, sum dz * xhat) pairs with ``grad``. Results in ``math`` (float32 or float64)."""
    out0 = torch.empty(groups, dtype=math, device=part.device)
    out1 = torch.empty_like(out0)
    if groups:
        block = 128
        launch(
            _norm_merge_kernel, (triton.cdiv(groups, block),),
            part, out0, out1, groups, chunks, GRAD=grad, MATH=tl.float64 if math == torch.float64 else tl.float32,
            BLOCK=block,
        )
    return out0, out1


class _View:
    """x as [N, C, L] in its kept layout (csrc/norm_act.cpp::prepare), and the launch constants that follow."""

    def __init__(self, x: torch.Tensor, use_input_stats: bool, instance: bool):
        channels_last = not x.is_contiguous() and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        self.x = x if channels_last or x.is_contiguous() else x.contiguous()
        self.N, self.C = x.shape[0], x.shape[1]
        self.L = x.numel() // max(self.N * self.C, 1)
        self.sN, self.sC, self.sL = self.C * self.L, (1 if channels_last else self.L), (self.C if channels_last else 1)
        self.instance = instance and use_input_stats
        self.groups = self.N * self.C if self.instance else self.C
        self.group_size = self.L if self.instance else self.N * self.L
        self.chunks = max(triton.cdiv(self.group_size, CHUNK), 1)
        self.math = torch.float64 if x.dtype == torch.float64 else torch.float32
        self.tl_math = tl.float64 if x.dtype == torch.float64 else tl.float32
        self.int64 = x.numel() >= 2**31 - CHUNK
        # The interpreter pays per program and per element of a block: blocks of just the size needed (up to 4096 and
        # 1024) keep CPU tests fast.
        numel = max(x.numel(), 1)
        self.block = min(4096, triton.next_power_of_2(numel)) if triton_interpreting() else 1024
        self.reduce_block = min(1024, triton.next_power_of_2(max(self.group_size, 1))) if triton_interpreting() else 512

    def affine(self, t: torch.Tensor | None) -> torch.Tensor:
        return t.to(self.math).contiguous() if t is not None else self.x

    def partials(self, grad: bool, x, dy, w, b, mean, var, eps: float, act: int, alpha: float,
                 per_sample: bool = False) -> torch.Tensor:
        width = 2 if grad else 3
        part = torch.zeros(self.groups * self.chunks * width, dtype=torch.float64, device=self.x.device)
        if self.group_size and self.groups and self.sC == 1 and self.C > 1:
            block_c, block_r = 32, (128 if triton_interpreting() else 16)
            samples = self.N if self.instance else 1
            launch(
                _norm_partial_cl_kernel, (samples * triton.cdiv(self.C, block_c) * self.chunks,),
                x, dy, self.affine(w), self.affine(b), mean, var, part,
                self.group_size, self.chunks, self.C, self.L, self.sN, self.sL, *f64_halves(eps), *f64_halves(alpha),
                GRAD=grad, INSTANCE=self.instance, HAS_W=w is not None, HAS_B=b is not None, ACT=act,
                MATH=self.tl_math, CHUNK_SIZE=CHUNK, BLOCK_R=block_r, BLOCK_C=block_c, PER_SAMPLE=per_sample,
            )
        elif self.group_size and self.groups:
            launch(
                _norm_partial_kernel, (self.groups * self.chunks,),
                x, dy, self.affine(w), self.affine(b), mean, var, part,
                self.group_size, self.chunks, self.C, self.L, self.sN, self.sC, self.sL,
                *f64_halves(eps), *f64_halves(alpha),
                GRAD=grad, INSTANCE=self.instance, HAS_W=w is not None, HAS_B=b is not None, ACT=act,
                MATH=self.tl_math, INT64=self.int64, CHUNK_SIZE=CHUNK, BLOCK=self.reduce_block, PER_SAMPLE=per_sample,
            )
        return part

    def merge(self, grad: bool, part: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return merge_partials(part, self.groups, self.chunks, grad, self.math)

    def elementwise(self, grad: bool, dy, w, b, mean, var, sums, eps: float, act: int, alpha: float,
                    per_sample: bool = False, group_size: int | None = None) -> torch.Tensor:
        out = torch.empty_like(self.x)
        numel = self.x.numel()
        if numel:
            sdz, sdzx = sums if sums is not None else (mean, mean)
            launch(
                _norm_elementwise_kernel, (triton.cdiv(numel, self.block),),
                self.x, dy if dy is not None else self.x, out, self.affine(w), self.affine(b), mean, var, sdz, sdzx,
                numel, group_size or self.group_size, self.C, self.sN, self.sC, *f64_halves(eps), *f64_halves(alpha),
                GRAD=grad, TRAINING=sums is not None, INSTANCE=self.instance, HAS_W=w is not None,
                HAS_B=b is not None, ACT=act, MATH=self.tl_math, INT64=self.int64, BLOCK=self.block,
                PER_SAMPLE=per_sample,
            )
        return out

    def per_channel(self, sums: torch.Tensor) -> torch.Tensor:
        return sums.view(self.N, self.C).sum(0) if self.instance else sums


@triton_op("fastgan::norm_act_triton", mutates_args=())
def norm_act_triton(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None, use_input_stats: bool, instance: bool, eps: float, act: int, alpha: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    v = _View(x, use_input_stats, instance)
    if use_input_stats and running_mean is None:
        mean, var = v.merge(False, v.partials(False, v.x, v.x, None, None, v.x, v.x, eps, act, alpha))
    else:  # the running statistics, or x's batch statistics reduced by the convolution that wrote x
        # Copies: an op's outputs must not alias its inputs.
        mean = running_mean.to(v.math, copy=True).contiguous()
        var = running_var.to(v.math, copy=True).contiguous()
    return v.elementwise(False, None, weight, bias, mean, var, None, eps, act, alpha), mean, var


@triton_op("fastgan::norm_act_backward_triton", mutates_args=())
def norm_act_backward_triton(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, mean: torch.Tensor,
    var: torch.Tensor, use_input_stats: bool, instance: bool, eps: float, act: int, alpha: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    v = _View(x, use_input_stats, instance)
    dy = dy.to(v.x.dtype)
    if dy.stride() != v.x.stride():
        dy = torch.empty_like(v.x).copy_(dy)
    mean, var = mean.to(v.math).contiguous(), var.to(v.math).contiguous()
    part = v.partials(True, v.x, dy, weight, bias, mean, var, eps, act, alpha)
    sum_dz, sum_dz_xhat = v.merge(True, part)
    sums = (sum_dz, sum_dz_xhat) if use_input_stats else None
    dx = v.elementwise(True, dy, weight, bias, mean, var, sums, eps, act, alpha)
    return dx, v.per_channel(sum_dz_xhat), v.per_channel(sum_dz)


@triton_op("fastgan::conditional_norm_act_triton", mutates_args=())
def conditional_norm_act_triton(
    x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None, use_input_stats: bool, eps: float, act: int, alpha: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Conditional batch norm: per-channel statistics (pass 1 as batch norm's), then ``act(xhat * scale[n, c] +
    shift[n, c])`` in one elementwise pass over (sample, channel) groups, the statistics repeated per sample."""
    v = _View(x, use_input_stats, False)
    if use_input_stats and running_mean is None:
        mean, var = v.merge(False, v.partials(False, v.x, v.x, None, None, v.x, v.x, eps, act, alpha))
    else:  # the running statistics, or x's batch statistics reduced by the convolution that wrote x
        mean = running_mean.to(v.math, copy=True).contiguous()
        var = running_var.to(v.math, copy=True).contiguous()
    s = _View(x, True, True)
    y = s.elementwise(False, None, scale.reshape(-1), shift.reshape(-1), mean.repeat(s.N), var.repeat(s.N), None, eps,
                      act, alpha, per_sample=True)
    return y, mean, var


@triton_op("fastgan::conditional_norm_act_backward_triton", mutates_args=())
def conditional_norm_act_backward_triton(
    dy: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, mean: torch.Tensor,
    var: torch.Tensor, use_input_stats: bool, eps: float, act: int, alpha: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dscale [N, C], dshift [N, C]): pass 1 reduces sum(dz) and sum(dz * xhat) per (sample, channel), which
    are dshift and dscale; their scale-weighted sums over the samples are the channel's, for dx (pass 2)."""
    s = _View(x, True, True)
    dy = dy.to(s.x.dtype)
    if dy.stride() != s.x.stride():
        dy = torch.empty_like(s.x).copy_(dy)
    mean, var = mean.to(s.math).repeat(s.N).contiguous(), var.to(s.math).repeat(s.N).contiguous()
    w, b = scale.reshape(-1), shift.reshape(-1)
    sum_dz, sum_dz_xhat = s.merge(True, s.partials(True, s.x, dy, w, b, mean, var, eps, act, alpha, per_sample=True))
    sums = None
    if use_input_stats:
        weight = w.to(s.math).view(s.N, s.C)
        sums = tuple((weight * t.view(s.N, s.C)).sum(0).repeat(s.N).contiguous() for t in (sum_dz, sum_dz_xhat))
    dx = s.elementwise(True, dy, w, b, mean, var, sums, eps, act, alpha, per_sample=True, group_size=s.N * s.L)
    return dx, sum_dz_xhat.view(s.N, s.C), sum_dz.view(s.N, s.C)


@triton.jit
def _round_to(x, dtype: tl.constexpr):
    # x rounded to nearest even in dtype as Tensor.to() does it (narrow types by way of float32); bfloat16 by hand,
    # because the interpreter truncates.
    if dtype == tl.float64:
        y = x.to(tl.float64)
    else:
        f = x.to(tl.float32)
        if dtype == tl.bfloat16:
            f = _round_to_bf16(f)
        y = f.to(dtype)
    return y


@triton.jit
def _div_rn(a, b):
    # Correctly rounded a / b: Triton's float32 `/` is approximate on GPUs (float64's is exact, div_rn float32 only).
    if a.dtype == tl.float64:
        q = a / b
    else:
        q = tl.div_rn(a, b)
    return q


@triton.jit
def _lerp_in_place(ptrs, stat, weight, mask, MATH: tl.constexpr):
    # torch.lerp as PyTorch's vectorized kernel computes it (csrc/norm_act.h::lerp_like_torch) in MATH, rounded once
    # to the buffer dtype.
    start = tl.load(ptrs, mask=mask, other=0.0).to(MATH)
    end = stat.to(MATH)
    small = tl.abs(weight) < 0.5
    out = tl.fma(tl.where(small, weight, weight - 1.0), end - start, tl.where(small, start, end))
    tl.store(ptrs, _round_to(out, ptrs.dtype.element_ty), mask=mask)


@triton.jit
def _update_stats_kernel(
    rm_ptr, rv_ptr, steps_ptr, mean_ptr, var_ptr, C, batch, stride_m, stride_v, count, factor_hi, factor_mid,
    factor_lo, MATH: tl.constexpr, BLOCK: tl.constexpr, STEPS: tl.constexpr, CUMULATIVE: tl.constexpr,
):
    # csrc/norm_act.h::update_running_channel over the channels in blocks (one program: it reads the step counter,
    # then advances it): the unbiased variance per group (one fma per sample) and the batch average in the
    # statistics dtype, then lerp(running, stat, factor) in MATH, rounded once to the buffer dtype.
    stat = mean_ptr.dtype.element_ty
    zero = tl.zeros([BLOCK], tl.float64)
    # Scalars built in float64 from exact parts: on a GPU, Triton passes Python floats as float32.
    ratio = ((zero + count) / (zero + count - 1)).to(stat)
    if STEPS:
        steps = tl.load(steps_ptr)
    if CUMULATIVE:  # momentum=None: 1 / steps, counting this step
        weight = ((zero + 1.0) / (zero + (steps + 1).to(tl.float64))).to(MATH)
    else:
        weight = (zero + factor_hi + factor_mid + factor_lo).to(MATH)
    for start in range(0, C, BLOCK):
        c = start + tl.arange(0, BLOCK)
        mask = c < C
        m = tl.zeros([BLOCK], stat)
        v = tl.zeros([BLOCK], stat)
        for n in range(0, batch):
            m += tl.load(mean_ptr + n * C + c, mask=mask, other=0.0)
            v = tl.fma(tl.load(var_ptr + n * C + c, mask=mask, other=0.0), ratio, v)
        if batch > 1:
            m = _div_rn(m, (zero + batch).to(stat))
            v = _div_rn(v, (zero + batch).to(stat))
        _lerp_in_place(rm_ptr + c * stride_m, m, weight, mask, MATH)
        _lerp_in_place(rv_ptr + c * stride_v, v, weight, mask, MATH)
    if STEPS:
        tl.debug_barrier()  # every warp has read the counter (CUMULATIVE) before it advances
        tl.store(steps_ptr, steps + 1)


def _float32_parts(value: float) -> tuple[float, float, float]:
    """Three float32 values (as floats) whose float64 sum is ``value`` exactly (53 bits <= 3 x 24)."""
    parts = []
    for _ in range(3):
        part = struct.unpack("f", struct.pack("f", value))[0]
        parts.append(part)
        value -= part
    return parts[0], parts[1], parts[2]


@triton_op("fastgan::norm_act_update_stats_triton",
           mutates_args=("running_mean", "running_var", "num_batches_tracked"))
def norm_act_update_stats_triton(
    running_mean: torch.Tensor, running_var: torch.Tensor, num_batches_tracked: torch.Tensor | None,
    mean: torch.Tensor, var: torch.Tensor, momentum: float | None, count: int, batch: int,
) -> None:
    """In place: ``running = lerp(running, stat, factor)`` with the unbiased variance (``count`` values per group),
    averaged over ``batch`` samples, ``factor`` the momentum or, for None, 1 / steps; then ``num_batches_tracked``
    (if given) advances by 1 (csrc/norm_act.cpp::update_stats_cpu, the same checks)."""
    _check_update(running_mean, running_var, num_batches_tracked, mean, var, momentum, count, batch)
    if running_mean.shape[0] or num_batches_tracked is not None:
        _launch_update(running_mean, running_var, num_batches_tracked, mean, var, momentum, count, batch)


def _check_update(running_mean, running_var, steps, mean, var, momentum, count: int, batch: int) -> None:
    """csrc/norm_act.cpp::prepare_update's checks, naming the op."""
    op = "norm_act_update_stats"
    if running_mean.dim() != 1 or running_var.shape != running_mean.shape:
        raise ValueError(f"{op}: running_mean and running_var must be 1-D of the same length, got "
                         f"{tuple(running_mean.shape)} and {tuple(running_var.shape)}")
    if not running_mean.is_floating_point() or running_var.dtype != running_mean.dtype:
        raise TypeError(f"{op}: running_mean and running_var must be floating-point tensors of one dtype, got "
                        f"{running_mean.dtype} and {running_var.dtype}")
    channels = running_mean.shape[0]
    if batch < 1:
        raise ValueError(f"{op}: batch must be >= 1, got {batch}")
    if count <= 1:
        raise ValueError(f"{op}: the unbiased variance needs more than 1 value per statistic group, got count = "
                         f"{count} (PyTorch rejects batch statistics of one value too); use a larger input or "
                         "evaluation mode")
    if mean.dim() != 1 or var.dim() != 1 or mean.shape[0] != batch * channels or var.shape[0] != batch * channels:
        raise ValueError(f"{op}: mean and var must be 1-D of length batch * C = {batch * channels}, got "
                         f"{tuple(mean.shape)} and {tuple(var.shape)}")
    if mean.dtype not in (torch.float32, torch.float64) or var.dtype != mean.dtype:
        raise TypeError(f"{op}: mean and var must both be float32 or both float64 (the statistics norm_act returns), "
                        f"got {mean.dtype} and {var.dtype}")
    if momentum is None and steps is None:
        raise ValueError(f"{op}: momentum=None (cumulative moving average) needs num_batches_tracked (the step "
                         "counter)")
    if steps is not None and (steps.dim() != 0 or steps.dtype != torch.int64):
        raise TypeError(f"{op}: num_batches_tracked must be a 0-dim int64 tensor (nn.BatchNorm's buffer), got "
                        f"{steps.dtype} of shape {tuple(steps.shape)}")
    if any(t.device != running_mean.device for t in (running_var, mean, var, *([steps] if steps is not None else []))):
        raise ValueError(f"{op}: all tensors must be on one device")


def _launch_update(running_mean, running_var, steps, mean, var, momentum, count: int, batch: int) -> None:
    math = tl.float64 if running_mean.dtype == torch.float64 else tl.float32
    launch(
        _update_stats_kernel, (1,),
        running_mean, running_var, steps if steps is not None else mean, mean.contiguous(), var.contiguous(),
        running_mean.shape[0], batch, running_mean.stride(0), running_var.stride(0), count,
        *_float32_parts(float(momentum or 0.0)), MATH=math, BLOCK=128, STEPS=steps is not None,
        CUMULATIVE=momentum is None,
    )


@triton_op("fastgan::norm_act_train_triton", mutates_args=("running_mean", "running_var", "num_batches_tracked"))
def norm_act_train_triton(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, running_mean: torch.Tensor,
    running_var: torch.Tensor, num_batches_tracked: torch.Tensor | None, momentum: float | None, eps: float, act: int,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch norm's training forward with its running statistics and step counter updated in place (as
    csrc/norm_act.cpp::train_forward_cpu): the forward's launches, then the update kernel's."""
    v = _View(x, True, False)
    if running_mean.dim() != 1 or running_mean.shape[0] != v.C:
        raise ValueError(f"norm_act_train: running_mean must be 1-D with one value per channel ({v.C}), got "
                         f"{tuple(running_mean.shape)}")
    stats = x.new_empty(v.C, dtype=v.math)  # what the statistics will be: every check before any launch
    _check_update(running_mean, running_var, num_batches_tracked, stats, stats, momentum, v.group_size, 1)
    mean, var = v.merge(False, v.partials(False, v.x, v.x, None, None, v.x, v.x, eps, act, alpha))
    y = v.elementwise(False, None, weight, bias, mean, var, None, eps, act, alpha)
    _launch_update(running_mean, running_var, num_batches_tracked, mean, var, momentum, v.group_size, 1)
    return y, mean, var
