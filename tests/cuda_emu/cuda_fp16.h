// Stand-in for CUDA's half type under the emulation: IEEE binary16 storage, converted with round-to-nearest-even
// (GCC's _Float16), through the explicit intrinsics fastgan's kernels use (PyTorch disables the implicit ones).
#pragma once

#include "cuda_emu.h"

struct __half {
    _Float16 v;
};

inline float __half2float(__half h) { return static_cast<float>(h.v); }
inline __half __float2half_rn(float f) { return __half{static_cast<_Float16>(f)}; }
