// Macros, dtype codes and conversions shared by the C++ (CPU) and CUDA kernels. Includes nothing from PyTorch, so
// .cu files that include it compile with nvcc alone, and the kernel headers (*_kernels.cuh) with NVRTC at run time
// (fastgan/_nvrtc.py), which has no C library headers: __CUDACC_RTC__ gets the fixed-width integers from here and the
// math functions as compiler built-ins.
#pragma once

#if defined(__CUDACC_RTC__)
typedef signed char int8_t;
typedef int int32_t;
typedef long long int64_t;
typedef unsigned char uint8_t;
typedef unsigned int uint32_t;
typedef unsigned long long uint64_t;
#else
#include <stdint.h>
#endif

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#define FASTGAN_HD __host__ __device__ __forceinline__
#else
#define FASTGAN_HD inline
#endif

namespace fastgan {

// Threads per block of every CUDA kernel but the one-block loss reductions, which take up to kMaxThreads. Here, not
// in launch.h, because kernels size their shared memory and strides by them.
constexpr int kThreads = 256;
constexpr int kMaxThreads = 1024;

// The element types every kernel supports, as handed from the torch-facing glue to a launcher.
enum class DType : int { Float32 = 0, Float16, BFloat16, Float64 };

// cast_to<To>(v): a value converted between element and math types. A plain static_cast everywhere except CUDA's half
// types: PyTorch builds extensions with __CUDA_NO_HALF_CONVERSIONS__ / __CUDA_NO_BFLOAT16_CONVERSIONS__, which remove
// their implicit conversions, so they convert through the explicit round-to-nearest intrinsics, by way of float.
template <typename T> struct IsCudaHalf { static constexpr bool value = false; };

#if defined(__CUDACC__)
template <> struct IsCudaHalf<__half> { static constexpr bool value = true; };
template <> struct IsCudaHalf<__nv_bfloat16> { static constexpr bool value = true; };
FASTGAN_HD float half_to_float(__half v) { return __half2float(v); }
FASTGAN_HD float half_to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> FASTGAN_HD T half_from_float(float v);
template <> FASTGAN_HD __half half_from_float<__half>(float v) { return __float2half_rn(v); }
template <> FASTGAN_HD __nv_bfloat16 half_from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
#endif

template <typename To, typename From>
FASTGAN_HD To cast_to(From v) {
#if defined(__CUDACC__)
    if constexpr (IsCudaHalf<From>::value && IsCudaHalf<To>::value) {
        return half_from_float<To>(half_to_float(v));
    } else if constexpr (IsCudaHalf<From>::value) {
        return static_cast<To>(half_to_float(v));
    } else if constexpr (IsCudaHalf<To>::value) {
        return half_from_float<To>(static_cast<float>(v));
    } else {
        return static_cast<To>(v);
    }
#else
    return static_cast<To>(v);
#endif
}

#if defined(__CUDACC__)
// The type kernels compute in: float for float, half and bfloat16; double for double.
template <typename T> struct MathType { using type = float; };
template <> struct MathType<double> { using type = double; };

// Element i of p in its math type.
template <typename T>
__device__ __forceinline__ typename MathType<T>::type load(const T* p, int64_t i) {
    return cast_to<typename MathType<T>::type>(p[i]);
}
#endif

}  // namespace fastgan
