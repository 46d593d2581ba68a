"""Memory-layout helpers shared by the ops and the Triton launchers.

fastgan's elementwise kernels walk memory linearly, so they need a *dense* tensor (non-overlapping, no gaps):
contiguous, channels_last or any other permutation. Such inputs keep their layout; anything else is made contiguous.
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
    """``t`` itself if dense, else a contiguous copy."""
    return t if is_dense(t) else t.contiguous()


def like(t: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``t`` (same shape as ``reference``) in ``reference``'s dtype and strides, copying only when needed."""
    t = t.to(reference.dtype)
    return t if t.stride() == reference.stride() else torch.empty_like(reference).copy_(t)
