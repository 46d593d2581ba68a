"""conv2d_batch_norm_act / conv_transpose2d_batch_norm_act: a convolution (with bias) feeding batch normalization and
an activation, the block of DCGAN's generator (ConvTranspose2d -> BatchNorm2d -> ReLU) and discriminator
(Conv2d -> BatchNorm2d -> LeakyReLU).

The specification is the composition ``batch_norm_act(conv2d_act(x, weight, bias), ...)``, and that is what ``ref``
and ``native`` run (cuDNN has no statistics epilogue, so the norm re-reads the convolution's output once for its
statistics). On ``triton`` in training mode the convolution's epilogue also reduces each output channel's batch
statistics from its unrounded accumulator, per tile as (count, mean, M2), merged over tiles in a fixed order with
Chan's formula (``fastgan::conv2d_bn_stats_triton``, fastgan/kernels/triton/conv.py), so the norm makes one pass
instead of two: the conv output is written once and read once. Its gradients are those of batch statistics (the
norm's backward is the training-mode one), and the convolution's backward is the Triton conv's, so gradient
penalties work through the block. In evaluation mode batch norm is a per-channel affine map and every
implementation runs the convolution then ``batch_norm_act``.
"""

from __future__ import annotations

import torch

from .._autotune import autotuned
from .._backend import custom_ops
from .conv_act import IntPair, _autocast, _check, _resolve, conv2d_act, conv_transpose2d_act
from .norm_act import _batch_norm_act, batch_norm_act_ref
from .norm_act import _check as _check_norm

__all__ = ["conv2d_batch_norm_act", "conv_transpose2d_batch_norm_act"]


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
    x, weight, bias = _autocast(x, weight, bias)
    stride_, padding_, _, _ = _check(op, x, weight, bias, stride, padding, None, "linear", None)
    impl = _resolve(impl, x.device, op)
    if impl == "triton" and training:
        z, *stats = custom_ops("conv_act", "triton").conv2d_bn_stats(x, weight, bias, list(stride_), list(padding_))
    else:
        z, stats = conv2d_act(x, weight, bias, stride_, padding_, impl=impl), None
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
    x, weight, bias = _autocast(x, weight, bias)
    stride_, padding_, out_pad, _ = _check(op, x, weight, bias, stride, padding, output_padding, "linear", None)
    impl = _resolve(impl, x.device, op)
    if impl == "triton" and training:
        stats_op = custom_ops("conv_act", "triton").conv_transpose2d_bn_stats
        z, *stats = stats_op(x, weight, bias, list(stride_), list(padding_), list(out_pad))
    else:
        z, stats = conv_transpose2d_act(x, weight, bias, stride_, padding_, out_pad, impl=impl), None
    return _batch_norm(op, z, stats, norm_weight, norm_bias, running_mean, running_var, training, momentum, eps, act,
                       alpha, num_batches_tracked, impl)


def _batch_norm(op, z, stats, weight, bias, running_mean, running_var, training, momentum, eps, act, alpha, nbt, impl):
    """``batch_norm_act`` of the conv output ``z`` (checks naming ``op``); ``stats``: z's (mean, biased variance)
    from the conv epilogue, or None."""
    spec, alpha_ = _check_norm(op, z, weight, bias, running_mean, running_var, training, eps, act, alpha)
    if impl == "ref":
        return batch_norm_act_ref(z, weight, bias, running_mean, running_var, training, momentum, eps, act, alpha, nbt)
    return _batch_norm_act(z, weight, bias, running_mean, running_var, training, momentum, eps, spec, alpha_, impl,
                           nbt, stats)
