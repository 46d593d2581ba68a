// Macros shared by the C++ (CPU) and CUDA kernels. Includes nothing from PyTorch, so .cu files that include
// it compile with nvcc alone.
#pragma once

#if defined(__CUDACC__)
#define FASTGAN_HD __host__ __device__ __forceinline__
#else
#define FASTGAN_HD inline
#endif
