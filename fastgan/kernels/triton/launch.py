"""The one way fastgan launches a Triton kernel.

Triton launches on the *current* CUDA device, not the tensors' one: a tensor on ``cuda:1`` with ``cuda:0`` current
would be read through the wrong device (an illegal address). ``launch`` makes the tensors' device current first.
Under ``recording()`` it records each launch instead of running it: the ahead-of-time compile check (``aot.py``) uses
that to learn, with no GPU, exactly which kernel specializations the ops launch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
from torch.library import wrap_triton


class Launch(NamedTuple):
    kernel: Any  # a triton.JITFunction
    grid: tuple[int, ...]
    args: tuple[Any, ...]
    meta: dict[str, Any]  # constexpr values, num_warps, num_stages


_recording: list[list[Launch]] = []

# Kernels that index in int32 take at most this many elements: offsets one block past the end still fit in 31 bits.
INT32_MAX_ELEMENTS = 2**31 - 2**16


def check_int32_elements(op: str, *tensors: torch.Tensor) -> None:
    """Refuse, naming ``op``, a tensor too large for a kernel's 32-bit offsets (rather than read out of bounds)."""
    for t in tensors:
        if t.numel() > INT32_MAX_ELEMENTS:
            raise ValueError(
                f"{op}: the Triton kernel indexes in 32 bits and takes at most {INT32_MAX_ELEMENTS} elements per "
                f"tensor, got {t.numel()}; use impl='native' (64-bit offsets) or split the batch"
            )


def launch(kernel, grid: tuple[int, ...], *args: Any, **meta: Any) -> None:
    """``kernel[grid](*args, **meta)`` through ``torch.library.wrap_triton``, on the device of its tensor arguments."""
    if _recording:
        _recording[-1].append(Launch(kernel, tuple(grid), args, meta))
        return
    device = next((a.device for a in args if isinstance(a, torch.Tensor)), None)
    if device is not None and device.type == "cuda":
        with torch.cuda.device(device):
            wrap_triton(kernel)[grid](*args, **meta)
    else:
        wrap_triton(kernel)[grid](*args, **meta)


@contextlib.contextmanager
def recording() -> Iterator[list[Launch]]:
    """Within the block, ``launch`` records each launch into the yielded list instead of running it."""
    launches: list[Launch] = []
    _recording.append(launches)
    try:
        yield launches
    finally:
        _recording.pop()
