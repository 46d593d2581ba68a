"""Python floats handed to Triton kernels without losing float64 precision.

Triton passes a Python float argument as float32 on a GPU (and, under the interpreter, as float32 whenever the value
fits), so a float64 kernel given ``alpha=0.2`` computes with 0.20000000298. Scalars that a float64 path must see
exactly travel as the two 32-bit halves of their float64 bit pattern (two int32 arguments: exact for every double,
inf, NaN and subnormals included) and are put back together in the kernel; float32 math then rounds them to nearest,
as PyTorch rounds a Python scalar for a float32 tensor.
"""

from __future__ import annotations

import struct

import triton
import triton.language as tl


def f64_halves(value: float) -> tuple[int, int]:
    """The float64 bit pattern of ``value`` as (high, low) 32-bit halves, each an int32 (signed) value."""
    bits = struct.unpack("<q", struct.pack("<d", float(value)))[0]
    return bits >> 32, ((bits & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000


@triton.jit
def f64_from_halves(hi, lo):
    """The float64 whose bit pattern ``f64_halves`` split into ``hi`` and ``lo``."""
    # tl.cast, not .to: Inductor's reading of which arguments a kernel writes passes scalars as Python ints
    bits = (tl.cast(hi, tl.int64) << 32) | (tl.cast(lo, tl.int64) & 0xFFFFFFFF)
    return bits.to(tl.float64, bitcast=True)
