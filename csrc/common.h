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

// The digits of a flat index i = (d2 * s1 + d1) * s0 + d0 in the mixed radix (s0, s1, unbounded), advanced by a
// fixed step with adds and compares only: a grid-stride loop divides once per thread, where recomputing the channel
// of each element, (i / s0) % s1, took two 64-bit divisions per element (a 64-bit division is a ~70-instruction
// subroutine on a GPU). Construct it only for i < the loop's end: the radixes may be 0 when there is no element.
struct RadixWalker {
    int64_t d0, d1, d2;   // the digits of the current index
    int64_t e0, e1, e2;   // the digits of the step
    int64_t s0, s1;

    FASTGAN_HD RadixWalker(int64_t i, int64_t step, int64_t radix0, int64_t radix1) : s0(radix0), s1(radix1) {
        int64_t q = i / s0;
        d0 = i - q * s0;
        d2 = q / s1;
        d1 = q - d2 * s1;
        q = step / s0;
        e0 = step - q * s0;
        e2 = q / s1;
        e1 = q - e2 * s1;
    }

    // Digits below their radix plus a step's digits (each below its radix) carry at most 1.
    FASTGAN_HD void advance() {
        d0 += e0;
        const int64_t carry0 = d0 >= s0 ? 1 : 0;
        d0 -= carry0 * s0;
        d1 += e1 + carry0;
        const int64_t carry1 = d1 >= s1 ? 1 : 0;
        d1 -= carry1 * s1;
        d2 += e2 + carry1;
    }
};

}  // namespace fastgan
