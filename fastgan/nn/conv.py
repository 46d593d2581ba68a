"""``FusedConv2d`` / ``FusedConvTranspose2d``: a convolution with an optional norm and an activation, fused.

They subclass ``nn.Conv2d`` / ``nn.ConvTranspose2d``, so ``weight``/``bias`` have torch.nn's names, shapes and
initialisation, and code that inspects convolutions (DCGAN's ``weights_init``, ``spectral_norm``) keeps working.
Without a norm the activation runs in the convolution's epilogue (:func:`fastgan.ops.conv2d_act`); with
``norm="batch"`` or ``"instance"`` the convolution (with its bias) feeds a :class:`fastgan.nn.BatchNormAct2d` /
:class:`fastgan.nn.InstanceNormAct2d` submodule named ``norm`` that applies the activation, so a standalone module's
state_dict holds ``weight``, ``bias`` and ``norm.*``. A batch norm runs in the convolution's op
(:func:`fastgan.ops.conv2d_batch_norm_act`: on Triton in training the batch statistics come from the convolution's
epilogue). :class:`FusedSequential` gives a fused convolution followed by a separate ``BatchNormAct2d`` the same
treatment, which is how ``fastgan.optimize`` fuses conv -> batch norm while keeping a model's state_dict keys.
Only groups=1, dilation=1 and zero padding are supported (the constructors and ``from_modules`` say so).
"""

from __future__ import annotations

import torch
from torch import nn

from .._layout import suggests_channels_last
from ..ops.bias_act import activation
from ..ops.conv_act import conv2d_act, conv_transpose2d_act, output_read_only
from ..ops.conv_bn_act import conv2d_batch_norm_act, conv_transpose2d_batch_norm_act
from .common import activation_of, conv_reference, conv_runs_ref, copy_state, fused_extra_repr
from .norm_act import BatchNormAct2d, InstanceNormAct2d

__all__ = ["FusedConv2d", "FusedConvTranspose2d", "FusedSequential"]

_NORMS = {"batch": BatchNormAct2d, "instance": InstanceNormAct2d}


def _make_norm(owner: str, norm: str | None, channels: int, act: str, alpha, impl: str, kwargs, factory):
    if norm is None:
        return None
    if norm not in _NORMS:
        raise ValueError(f"{owner}: norm must be None, 'batch' or 'instance', got {norm!r}")
    return _NORMS[norm](channels, act=act, alpha=alpha, impl=impl, **(kwargs or {}), **factory)


def _from_modules(cls, kind: type, conv: nn.Module, norm: nn.Module | None, act: nn.Module | None, impl: str,
                  *output_padding):
    """``cls`` (a fused conv) equivalent to ``conv`` [-> ``norm``] [-> ``act``], sharing nothing with them. ``conv``
    must be a plain ``kind`` the fused op computes: groups=1, dilation=1, zero padding given as ints."""
    owner = f"{cls.__name__}.from_modules"
    if not isinstance(conv, kind):
        raise TypeError(f"{owner}: conv must be an nn.{kind.__name__}, got {type(conv).__name__}")
    if conv.groups != 1 or tuple(conv.dilation) != (1, 1) or conv.padding_mode != "zeros":
        raise ValueError(
            f"{owner}: only groups=1, dilation=1, padding_mode='zeros' are supported, got "
            f"groups={conv.groups}, dilation={conv.dilation}, padding_mode={conv.padding_mode!r}"
        )
    if isinstance(conv.padding, str):
        raise ValueError(f"{owner}: padding={conv.padding!r} is not supported; use explicit ints")
    if norm is None:
        norm_module, (act_name, alpha) = None, activation_of(act)
    elif isinstance(norm, nn.BatchNorm2d):
        norm_module, act_name, alpha = BatchNormAct2d.from_modules(norm, act, impl), "linear", None
    elif isinstance(norm, nn.InstanceNorm2d):
        norm_module, act_name, alpha = InstanceNormAct2d.from_modules(norm, act, impl), "linear", None
    else:
        raise TypeError(f"{owner}: norm must be nn.BatchNorm2d or nn.InstanceNorm2d, got {type(norm).__name__}")
    fused = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, *output_padding,
                conv.bias is not None, None, act_name, alpha, impl, device=conv.weight.device, dtype=conv.weight.dtype)
    fused = copy_state(fused, conv)
    fused.norm = norm_module
    if norm_module is not None:  # the norm applies the activation; the conv remembers it for its repr
        fused.act, fused.alpha = norm_module.act, norm_module.alpha
    return fused


class FusedConv2d(nn.Conv2d):
    """``act(norm(conv2d(x) + bias))`` with ``nn.Conv2d``'s parameters; the activation in the conv epilogue
    when ``norm`` is None.

    Args mirror ``nn.Conv2d`` (groups=1, dilation=1, zero padding) plus ``norm`` (None, ``"batch"``,
    ``"instance"``), ``act``/``alpha`` (an activation of ``fastgan.ops.ACTIVATIONS``), ``impl`` and
    ``norm_kwargs`` (eps, momentum, affine, track_running_stats of the norm). Input ``[N, C_in, H, W]``,
    float16/bfloat16/float32 (float64 off Triton), contiguous or channels_last (kept). Differentiable twice.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        bias: bool = True,
        norm: str | None = None,
        act: str = "linear",
        alpha: float | None = None,
        impl: str = "auto",
        norm_kwargs: dict | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if isinstance(padding, str):
            raise ValueError(f"FusedConv2d: padding={padding!r} is not supported; use explicit ints")
        activation("FusedConv2d", act, alpha)
        factory = {"device": device, "dtype": dtype}
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias=bias, **factory)
        self.act, self.alpha, self.impl = act, alpha, impl
        self.norm = _make_norm("FusedConv2d", norm, out_channels, act, alpha, impl, norm_kwargs, factory)

    @classmethod
    def from_modules(
        cls, conv: nn.Conv2d, norm: nn.Module | None = None, act: nn.Module | None = None, impl: str = "auto"
    ) -> FusedConv2d:
        """The fused equivalent of ``conv`` [-> ``norm``] [-> ``act``], sharing nothing with them (copied values)."""
        return _from_modules(cls, nn.Conv2d, conv, norm, act, impl)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and x.dim() == 3 and self.norm is None:  # unbatched, as nn.Conv2d takes it
            return self.forward(x.unsqueeze(0)).squeeze(0)
        return self.forward_with_norm(x, self.norm)

    def forward_with_norm(self, x: torch.Tensor, norm: nn.Module | None) -> torch.Tensor:
        """The convolution feeding ``norm`` (its own ``norm``, or the BatchNormAct2d after it in a FusedSequential)."""
        if conv_runs_ref(self.impl, self, x, None, _kind(norm)):
            op = "conv2d_batch_norm_act" if isinstance(norm, BatchNormAct2d) else "conv2d_act"
            return _reference(self, conv_reference(op, self, x), norm)
        args = (x, self.weight, self.bias, self.stride, self.padding)
        if norm is None:
            return conv2d_act(*args, self.act, self.alpha, self.impl)
        if isinstance(norm, BatchNormAct2d):
            return conv2d_batch_norm_act(*args, **_batch_norm_kwargs(norm), impl=self.impl)
        return norm(conv2d_act(*args, impl=self.impl))

    def extra_repr(self) -> str:
        # With a norm, the norm submodule's repr shows the activation.
        return fused_extra_repr(self, [super().extra_repr()], show_act=self.norm is None)


class FusedConvTranspose2d(nn.ConvTranspose2d):
    """``act(norm(conv_transpose2d(x) + bias))`` with ``nn.ConvTranspose2d``'s parameters; the activation in the
    epilogue when ``norm`` is None. Stride-``s`` runs as ``s*s`` phases on Triton (no multiplies on zeros).

    Args mirror ``nn.ConvTranspose2d`` (groups=1, dilation=1) plus ``norm``, ``act``/``alpha``, ``impl`` and
    ``norm_kwargs`` as :class:`FusedConv2d`. ``forward(x, output_size=None)`` as torch.nn. Differentiable twice.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        output_padding: int | tuple[int, int] = 0,
        bias: bool = True,
        norm: str | None = None,
        act: str = "linear",
        alpha: float | None = None,
        impl: str = "auto",
        norm_kwargs: dict | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        activation("FusedConvTranspose2d", act, alpha)
        factory = {"device": device, "dtype": dtype}
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, output_padding, bias=bias, **factory)
        self.act, self.alpha, self.impl = act, alpha, impl
        self.norm = _make_norm("FusedConvTranspose2d", norm, out_channels, act, alpha, impl, norm_kwargs, factory)

    @classmethod
    def from_modules(
        cls, conv: nn.ConvTranspose2d, norm: nn.Module | None = None, act: nn.Module | None = None, impl: str = "auto"
    ) -> FusedConvTranspose2d:
        """The fused equivalent of ``conv`` [-> ``norm``] [-> ``act``], sharing nothing with them (copied values)."""
        return _from_modules(cls, nn.ConvTranspose2d, conv, norm, act, impl, conv.output_padding)

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and x.dim() == 3 and self.norm is None:  # unbatched, as nn.ConvTranspose2d
            return self.forward(x.unsqueeze(0), output_size).squeeze(0)
        return self.forward_with_norm(x, self.norm, output_size)

    def forward_with_norm(
        self, x: torch.Tensor, norm: nn.Module | None, output_size: list[int] | None = None
    ) -> torch.Tensor:
        """The transposed convolution feeding ``norm`` (as :meth:`FusedConv2d.forward_with_norm`)."""
        output_padding = self._output_padding(x, output_size, self.stride, self.padding, self.kernel_size, 2,
                                              self.dilation)
        if conv_runs_ref(self.impl, self, x, output_padding, _kind(norm)):
            op = "conv_transpose2d_batch_norm_act" if isinstance(norm, BatchNormAct2d) else "conv_transpose2d_act"
            return _reference(self, conv_reference(op, self, x, output_padding), norm)
        args = (x, self.weight, self.bias, self.stride, self.padding, output_padding)
        if norm is None:
            return conv_transpose2d_act(*args, act=self.act, alpha=self.alpha, impl=self.impl)
        if isinstance(norm, BatchNormAct2d):
            return conv_transpose2d_batch_norm_act(*args, **_batch_norm_kwargs(norm), impl=self.impl)
        return norm(conv_transpose2d_act(*args, impl=self.impl))

    def extra_repr(self) -> str:
        # With a norm, the norm submodule's repr shows the activation.
        return fused_extra_repr(self, [super().extra_repr()], show_act=self.norm is None)


def _kind(norm: nn.Module | None) -> str:
    """The layer kind of ``fastgan._backend.CPU_REF_MAX_NUMEL`` of a fused convolution feeding ``norm``."""
    return "batch_norm" if isinstance(norm, BatchNormAct2d) else "instance_norm" if norm is not None else "act"


def _reference(conv: FusedConv2d | FusedConvTranspose2d, z: torch.Tensor, norm: nn.Module | None) -> torch.Tensor:
    """The rest of a fused convolution's reference run, from its output ``z`` (bias added): ``norm`` (a
    BatchNormAct2d under "auto" runs its reference without deciding again: z is no larger than what the convolution's
    decision counted) or the activation."""
    if isinstance(norm, BatchNormAct2d):  # the fused path runs it inside the convolution's op: no hooks either
        return norm.reference(z) if norm.impl == "auto" else norm.forward(z)
    if norm is not None:
        return norm(z)
    spec, alpha = activation(type(conv).__name__, conv.act, conv.alpha)
    return spec.fn(z, alpha)


def _batch_norm_kwargs(norm: BatchNormAct2d) -> dict:
    return {"norm_weight": norm.weight, "norm_bias": norm.bias, **norm.functional_kwargs()}


class FusedSequential(nn.Sequential):
    """``nn.Sequential`` in which a :class:`FusedConv2d` / :class:`FusedConvTranspose2d` without a norm or activation
    of its own, directly followed by a :class:`~fastgan.nn.BatchNormAct2d`, runs with that norm as one fused op
    (batch statistics from the convolution's epilogue on Triton). Each module keeps its index, so the state_dict keys
    are those of the plain Sequential. The pair is called through ``forward_with_norm``: forward hooks on either
    module are not run. A fused convolution whose output goes to another fused layer, which only reads it, may write
    its activation over its own output (``fastgan.ops.conv_act.output_read_only``; no fresh tensor on the CPU; not
    for subclasses, nor with forward hooks on the way).

    After :meth:`run_channels_last` (``fastgan.optimize(..., channels_last=True)`` calls it) its fused convolutions'
    weights are channels_last, so the convolutions, norms and activations inside run on channels_last tensors
    (oneDNN's direct NHWC kernels, without the reorders it makes around an NCHW convolution), while the layouts seen
    outside are the plain Sequential's: every module not known to take channels_last (a custom module's forward may
    ``view``) gets its input in the layout the plain Sequential would give it, and so do the caller (the output) and
    the input's gradient (a gradient penalty's ``grad.view(n, -1)``). A slice keeps this; iterating over the modules
    and calling them one by one does not (the tensors between them are channels_last).
    """

    keeps_layout = False  # True after run_channels_last: tensors leave in the plain Sequential's layouts

    def run_channels_last(self) -> bool:
        """Make the fused convolutions' weights (direct children) channels_last, in place (the same Parameter
        objects, as ``Module.to(memory_format=...)`` does); True if it did. Weights that are channels_last already
        (``model.to(memory_format=torch.channels_last)``) are left as they are: the plain Sequential runs channels_last
        then too."""
        convs = [m for m in self if isinstance(m, FusedConv2d | FusedConvTranspose2d)]
        if not convs or any(suggests_channels_last(conv.weight) for conv in convs):
            return False
        for conv in convs:
            # clone, not contiguous: a weight with one input or output channel is both layouts at once, and only
            # channels_last strides make the convolution's output channels_last.
            conv.weight.data = conv.weight.data.clone(memory_format=torch.channels_last)
        self.keeps_layout = True
        return True

    def __getitem__(self, idx):
        item = super().__getitem__(idx)
        if isinstance(item, FusedSequential):  # a slice runs its convolutions channels_last too
            item.keeps_layout = self.keeps_layout
        return item

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layout = None
        if self.keeps_layout and isinstance(x, torch.Tensor):
            layout = _layout_of(x)
            if x.requires_grad and not torch.compiler.is_compiling():  # Dynamo does not trace a custom jvp
                x = _GradInLayout.apply(x, layout)
        modules = list(self._modules.values())
        i = 0
        while i < len(modules):
            module, nxt = modules[i], modules[i + 1] if i + 1 < len(modules) else None
            foreign = layout is not None and not isinstance(module, _ANY_LAYOUT)
            if foreign:
                x = _in_layout(x, layout)
            if _feeds_batch_norm(module, nxt):
                x = module.forward_with_norm(x, nxt)
                i += 2
            elif _feeds_fused_layer(module, modules[i + 1:]) and not torch.compiler.is_compiling():
                with output_read_only():  # a ContextVar, which Dynamo does not trace; compiled code never writes over
                    x = module(x)
                i += 1
            else:
                x = module(x)
                i += 1
            if foreign:  # what the plain Sequential's next convolutions make of this module's output
                layout = _layout_of(x) if i < len(modules) else None
        return x if layout is None else _in_layout(x, layout)


class _GradInLayout(torch.autograd.Function):
    """The identity, whose backward hands the gradient back in ``layout``: the input's gradient of a channels_last
    run laid out as the plain Sequential's would be. Differentiable again (penalties)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, layout):
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.layout = inputs[1]

    @staticmethod
    def backward(ctx, grad):
        return _in_layout(grad, ctx.layout), None

    @staticmethod
    def jvp(ctx, x_t, _):
        return x_t


# Modules that compute the same values from a channels_last tensor (a FusedSequential's channels_last run continues
# through them); anything else, a custom module above all (its forward may view), gets the plain layout. Not
# nn.Dropout: its mask is drawn in memory order, so another layout drops other elements.
_ANY_LAYOUT = (FusedConv2d, FusedConvTranspose2d, BatchNormAct2d, InstanceNormAct2d, nn.Identity, nn.ReLU,
               nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.ELU, nn.SELU, nn.Softplus, nn.Dropout2d,
               nn.ReflectionPad2d, nn.ReplicationPad2d, nn.ZeroPad2d, nn.ConstantPad2d, nn.Upsample, nn.AvgPool2d,
               nn.MaxPool2d)


def _layout_of(x) -> torch.memory_format:
    """The layout a plain Sequential of convolutions hands out for input ``x``: channels_last if ``x`` suggests it."""
    return torch.channels_last if isinstance(x, torch.Tensor) and suggests_channels_last(x) else torch.contiguous_format


def _in_layout(x, layout: torch.memory_format):
    """``x`` with ``layout``'s strides where it suggests the other layout (a one-channel map is contiguous both ways,
    but only its strides tell the next convolution which it is: cloned then); unbatched (3-D) contiguous, as a
    convolution returns it."""
    if not isinstance(x, torch.Tensor):
        return x
    if x.dim() == 3:
        return x.contiguous()
    if x.dim() == 4 and suggests_channels_last(x) != (layout == torch.channels_last):
        return x.clone(memory_format=layout)
    return x


def _feeds_fused_layer(module: nn.Module, rest: list[nn.Module]) -> bool:
    """A fused convolution whose output goes (through Identities: the activations it took in) to a fused layer,
    which only reads it: the convolution may write its activation over its own output
    (``fastgan.ops.conv_act.output_read_only``). The classes themselves, not subclasses, and no forward hooks (on
    these modules or global), which could write over the output, or call an op that would take the promise as its
    own."""
    if type(module) not in (FusedConv2d, FusedConvTranspose2d) or _global_hooks():
        return False
    consumer = next((i for i, m in enumerate(rest) if type(m) is not nn.Identity), None)
    if consumer is None or type(rest[consumer]) not in (FusedConv2d, FusedConvTranspose2d, BatchNormAct2d,
                                                         InstanceNormAct2d):
        return False
    return not any(m._forward_hooks or m._forward_pre_hooks for m in (module, *rest[:consumer + 1]))


def _global_hooks() -> bool:
    hooks = torch.nn.modules.module
    return bool(hooks._global_forward_hooks or hooks._global_forward_pre_hooks)


def _feeds_batch_norm(module: nn.Module, nxt: nn.Module | None) -> bool:
    """A fused convolution with no norm nor activation of its own, followed by a BatchNormAct2d."""
    conv = isinstance(module, FusedConv2d | FusedConvTranspose2d) and module.norm is None and module.act == "linear"
    return conv and isinstance(nxt, BatchNormAct2d)
