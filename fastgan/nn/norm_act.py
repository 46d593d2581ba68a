"""``BatchNormAct2d`` and ``InstanceNormAct2d``: ``nn.BatchNorm2d`` / ``nn.InstanceNorm2d`` + an activation, fused.

Both keep torch.nn's parameter and buffer names (``weight``, ``bias``, ``running_mean``, ``running_var``,
``num_batches_tracked``) and its state_dict loading rules (they derive from torch.nn's ``_NormBase`` /
``_InstanceNorm``), so a checkpoint of ``nn.BatchNorm2d`` (+ ``nn.ReLU``, which has no state) loads into
``BatchNormAct2d`` and back. ``BatchNormAct2d`` deliberately is not an ``nn.BatchNorm2d`` (nor a ``_BatchNorm``):
code that rewrites batch norms by type, such as ``nn.SyncBatchNorm.convert_sync_batchnorm``, would drop the
activation.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.instancenorm import _InstanceNorm

from .._backend import layer_runs_ref
from ..ops.bias_act import activation
from ..ops.conv_bn_act import conv_transpose2d_conditional_batch_norm_act
from ..ops.norm_act import (
    batch_norm_act,
    batch_norm_act_ref,
    conditional_batch_norm_act,
    instance_norm_act,
    instance_norm_act_ref,
)
from .common import activation_of, conv_reference, conv_runs_ref, copy_state, fused_extra_repr

__all__ = ["BatchNormAct2d", "ConditionalBatchNormAct2d", "InstanceNormAct2d"]


def _from_modules(cls, kind: type, norm: nn.Module, act_module: nn.Module | None, impl: str):
    """``cls`` (a fused norm) with ``norm``'s configuration, parameters, buffers and mode, and ``act_module``'s
    activation; ``norm`` must be a ``kind``."""
    owner = f"{cls.__name__}.from_modules"
    if not isinstance(norm, kind):
        raise TypeError(f"{owner}: norm must be an nn.{kind.__name__}, got {type(norm).__name__}")
    if norm.affine and norm.bias is None:
        raise ValueError(f"{owner}: affine norms without a bias are not supported")
    act, alpha = activation_of(act_module)
    tensor = norm.weight if norm.affine else next(iter(norm.state_dict().values()), None)
    factory = {} if tensor is None else {"device": tensor.device, "dtype": tensor.dtype}
    fused = cls(norm.num_features, norm.eps, norm.momentum, norm.affine, norm.track_running_stats, act, alpha, impl,
                **factory)
    return copy_state(fused, norm)


class _BatchNormActBase(_NormBase):
    """What ``BatchNormAct2d`` and ``fastgan.train.distributed.SyncBatchNormAct2d`` share: ``nn.BatchNorm2d``'s
    configuration, state and choices plus an activation, run through :func:`fastgan.ops.batch_norm_act` (the sync
    norm in eval and on one process). Only ``BatchNormAct2d`` is fused into a preceding convolution's op."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        act: str = "relu",
        alpha: float | None = None,
        impl: str = "auto",
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        activation(type(self).__name__, act, alpha)
        self.act, self.alpha, self.impl = act, alpha, impl

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() != 4:
            raise ValueError(f"{type(self).__name__}: expected a 4-D input [N, C, H, W], got {input.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if layer_runs_ref(self.impl, x, "batch_norm"):
            return self.reference(x)
        return batch_norm_act(x, self.weight, self.bias, **self.functional_kwargs(), impl=self.impl)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """What ``forward`` runs where the layer is small (``layer_runs_ref``): PyTorch's batch norm and activation,
        the arguments checked only if PyTorch refuses them."""
        return batch_norm_act_ref(x, self.weight, self.bias, **self.functional_kwargs(), checked=False)

    def functional_kwargs(self) -> dict:
        """The keyword arguments of :func:`fastgan.ops.batch_norm_act` this module passes in its current mode (a fused
        convolution that runs this norm in its own op passes them too)."""
        # Exactly nn.BatchNorm2d's choices: batch statistics in training (or without buffers), buffers updated only
        # when tracked and training; num_batches_tracked counts the steps (momentum=None averages over them).
        training, mean, var = self.training, self.running_mean, self.running_var
        tracking = training and self.track_running_stats
        use_buffers = not training or self.track_running_stats
        return {
            "running_mean": mean if use_buffers else None,
            "running_var": var if use_buffers else None,
            "training": training or (mean is None and var is None),
            "momentum": self.momentum,
            "eps": self.eps,
            "act": self.act,
            "alpha": self.alpha,
            "num_batches_tracked": self.num_batches_tracked if tracking else None,
        }

    def extra_repr(self) -> str:
        return fused_extra_repr(self, [super().extra_repr()])


class BatchNormAct2d(_BatchNormActBase):
    """``act(nn.BatchNorm2d(x))`` as one fused op (:func:`fastgan.ops.batch_norm_act`); train and eval as torch.nn.

    Args mirror ``nn.BatchNorm2d`` plus ``act``/``alpha`` (an activation of ``fastgan.ops.ACTIVATIONS``) and
    ``impl``. Input ``[N, C, H, W]``, float16/bfloat16/float32, contiguous or channels_last (kept).
    """

    @classmethod
    def from_modules(cls, norm: nn.Module, act_module: nn.Module | None = None, impl: str = "auto") -> BatchNormAct2d:
        """A ``BatchNormAct2d`` with ``norm``'s configuration, parameters, buffers and mode, and ``act_module``'s
        activation (``None``: linear)."""
        return _from_modules(cls, nn.BatchNorm2d, norm, act_module, impl)


class ConditionalBatchNormAct2d(_NormBase):
    """Class-conditional batch norm + activation: ``act(xhat * class_scale[y] + class_shift[y])``, fused
    (:func:`fastgan.ops.conditional_batch_norm_act`); ``forward(x, labels)``.

    The statistics are nn.BatchNorm2d's (per channel, non-affine, running buffers as torch.nn); the affine map is
    looked up per sample from ``class_scale`` / ``class_shift`` ``[num_classes, C]`` (an embedding, initialised to
    scale 1 and shift 0: the layer starts as plain batch norm). Their names end in neither ``weight`` nor ``bias``,
    so ``dcgan_init`` leaves that start alone. Not a ``BatchNormAct2d``: a convolution must not fold it into its
    own conv + batch norm op as one (that op's affine map is per channel).
    """

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        act: str = "relu",
        alpha: float | None = None,
        impl: str = "auto",
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, False, True, device, dtype)
        activation(type(self).__name__, act, alpha)
        self.act, self.alpha, self.impl = act, alpha, impl
        if num_classes < 1:
            raise ValueError(f"{type(self).__name__}: num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.class_scale = nn.Parameter(torch.ones(num_classes, num_features, device=device, dtype=dtype))
        self.class_shift = nn.Parameter(torch.zeros(num_classes, num_features, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if labels.dim() != 1 or labels.shape[0] != x.shape[0] or labels.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{type(self).__name__}: labels must be integer class indices [N] = [{x.shape[0]}], got "
                             f"{labels.dtype} {tuple(labels.shape)}")
        impl = "ref" if layer_runs_ref(self.impl, x, "batch_norm") else self.impl
        return conditional_batch_norm_act(x, self.class_scale[labels], self.class_shift[labels],
                                          **self.functional_kwargs(), impl=impl)

    def after_conv_transpose(self, conv: nn.ConvTranspose2d, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``self(conv(x), labels)`` as one op (:func:`fastgan.ops.conv_transpose2d_conditional_batch_norm_act`:
        on Triton in training, the batch statistics come from the convolution's epilogue); ``conv`` a plain
        (linear) transposed convolution without a norm of its own."""
        output_padding = conv._output_padding(x, None, list(conv.stride), list(conv.padding), list(conv.kernel_size),
                                              2, list(conv.dilation))
        if conv_runs_ref(self.impl, conv, x, output_padding, "batch_norm"):
            return self.forward(conv_reference("conv_transpose2d_conditional_batch_norm_act", conv, x, output_padding),
                                labels)
        return conv_transpose2d_conditional_batch_norm_act(
            x, conv.weight, conv.bias, conv.stride, conv.padding, output_padding, scale=self.class_scale[labels],
            shift=self.class_shift[labels], **self.functional_kwargs(), impl=self.impl)

    _check_input_dim = _BatchNormActBase._check_input_dim
    functional_kwargs = _BatchNormActBase.functional_kwargs

    def extra_repr(self) -> str:
        return fused_extra_repr(self, [f"{super().extra_repr()}, num_classes={self.num_classes}"])


class InstanceNormAct2d(_InstanceNorm):
    """``act(nn.InstanceNorm2d(x))`` as one fused op (:func:`fastgan.ops.instance_norm_act`).

    Args mirror ``nn.InstanceNorm2d`` (affine and running statistics off by default) plus ``act``/``alpha`` and
    ``impl``. Input ``[N, C, H, W]`` or unbatched ``[C, H, W]``.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = False,
        track_running_stats: bool = False,
        act: str = "relu",
        alpha: float | None = None,
        impl: str = "auto",
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        activation(type(self).__name__, act, alpha)
        self.act, self.alpha, self.impl = act, alpha, impl

    @classmethod
    def from_modules(
        cls, norm: nn.Module, act_module: nn.Module | None = None, impl: str = "auto"
    ) -> InstanceNormAct2d:
        """An ``InstanceNormAct2d`` with ``norm``'s configuration, parameters, buffers and mode, and ``act_module``'s
        activation (``None``: linear)."""
        return _from_modules(cls, nn.InstanceNorm2d, norm, act_module, impl)

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() not in (3, 4):
            raise ValueError(f"{type(self).__name__}: expected a 3-D or 4-D input, got {input.dim()}-D")

    def _get_no_batch_dim(self) -> int:
        return 3

    def _apply_instance_norm(self, input: torch.Tensor) -> torch.Tensor:
        args = (input, self.weight, self.bias, self.running_mean, self.running_var,
                self.training or not self.track_running_stats, self.momentum if self.momentum is not None else 0.0,
                self.eps, self.act, self.alpha)
        if layer_runs_ref(self.impl, input, "instance_norm"):
            return instance_norm_act_ref(*args, checked=False)
        return instance_norm_act(*args, self.impl)

    def extra_repr(self) -> str:
        return fused_extra_repr(self, [super().extra_repr()])
