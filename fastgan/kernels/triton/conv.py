"""Triton implicit-GEMM kernels for ``fastgan.ops.conv2d_act`` / ``conv_transpose2d_act`` and their custom ops.

One kernel computes both. Rows of the GEMM are output pixels, columns output channels, the reduction runs over
(kernel tap, input channel). A convolution reads ``iy = oy*s - p + kh``. A transposed convolution with stride ``s``
is split into ``s*s`` output phases (grid axis 2): outputs ``oy = py + s*j`` only receive taps
``kh = (py + p) % s + s*t``, read at ``iy = j + (py + p) // s - t``, so each phase is a dense stride-1 correlation
and no multiply touches the zeros a naive transposed convolution inserts. Both index maps have the same shape,
``iy = j*IS + IB + t*TI``, ``kh = K0 + t*KS``, ``oy = OY0 + j*OYS``, which is all the kernel needs to know.

The epilogue adds the bias and applies the activation (``_act`` of the bias_act kernels) before the only store.
Any strides are read as given (channels_last makes the channel reduction contiguous); the output is channels_last
when ``x`` or the weight is, as PyTorch's convolution. Accumulation in float32 (float64 for float64); float32 inputs
use IEEE products, not TF32.

The weight gradient (``_conv_wgrad_kernel``) is an implicit GEMM too: per kernel tap (grid axis 2), rows are the
output-gradient's channels, columns the input's, and the reduction runs over the output pixels that tap reaches,
through the same index maps (for a transposed convolution, the pixels of the one output phase the tap belongs to).
On a GPU the reduction is split over a few programs whose partials are summed in a fixed order (deterministic).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from ..._backend import triton_interpreting
from ..._layout import conv_channels_last
from .bias_act import _act, _round_to_bf16
from .launch import INT32_MAX_ELEMENTS, launch
from .norm_act import merge_partials
from .scalars import f64_from_halves, f64_halves


@triton.jit
def _conv_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, part_ptr,
    N, C, H, W, CO, OH, OW, KH, KW,
    sxn, sxc, sxh, sxw,
    swo, swc, swh, sww,
    syn, syc, syh, syw,
    SH, SW, PH, PW,
    alpha_hi, alpha_lo,
    TRANSPOSED: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, F64: tl.constexpr, PRECISION: tl.constexpr,
    UPCAST: tl.constexpr, STATS: tl.constexpr,  # UPCAST: bfloat16 under the interpreter
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    phase = tl.program_id(2)
    if TRANSPOSED:
        py = phase // SW
        px = phase % SW
        ohp = (OH - py + SH - 1) // SH  # outputs of this phase along each axis
        owp = (OW - px + SW - 1) // SW
        is_h, ib_h, ti_h, k0_h, ks_h, oy0, oys = 1, (py + PH) // SH, -1, (py + PH) % SH, SH, py, SH
        is_w, ib_w, ti_w, k0_w, ks_w, ox0, oxs = 1, (px + PW) // SW, -1, (px + PW) % SW, SW, px, SW
        taps_h = (KH - k0_h + SH - 1) // SH  # the taps kh = k0 + s*t < KH of this phase
        taps_w = (KW - k0_w + SW - 1) // SW
    else:
        ohp = OH
        owp = OW
        is_h, ib_h, ti_h, k0_h, ks_h, oy0, oys = SH, -PH, 1, 0, 1, 0, 1
        is_w, ib_w, ti_w, k0_w, ks_w, ox0, oxs = SW, -PW, 1, 0, 1, 0, 1
        taps_h = KH
        taps_w = KW

    acc_type = tl.float64 if F64 else tl.float32
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # output pixel within this phase
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # output channel
    rk = tl.arange(0, BLOCK_K)
    m_mask = rm < N * ohp * owp
    n_mask = rn < CO
    # A phase can be empty (a 1-pixel output, stride 2): everything is masked, but keep the divisions defined.
    ohp = tl.maximum(ohp, 1)
    owp = tl.maximum(owp, 1)
    j_w = rm % owp
    j_h = (rm // owp) % ohp
    n = (rm // (owp * ohp)).to(tl.int64)
    x_row = x_ptr + n * sxn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_type)
    for t_h in range(0, taps_h):
        kh = k0_h + t_h * ks_h
        iy = j_h * is_h + ib_h + t_h * ti_h
        row_h = m_mask & (iy >= 0) & (iy < H)
        for t_w in range(0, taps_w):
            kw = k0_w + t_w * ks_w
            ix = j_w * is_w + ib_w + t_w * ti_w
            row_ok = row_h & (ix >= 0) & (ix < W)
            a_base = x_row + iy.to(tl.int64) * sxh + ix.to(tl.int64) * sxw
            w_base = w_ptr + kh * swh + kw * sww
            for c0 in range(0, C, BLOCK_K):
                c = c0 + rk
                c_ok = c < C
                a = tl.load(a_base[:, None] + c[None, :].to(tl.int64) * sxc,
                            mask=row_ok[:, None] & c_ok[None, :], other=0.0)
                b = tl.load(w_base + c[:, None] * swc + rn[None, :] * swo,
                            mask=c_ok[:, None] & n_mask[None, :], other=0.0)
                if UPCAST:  # the interpreter's dot mishandles bfloat16; bf16 products are exact in float32
                    acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
                else:  # out_dtype: float64 operands accumulate in float64 (Triton 3.6 defaults it to float32)
                    acc = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=acc_type)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=n_mask, other=0.0).to(acc_type)[None, :]
    if STATS:
        # Batch-norm statistics of this tile's rows per channel, from the unrounded accumulator: (count, mean, M2)
        # (two passes over registers: no cancellation), merged over tiles in a fixed order by Chan's formula.
        rows = m_mask[:, None]
        count = tl.sum(m_mask.to(acc_type), 0)
        mean = tl.sum(tl.where(rows, acc, 0.0), 0) / tl.maximum(count, 1.0)
        dev = tl.where(rows, acc - mean[None, :], 0.0)
        slot = (rn.to(tl.int64) * tl.num_programs(0) * tl.num_programs(2) + phase * tl.num_programs(0) + pid_m) * 3
        tl.store(part_ptr + slot, (tl.zeros_like(mean) + count).to(tl.float64), mask=n_mask)
        tl.store(part_ptr + slot + 1, mean.to(tl.float64), mask=n_mask)
        tl.store(part_ptr + slot + 2, tl.sum(dev * dev, 0).to(tl.float64), mask=n_mask)
    out = _act(acc, f64_from_halves(alpha_hi, alpha_lo).to(acc_type), ACT)
    if UPCAST:
        out = _round_to_bf16(out)
    oy = oy0 + j_h * oys
    ox = ox0 + j_w * oxs
    y_offs = (n * syn + oy.to(tl.int64) * syh + ox.to(tl.int64) * syw)[:, None] + rn[None, :].to(tl.int64) * syc
    tl.store(y_ptr + y_offs, out.to(y_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


def _output_shape(x, w, stride, padding, output_padding) -> list[int]:
    if output_padding is None:
        size = [(x.shape[2 + d] + 2 * padding[d] - w.shape[2 + d]) // stride[d] + 1 for d in range(2)]
        return [x.shape[0], w.shape[0], *size]
    size = [(x.shape[2 + d] - 1) * stride[d] - 2 * padding[d] + w.shape[2 + d] + output_padding[d] for d in range(2)]
    return [x.shape[0], w.shape[1], *size]


def empty_output(x, w, stride, padding, output_padding) -> torch.Tensor:
    """The uninitialised output in PyTorch's convolution layout: channels_last when the input or the weight suggests
    channels_last (``Tensor.suggest_memory_format``), else contiguous."""
    shape = _output_shape(x, w, stride, padding, output_padding)
    fmt = torch.channels_last if conv_channels_last(x, w) else torch.contiguous_format
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)


def _block(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(n, 1))))


_MAX_GRID_YZ = 65535  # CUDA's limit on a grid's second and third axes


def _check_rows(op: str, rows: int) -> None:
    """The kernels index output pixels (per phase) in int32: refuse, naming the op, what would overflow."""
    if rows > INT32_MAX_ELEMENTS:
        raise ValueError(f"{op}: {rows} output pixels exceed the Triton kernel's 32-bit pixel index; use "
                         "impl='native' or split the batch")


def _launch(
    x, w, b, stride, padding, output_padding, act: int, alpha: float, stats: bool = False
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """The output, and with ``stats`` its per-channel (mean, biased variance) reduced in the epilogue (float32;
    float64 for float64)."""
    transposed = output_padding is not None
    y = empty_output(x, w, stride, padding, output_padding)
    # The weight as [kh, kw, C_in, C_out] (a small copy): each tap's [C_in, C_out] tile is then read contiguously.
    # ConvTranspose2d stores [C_in, C_out, kh, kw], Conv2d [C_out, C_in, kh, kw].
    wk = (w.permute(2, 3, 0, 1) if transposed else w.permute(2, 3, 1, 0)).contiguous()
    swh, sww, swc, swo = wk.stride()
    n_out, c_in = y.shape[1], x.shape[1]
    oh, ow = y.shape[2], y.shape[3]
    phases = stride[0] * stride[1] if transposed else 1
    rows = x.shape[0] * (triton.cdiv(oh, stride[0]) * triton.cdiv(ow, stride[1]) if transposed else oh * ow)
    _check_rows("conv_transpose2d_act" if transposed else "conv2d_act", rows)
    if triton_interpreting():  # the interpreter pays per program: few, large ones
        block_m, block_n, block_k = _block(rows, 16, 256), _block(n_out, 16, 64), _block(c_in, 16, 64)
        warps, stages = 4, 1
    else:
        block_m, block_n, block_k = 128, _block(n_out, 16, 128), _block(c_in, 16, 32)
        warps, stages = 4 if block_n <= 64 else 8, 3
    grid = (triton.cdiv(rows, block_m), triton.cdiv(n_out, block_n), phases)
    tiles = grid[0] * grid[2]  # row tiles per channel, each leaving one (count, mean, M2) partial
    # Without stats the partials' pointer is unused, but it must not be y: where Inductor cannot read which arguments
    # a kernel writes, it writes back a copy of every one in turn, and an unwritten copy of y would land last.
    part = (torch.zeros(n_out * tiles * 3, dtype=torch.float64, device=x.device) if stats
            else torch.empty(1, dtype=torch.float64, device=x.device))
    if y.numel():
        launch(
            _conv_fwd_kernel, grid,
            x, wk, b.to(x.dtype).contiguous() if b is not None else x, y, part,
            x.shape[0], c_in, x.shape[2], x.shape[3], n_out, oh, ow, w.shape[2], w.shape[3],
            *x.stride(), swo, swc, swh, sww, *y.stride(),
            stride[0], stride[1], padding[0], padding[1],
            *f64_halves(alpha),
            TRANSPOSED=transposed, ACT=act, HAS_BIAS=b is not None, F64=x.dtype == torch.float64,
            PRECISION="ieee" if x.dtype in (torch.float32, torch.float64) else "tf32",
            UPCAST=triton_interpreting() and x.dtype == torch.bfloat16, STATS=stats,
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages,
        )
    if not stats:
        return y, None
    return y, merge_partials(part, n_out, tiles, False, torch.float64 if x.dtype == torch.float64 else torch.float32)


@triton_op("fastgan::conv2d_act_triton", mutates_args=())
def conv2d_act_triton(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, stride: list[int], padding: list[int], act: int,
    alpha: float,
) -> torch.Tensor:
    return _launch(x, w, b, stride, padding, None, act, alpha)[0]


@triton_op("fastgan::conv_transpose2d_act_triton", mutates_args=())
def conv_transpose2d_act_triton(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, stride: list[int], padding: list[int],
    output_padding: list[int], act: int, alpha: float,
) -> torch.Tensor:
    return _launch(x, w, b, stride, padding, output_padding, act, alpha)[0]


# --- weight gradient -------------------------------------------------------------------------------------------------


@triton.jit
def _conv_wgrad_kernel(
    dz_ptr, x_ptr, dw_ptr,
    N, C, H, W, CO, OH, OW, KW, TAPS,
    sdn, sdc, sdh, sdw,
    sxn, sxc, sxh, sxw,
    swo, swc, swh, sww, sws,
    SH, SW, PH, PW,
    CHUNK,
    TRANSPOSED: tl.constexpr, F64: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # One program: a [BLOCK_M dz channels, BLOCK_N x channels] tile of one kernel tap, reduced over the CHUNK output
    # pixels of split ``part``. The index maps are the forward kernel's: iy = j*IS + IB, oy = OY0 + j*OYS.
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    tap = tl.program_id(2) % TAPS
    part = tl.program_id(2) // TAPS
    kh = tap // KW
    kw = tap % KW
    if TRANSPOSED:
        # Tap kh belongs to the single output phase py with (py + p) % s == kh % s, as its tap t = kh // s.
        py = (kh % SH + SH - PH % SH) % SH
        px = (kw % SW + SW - PW % SW) % SW
        ohp = (OH - py + SH - 1) // SH
        owp = (OW - px + SW - 1) // SW
        is_h, ib_h, oy0, oys = 1, (py + PH) // SH - kh // SH, py, SH
        is_w, ib_w, ox0, oxs = 1, (px + PW) // SW - kw // SW, px, SW
    else:
        ohp = OH
        owp = OW
        is_h, ib_h, oy0, oys = SH, kh - PH, 0, 1
        is_w, ib_w, ox0, oxs = SW, kw - PW, 0, 1

    acc_type = tl.float64 if F64 else tl.float32
    rows = N * ohp * owp  # output pixels of this tap's phase
    ohp = tl.maximum(ohp, 1)  # an empty phase reduces over nothing; keep the divisions defined
    owp = tl.maximum(owp, 1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # channel of dz
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # channel of x
    rk = tl.arange(0, BLOCK_K)
    m_mask = rm < CO
    n_mask = rn < C
    dz_ch = rm[:, None].to(tl.int64) * sdc
    x_ch = rn[None, :].to(tl.int64) * sxc
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_type)
    start = part * CHUNK
    end = tl.minimum(start + CHUNK, rows)
    for r0 in range(start, end, BLOCK_K):
        r = r0 + rk
        r_ok = r < end
        j_w = r % owp
        j_h = (r // owp) % ohp
        n = (r // (owp * ohp)).to(tl.int64)
        iy = j_h * is_h + ib_h
        ix = j_w * is_w + ib_w
        x_ok = r_ok & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
        dz_offs = n * sdn + (oy0 + j_h * oys).to(tl.int64) * sdh + (ox0 + j_w * oxs).to(tl.int64) * sdw
        x_offs = n * sxn + iy.to(tl.int64) * sxh + ix.to(tl.int64) * sxw
        a = tl.load(dz_ptr + dz_ch + dz_offs[None, :], mask=m_mask[:, None] & r_ok[None, :], other=0.0)
        b = tl.load(x_ptr + x_offs[:, None] + x_ch, mask=x_ok[:, None] & n_mask[None, :], other=0.0)
        if UPCAST:  # the interpreter's dot mishandles bfloat16; bf16 products are exact in float32
            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=acc_type)
    dw_offs = part.to(tl.int64) * sws + kh * swh + kw * sww + rm[:, None] * swo + rn[None, :] * swc
    if UPCAST and dw_ptr.dtype.element_ty == tl.bfloat16:  # not the float32 partials of a split reduction
        acc = _round_to_bf16(acc)
    tl.store(dw_ptr + dw_offs, acc.to(dw_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


def _launch_weight_grad(dz, x, kernel_size, stride, padding, transposed: bool, split: int | None = None):
    """dW of ``conv2d(x, W)`` (``[C_out, C_in, kH, kW]``) or ``conv_transpose2d(x, W)`` (``[C_in, C_out, kH, kW]``)
    given ``dz``, the gradient of its (pre-bias) output; contiguous, in ``dz``'s dtype.

    ``split`` cuts the reduction over output pixels into that many programs whose partials are summed in a fixed
    order afterwards (deterministic); None picks it from the problem size (1 under the interpreter)."""
    n, c, co = x.shape[0], x.shape[1], dz.shape[1]
    kh, kw = kernel_size
    shape = (c, co, kh, kw) if transposed else (co, c, kh, kw)
    if n == 0 or 0 in shape:
        return dz.new_zeros(shape)
    oh, ow = dz.shape[2], dz.shape[3]
    rows = n * (triton.cdiv(oh, stride[0]) * triton.cdiv(ow, stride[1]) if transposed else oh * ow)
    _check_rows("conv_transpose2d_weight_grad" if transposed else "conv2d_weight_grad", rows)
    if triton_interpreting():  # the interpreter pays per program: few, large ones
        split = split or 1
        block_m, block_n, block_k = _block(co, 16, 64), _block(c, 16, 64), _block(triton.cdiv(rows, split), 16, 256)
        warps, stages = 4, 1
    else:
        block_m, block_n, block_k, warps, stages = 64, 64, 32, 4, 3
    if split is None:  # on a GPU: enough programs to fill ~2 waves, each reducing >= 8 blocks of pixels
        tiles = triton.cdiv(co, block_m) * triton.cdiv(c, block_n) * kh * kw
        split = max(1, min(triton.cdiv(264, tiles), rows // (8 * block_k)))
    split = max(1, min(split, _MAX_GRID_YZ // (kh * kw)))  # the grid's third axis holds taps x split
    chunk = triton.cdiv(triton.cdiv(rows, split), block_k) * block_k
    split = triton.cdiv(rows, chunk)
    acc_dtype = torch.float64 if dz.dtype == torch.float64 else torch.float32
    out = dz.new_empty(shape) if split == 1 else torch.empty((split, *shape), dtype=acc_dtype, device=dz.device)
    strides = out.stride()[-4:]
    swo, swc = (strides[1], strides[0]) if transposed else (strides[0], strides[1])
    grid = (triton.cdiv(co, block_m), triton.cdiv(c, block_n), kh * kw * split)
    launch(
        _conv_wgrad_kernel, grid,
        dz, x, out,
        n, c, x.shape[2], x.shape[3], co, oh, ow, kw, kh * kw,
        *dz.stride(), *x.stride(),
        swo, swc, strides[2], strides[3], out.stride(0) if split > 1 else 0,
        stride[0], stride[1], padding[0], padding[1],
        chunk,
        TRANSPOSED=transposed, F64=dz.dtype == torch.float64,
        PRECISION="ieee" if dz.dtype in (torch.float32, torch.float64) else "tf32",
        UPCAST=triton_interpreting() and dz.dtype == torch.bfloat16,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages,
    )
    return out if split == 1 else out.sum(0).to(dz.dtype)


def empty_weight_grad(dz, x, kernel_size, transposed: bool) -> torch.Tensor:
    """The fake of the weight-gradient ops: the weight's shape, contiguous, in ``dz``'s dtype."""
    shape = (x.shape[1], dz.shape[1]) if transposed else (dz.shape[1], x.shape[1])
    return dz.new_empty((*shape, *kernel_size))


@triton_op("fastgan::conv2d_weight_grad_triton", mutates_args=())
def conv2d_weight_grad_triton(
    dz: torch.Tensor, x: torch.Tensor, kernel_size: list[int], stride: list[int], padding: list[int]
) -> torch.Tensor:
    return _launch_weight_grad(dz, x, kernel_size, stride, padding, False)


@triton_op("fastgan::conv_transpose2d_weight_grad_triton", mutates_args=())
def conv_transpose2d_weight_grad_triton(
    dz: torch.Tensor, x: torch.Tensor, kernel_size: list[int], stride: list[int], padding: list[int]
) -> torch.Tensor:
    return _launch_weight_grad(dz, x, kernel_size, stride, padding, True)


@triton_op("fastgan::conv2d_bn_stats_triton", mutates_args=())
def conv2d_bn_stats_triton(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, stride: list[int], padding: list[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``conv2d(x, w) + b`` and its per-channel batch (mean, biased variance), reduced in the kernel's epilogue."""
    y, (mean, var) = _launch(x, w, b, stride, padding, None, 0, 0.0, stats=True)
    return y, mean, var


@triton_op("fastgan::conv_transpose2d_bn_stats_triton", mutates_args=())
def conv_transpose2d_bn_stats_triton(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, stride: list[int], padding: list[int],
    output_padding: list[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``conv_transpose2d(x, w) + b`` and its per-channel batch (mean, biased variance), reduced in the epilogue."""
    y, (mean, var) = _launch(x, w, b, stride, padding, output_padding, 0, 0.0, stats=True)
    return y, mean, var
