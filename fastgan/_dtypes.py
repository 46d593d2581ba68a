"""The element types fastgan's kernels take, checked in one place by every op (Python and C++ alike), and the type
they compute in.

``Tensor.is_floating_point()`` is true for float8 and other 1-byte formats too; a kernel that read them as float32
would read 4 bytes per element, out of bounds on CUDA. Every op therefore refuses anything but these four.
"""

from __future__ import annotations

import torch

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_dtype(op: str, name: str, t: torch.Tensor) -> None:
    """Raise TypeError naming ``op`` unless ``t`` is float32, float16, bfloat16 or float64."""
    if t.dtype not in KERNEL_DTYPES:
        raise TypeError(
            f"{op}: {name} must be a floating-point tensor of float32, float16, bfloat16 or float64, got {t.dtype}; "
            "convert it with .float()"
        )


def math_dtype(dtype: torch.dtype) -> torch.dtype:
    """The type kernels compute, reduce and keep statistics in: float32, or float64 for float64 (gradcheck)."""
    return torch.float64 if dtype == torch.float64 else torch.float32
