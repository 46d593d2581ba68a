"""conv2d_act / conv_transpose2d_act: a 2-D convolution (or transposed convolution) with bias and activation applied
in its epilogue, differentiable to any order on every implementation.

The whole story of the two ops is here: argument checks naming the op, the reference (the specification: PyTorch's
convolution followed by ``bias_act_ref``), the ``native`` path, and the autograd formulas of the Triton custom ops
(``fastgan::conv2d_act_triton`` / ``fastgan::conv_transpose2d_act_triton``, fastgan/kernels/triton/conv.py).

- ``native``: PyTorch's convolution without bias (cuDNN on CUDA, oneDNN on CPU), then the fused bias + activation
  epilogue kernel ``bias_act(impl="native")``. Both are differentiable twice (and any order for piecewise-linear
  activations), so gradient penalties work through it. On the CPU the shapes that oneDNN handles badly run as
  matrix products instead (``_native``): a convolution that is one; a transposed convolution to one channel and the
  input gradient of a convolution from one channel (col2im); a convolution from one channel (a product with the
  input's columns, for contiguous tensors; its weight gradient too, but only where the backward builds a graph); the
  one-channel ones from
  ``CPU_ONE_CHANNEL_MIN_NUMEL`` values on the side with many channels, and with no gradient to take only where
  their forward measured faster than oneDNN's (``_forward_route_wins``).
- ``triton``: an implicit-GEMM kernel whose epilogue adds the bias and applies the activation, so the output is
  written once. A stride-``s`` transposed convolution runs as ``s*s`` output phases (sub-pixel decomposition): each
  phase is a dense stride-1 correlation with the kernel taps of that phase, so no multiply is spent on the zeros a
  naive transposed convolution inserts. Backward: the input gradient of a convolution is a transposed convolution
  and vice versa, both computed by the same Triton kernels; the weight gradient is a Triton implicit GEMM of its own
  (``fastgan::conv2d_weight_grad_triton`` / ``conv_transpose2d_weight_grad_triton``, the same phase decomposition),
  whose backward is again the forward kernels (it is bilinear in the output gradient and the input), so every order
  of the Triton path runs on Triton kernels. The activation's derivative is taken from the output (relu, lrelu with
  alpha >= 0, tanh, sigmoid: exactly as PyTorch's own backward does), so nothing but the output is written; the
  activations whose derivative needs the pre-activation (elu, selu, softplus, silu) run the kernel without epilogue
  activation followed by ``bias_act``.

``impl="auto"`` on CUDA measures every implementation on the first call of each shape class and keeps the fastest
correct one (fastgan/_autotune.py). Its fixed order (with ``FASTGAN_AUTOTUNE=0``, or inside torch.compile before
anything was measured) picks ``native`` (cuDNN plus the epilogue kernel) over the Triton kernel. On the CPU "auto"
is ``native`` with the activation left to ``bias_act``'s own CPU rule, or, where the caller only reads the output
(``output_read_only``: inside ``fastgan.nn.FusedSequential``), relu and lrelu written over the convolution's own
output (``_ActInPlace``: no fresh tensor).
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import statistics
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .. import _autotune, _backend
from .._autotune import autotuned
from .._backend import (
    available_impls,
    custom_ops,
    declare_custom_ops,
    get_impl,
    needs_reference,
    register_autograd,
    register_fake,
    resolve_impl,
)
from .._dtypes import check_dtype
from .._layout import conv_channels_last
from .bias_act import ACTIVATIONS, _reduce_to_bias, activation, activation_at, bias_act, bias_act_ref

__all__ = ["conv2d_act", "conv2d_act_ref", "conv_transpose2d_act", "conv_transpose2d_act_ref"]

IntPair = int | Sequence[int]

# Activations whose derivative is a function of the output y = f(z), so the fused kernel need not keep z.
_GRAD_FROM_OUTPUT = ("linear", "relu", "lrelu", "tanh", "sigmoid")


def _pair(value: IntPair, name: str, op: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
    return pair  # type: ignore[return-value]


@torch.compiler.assume_constant_result  # Dynamo before PyTorch 2.13 cannot trace the builtin it calls
def _has_autocast(device_type: str) -> bool:
    return torch.amp.is_autocast_available(device_type)


def autocast_operands(x, weight, bias):
    """Inside ``torch.autocast`` convolutions run in the autocast dtype, as ``F.conv2d`` does: cast the operands."""
    if not isinstance(x, torch.Tensor) or not _has_autocast(x.device.type):
        return x, weight, bias  # meta tensors and other devices without autocast: nothing to cast
    if not torch.is_autocast_enabled(x.device.type):
        return x, weight, bias
    dtype = torch.get_autocast_dtype(x.device.type)

    def cast(t):
        return t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t

    return cast(x), cast(weight), cast(bias)


def check_conv(
    op: str,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: IntPair,
    padding: IntPair,
    output_padding: IntPair | None,
    act: str,
    alpha: float | None,
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], float]:
    """Validate arguments the same way for every implementation; return (stride, padding, output_padding, alpha)."""
    transposed = output_padding is not None
    for name, t in (("x", x), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            layout = "[C_in, C_out, kH, kW]" if transposed else "[C_out, C_in, kH, kW]"
            want = "[N, C_in, H, W]" if name == "x" else layout
            raise ValueError(f"{op}: {name} must be 4-D {want}, got shape {tuple(t.shape)}")
        check_dtype(op, name, t)
    if weight.device != x.device:
        raise ValueError(f"{op}: weight is on {weight.device} but x is on {x.device}; move weight to x's device")
    if weight.dtype != x.dtype:
        raise TypeError(f"{op}: weight is {weight.dtype} but x is {x.dtype}; cast weight to x's dtype")
    in_channels = weight.shape[0] if transposed else weight.shape[1]
    out_channels = weight.shape[1] if transposed else weight.shape[0]
    if x.shape[1] != in_channels:
        raise ValueError(
            f"{op}: x has {x.shape[1]} channels but weight {tuple(weight.shape)} expects {in_channels} "
            "(only groups=1 is supported)"
        )
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.dim() != 1 or bias.shape[0] != out_channels:
            shape = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
            raise ValueError(f"{op}: bias must be 1-D of length {out_channels} (output channels), got {shape}")
        if bias.device != x.device:
            raise ValueError(f"{op}: bias is on {bias.device} but x is on {x.device}; move bias to x's device")
        check_dtype(op, "bias", bias)
    stride_, padding_ = _pair(stride, "stride", op), _pair(padding, "padding", op)
    output_padding_ = _pair(output_padding, "output_padding", op) if transposed else (0, 0)
    if min(stride_) < 1:
        raise ValueError(f"{op}: stride must be >= 1, got {stride}")
    if min(padding_) < 0:
        raise ValueError(f"{op}: padding must be >= 0, got {padding}")
    if min(output_padding_) < 0 or any(o >= s for o, s in zip(output_padding_, stride_)):
        raise ValueError(f"{op}: output_padding must be >= 0 and smaller than stride {stride_}, got {output_padding}")
    out_size = output_size(x, weight, stride_, padding_, output_padding_ if transposed else None)
    if min(out_size) < 1:
        raise ValueError(
            f"{op}: output size {tuple(out_size)} is not positive for input {tuple(x.shape[2:])}, kernel "
            f"{tuple(weight.shape[2:])}, stride {stride_}, padding {padding_}; pad the input or shrink the kernel"
        )
    _, alpha_ = activation(op, act, alpha)
    return stride_, padding_, output_padding_, alpha_


def _cast(bias: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    return bias.to(x.dtype) if bias is not None else None


def output_size(x, weight, stride, padding, output_padding) -> tuple[int, int]:
    """Spatial output size of the convolution (``output_padding=None``) or the transposed convolution."""
    (h, w), (kh, kw) = x.shape[2:], weight.shape[2:]
    if output_padding is None:
        return (h + 2 * padding[0] - kh) // stride[0] + 1, (w + 2 * padding[1] - kw) // stride[1] + 1
    return ((h - 1) * stride[0] - 2 * padding[0] + kh + output_padding[0],
            (w - 1) * stride[1] - 2 * padding[1] + kw + output_padding[1])


def conv_impl(
    impl: str, device: torch.device, op: str, act: str | None = None, dtype: torch.dtype | None = None
) -> str:
    """The implementation a convolution op runs (``resolve_impl``, but ``auto`` prefers cuDNN on CUDA, and on the CPU
    the native convolution, whose epilogue then follows bias_act's own CPU rule: see ``_native``)."""
    if impl == "auto" and get_impl() == "auto" and not needs_reference():
        # "auto" prefers cuDNN + the epilogue kernel over the untuned Triton kernel (see the module docstring).
        if device.type == "cuda" and available_impls()["native"]["cuda"][0]:
            return "native"
        if device.type == "cpu" and op in ("conv2d_act", "conv_transpose2d_act") and torch.backends.mkldnn.enabled:
            return "native"
    return resolve_impl(impl, device, op, act, dtype)


def _fold_conv_transpose2d(x, weight, stride, padding, size, channels_last: bool) -> torch.Tensor:
    """The transposed convolution of ``x`` [N, C, H, W] with a weight to one channel [C, 1, kH, kW], ``size`` its
    output's spatial size: a matrix product per sample and a col2im (``F.fold``) of the columns. oneDNN took 4-5x
    longer for this (a grayscale generator's last layer, and the input gradient of a discriminator's first layer on
    grayscale images; README). ``channels_last``: the result has those strides (the same memory, one channel)."""
    n, c, h, w = x.shape
    kh, kw = weight.shape[2:]
    columns = torch.bmm(weight.reshape(c, kh * kw).t().contiguous().expand(n, kh * kw, c), x.reshape(n, c, h * w))
    y = F.fold(columns, size, (kh, kw), padding=padding, stride=stride)
    return y.view(n, size[0], size[1], 1).permute(0, 3, 1, 2) if channels_last else y


def _nhwc_strides(x, weight) -> torch.Tensor:
    """The one-channel ``x`` [N, 1, H, W] of a channels_last convolution with NHWC strides (the same memory) unless it
    or ``weight`` has them, so that oneDNN runs its NHWC kernel: ``torch.tanh`` of a one-channel output, for one,
    hands back NCHW strides, and oneDNN then ran its NCHW kernel and copied the other tensor to it (a grayscale
    generator's last layer, forward+backward: 8.0 ms against 4.3, README)."""
    if conv_channels_last(x, weight):
        return x
    n, _, h, w = x.shape
    return x.contiguous().view(n, h, w, 1).permute(0, 3, 1, 2)  # a copy only of a gradient expanded from a sum


def _one_channel_columns(x, kernel, stride, padding) -> torch.Tensor:
    """The columns [N, kH*kW, L] of a one-channel ``x`` [N, 1, H, W] for a convolution with ``kernel`` (kH, kW), L the
    output's pixels: a strided copy of the padded input's windows (F.unfold's im2col took 3x longer)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    windows = F.pad(x, (pw, pw, ph, ph)).unfold(2, kh, sh).unfold(3, kw, sw)  # [N, 1, oh, ow, kH, kW]
    n, _, oh, ow = windows.shape[:4]
    return windows.permute(0, 1, 4, 5, 2, 3).reshape(n, kh * kw, oh * ow)


def _from_one_channel_conv2d(x, weight, stride, padding, channels_last: bool) -> torch.Tensor:
    """The convolution of a one-channel ``x`` [N, 1, H, W] with ``weight`` [C, 1, kH, kW], with a contiguous result:
    a matrix product per sample with the columns, where oneDNN's NCHW kernel took 1.2-5x longer (a grayscale
    discriminator's first layer, the input gradient of a generator's last; README); ``channels_last``: oneDNN's NHWC
    kernel, which the columns did not beat within a training step."""
    if channels_last:  # oneDNN decides by x and weight alone; the caller's layout may come from another tensor
        return F.conv2d(_nhwc_strides(x, weight), weight, None, stride, padding).contiguous(
            memory_format=torch.channels_last)
    n, c = x.shape[0], weight.shape[0]
    w = weight.reshape(c, -1)
    columns = _one_channel_columns(x, weight.shape[2:], stride, padding)
    # not a view of the product: _native writes the activation over it (_ActInPlace)
    return torch.ops.aten._unsafe_view(torch.bmm(w.expand(n, *w.shape), columns),
                                       [n, c, *output_size(x, weight, stride, padding, None)])


def _one_channel_weight_grad(x, dy, weight, stride, padding, channels_last: bool) -> torch.Tensor:
    """The gradient of ``weight`` [C, 1, kH, kW] in the convolution from the one-channel ``x`` whose output has the
    gradient ``dy``: oneDNN's (``channels_last``: handed NHWC strides, ``_nhwc_strides``), but for contiguous tensors
    under ``create_graph`` (a gradient penalty's backward) each sample's ``dy`` times its columns, summed, so that its
    derivatives stay on the routes too. (The columns' product for every backward made the DCGAN-28 training step 1-3%
    slower at batch 32-128: README.)"""
    if channels_last or not torch.is_grad_enabled():
        x = _nhwc_strides(x, weight) if channels_last else x
        return torch.ops.aten.convolution_backward(dy, x, weight, None, stride, padding, (1, 1), False, (0, 0), 1,
                                                   [False, True, False])[1]
    n, c = dy.shape[:2]
    columns = _one_channel_columns(x, weight.shape[2:], stride, padding)  # again: kept, they cost 4x x's memory
    return torch.bmm(dy.reshape(n, c, -1), columns.transpose(1, 2)).sum(0).view_as(weight)


def _one_channel_route(x, weight, stride, padding, output_padding) -> bool:
    """Whether a one-channel route (col2im, or the columns' product) runs for a CPU tensor (``output_padding`` None:
    a convolution): one channel on the weight's second axis (a convolution's input, a transposed convolution's
    output), float32 or float64 (half types would round every tap's product before the taps are added), at most 4
    kernel taps per output value (the columns are that many times the output's size), at least
    ``CPU_ONE_CHANNEL_MIN_NUMEL`` values on the side with many channels (below it oneDNN's kernels made a training
    step faster), and where no gradient will be taken, a forward measured faster than oneDNN's
    (``_forward_route_wins``)."""
    kh, kw = weight.shape[2:]
    if weight.shape[1] != 1 or x.dtype not in (torch.float32, torch.float64) or kh * kw > 4 * stride[0] * stride[1]:
        return False
    if output_padding is not None:  # x is the side with many channels
        large = x.numel() >= _backend.CPU_ONE_CHANNEL_MIN_NUMEL
    else:
        h, w = output_size(x, weight, stride, padding, None)
        large = x.shape[0] * weight.shape[0] * h * w >= _backend.CPU_ONE_CHANNEL_MIN_NUMEL
    if not large:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return True
    return _forward_route_wins(x, weight, stride, padding, output_padding)


_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)  # not a subclass such as a fake tensor, which has no time


def _forward_route_wins(x, weight, stride, padding, output_padding) -> bool:
    """Whether a one-channel route runs where no gradient will be taken (sampling under ``torch.no_grad()``, a
    critic step's fakes): its forward measured against oneDNN's once per arguments (shapes, strides, dtype, threads)
    on this machine and kept in the autotune cache (``_autotune.cpu_choice``: every process then makes the same
    choice, and computes the same bits). Forward+backward the routes won on every machine measured; the forward alone
    took 0.27x oneDNN's time on an Intel AVX-512 VM and 1.4-1.9x on an AMD AVX2 one (README). Not measured, the route
    kept: while compiling or tracing, under torch.func transforms or forward-mode AD (``needs_reference``), a
    dispatch mode or a tensor subclass, with deterministic algorithms asked for, or with ``FASTGAN_AUTOTUNE=0``."""
    if (torch.compiler.is_compiling() or torch.jit.is_tracing() or _backend.needs_reference()
            or torch.are_deterministic_algorithms_enabled() or not _autotune.enabled()
            or type(x) not in _PLAIN_TENSORS or type(weight) not in _PLAIN_TENSORS
            or torch.utils._python_dispatch._get_current_dispatch_mode() is not None):
        return True
    transposed, channels_last = output_padding is not None, conv_channels_last(x, weight)
    if not transposed and channels_last:  # the route's forward is oneDNN's NHWC convolution itself
        return True
    exact = ("conv_act one-channel forward", x.shape, x.stride(), weight.shape, weight.stride(), x.dtype,
             tuple(stride), tuple(padding), tuple(output_padding) if transposed else None, torch.get_num_threads())

    def key() -> str:
        return (f"conv_act one-channel forward: {'transposed ' if transposed else ''}x {list(x.shape)} "
                f"{list(x.stride())} weight {list(weight.shape)} {list(weight.stride())} {str(x.dtype)[6:]} stride "
                f"{list(stride)} padding {list(padding)}"
                f"{f' output_padding {list(output_padding)}' if transposed else ''} threads {torch.get_num_threads()}")

    def measure() -> dict[str, float]:  # only on a miss: a choice made in the process is found by ``exact``
        if transposed:
            size = output_size(x, weight, stride, padding, output_padding)
            return _forward_times(lambda: _fold_conv_transpose2d(x, weight, stride, padding, size, channels_last),
                                  lambda: F.conv_transpose2d(x, weight, None, stride, padding, output_padding))
        return _forward_times(lambda: _from_one_channel_conv2d(x, weight, stride, padding, False),
                              lambda: F.conv2d(x, weight, None, stride, padding))

    return _autotune.cpu_choice(exact, key, measure) == "route"


def _forward_times(route, onednn, rounds: int = 5) -> dict[str, float]:
    """Milliseconds per call of ``route()`` and ``onednn()``: medians of ``rounds`` calls each, interleaved, after
    three of each (oneDNN makes its kernel at the first, and the allocator settles where a fresh output's memory comes
    from: after one of each, the choice went against the steady state in 3 of 5 processes, README), with autocast
    off (the arguments are already in the dtype the op computes in)."""
    times: dict[str, list[float]] = {"route": [], "onednn": []}
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        for _ in range(3):
            route()
            onednn()
        for _ in range(rounds):
            for fn, spent in zip((route, onednn), times.values()):
                start = time.perf_counter()
                fn()
                spent.append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(spent) for name, spent in times.items()}


def cpu_route(x, weight, stride, padding, output_padding) -> bool:
    """Whether the native path on the CPU runs a convolution of its own for these arguments (``output_padding`` None:
    a convolution): a matrix product (``_matrix_conv2d``, ``_matrix_conv_transpose2d``), col2im to one channel, or a
    convolution from one channel (the columns' product when contiguous, col2im for its input gradient when ``x``
    requires one; channels_last with neither it is oneDNN's all through), the one-channel ones from their size on
    (``_one_channel_route``). The matrix products beat oneDNN at every size measured, so a fused layer too small to
    gain from its epilogue keeps them (``fastgan.nn``). None run with oneDNN turned off
    (``torch.backends.mkldnn.flags(enabled=False)``), as in ``_native``."""
    if not torch.backends.mkldnn.enabled:
        return False
    if output_padding is None:
        matrix = tuple(padding) == (0, 0) and x.shape[2:] == weight.shape[2:]
    else:
        matrix = tuple(padding) == (0, 0) and tuple(output_padding) == (0, 0) and x.shape[2:] == (1, 1)
    if matrix or weight.shape[1] != 1:  # the one-channel routes: one channel on the weight's second axis
        return matrix
    own = output_padding is not None or x.requires_grad or not conv_channels_last(x, weight)
    return own and _one_channel_route(x, weight, stride, padding, output_padding)


def _bilinear_tangent(f, x, weight, x_t, w_t) -> torch.Tensor:
    """Forward-mode AD of a bilinear map ``f``: ``f(x_t, weight) + f(x, w_t)``, of the tangents given."""
    terms = [f(a, b) for a, b in ((x_t, weight), (x, w_t)) if a is not None and b is not None]
    return terms[0] if len(terms) == 1 else terms[0] + terms[1]


class _OneChannelConvTranspose(torch.autograd.Function):
    """A transposed convolution to one channel on the CPU (``_fold_conv_transpose2d``); its input gradient is a
    convolution from one channel (``_from_one_channel_conv2d``), its weight gradient ``_one_channel_weight_grad``;
    differentiable again; vmap and forward-mode AD work (the map is bilinear)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, stride, padding, output_padding):
        size = output_size(x, weight, stride, padding, output_padding)
        return _fold_conv_transpose2d(x, weight, stride, padding, size, conv_channels_last(x, weight))

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, ctx.stride, ctx.padding, ctx.output_padding = inputs
        ctx.save_for_backward(x, weight)
        ctx.save_for_forward(x, weight)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        channels_last, dx, dw = conv_channels_last(x, weight), None, None
        if ctx.needs_input_grad[0]:  # the adjoint: a convolution from the one channel of dy
            dx = _from_one_channel_conv2d(dy, weight, ctx.stride, ctx.padding, channels_last)
        if ctx.needs_input_grad[1]:
            dw = _one_channel_weight_grad(dy, x, weight, ctx.stride, ctx.padding, channels_last)
        return dx, dw, None, None, None

    @staticmethod
    def jvp(ctx, x_t, w_t, *_):
        x, weight = ctx.saved_tensors
        return _bilinear_tangent(lambda a, b: F.conv_transpose2d(a, b, None, ctx.stride, ctx.padding,
                                                                 ctx.output_padding), x, weight, x_t, w_t)


class _FromOneChannelConv(torch.autograd.Function):
    """A convolution from one input channel on the CPU (``_from_one_channel_conv2d``, ``_one_channel_weight_grad``),
    its input gradient (a transposed convolution to one channel) by ``_fold_conv_transpose2d``; differentiable again;
    vmap and forward-mode AD work."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, stride, padding):
        return _from_one_channel_conv2d(x, weight, stride, padding, conv_channels_last(x, weight))

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, ctx.stride, ctx.padding = inputs
        ctx.save_for_backward(x, weight)
        ctx.save_for_forward(x, weight)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        channels_last, dx, dw = conv_channels_last(x, weight), None, None
        if ctx.needs_input_grad[0]:
            dx = _fold_conv_transpose2d(dy, weight, ctx.stride, ctx.padding, x.shape[2:], channels_last)
        if ctx.needs_input_grad[1]:
            dw = _one_channel_weight_grad(x, dy, weight, ctx.stride, ctx.padding, channels_last)
        return dx, dw, None, None

    @staticmethod
    def jvp(ctx, x_t, w_t, *_):
        x, weight = ctx.saved_tensors
        return _bilinear_tangent(lambda a, b: F.conv2d(a, b, None, ctx.stride, ctx.padding), x, weight, x_t, w_t)


def _matrix_conv2d(x, weight, bias, padding) -> torch.Tensor | None:
    """A convolution whose kernel covers its whole unpadded input (a discriminator's last layer: one output pixel) as
    the matrix product it is (for the CPU, where oneDNN took 10-15x longer at such shapes: README); else None."""
    if padding != (0, 0) or x.shape[2:] != weight.shape[2:]:
        return None
    n, c_out, k = x.shape[0], weight.shape[0], x.shape[1] * x.shape[2] * x.shape[3]
    if conv_channels_last(x, weight):  # multiply in that order, without copies
        x, weight = x.permute(0, 2, 3, 1), weight.permute(0, 2, 3, 1)
    w = weight.reshape(c_out, k).t()
    y = torch.mm(x.reshape(n, k), w) if bias is None else torch.addmm(bias, x.reshape(n, k), w)
    return y.view(n, c_out, 1, 1)


def _matrix_conv_transpose2d(x, weight, bias, padding, output_padding) -> torch.Tensor | None:
    """A transposed convolution of a 1x1 input without padding (a generator's first layer, from the noise vector) as
    the matrix product it is (for the CPU, where oneDNN took 4x longer at such shapes: README); else None."""
    if padding != (0, 0) or output_padding != (0, 0) or x.shape[2:] != (1, 1):
        return None
    n, c_in, (c_out, kh, kw) = x.shape[0], x.shape[1], weight.shape[1:]
    if conv_channels_last(x, weight):  # PyTorch's output layout: channels_last
        y = torch.mm(x.reshape(n, c_in), weight.permute(0, 2, 3, 1).reshape(c_in, kh * kw * c_out))
        y = y.view(n, kh, kw, c_out).permute(0, 3, 1, 2)
    else:
        y = torch.mm(x.reshape(n, c_in), weight.reshape(c_in, c_out * kh * kw)).view(n, c_out, kh, kw)
    return y if bias is None else y + bias.view(1, c_out, 1, 1)


def _epilogue(impl: str, x: torch.Tensor) -> str:
    """The bias_act implementation after a native convolution: under "auto" on the CPU bias_act's own choice (the
    reference for the activations and dtypes its C++ kernel measured slower on), else the native kernel."""
    return "auto" if impl == "auto" and get_impl() == "auto" and x.device.type == "cpu" else "native"


# Set while the caller of a convolution op only reads its output until the backward (``output_read_only``).
_READ_ONLY_OUTPUT = contextvars.ContextVar("fastgan_read_only_output", default=False)


@contextlib.contextmanager
def output_read_only():
    """Inside, the convolution ops' callers promise to only read their outputs until the backward:
    ``fastgan.nn.FusedSequential`` around a layer whose output goes to one of fastgan's fused layers. On the CPU,
    "auto" then writes relu and lrelu over the convolution's own output (``_ActInPlace``), whose backward keeps
    it."""
    token = _READ_ONLY_OUTPUT.set(True)
    try:
        yield
    finally:
        _READ_ONLY_OUTPUT.reset(token)


class _ActInPlace(torch.autograd.Function):
    """relu or lrelu (alpha >= 0) of ``z + bias`` written over ``z``: on the CPU the native path's own convolution
    output, which nothing else holds. A fresh output cost more than the activation: in a DCGAN-28 step the in-place
    activation of the discriminator's first layer took about 4% off the step's time (README). The backward keeps the
    output (writing a mask of its signs instead cost more than it saved), so it runs only where the caller reads the
    output alone (``output_read_only``): written over in turn, the output would fail autograd's version check. The
    backward is PyTorch's own kernel on the output detached: the derivative is zero there, and PyTorch's formula
    would materialise those zeros and send them through the convolution in a penalty's double backward (bias_act's
    reason to be a custom op)."""

    @staticmethod
    def forward(ctx, z, bias, alpha: float | None):
        if bias is not None:
            z.add_(bias.view(1, -1, 1, 1))
        if alpha is None:
            z.relu_()
        else:
            F.leaky_relu_(z, alpha)
        ctx.mark_dirty(z)
        ctx.save_for_backward(z, bias)
        ctx.save_for_forward(z)
        ctx.alpha = alpha
        return z

    @staticmethod
    def backward(ctx, dy):
        y, bias = ctx.saved_tensors
        if ctx.alpha is None:
            dz = torch.ops.aten.threshold_backward(dy, y.detach(), 0)
        else:
            dz = torch.ops.aten.leaky_relu_backward(dy, y.detach(), ctx.alpha, True)
        return dz, _reduce_to_bias(dz, bias, 1) if ctx.needs_input_grad[1] else None, None

    @staticmethod
    def jvp(ctx, z_t, b_t, _):
        # z's tangent is never None here: autograd hands a dirty input without one in as zeros
        t = z_t if b_t is None else z_t + b_t.view(1, -1, 1, 1)
        act = ACTIVATIONS["relu" if ctx.alpha is None else "lrelu"].index
        return z_t.copy_(_act_grad_from_output(t, ctx.saved_tensors[0], act, ctx.alpha or 0.0))


def _native(x, weight, bias, stride, padding, output_padding, act, alpha, epilogue) -> torch.Tensor:
    """The native path of both ops (``output_padding`` None: a convolution): PyTorch's convolution (cuDNN, oneDNN)
    with the bias, or followed by ``bias_act(impl=epilogue)`` (on CUDA with the bias, where cuDNN would add it in a
    kernel of its own; on the CPU oneDNN adds it, and under "auto" with ``output_read_only`` relu and lrelu are
    written over the convolution's result, ``_ActInPlace``). On the CPU the shapes oneDNN handles badly run
    otherwise: a convolution that is a matrix product, as one; a large transposed convolution to one channel and a
    large convolution from one channel (``_one_channel_route``: ``_OneChannelConvTranspose``,
    ``_FromOneChannelConv``)."""
    transposed, linear, b = output_padding is not None, act == "linear", _cast(bias, x)
    conv_bias = b if linear else None  # without an activation PyTorch's convolution adds the bias itself
    # The CPU routes stand in for oneDNN's convolution; torch.backends.mkldnn.flags(enabled=False) turns them off.
    # torch.compile sees PyTorch's convolution (Dynamo does not trace autograd.Functions with a custom jvp).
    cpu = (x.device.type == "cpu" and torch.backends.mkldnn.enabled and x.numel() > 0
           and not torch.compiler.is_compiling())
    y = None
    if cpu and transposed:
        y = _matrix_conv_transpose2d(x, weight, conv_bias, padding, output_padding)
        if y is None and _one_channel_route(x, weight, stride, padding, output_padding):
            y = _OneChannelConvTranspose.apply(x, weight, stride, padding, output_padding)
            y = y if conv_bias is None else y + conv_bias.view(1, 1, 1, 1)
    elif cpu:
        y = _matrix_conv2d(x, weight, conv_bias, padding)
        if y is None and _one_channel_route(x, weight, stride, padding, None):
            y = _FromOneChannelConv.apply(x, weight, stride, padding)
            y = y if conv_bias is None else y + conv_bias.view(1, -1, 1, 1)
    if y is None:
        if x.device.type == "cpu":  # oneDNN adds the bias and reduces its gradient in its own passes, at no cost
            conv_bias, bias = b, None
        y = (F.conv_transpose2d(x, weight, conv_bias, stride, padding, output_padding) if transposed
             else F.conv2d(x, weight, conv_bias, stride, padding))
    if linear:
        return y
    if (cpu and epilogue == "auto" and _READ_ONLY_OUTPUT.get() and not y._is_view()
            and not torch._C._are_functorch_transforms_active()
            and not torch.jit.is_tracing()):  # the JIT records no in-place autograd.Function
        _, alpha_ = activation("conv2d_act", act, alpha)
        if act == "relu" or (act == "lrelu" and alpha_ >= 0):
            return _ActInPlace.apply(y, None if bias is None else b, alpha_ if act == "lrelu" else None)
    return bias_act(y, bias, 1, act, alpha, impl=epilogue)


def conv2d_act_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    act: str = "linear",
    alpha: float | None = None,
) -> torch.Tensor:
    """The specification of ``conv2d_act``: ``bias_act_ref(F.conv2d(x, weight), bias, act=act, alpha=alpha)``."""
    x, weight, bias = autocast_operands(x, weight, bias)
    stride_, padding_, _, _ = check_conv("conv2d_act", x, weight, bias, stride, padding, None, act, alpha)
    return bias_act_ref(F.conv2d(x, weight, None, stride_, padding_), bias, 1, act, alpha)


def conv_transpose2d_act_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    output_padding: IntPair = 0,
    act: str = "linear",
    alpha: float | None = None,
) -> torch.Tensor:
    """The specification of ``conv_transpose2d_act``: ``F.conv_transpose2d`` (no bias), then ``bias_act_ref``."""
    x, weight, bias = autocast_operands(x, weight, bias)
    stride_, padding_, out_pad, _ = check_conv(
        "conv_transpose2d_act", x, weight, bias, stride, padding, output_padding, act, alpha
    )
    y = F.conv_transpose2d(x, weight, None, stride_, padding_, out_pad)
    return bias_act_ref(y, bias, 1, act, alpha)


@autotuned("conv2d_act")
def conv2d_act(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    act: str = "linear",
    alpha: float | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """2-D convolution with bias and activation fused into its epilogue: ``act(conv2d(x, weight) + bias, alpha)``.

    Args:
        x: ``[N, C_in, H, W]``, float16, bfloat16, float32 (float64 on every implementation, for gradcheck);
            contiguous, channels_last (the output keeps it) or strided. ``N`` may be 0.
        weight: ``[C_out, C_in, kH, kW]`` in ``x``'s dtype and device (groups=1, dilation=1). Inside
            ``torch.autocast`` x, weight and bias are cast to the autocast dtype first, as ``F.conv2d`` does.
        bias: optional ``[C_out]``, cast to ``x.dtype``.
        stride, padding: ints or pairs, as ``torch.nn.functional.conv2d`` (zero padding).
        act, alpha: the activation of :func:`fastgan.ops.bias_act` (``linear``, ``relu``, ``lrelu``, ``tanh``, ...).
        impl: ``"auto"``, ``"ref"``, ``"triton"`` or ``"native"`` (see the module docstring).

    Returns:
        ``[N, C_out, H_out, W_out]`` in ``x``'s dtype. Differentiable w.r.t. ``x``, ``weight`` and ``bias`` to second
        order on every implementation (any order for linear/relu/lrelu), so R1 and WGAN-GP penalties work.
    """
    x, weight, bias = autocast_operands(x, weight, bias)
    stride_, padding_, _, alpha_ = check_conv("conv2d_act", x, weight, bias, stride, padding, None, act, alpha)
    epilogue = _epilogue(impl, x)
    impl = conv_impl(impl, x.device, "conv2d_act", act, x.dtype)
    return run_conv_act(impl, x, weight, bias, stride_, padding_, None, act, alpha, alpha_, epilogue)


@autotuned("conv_transpose2d_act")
def conv_transpose2d_act(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    output_padding: IntPair = 0,
    act: str = "linear",
    alpha: float | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """2-D transposed convolution with bias and activation fused into its epilogue.

    Args:
        x: ``[N, C_in, H, W]``, float16, bfloat16, float32 (float64 on every implementation, for gradcheck);
            contiguous, channels_last (the output keeps it) or strided. ``N`` may be 0.
        weight: ``[C_in, C_out, kH, kW]`` (``torch.nn.ConvTranspose2d``'s layout) in ``x``'s dtype and device
            (cast to the autocast dtype inside ``torch.autocast``).
        bias: optional ``[C_out]``, cast to ``x.dtype``.
        stride, padding, output_padding: ints or pairs, as ``torch.nn.functional.conv_transpose2d``
            (``output_padding < stride``; groups=1, dilation=1).
        act, alpha: the activation of :func:`fastgan.ops.bias_act`.
        impl: ``"auto"``, ``"ref"``, ``"triton"`` or ``"native"`` (see the module docstring).

    Returns:
        ``[N, C_out, (H-1)*stride - 2*padding + kH + output_padding, ...]`` in ``x``'s dtype. Differentiable w.r.t.
        ``x``, ``weight`` and ``bias`` to second order on every implementation (any order for linear/relu/lrelu).
    """
    op = "conv_transpose2d_act"
    x, weight, bias = autocast_operands(x, weight, bias)
    stride_, padding_, out_pad, alpha_ = check_conv(op, x, weight, bias, stride, padding, output_padding, act, alpha)
    epilogue = _epilogue(impl, x)
    impl = conv_impl(impl, x.device, op, act, x.dtype)
    return run_conv_act(impl, x, weight, bias, stride_, padding_, out_pad, act, alpha, alpha_, epilogue)


def run_conv_act(impl, x, weight, bias, stride, padding, output_padding, act, alpha, alpha_, epilogue="native"):
    """Both ops after their checks (``check_conv``'s stride, padding and ``alpha_``), ``impl`` resolved
    (``conv_impl``), ``output_padding`` None for a convolution; also the convolution of the conv + norm blocks."""
    transposed = output_padding is not None
    if impl == "ref":
        y = (F.conv_transpose2d(x, weight, None, stride, padding, output_padding) if transposed
             else F.conv2d(x, weight, None, stride, padding))
        return bias_act_ref(y, bias, 1, act, alpha)
    if impl == "native":
        return _native(x, weight, bias, stride, padding, output_padding, act, alpha, epilogue)
    ops = custom_ops("conv_act", "triton")
    fused = act in _GRAD_FROM_OUTPUT and (act != "lrelu" or alpha_ >= 0)  # the kernel's epilogue applies act
    args = (bias if fused else None, list(stride), list(padding), *([list(output_padding)] if transposed else []),
            ACTIVATIONS[act].index if fused else 0, alpha_ if fused else 0.0)
    y = ops.conv_transpose2d_act(x, weight, *args) if transposed else ops.conv2d_act(x, weight, *args)
    return y if fused else bias_act(y, bias, 1, act, alpha, impl="triton")


# --- autograd of the Triton custom ops -----------------------------------------------------------------------------

def _act_grad_from_output(dy: torch.Tensor, y: torch.Tensor | None, act: int, alpha: float) -> torch.Tensor:
    """``dy * f'(z)`` written in terms of ``y = f(z)`` as PyTorch's backward kernels write it (threshold_backward,
    tanh_backward, sigmoid_backward: the same selects and products, so NaN and inf propagate alike); differentiable,
    so the second order comes from autograd."""
    name, _ = activation_at(act)
    if name == "linear":
        return dy
    if name == "relu":
        return torch.where(y <= 0, torch.zeros((), dtype=dy.dtype, device=dy.device), dy)
    if name == "lrelu":
        return torch.where(y > 0, dy, dy * alpha)
    if name == "tanh":
        return dy * (1 - y * y)
    return dy * (1 - y) * y  # sigmoid


def _input_padding(size: int, out: int, k: int, s: int, p: int) -> int:
    """The output_padding that makes the transposed convolution of an ``out``-sized map ``size`` long again."""
    return size - ((out - 1) * s - 2 * p + k)


def triton_conv_grads(ops, dz, x, w, b, stride, padding, output_padding, needs_input_grad):
    """``(dx, dw, db)`` of the Triton convolution (``output_padding`` None) or transposed convolution from the
    gradient ``dz`` of its output before the activation; ``ops``: the Triton custom ops of this unit, by name."""
    transposed = output_padding is not None
    dx = dw = db = None
    if needs_input_grad[0]:
        if transposed:
            dx = ops.conv2d_act(dz, w, None, stride, padding, 0, 0.0)
        else:
            out_pad = [_input_padding(x.shape[2 + d], dz.shape[2 + d], w.shape[2 + d], stride[d], padding[d])
                       for d in range(2)]
            dx = ops.conv_transpose2d_act(dz, w, None, stride, padding, out_pad, 0, 0.0)
    if needs_input_grad[1]:
        weight_grad = ops.conv_transpose2d_weight_grad if transposed else ops.conv2d_weight_grad
        dw = weight_grad(dz.to(w.dtype), x, list(w.shape[2:]), stride, padding)
    if b is not None and needs_input_grad[2]:
        db = _reduce_to_bias(dz, b, 1)
    return dx, dw, db


# The Triton custom ops of this unit, by name, as ``custom_ops("conv_act", "triton")`` returns them.
_TRITON_OPS = ("conv2d_act", "conv_transpose2d_act", "conv2d_weight_grad", "conv_transpose2d_weight_grad")
_TritonOps = collections.namedtuple("_TritonOps", _TRITON_OPS)


def _register(*declared) -> None:
    """Fakes and autograd of the Triton custom ops: conv2d, conv_transpose2d and their weight gradients."""
    from ..kernels.triton import conv as kernels

    ops = _TritonOps(*declared)
    conv, conv_t, conv_wgrad, conv_t_wgrad = ops

    def fake_conv(x, w, b, stride, padding, act, alpha):
        return kernels.empty_output(x, w, stride, padding, None)

    def fake_conv_t(x, w, b, stride, padding, output_padding, act, alpha):
        return kernels.empty_output(x, w, stride, padding, output_padding)

    def setup(ctx, inputs, output):
        x, w, b, *ctx.args = inputs
        act = ctx.args[-2]
        ctx.save_for_backward(x, w, b, output if act != 0 else None)

    def grad_conv(ctx, dy):
        x, w, b, y = ctx.saved_tensors
        stride, padding, act, alpha = ctx.args
        dz = _act_grad_from_output(dy, y, act, alpha)
        dx, dw, db = triton_conv_grads(ops, dz, x, w, b, stride, padding, None, ctx.needs_input_grad)
        return dx, dw, db, None, None, None, None

    def grad_conv_t(ctx, dy):
        x, w, b, y = ctx.saved_tensors
        stride, padding, out_pad, act, alpha = ctx.args
        dz = _act_grad_from_output(dy, y, act, alpha)
        dx, dw, db = triton_conv_grads(ops, dz, x, w, b, stride, padding, out_pad, ctx.needs_input_grad)
        return dx, dw, db, None, None, None, None, None

    register_fake(conv, fake_conv)
    register_fake(conv_t, fake_conv_t)
    register_autograd(conv, grad_conv, setup_context=setup)
    register_autograd(conv_t, grad_conv_t, setup_context=setup)

    # dW(dz, x) is bilinear. For a convolution its vjp with a weight-shaped cotangent G is conv2d(x, G) w.r.t. dz and
    # conv_transpose2d(dz, G) w.r.t. x; for a transposed convolution the mirror images. Both are the Triton forward
    # ops, so every further order stays on Triton kernels.
    def fake_wgrad(transposed: bool):
        return lambda dz, x, kernel_size, stride, padding: kernels.empty_weight_grad(dz, x, kernel_size, transposed)

    def setup_wgrad(ctx, inputs, output):
        dz, x, _, ctx.stride, ctx.padding = inputs
        ctx.save_for_backward(dz, x)

    def make_grad_wgrad(transposed: bool):
        def grad_wgrad(ctx, g):
            dz, x = ctx.saved_tensors
            stride, padding = ctx.stride, ctx.padding
            g = g.to(dz.dtype)
            # output_padding of the transposed convolution mapping the smaller map (x for a transposed convolution,
            # dz for a convolution) back onto the larger one
            small, large = (x, dz) if transposed else (dz, x)
            out_pad = [_input_padding(large.shape[2 + d], small.shape[2 + d], g.shape[2 + d], stride[d], padding[d])
                       for d in range(2)]
            d_dz = d_x = None
            if ctx.needs_input_grad[0]:
                d_dz = (conv_t(x, g, None, stride, padding, out_pad, 0, 0.0) if transposed
                        else conv(x, g, None, stride, padding, 0, 0.0))
            if ctx.needs_input_grad[1]:
                d_x = (conv(dz, g, None, stride, padding, 0, 0.0) if transposed
                       else conv_t(dz, g, None, stride, padding, out_pad, 0, 0.0))
            return d_dz, d_x, None, None, None

        return grad_wgrad

    for op, transposed in ((conv_wgrad, False), (conv_t_wgrad, True)):
        register_fake(op, fake_wgrad(transposed))
        register_autograd(op, make_grad_wgrad(transposed), setup_context=setup_wgrad)


# Only Triton has custom ops here: the native path is PyTorch's convolution + the native bias_act epilogue.
declare_custom_ops("conv_act", _TRITON_OPS, "conv", _register)
