// Stand-in for CUDA's runtime header under the emulation (cuda_emu.h): streams are ignored, launches run in order.
#pragma once

#include "cuda_emu.h"

typedef struct CUstream_st* cudaStream_t;
typedef int cudaError_t;

inline cudaError_t cudaGetLastError() { return 0; }

inline cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t) {
    std::memset(p, value, bytes);
    return 0;
}
