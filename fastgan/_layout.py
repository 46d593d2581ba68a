"""Memory-layout helpers shared by the ops and the Triton launchers.

fastgan's elementwise kernels walk memory linearly, so they need a *dense* tensor (non-overlapping, no gaps):
contiguous, channels_last or any other permutation. Such inputs keep their layout; anything else is copied into the
dense layout of the same dimension order (as PyTorch's elementwise ops lay out their results).
"""

from __future__ import annotations

import torch


def is_dense(t: torch.Tensor) -> bool:
    """Whether ``t`` covers its storage span exactly once (some permutation of a contiguous layout)."""
    expected = 1
    for size, stride in sorted(((s, st) for s, st in zip(t.shape, t.stride()) if s != 1), key=lambda p: p[1]):
        if stride != expected:
            return False
        expected *= size
    return True


def dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself if dense, else a dense copy in ``t``'s dimension order (``preserve_format``: the strides PyTorch's
    elementwise ops give the result of a strided input, so the op's output is laid out as PyTorch's would be)."""
    return t if is_dense(t) else t.clone(memory_format=torch.preserve_format)


def like(t: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``t`` (same shape as ``reference``) in ``reference``'s dtype and strides, copying only when needed."""
    t = t.to(reference.dtype)
    return t if t.stride() == reference.stride() else torch.empty_like(reference).copy_(t)


def suggests_channels_last(t: torch.Tensor) -> bool:
    """Whether PyTorch's ``Tensor.suggest_memory_format()`` says channels_last for ``t``: its strides are ordered
    like NHWC (c10's ``is_channels_last_strides_2d``). A convolution returns channels_last when its input or weight
    suggests it, which a plain ``is_contiguous(memory_format=torch.channels_last)`` does not tell for strided views
    or for shapes that are contiguous both ways."""
    if t.dim() != 4 or t.layout != torch.strided:
        return False
    sizes, strides = t.shape, t.stride()
    if strides[1] == 0:
        return False
    smallest = 0
    for d in (1, 3, 2, 0):
        if sizes[d] == 0 or strides[d] < smallest:
            return False
        if d == 0 and smallest == strides[1]:
            return False
        smallest = strides[d] * sizes[d]
    return True


def conv_channels_last(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether PyTorch's convolution of ``x`` with ``weight`` (either direction) returns channels_last: when the input
    or the weight suggests it."""
    return suggests_channels_last(x) or suggests_channels_last(weight)
