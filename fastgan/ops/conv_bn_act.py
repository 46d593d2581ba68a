"""conv2d_batch_norm_act / conv_transpose2d_batch_norm_act: a convolution (with bias) feeding batch normalization and
an activation, the block of DCGAN's generator (ConvTranspose2d -> BatchNorm2d -> ReLU) and discriminator
(Conv2d -> BatchNorm2d -> LeakyReLU).

The specification is the composition ``batch_norm_act(conv2d_act(x, weight, bias), ...)``, and that is what ``ref``
and ``native`` run (cuDNN has no statistics epilogue, so the norm re-reads the convolution's output once for its
statistics). On ``triton`` in training mode the convolution's epilogue also reduces each output channel's batch
statistics from its unrounded accumulator, per tile as (count, mean, M2), merged over tiles in a fixed order with
Chan's formula (the custom ops ``fastgan::conv2d_bn_stats_triton`` / ``conv_transpose2d_bn_stats_triton``, kernels in
fastgan/kernels/triton/conv.py, fakes and autograd below), so the norm makes one pass instead of two: the conv
output is written once and read once. Its gradients are those of batch statistics (the norm's backward is the
training-mode one), and the convolution's backward is the Triton conv's, so gradient penalties work through the
block. In evaluation mode batch norm is a per-channel affine map and every implementation runs the convolution then
``batch_norm_act``.

Built on the two units it fuses: their argument checks (``check_conv``, ``check_norm``), the convolution after its
checks (``run_conv_act``), the Triton convolution's gradients (``triton_conv_grads``) and the norm's custom-op path
taking precomputed statistics (``batch_norm_act_custom``).
"""

from __future__ import annotations

import torch

from .._autotune import autotuned
from .._backend import custom_ops, declare_custom_ops, register_autograd, register_fake
from .._dtypes import math_dtype
from .conv_act import (
    IntPair,
    autocast_operands,
    check_conv,
    conv_impl,
    run_conv_act,
    triton_conv_grads,
)
from .norm_act import batch_norm_act_custom, batch_norm_act_ref, check_norm, conditional_batch_norm_act

__all__ = ["conv2d_batch_norm_act", "conv_transpose2d_batch_norm_act", "conv_transpose2d_conditional_batch_norm_act"]


@autotuned("conv2d_batch_norm_act")
def conv2d_batch_norm_act(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    *,
    norm_weight: torch.Tensor | None,
    norm_bias: torch.Tensor | None,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    training: bool,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    act: str = "linear",
    alpha: float | None = None,
    num_batches_tracked: torch.Tensor | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """``batch_norm_act(conv2d(x, weight) + bias, norm_weight, norm_bias, running_mean, running_var, training, ...)``.

    Args:
        x, weight, bias, stride, padding: as :func:`fastgan.ops.conv2d_act` (``[N, C_in, H, W]``, ``[C_out, C_in,
            kH, kW]``, ``[C_out]``; float16, bfloat16, float32, float64; any layout, channels_last kept).
        norm_weight, norm_bias, running_mean, running_var, training, momentum, eps, act, alpha,
            num_batches_tracked: as :func:`fastgan.ops.batch_norm_act` (running statistics updated in place).
        impl: ``"auto"``, ``"ref"``, ``"triton"`` (statistics from the conv epilogue in training) or ``"native"``.

    Returns:
        ``[N, C_out, H_out, W_out]`` in ``x``'s dtype; differentiable w.r.t. x, weight, bias, norm_weight and
        norm_bias to second order on every implementation.
    """
    op = "conv2d_batch_norm_act"
    x, weight, bias = autocast_operands(x, weight, bias)
    stride_, padding_, _, _ = check_conv(op, x, weight, bias, stride, padding, None, "linear", None)
    impl = conv_impl(impl, x.device, op, act, x.dtype)
    if impl == "triton" and training:
        z, *stats = custom_ops("conv_bn_act", "triton").conv2d_bn_stats(x, weight, bias, list(stride_), list(padding_))
    else:
        z, stats = run_conv_act(impl, x, weight, bias, stride_, padding_, None, "linear", None, 0.0), None
    return _batch_norm(op, z, stats, norm_weight, norm_bias, running_mean, running_var, training, momentum, eps, act,
                       alpha, num_batches_tracked, impl)


@autotuned("conv_transpose2d_batch_norm_act")
def conv_transpose2d_batch_norm_act(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    output_padding: IntPair = 0,
    *,
    norm_weight: torch.Tensor | None,
    norm_bias: torch.Tensor | None,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    training: bool,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    act: str = "linear",
    alpha: float | None = None,
    num_batches_tracked: torch.Tensor | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """``batch_norm_act(conv_transpose2d(x, weight) + bias, ...)``: :func:`conv2d_batch_norm_act` for the
    transposed convolution (``weight`` ``[C_in, C_out, kH, kW]``, ``output_padding`` as
    :func:`fastgan.ops.conv_transpose2d_act`; on Triton the stride-``s`` convolution runs as ``s*s`` phases, each
    reducing the statistics of its own outputs)."""
    op = "conv_transpose2d_batch_norm_act"
    x, weight, bias = autocast_operands(x, weight, bias)
    stride_, padding_, out_pad, _ = check_conv(op, x, weight, bias, stride, padding, output_padding, "linear", None)
    impl = conv_impl(impl, x.device, op, act, x.dtype)
    if impl == "triton" and training:
        stats_op = custom_ops("conv_bn_act", "triton").conv_transpose2d_bn_stats
        z, *stats = stats_op(x, weight, bias, list(stride_), list(padding_), list(out_pad))
    else:
        z, stats = run_conv_act(impl, x, weight, bias, stride_, padding_, out_pad, "linear", None, 0.0), None
    return _batch_norm(op, z, stats, norm_weight, norm_bias, running_mean, running_var, training, momentum, eps, act,
                       alpha, num_batches_tracked, impl)


def conv_transpose2d_conditional_batch_norm_act(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    output_padding: IntPair = 0,
    *,
    scale: torch.Tensor,
    shift: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    training: bool,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    act: str = "linear",
    alpha: float | None = None,
    num_batches_tracked: torch.Tensor | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """``conditional_batch_norm_act(conv_transpose2d(x, weight) + bias, scale, shift, ...)``: a conditional
    generator's block (per-sample ``scale`` / ``shift`` ``[N, C_out]``, as
    :func:`fastgan.ops.conditional_batch_norm_act`). On ``triton`` in training mode the batch statistics come from
    the convolution's epilogue, as in :func:`conv_transpose2d_batch_norm_act`; differentiable w.r.t. x, weight, bias,
    scale and shift to second order."""
    op = "conv_transpose2d_conditional_batch_norm_act"
    x, weight, bias = autocast_operands(x, weight, bias)
    stride_, padding_, out_pad, _ = check_conv(op, x, weight, bias, stride, padding, output_padding, "linear", None)
    # Chosen as the unconditional block is (the same kernels; autotuned and CPU choices are recorded under its name).
    impl = conv_impl(impl, x.device, "conv_transpose2d_batch_norm_act", act, x.dtype)
    if impl == "triton" and training:
        stats_op = custom_ops("conv_bn_act", "triton").conv_transpose2d_bn_stats
        z, *stats = stats_op(x, weight, bias, list(stride_), list(padding_), list(out_pad))
    else:
        z, stats = run_conv_act(impl, x, weight, bias, stride_, padding_, out_pad, "linear", None, 0.0), None
    return conditional_batch_norm_act(z, scale, shift, running_mean, running_var, training, momentum, eps, act, alpha,
                                      impl, num_batches_tracked, stats)


def _batch_norm(op, z, stats, weight, bias, running_mean, running_var, training, momentum, eps, act, alpha, nbt, impl):
    """``batch_norm_act`` of the conv output ``z`` (checks naming ``op``); ``stats``: z's (mean, biased variance)
    from the conv epilogue, or None."""
    spec, alpha_ = check_norm(op, z, weight, bias, running_mean, running_var, training, eps, act, alpha)
    if impl == "ref":
        return batch_norm_act_ref(z, weight, bias, running_mean, running_var, training, momentum, eps, act, alpha, nbt)
    return batch_norm_act_custom(z, weight, bias, running_mean, running_var, training, momentum, eps, spec, alpha_,
                                 impl, nbt, stats)


# --- the Triton statistics ops: fakes and autograd -----------------------------------------------------------------


def _register(conv_stats, conv_t_stats) -> None:
    """Fakes and autograd of the statistics variants of the Triton convolutions: ``(z, mean, var)`` with ``z`` the
    linear conv output; mean/var carry no gradient (the batch norm's backward accounts for them), so z's gradient is
    the plain convolution's."""
    from ..kernels.triton import conv as kernels

    conv_ops = custom_ops("conv_act", "triton")

    def fake_stats(x, w, b, stride, padding, output_padding=None):
        z = kernels.empty_output(x, w, stride, padding, output_padding)
        stat = x.new_empty(z.shape[1], dtype=math_dtype(x.dtype))
        return z, stat, torch.empty_like(stat)

    def setup(ctx, inputs, output):
        x, w, b, ctx.stride, ctx.padding, *output_padding = inputs
        ctx.output_padding = output_padding[0] if output_padding else None
        ctx.mark_non_differentiable(output[1], output[2])
        ctx.save_for_backward(x, w, b)

    def grad(ctx, dz, _mean, _var):
        x, w, b = ctx.saved_tensors
        grads = triton_conv_grads(conv_ops, dz, x, w, b, ctx.stride, ctx.padding, ctx.output_padding,
                                  ctx.needs_input_grad)
        return *grads, None, None, *(() if ctx.output_padding is None else (None,))

    for op in (conv_stats, conv_t_stats):
        register_fake(op, fake_stats)
        register_autograd(op, grad, setup_context=setup)


declare_custom_ops("conv_bn_act", ("conv2d_bn_stats", "conv_transpose2d_bn_stats"), "conv", _register)
