"""``fastgan.optimize``: rewrite a model's standard blocks into fastgan's fused modules, keeping its state_dict.

What is rewritten, inside every ``nn.Sequential`` (the only container whose execution order is known):

- ``Conv2d``/``ConvTranspose2d`` -> activation: a :class:`~fastgan.nn.FusedConv2d` /
  :class:`~fastgan.nn.FusedConvTranspose2d` at the conv's index (activation in the conv epilogue);
- ``BatchNorm2d``/``InstanceNorm2d`` -> activation (after a conv or standalone): a
  :class:`~fastgan.nn.BatchNormAct2d` / :class:`~fastgan.nn.InstanceNormAct2d` at the norm's index;
- ``Conv2d``/``ConvTranspose2d`` -> ``BatchNorm2d``: the conv becomes a fused conv at its index and the Sequential a
  :class:`~fastgan.nn.FusedSequential` (its ``__class__`` is swapped, as ``torch.nn.utils.parametrize`` does), which
  runs the conv and the norm after it as one op: on Triton the batch statistics come from the conv's epilogue. Only
  a plain ``nn.Sequential`` is converted (a subclass may have its own ``forward``);
- ``Linear`` -> activation: a :class:`~fastgan.nn.FusedLinear` at the Linear's index;
- any other ``Conv2d``/``ConvTranspose2d`` (before an instance norm, an unsupported activation or nothing): a fused
  conv with a linear activation, which on the CPU runs a convolution that is a matrix product (a discriminator's
  last layer, a generator's first) as one;

and the activation's own index gets an ``nn.Identity``. Activations: ReLU, LeakyReLU, Tanh, Sigmoid, SiLU, ELU,
SELU, Softplus(beta=1, threshold=20). Every index keeps its module's parameters and buffers under the same names
(the fused modules use torch.nn's names, and an activation has no state), so ``state_dict()`` has exactly the same
keys, shapes and values, and a checkpoint of either model loads into the other with ``strict=True``. The fused
modules adopt the original Parameter and buffer objects, so an optimizer built before ``optimize(inplace=True)``
keeps training the same tensors.

With ``channels_last=True`` the fused convolutions of each Sequential run in channels_last, as
``model.to(memory_format=torch.channels_last)`` would run them, but nothing outside a Sequential sees another
layout: their weights get channels_last strides (the same Parameters, values and state_dict; ask for it before an
optimizer holds state for them: ``Adam(fused=True)`` pairs their elements with that state's by memory order), and the
Sequential hands its caller, its input's gradient and any module inside it that may depend on strides (a custom
module's ``view``) the layout the plain Sequential would (see :class:`~fastgan.nn.FusedSequential`). On the CPU
oneDNN runs NHWC convolutions directly, where around an NCHW one it reorders inputs, outputs and gradients: the
DCGAN-28 step gains 3-8 points more; but convolutions with 512 channels on small maps ran slower (DCGAN-64's
discriminator, PatchGAN: README, CPU benchmarks), so it is not the default.

Modules inside a custom ``nn.Module`` subclass are only rewritten within its child Sequentials (recursively): its
``forward`` may call its children in any order, so a conv followed by a ReLU attribute need not be a conv -> ReLU
run. Modules with hooks or parametrizations (``spectral_norm``, ``weight_norm``) are left untouched, as is anything
unrecognised (groups != 1, dilation != 1, non-zero padding modes, norm subclasses such as SyncBatchNorm).
"""

from __future__ import annotations

import copy

from torch import nn

from .nn.common import activation_of
from .nn.conv import FusedConv2d, FusedConvTranspose2d, FusedSequential
from .nn.linear import FusedLinear
from .nn.norm_act import BatchNormAct2d, InstanceNormAct2d

__all__ = ["optimize"]

_CONVS = {nn.Conv2d: FusedConv2d, nn.ConvTranspose2d: FusedConvTranspose2d}
_FUSED_CONVS = (FusedConv2d, FusedConvTranspose2d)
_NORMS = {nn.BatchNorm2d: BatchNormAct2d, nn.InstanceNorm2d: InstanceNormAct2d}


def optimize(model: nn.Module, inplace: bool = False, impl: str = "auto", verbose: bool = False,
             channels_last: bool = False) -> nn.Module:
    """Replace conv/norm/linear + activation runs of ``model`` by fused fastgan modules (see the module docstring).

    Args:
        model: any ``nn.Module``; its mode (train/eval), device and dtype are kept.
        inplace: rewrite ``model`` itself (sharing its Parameters) instead of a deep copy.
        impl: the ``impl=`` of every fused module (``"auto"``, ``"ref"``, ``"triton"`` or ``"native"``).
        verbose: print one line per fused run.
        channels_last: run the fused convolutions of every Sequential in channels_last
            (:meth:`fastgan.nn.FusedSequential.run_channels_last`: their weights become channels_last; each
            Sequential still hands out the layouts the plain one would).

    Returns:
        The optimized model: the same function in train and eval mode (outputs, gradients, running statistics),
        the same ``state_dict`` keys, shapes and values.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fastgan.optimize: model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(channels_last, bool):
        raise TypeError(f"fastgan.optimize: channels_last must be True or False, got {channels_last!r}")
    if not inplace:
        model = copy.deepcopy(model)
    report: list[str] = []
    if isinstance(model, nn.Sequential):
        _rewrite_sequential(model, "", impl, report)
    else:
        _visit(model, "", impl, report)
    layouts = _run_channels_last(model) if channels_last else []
    if verbose:
        print(f"fastgan.optimize: fused {len(report)} run(s)" + "".join(f"\n  {line}" for line in report + layouts))
    return model


def _visit(module: nn.Module, prefix: str, impl: str, report: list[str]) -> None:
    """Rewrite every Sequential below ``module`` (``module`` itself is not one)."""
    for name, child in module.named_children():
        if isinstance(child, nn.Sequential):
            _rewrite_sequential(child, f"{prefix}{name}.", impl, report)
        else:
            _visit(child, f"{prefix}{name}.", impl, report)


def _plain(module: nn.Module) -> bool:
    """No hooks or parametrizations that a fused module would silently drop."""
    hooks = (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks)
    return not any(hooks) and not hasattr(module, "parametrizations")


def _activation(module: nn.Module | None) -> tuple[str, float | None] | None:
    if module is None or isinstance(module, nn.Identity) or not _plain(module):
        return None
    try:
        return activation_of(module)
    except ValueError:
        return None


def _convertible_conv(module: nn.Module) -> bool:
    return (
        type(module) in _CONVS
        and _plain(module)
        and module.groups == 1
        and tuple(module.dilation) == (1, 1)
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def _foldable_norm(module: nn.Module | None) -> bool:
    return type(module) is nn.BatchNorm2d and _convertible_norm(module)


def _convertible_norm(module: nn.Module) -> bool:
    return type(module) in _NORMS and _plain(module) and not (module.affine and module.bias is None)


def _adopt(fused: nn.Module, original: nn.Module) -> nn.Module:
    """Make ``fused`` use ``original``'s very Parameter and buffer objects (same names), and its mode."""
    for name, param in original._parameters.items():
        fused._parameters[name] = param
    for name, buffer in original._buffers.items():
        fused._buffers[name] = buffer
    return fused.train(original.training)


def _rewrite_sequential(seq: nn.Sequential, prefix: str, impl: str, report: list[str]) -> None:
    names = list(seq._modules)
    i = 0
    while i < len(names):
        module = seq._modules[names[i]]
        nxt = seq._modules[names[i + 1]] if i + 1 < len(names) else None
        act = _activation(nxt)
        if _convertible_conv(module) and type(seq) in (nn.Sequential, FusedSequential) and _foldable_norm(nxt):
            # conv -> BatchNorm2d [-> act]: a fused conv, a BatchNormAct2d [, an Identity], run as one op.
            after = seq._modules[names[i + 2]] if i + 2 < len(names) else None
            act_module = after if _activation(after) is not None else None
            conv = _adopt(_CONVS[type(module)].from_modules(module, None, None, impl), module)
            norm = _adopt(BatchNormAct2d.from_modules(nxt, act_module, impl), nxt)
            seq._modules[names[i]], seq._modules[names[i + 1]] = conv, norm
            seq.__class__ = FusedSequential
            run = [module, nxt]
            if act_module is not None:
                seq._modules[names[i + 2]] = nn.Identity()
                run.append(act_module)
            last = names[i + len(run) - 1]
            report.append(f"{prefix}{names[i]}..{last}: {'+'.join(type(m).__name__ for m in run)} -> "
                          f"{type(conv).__name__} + BatchNormAct2d({_describe(norm)}), one op")
            i += len(run)
        elif _convertible_conv(module) and act is not None:
            fused = _CONVS[type(module)].from_modules(module, None, nxt, impl)
            _replace(seq, names, i, _adopt(fused, module), prefix, report, (module, nxt))
            i += 2
        elif _convertible_conv(module):
            # A lone conv (a discriminator's last layer): the fused conv's CPU path runs it as a matrix product
            # where it is one (fastgan/ops/conv_act.py), elsewhere it is the same convolution.
            seq._modules[names[i]] = _adopt(_CONVS[type(module)].from_modules(module, None, None, impl), module)
            report.append(f"{prefix}{names[i]}: {type(module).__name__} -> {type(seq._modules[names[i]]).__name__}"
                          "(act='linear')")
            i += 1
        elif _convertible_norm(module) and act is not None:
            fused = _NORMS[type(module)].from_modules(module, nxt, impl)
            _replace(seq, names, i, _adopt(fused, module), prefix, report, (module, nxt))
            i += 2
        elif type(module) is nn.Linear and _plain(module) and act is not None:
            fused = FusedLinear.from_modules(module, nxt, impl)
            _replace(seq, names, i, _adopt(fused, module), prefix, report, (module, nxt))
            i += 2
        else:
            if isinstance(module, nn.Sequential):
                _rewrite_sequential(module, f"{prefix}{names[i]}.", impl, report)
            elif module is not None:
                _visit(module, f"{prefix}{names[i]}.", impl, report)
            i += 1


def _run_channels_last(model: nn.Module) -> list[str]:
    """Every plain or fused Sequential holding a fused convolution runs it channels_last (as a FusedSequential); one
    line per Sequential that does."""
    lines = []
    for name, module in model.named_modules():
        if type(module) in (nn.Sequential, FusedSequential) and any(isinstance(m, _FUSED_CONVS) for m in module):
            module.__class__ = FusedSequential
            if module.run_channels_last():
                lines.append(f"{name or '(model)'}: fused convolutions run channels_last")
    return lines


def _replace(seq, names, i, fused, prefix, report, originals) -> None:
    """Put ``fused`` at index ``i`` and an Identity at ``i + 1`` (the activation, which has no state)."""
    seq._modules[names[i]] = fused
    seq._modules[names[i + 1]] = nn.Identity()
    run = "+".join(type(m).__name__ for m in originals)
    report.append(f"{prefix}{names[i]}..{names[i + 1]}: {run} -> {type(fused).__name__}({_describe(fused)})")


def _describe(fused: nn.Module) -> str:
    alpha = f", alpha={fused.alpha}" if getattr(fused, "alpha", None) is not None else ""
    return f"act={fused.act!r}{alpha}"

