"""batch_norm_act / instance_norm_act: normalization followed by an activation, fused, with running statistics.

The whole story of both ops is here: the references (the specification: ``F.batch_norm`` / ``F.instance_norm``
then an activation of ``fastgan.ops.bias_act.ACTIVATIONS``), argument checks, running-statistics updates, and the
autograd formulas shared by the compiled (``fastgan::norm_act*``, csrc/norm_act.cpp + .cu) and Triton
(``fastgan::norm_act*_triton``, fastgan/kernels/triton/norm_act.py) custom ops.

One pair of custom ops serves both norms. A *statistic group* is a channel (batch norm) or a (sample, channel) pair
(instance norm); ``use_input_stats`` says whether the groups' statistics come from ``x`` (training) or are the
running statistics (evaluation, where both norms are the same per-channel affine map).

- forward ``norm_act(x, w, b, running_mean, running_var, use_input_stats, instance, eps, act, alpha)
  -> (y, mean, var)``: pass 1 reduces per-group mean and biased variance (float32; float64 for float64 inputs)
  from sums of values shifted by one of the group's values, per fixed-size chunk (accumulated in double on CPU and
  in Triton, in float32 block trees on CUDA), chunks merged with Chan's formula in a fixed order: deterministic, and
  no catastrophic cancellation for data far from zero; pass 2 writes ``y = act((x - mean) * rsqrt(var + eps) * w
  + b)``.
  ``mean``/``var`` come back so Python can update the running statistics exactly as PyTorch does. Given ``mean``
  and ``var`` with ``use_input_stats`` (batch norm only) are x's batch statistics reduced by the convolution that
  wrote ``x`` (fastgan/ops/conv_bn_act.py): pass 1 is skipped, the gradients stay those of batch statistics.
- backward ``norm_act_backward(dy, x, w, b, mean, var, ...) -> (dx, dw, db)`` (``dw``/``db`` float32 per
  channel): pass 1 recomputes ``z`` and reduces ``sum(dz)`` and ``sum(dz * xhat)`` per group, pass 2 writes ``dx``.
- The backward's own backward (second order, for gradient penalties) is composed from the reference in PyTorch
  ops (``torch.func.vjp`` of the reference's vjp, in float32 or float64): correct and differentiable to any order,
  not fast.
- ``conditional_batch_norm_act`` (class-conditional batch norm: per-channel batch statistics, a per-sample ``[N, C]``
  scale and shift): its own op pair, ``fastgan::conditional_norm_act*`` (compiled) and
  ``fastgan::conditional_norm_act*_triton``, the same kernels with the affine map read per (sample, channel): the
  forward reduces per channel as batch norm; the backward reduces per (sample, channel) group (dscale / dshift are
  the per-group sums of dz * xhat and dz), and dx takes their scale-weighted sums over the samples.
- running statistics ``norm_act_update_stats(running_mean!, running_var!, num_batches_tracked!?, mean, var,
  momentum?, count, batch)``: one small kernel updates both buffers in place (``lerp`` towards the unbiased
  statistics, averaged over the samples for instance norm), as PyTorch's batch norm kernel does, and advances the
  step counter (momentum=None weighs by it on the device); not differentiable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._autotune import autotuned
from .._backend import (
    checked_on_failure,
    custom_ops,
    declare_custom_ops,
    register_autograd,
    register_fake,
    resolve_impl,
)
from .._dtypes import check_dtype, math_dtype
from .bias_act import Activation, activation, activation_at

__all__ = [
    "batch_norm_act",
    "batch_norm_act_ref",
    "conditional_batch_norm_act",
    "conditional_batch_norm_act_ref",
    "instance_norm_act",
    "instance_norm_act_ref",
]

_BN = "batch_norm_act"
_IN = "instance_norm_act"
_CBN = "conditional_batch_norm_act"


# --- argument checks -------------------------------------------------------------------------------------------


def _check_vector(op: str, name: str, t: torch.Tensor | None, x: torch.Tensor) -> None:
    if t is None:
        return
    if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.shape[0] != x.shape[1]:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{op}: {name} must be 1-D of length x.shape[1] = {x.shape[1]} (channels), got {shape}")
    if t.device != x.device:
        raise ValueError(f"{op}: {name} is on {t.device} but x is on {x.device}; move it to x's device")
    check_dtype(op, name, t)


def _check_param_dtypes(op: str, x: torch.Tensor, params: dict[str, torch.Tensor | None]) -> None:
    """F.batch_norm's dtype contract, kept by every implementation: the affine parameters and running statistics
    share one dtype, x's or float32 (for float16/bfloat16 x: a half-precision or autocast input to a float32 module).
    PyTorch refuses other mixes, some with an internal assert; here every implementation refuses them by name."""
    given = {name: t.dtype for name, t in params.items() if t is not None}
    allowed = (x.dtype, torch.float32) if x.dtype in (torch.float16, torch.bfloat16) else (x.dtype,)
    if len(set(given.values())) > 1 or not set(given.values()) <= set(allowed):
        got = ", ".join(f"{name} {str(dtype).replace('torch.', '')}" for name, dtype in given.items())
        want = " or ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(
            f"{op}: weight, bias, running_mean and running_var must share one dtype, {want} for x of "
            f"{str(x.dtype).replace('torch.', '')} (as F.batch_norm), got {got}; cast them with .to()"
        )


def check_norm(
    op: str,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    use_input_stats: bool,
    eps: float,
    act: str,
    alpha: float | None,
) -> tuple[Activation, float]:
    """Validate arguments the same way for every implementation; return (activation, alpha)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: x must be a torch.Tensor, got {type(x).__name__}")
    check_dtype(op, "x", x)
    min_dim = 3 if op == _IN else 2
    if x.dim() < min_dim:
        raise ValueError(
            f"{op}: x must have shape [N, C{', *spatial' if op == _IN else ', ...'}] "
            f"(at least {min_dim} dims), got {tuple(x.shape)}"
        )
    params = {"weight": weight, "bias": bias, "running_mean": running_mean, "running_var": running_var}
    for name, t in params.items():
        _check_vector(op, name, t, x)
    _check_param_dtypes(op, x, params)
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{op}: pass both running_mean and running_var, or neither")
    if not use_input_stats and running_mean is None:
        what = "use_input_stats=False" if op == _IN else "training=False"
        raise ValueError(f"{op}: {what} normalizes with the running statistics, so running_mean/var must be given")
    if not eps > 0:
        raise ValueError(f"{op}: eps must be > 0, got {eps}")
    if use_input_stats:
        per_group = x.shape[2:].numel() * (1 if op == _IN else x.shape[0])
        if per_group == 1 and x.numel():
            what = "spatial element" if op == _IN else "value per channel"
            raise ValueError(
                f"{op}: expected more than 1 {what} when normalizing with batch statistics, got input of shape "
                f"{tuple(x.shape)}; use a larger input or evaluation mode"
            )
    return activation(op, act, alpha)


def _momentum_factor(
    op: str, training: bool, running_mean: torch.Tensor | None, momentum: float | None, nbt: torch.Tensor | None
) -> float:
    """The references' running-average factor of this step, counting the step in ``num_batches_tracked`` (as
    nn.BatchNorm, which reads the counter on the host for momentum=None; the custom ops' kernel counts on the
    device)."""
    if _tracking(op, training, running_mean, momentum, nbt) and nbt is not None:
        nbt.add_(1)
        if momentum is None:
            return 1.0 / float(nbt)
    return 0.0 if momentum is None else float(momentum)


def _tracking(op: str, training: bool, running_mean: torch.Tensor | None, momentum: float | None,
              nbt: torch.Tensor | None) -> bool:
    """Whether a custom-op call updates the running statistics (its kernel then advances ``num_batches_tracked`` and,
    for momentum=None, weighs by it on the device: no host read)."""
    tracking = training and running_mean is not None
    if tracking and momentum is None and nbt is None:
        raise ValueError(f"{op}: momentum=None (cumulative moving average) needs num_batches_tracked= (the step "
                         "counter)")
    return tracking


def check_conditional(
    x: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    training: bool,
    eps: float,
    act: str,
    alpha: float | None,
) -> tuple[Activation, float]:
    """``check_norm`` for ``conditional_batch_norm_act``, plus its per-sample ``scale`` / ``shift`` ``[N, C]``."""
    spec, alpha_ = check_norm(_CBN, x, None, None, running_mean, running_var, training, eps, act, alpha)
    for name, t in (("scale", scale), ("shift", shift)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or tuple(t.shape) != tuple(x.shape[:2]):
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{_CBN}: {name} must be [N, C] = {tuple(x.shape[:2])} (one row per sample, e.g. an "
                             f"embedding of the labels), got {shape}")
        if t.device != x.device:
            raise ValueError(f"{_CBN}: {name} is on {t.device} but x is on {x.device}; move it to x's device")
        check_dtype(_CBN, name, t)
    _check_param_dtypes(_CBN, x, {"scale": scale, "shift": shift, "running_mean": running_mean,
                                  "running_var": running_var})
    return spec, alpha_


def _per_sample_affine(xhat: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, spec: Activation,
                       alpha_: float, dtype: torch.dtype) -> torch.Tensor:
    """``act(xhat * scale[n, c] + shift[n, c])`` in float32 (float64 for float64), rounded once to ``dtype``."""
    math = math_dtype(dtype)
    shape = [*scale.shape] + [1] * (xhat.dim() - 2)
    z = torch.addcmul(shift.to(math).view(shape), xhat.to(math), scale.to(math).view(shape))
    return spec.fn(z, alpha_).to(dtype)


# --- references: the specification ------------------------------------------------------------------------------


def _ones_if_only_bias(weight: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor | None:
    """A weight of ones where only a bias is given: the same function, and PyTorch's batch norm cannot take its
    second derivative with a bias but no weight ("Expected a proper Tensor but got None")."""
    return torch.ones_like(bias) if weight is None and bias is not None else weight


def batch_norm_act_ref(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    training: bool,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    act: str = "linear",
    alpha: float | None = None,
    num_batches_tracked: torch.Tensor | None = None,
    checked: bool = True,
) -> torch.Tensor:
    """The specification of ``batch_norm_act``: ``F.batch_norm`` then the activation, in plain PyTorch.
    ``checked=False``: the arguments are checked only if PyTorch refuses them (``checked_on_failure``: a small fused
    layer's reference)."""

    def check():
        return check_norm(_BN, x, weight, bias, running_mean, running_var, training, eps, act, alpha)

    def run():
        spec, alpha_ = check() if checked else activation(_BN, act, alpha)
        factor = _momentum_factor(_BN, training, running_mean, momentum, num_batches_tracked)
        if x.shape[1] == 0:  # no channels: nothing to normalize (F.batch_norm fails on meta tensors here)
            return spec.fn(x.clone(), alpha_)
        w = _ones_if_only_bias(weight, bias)
        return spec.fn(F.batch_norm(x, running_mean, running_var, w, bias, training, factor, eps), alpha_)

    return run() if checked else checked_on_failure(run, check)


def conditional_batch_norm_act_ref(
    x: torch.Tensor,
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
) -> torch.Tensor:
    """The specification of ``conditional_batch_norm_act``: ``F.batch_norm`` without affine parameters, then
    ``act(xhat * scale[n, c] + shift[n, c])`` in float32 (float64 for float64), in plain PyTorch."""
    spec, alpha_ = check_conditional(x, scale, shift, running_mean, running_var, training, eps, act, alpha)
    factor = _momentum_factor(_CBN, training, running_mean, momentum, num_batches_tracked)
    if x.shape[1] == 0:
        return spec.fn(x.clone(), alpha_)
    xhat = F.batch_norm(x, running_mean, running_var, None, None, training, factor, eps)
    return _per_sample_affine(xhat, scale, shift, spec, alpha_, x.dtype)


def instance_norm_act_ref(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    running_mean: torch.Tensor | None = None,
    running_var: torch.Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    act: str = "linear",
    alpha: float | None = None,
    checked: bool = True,
) -> torch.Tensor:
    """The specification of ``instance_norm_act``: ``F.instance_norm`` then the activation, in plain PyTorch.
    ``checked=False`` as in ``batch_norm_act_ref``."""

    def check():
        return check_norm(_IN, x, weight, bias, running_mean, running_var, use_input_stats, eps, act, alpha)

    def run():
        spec, alpha_ = check() if checked else activation(_IN, act, alpha)
        if x.shape[1] == 0 or x.shape[0] == 0:
            # Nothing to normalize, and no statistics to average into the running ones: they are left as they are,
            # on every implementation (F.instance_norm writes NaN, the mean of no samples, or fails for float16
            # buffers).
            return spec.fn(x.clone(), alpha_)
        w = _ones_if_only_bias(weight, bias)
        if x.shape[0] == 1 or not use_input_stats:
            # The same function (and running-statistics update) as F.instance_norm here, computed by F.batch_norm: in
            # PyTorch 2.13, F.instance_norm's CPU backward returns wrong input gradients for a batch of 1 when the
            # incoming gradient is channels_last (tests/test_norm_act.py::test_reference_avoids_instance_norm_bug).
            y = F.batch_norm(x, running_mean, running_var, w, bias, use_input_stats, float(momentum), eps)
        else:
            y = F.instance_norm(x, running_mean, running_var, w, bias, use_input_stats, float(momentum), eps)
            if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
                y = y.contiguous(memory_format=torch.channels_last)  # F.instance_norm returns NCHW; keep the layout
        return spec.fn(y, alpha_)

    return run() if checked else checked_on_failure(run, check)


# --- public ops -------------------------------------------------------------------------------------------------


@autotuned("batch_norm_act")
def batch_norm_act(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    training: bool,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    act: str = "linear",
    alpha: float | None = None,
    impl: str = "auto",
    num_batches_tracked: torch.Tensor | None = None,
) -> torch.Tensor:
    """Batch normalization then an activation: ``act(F.batch_norm(x, ...), alpha)``, fused.

    Args:
        x: ``[N, C, *]`` float16, bfloat16, float32 (float64 too, for gradcheck); contiguous or channels_last (kept as
            given), anything else is computed contiguous.
        weight, bias: optional ``[C]`` affine parameters; with the running statistics, of one dtype: ``x``'s, or
            float32 for a float16/bfloat16 ``x`` (``F.batch_norm``'s rule; others raise TypeError). Math in float32.
        running_mean, running_var: optional ``[C]`` buffers. With ``training=True`` they are updated in place exactly
            as ``F.batch_norm`` does (unbiased variance); with ``training=False`` they normalize ``x``.
        training: normalize with the batch's statistics (per channel over N and the spatial dims).
        momentum: running-average factor; ``None`` means a cumulative average, which needs ``num_batches_tracked``.
        eps: added to the variance.
        act, alpha: an activation of ``fastgan.ops.ACTIVATIONS`` and its parameter (lrelu slope, elu alpha).
        impl: ``"auto"``, ``"ref"``, ``"triton"`` or ``"native"`` (see ``fastgan.available_impls()``).
        num_batches_tracked: optional step counter (a 0-dim long tensor, as nn.BatchNorm2d's buffer), incremented
            in place when ``training`` and running statistics are given.

    Returns:
        ``y`` shaped, typed and laid out like ``x``. Differentiable w.r.t. ``x``, ``weight`` and ``bias`` to second
        order on every implementation (any order on ``ref``; the compiled and Triton second order runs the reference
        in PyTorch ops). Batch statistics are float32, reduced deterministically (fixed chunking and merge order).
    """
    spec, alpha_ = check_norm(_BN, x, weight, bias, running_mean, running_var, training, eps, act, alpha)
    impl = resolve_impl(impl, x.device, _BN, act, x.dtype)
    if impl == "ref":
        return batch_norm_act_ref(
            x, weight, bias, running_mean, running_var, training, momentum, eps, act, alpha, num_batches_tracked
        )
    return batch_norm_act_custom(x, weight, bias, running_mean, running_var, training, momentum, eps, spec, alpha_,
                                 impl, num_batches_tracked, None)


def batch_norm_act_custom(
    x, weight, bias, running_mean, running_var, training: bool, momentum, eps: float, spec: Activation, alpha_: float,
    impl: str, num_batches_tracked, batch_stats: tuple[torch.Tensor, torch.Tensor] | None,
) -> torch.Tensor:
    """``batch_norm_act`` on a custom-op implementation (``native`` or ``triton``), arguments checked by
    ``check_norm``. ``batch_stats``: x's own per-channel (mean, biased variance), already reduced by whoever wrote
    ``x`` (the convolution epilogue of fastgan/ops/conv_bn_act.py), so the op skips its statistics pass; the
    gradients are still those of batch statistics."""
    tracking = _tracking(_BN, training, running_mean, momentum, num_batches_tracked)
    if tracking and batch_stats is None and x.numel():
        # The Function's forward sees no tangents and torch.func refuses it: the op's own check must run first.
        custom_ops("norm_act", impl).norm_act_train.refuse_lost_derivatives((x, weight, bias))
        return _TrainingBatchNormAct.apply(x, weight, bias, running_mean, running_var, num_batches_tracked,
                                           None if momentum is None else float(momentum), float(eps), spec.index,
                                           alpha_, impl)
    if training:
        stats = batch_stats if batch_stats is not None else (None, None)
    else:
        stats = (running_mean, running_var)
    forward = custom_ops("norm_act", impl).norm_act
    y, mean, var = forward(x, weight, bias, *stats, training, False, float(eps), spec.index, alpha_)
    if tracking:
        _update_running_stats(x, running_mean, running_var, num_batches_tracked, mean, var, momentum, 1, impl)
    return y


def conditional_batch_norm_act(
    x: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    training: bool,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    act: str = "linear",
    alpha: float | None = None,
    impl: str = "auto",
    num_batches_tracked: torch.Tensor | None = None,
    batch_stats: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Conditional batch normalization then an activation: ``act(xhat * scale[n, c] + shift[n, c], alpha)``.

    ``xhat`` is x normalized with per-channel batch statistics (or the running statistics), exactly as
    :func:`batch_norm_act` without affine parameters; the affine map is per *sample*: rows of ``scale`` / ``shift``
    typically come from an embedding of each sample's class (de Vries et al. 2017; Miyato & Koyama 2018), which is
    how a class-conditional generator is told what to draw.

    Args:
        x: ``[N, C, *]`` float16, bfloat16, float32 (float64 too, for gradcheck); contiguous or channels_last (kept).
        scale, shift: ``[N, C]``, of one dtype with the running statistics: x's, or float32 for float16/bfloat16 x.
        running_mean, running_var, training, momentum, eps, act, alpha, impl, num_batches_tracked: as for
            :func:`batch_norm_act`.
        batch_stats: optional x's own per-channel (mean, biased variance), reduced by the convolution that wrote x
            (``training`` only, custom-op implementations only): the statistics pass is skipped.

    Returns:
        ``y`` shaped, typed and laid out like ``x``. Differentiable w.r.t. ``x``, ``scale`` and ``shift`` to second
        order on every implementation (any order on ``ref``; on ``native`` and ``triton`` the second order runs the
        reference in PyTorch ops). On ``native`` and ``triton`` one fused op, ``fastgan::conditional_norm_act`` (C++
        on CPU, CUDA on GPU) / ``fastgan::conditional_norm_act_triton``: batch norm's statistics pass, then one
        elementwise pass applying the per-sample map and the activation; its backward reduces per (sample, channel),
        which gives the ``[N, C]`` gradients.
    """
    spec, alpha_ = check_conditional(x, scale, shift, running_mean, running_var, training, eps, act, alpha)
    impl = resolve_impl(impl, x.device, _BN, "linear", x.dtype)
    if batch_stats is not None and (impl == "ref" or not training):
        raise ValueError(f"{_CBN}: batch_stats (statistics from a convolution epilogue) need training=True and the "
                         f"native or triton implementation, got training={training}, impl={impl!r}")
    if impl == "ref":
        return conditional_batch_norm_act_ref(
            x, scale, shift, running_mean, running_var, training, momentum, eps, act, alpha, num_batches_tracked
        )
    if x.shape[1] == 0:
        return spec.fn(x.clone(), alpha_)
    tracking = _tracking(_CBN, training, running_mean, momentum, num_batches_tracked)
    stats = (running_mean, running_var) if not training else batch_stats or (None, None)
    forward = custom_ops("conditional_norm_act", impl).conditional_norm_act
    y, mean, var = forward(x, scale, shift, *stats, training, float(eps), spec.index, alpha_)
    if tracking:
        _update_running_stats(x, running_mean, running_var, num_batches_tracked, mean, var, momentum, 1, impl)
    return y


@autotuned("instance_norm_act")
def instance_norm_act(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    running_mean: torch.Tensor | None = None,
    running_var: torch.Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    act: str = "linear",
    alpha: float | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """Instance normalization then an activation: ``act(F.instance_norm(x, ...), alpha)``, fused.

    Args:
        x: ``[N, C, *spatial]`` float16, bfloat16, float32 (float64 too); contiguous or channels_last (kept).
        weight, bias: optional ``[C]`` affine parameters.
        running_mean, running_var: optional ``[C]`` buffers; with ``use_input_stats=True`` they are updated in place
            with the batch average of the per-sample statistics (unbiased variance), as ``F.instance_norm`` does.
        use_input_stats: normalize each (sample, channel) over its spatial dims; ``False``: with the running stats.
        momentum, eps, act, alpha, impl: as for :func:`batch_norm_act`.

    Returns:
        ``y`` shaped, typed and laid out like ``x``; gradients as for :func:`batch_norm_act`.
    """
    spec, alpha_ = check_norm(_IN, x, weight, bias, running_mean, running_var, use_input_stats, eps, act, alpha)
    impl = resolve_impl(impl, x.device, _IN, act, x.dtype)
    if impl == "ref":
        return instance_norm_act_ref(
            x, weight, bias, running_mean, running_var, use_input_stats, momentum, eps, act, alpha
        )
    stats = (None, None) if use_input_stats else (running_mean, running_var)
    forward = custom_ops("norm_act", impl).norm_act
    y, mean, var = forward(x, weight, bias, *stats, use_input_stats, True, float(eps), spec.index, alpha_)
    if use_input_stats and running_mean is not None:
        _update_running_stats(x, running_mean, running_var, None, mean, var, float(momentum), x.shape[0], impl)
    return y


def _update_running_stats(
    x, running_mean, running_var, num_batches_tracked, mean, var, momentum: float | None, batch: int, impl: str
) -> None:
    """``running = (1 - factor) * running + factor * stat`` in place, ``factor`` the momentum (or, for None, 1 / the
    steps counted), with the unbiased variance of ``x``'s statistic groups and, for instance norm (``batch`` > 1),
    the batch average of the per-sample statistics (as F.instance_norm), then ``num_batches_tracked`` + 1: one
    kernel, ``fastgan::norm_act_update_stats``, where nn.BatchNorm launches two (its batch norm and the add)."""
    if not x.numel():  # an empty batch changes no statistic but counts as a step (nn.BatchNorm)
        if num_batches_tracked is not None:
            num_batches_tracked.add_(1)
        return
    count = x.numel() // (x.shape[1] * batch)
    custom_ops("norm_act", impl).norm_act_update_stats(running_mean, running_var, num_batches_tracked, mean, var,
                                                       None if momentum is None else float(momentum), count, batch)


# --- custom-op plumbing shared by the native and Triton implementations ------------------------------------------

def _normalized_ref(x, w, b, mean, var, use_input_stats: bool, instance: bool, eps: float, act: int, alpha: float):
    """The reference forward in x's dtype: batch statistics from ``x``, else ``mean``/``var`` as constants.

    Built from elementary ops, not F.batch_norm / F.instance_norm, so the second order built on it is itself
    differentiable: PyTorch's batch_norm has a wrong third derivative up to 2.13 (gradcheck fails) and refuses one
    from 2.14."""
    shape = [1, -1] + [1] * (x.dim() - 2)
    if use_input_stats:
        dims = [d for d in range(x.dim()) if d != 1 and not (instance and d == 0)]
        mean = x.mean(dims, keepdim=True)
        var = (x - mean).square().mean(dims, keepdim=True)
        z = (x - mean) * torch.rsqrt(var + eps) * w.view(shape) + b.view(shape)
    else:
        z = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + eps) * w.view(shape) + b.view(shape)
    return activation_at(act)[1].fn(z, alpha)


def _second_order(dy, x, w, b, mean, var, args, gdx, gdw, gdb):
    """The vjp of the backward op (dy, x, w, b) -> (dx, dw, db), from the reference in float32 (float64 for float64).

    In training mode the statistics are recomputed from ``x`` inside the reference, so the x-gradient is the total
    derivative; built from PyTorch ops, so it is itself differentiable (any order).
    """
    math = math_dtype(x.dtype)
    channels = x.shape[1]
    w_ = w.to(math) if w is not None else torch.ones(channels, dtype=math, device=x.device)
    b_ = b.to(math) if b is not None else torch.zeros(channels, dtype=math, device=x.device)
    mean_, var_ = mean.to(math), var.to(math)

    def first_order(dy_, x_, w__, b__):
        _, vjp = torch.func.vjp(lambda *p: _normalized_ref(*p, mean_, var_, *args), x_, w__, b__)
        return vjp(dy_)

    def cotangent(g, like):
        return torch.zeros_like(like) if g is None else g.to(like.dtype)

    primals = (dy.to(math), x.to(math), w_, b_)
    outs, vjp2 = torch.func.vjp(first_order, *primals)
    return vjp2(tuple(cotangent(g, o) for g, o in zip((gdx, gdw, gdb), outs)))


class _TrainingBatchNormAct(torch.autograd.Function):
    """Batch norm's training forward with its running statistics: one op, ``norm_act_train``, that also updates the
    buffers and the step counter in place (on CUDA inside the forward's own launches), where ``norm_act`` and
    ``norm_act_update_stats`` are two. torch.library registers autograd formulas for functional ops only, so this
    op's gradient is this Function's: the registered, twice-differentiable ``norm_act_backward``, as for
    ``norm_act``."""

    @staticmethod
    def forward(ctx, x, w, b, running_mean, running_var, steps, momentum, eps, act, alpha, impl):
        train = custom_ops("norm_act", impl).norm_act_train
        y, mean, var = train(x, w, b, running_mean, running_var, steps, momentum, eps, act, alpha)
        ctx.save_for_backward(x, w, b, mean, var)
        ctx.args, ctx.impl = (True, False, eps, act, alpha), impl
        return y

    @staticmethod
    def backward(ctx, dy):
        return (*_norm_grads(custom_ops("norm_act", ctx.impl).norm_act_backward, ctx, dy), *(None,) * 8)


def _norm_grads(backward, ctx, dy) -> tuple:
    """(dx, dw, db) from the forward's saved (x, w, b, mean, var) through the ``backward`` op, each only where
    needed, in its input's dtype."""
    x, w, b, mean, var = ctx.saved_tensors
    dx, dw, db = backward(dy, x, w, b, mean, var, *ctx.args)
    needs = ctx.needs_input_grad
    return (dx if needs[0] else None, dw.to(w.dtype) if w is not None and needs[1] else None,
            db.to(b.dtype) if b is not None and needs[2] else None)


def _register(forward, backward, update_stats, train) -> None:
    """Fake implementations and autograd formulas for one implementation's ops (the statistics update mutates its
    buffers in place, returns nothing and is not differentiable)."""

    def fake_forward(x, w, b, running_mean, running_var, use_input_stats, instance, eps, act, alpha):
        groups = x.shape[0] * x.shape[1] if use_input_stats and instance else x.shape[1]
        stat = x.new_empty(groups, dtype=math_dtype(x.dtype))
        return torch.empty_like(_norm_layout(x)), stat, torch.empty_like(stat)

    def fake_backward(dy, x, w, b, mean, var, use_input_stats, instance, eps, act, alpha):
        dw = x.new_empty(x.shape[1], dtype=math_dtype(x.dtype))
        return torch.empty_like(_norm_layout(x)), dw, torch.empty_like(dw)

    def setup_forward(ctx, inputs, output):
        x, w, b, _, _, *ctx.args = inputs
        _, mean, var = output
        ctx.mark_non_differentiable(mean, var)
        ctx.set_materialize_grads(False)  # no zero tensors for the statistics' (unused) gradients
        ctx.save_for_backward(x, w, b, mean, var)

    def grad_forward(ctx, dy, _dmean, _dvar):
        if dy is None:  # grads are not materialized: nothing flows back
            return (None,) * 10
        return (*_norm_grads(backward, ctx, dy), *(None,) * 7)

    def setup_backward(ctx, inputs, output):
        dy, x, w, b, mean, var, *ctx.args = inputs
        ctx.save_for_backward(dy, x, w, b, mean, var)

    def grad_backward(ctx, gdx, gdw, gdb):
        dy, x, w, b, mean, var = ctx.saved_tensors
        ddy, dx, dw, db = _second_order(dy, x, w, b, mean, var, ctx.args, gdx, gdw, gdb)
        needs = ctx.needs_input_grad
        return (
            ddy.to(dy.dtype) if needs[0] else None,
            dx.to(x.dtype) if needs[1] else None,
            dw.to(w.dtype) if w is not None and needs[2] else None,
            db.to(b.dtype) if b is not None and needs[3] else None,
            None, None, None, None, None, None, None,
        )

    register_fake(forward, fake_forward)
    register_fake(backward, fake_backward)
    register_autograd(forward, grad_forward, setup_context=setup_forward)
    register_autograd(backward, grad_backward, setup_context=setup_backward)
    register_fake(update_stats, lambda *args: None)
    register_fake(train, lambda x, w, b, *args: fake_forward(x, w, b, None, None, True, False, 0, 0, 0))


def _norm_layout(x: torch.Tensor) -> torch.Tensor:
    """The layout the kernels compute in (and return): contiguous or 4-D channels_last as given, else contiguous."""
    if x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)):
        return x
    return x.contiguous()


declare_custom_ops("norm_act", ("norm_act", "norm_act_backward", "norm_act_update_stats", "norm_act_train"), "norm_act",
                   _register)


# --- conditional batch norm's custom ops: per-sample scale and shift ---------------------------------------------


def _conditional_ref(x, scale, shift, mean, var, use_input_stats: bool, eps: float, act: int, alpha: float):
    """``_normalized_ref`` with a per-sample affine map ``scale`` / ``shift`` ``[N, C]`` (elementary ops)."""
    per_sample = [x.shape[0], x.shape[1]] + [1] * (x.dim() - 2)
    per_channel = [1, -1] + [1] * (x.dim() - 2)
    if use_input_stats:
        dims = [d for d in range(x.dim()) if d != 1]
        mean = x.mean(dims, keepdim=True)
        var = (x - mean).square().mean(dims, keepdim=True)
    else:
        mean, var = mean.view(per_channel), var.view(per_channel)
    z = (x - mean) * torch.rsqrt(var + eps) * scale.view(per_sample) + shift.view(per_sample)
    return activation_at(act)[1].fn(z, alpha)


def _register_conditional(forward, backward) -> None:
    """Fakes and autograd of ``conditional_norm_act`` / ``_backward`` (as ``_register``, with ``[N, C]`` scale and
    shift, always given); the backward's own backward is the reference's second order."""

    def fake_forward(x, scale, shift, running_mean, running_var, use_input_stats, eps, act, alpha):
        stat = x.new_empty(x.shape[1], dtype=math_dtype(x.dtype))
        return torch.empty_like(_norm_layout(x)), stat, torch.empty_like(stat)

    def fake_backward(dy, x, scale, shift, mean, var, use_input_stats, eps, act, alpha):
        grad = x.new_empty(x.shape[0], x.shape[1], dtype=math_dtype(x.dtype))
        return torch.empty_like(_norm_layout(x)), grad, torch.empty_like(grad)

    def setup_forward(ctx, inputs, output):
        x, scale, shift, _, _, *ctx.args = inputs
        _, mean, var = output
        ctx.mark_non_differentiable(mean, var)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, scale, shift, mean, var)

    def grad_forward(ctx, dy, _dmean, _dvar):
        if dy is None:
            return (None,) * 9
        x, scale, shift, mean, var = ctx.saved_tensors
        dx, dscale, dshift = backward(dy, x, scale, shift, mean, var, *ctx.args)
        needs = ctx.needs_input_grad
        return (dx if needs[0] else None, dscale.to(scale.dtype) if needs[1] else None,
                dshift.to(shift.dtype) if needs[2] else None, None, None, None, None, None, None)

    def setup_backward(ctx, inputs, output):
        dy, x, scale, shift, mean, var, *ctx.args = inputs
        ctx.save_for_backward(dy, x, scale, shift, mean, var)

    def grad_backward(ctx, gdx, gdscale, gdshift):
        dy, x, scale, shift, mean, var = ctx.saved_tensors
        math = math_dtype(x.dtype)
        mean_, var_ = mean.to(math), var.to(math)

        def first_order(dy_, x_, scale_, shift_):
            _, vjp = torch.func.vjp(lambda *p: _conditional_ref(*p, mean_, var_, *ctx.args), x_, scale_, shift_)
            return vjp(dy_)

        primals = (dy.to(math), x.to(math), scale.to(math), shift.to(math))
        outs, vjp2 = torch.func.vjp(first_order, *primals)
        cotangents = tuple(torch.zeros_like(o) if g is None else g.to(o.dtype)
                           for g, o in zip((gdx, gdscale, gdshift), outs))
        grads = vjp2(cotangents)
        return (*(g.to(t.dtype) if need else None for g, t, need in zip(grads, (dy, x, scale, shift),
                                                                         ctx.needs_input_grad)),
                None, None, None, None, None, None)

    register_fake(forward, fake_forward)
    register_fake(backward, fake_backward)
    register_autograd(forward, grad_forward, setup_context=setup_forward)
    register_autograd(backward, grad_backward, setup_context=setup_backward)


declare_custom_ops("conditional_norm_act", ("conditional_norm_act", "conditional_norm_act_backward"), "norm_act",
                   _register_conditional)
