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
#include <math.h>
#include <stdint.h>
#include <string.h>
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

// math_exp, math_tanh, math_log1p: the transcendental functions of the kernels' formulas (*.h). On a GPU, CUDA's. On
// the host in float (the math type of float32, float16 and bfloat16 tensors), the branch-free versions below, plain
// arithmetic the compiler vectorises: a libm call keeps a CPU kernel's loop scalar (tanh ran 16x slower than
// PyTorch's vectorised one on a DCGAN-sized map), and every instruction-set copy of a loop (csrc/cpu_vec.h) computes
// the same bits. Within 2 ulp of the exact values where their results are normal (tests/test_bias_act.py; over every
// 97th float: exp 0.97, tanh 1.31, log1p 1.44); NaN, inf and -0 as in C. In double (float64 tensors: gradcheck), the
// C library's.
#if !defined(__CUDA_ARCH__) && !defined(__CUDACC_RTC__)
namespace host_math {

inline float from_bits(uint32_t i) {
    float f;
    memcpy(&f, &i, sizeof f);
    return f;
}

inline uint32_t to_bits(float f) {
    uint32_t i;
    memcpy(&i, &f, sizeof i);
    return i;
}

// exp(x) = 2^k exp(r), k = round(x / ln 2), r = x - k ln 2 (ln 2 in two parts, the first exact in k's product),
// |r| <= ln 2 / 2; exp(r) by Cephes' expf polynomial; 2^k applied as two normal factors, so a subnormal result is
// rounded once and an overflow gives inf without a special case.
inline float exp(float x) {
    x = x > 88.8f ? 88.8f : x;  // beyond overflow (88.72); NaN fails both tests and stays NaN
    x = x < -104.0f ? -104.0f : x;  // below the smallest subnormal's half (-103.97): rounds to 0
    float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest (1.5 * 2^23)
    const float r = (x - k * 0.693359375f) - k * -2.12194440e-4f;
    const float p = (((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r + 4.1665795894e-2f) * r
                      + 1.6666665459e-1f) * r + 5.0000001201e-1f) * (r * r) + r + 1.0f;
    k = k == k ? k : 0.0f;  // NaN: p is NaN already; a defined integer conversion
    const int32_t ki = static_cast<int32_t>(k);  // in [-150, 128]
    const int32_t k1 = ki >> 1, k2 = ki - k1;    // each in [-75, 64]
    return p * from_bits(static_cast<uint32_t>(k1 + 127) << 23) * from_bits(static_cast<uint32_t>(k2 + 127) << 23);
}

// |x| < 0.625: x + x^3 P(x^2) (Cephes' tanhf), else sign(x) (1 - 2 / (exp(2|x|) + 1)).
inline float tanh(float x) {
    const float a = fabsf(x), z = x * x;
    const float small = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z
                          + 1.33314422036e-1f) * z - 3.33332819422e-1f) * z * x + x;
    const float large = copysignf(1.0f - 2.0f / (exp(a + a) + 1.0f), x);
    return a < 0.625f ? (x == 0.0f ? x : small) : large;  // x == 0: keeps -0
}

// log1p(x) = log(u) - ((u - 1) - x) / u for u = 1 + x rounded (the correction is u's rounding error), log(u) =
// e ln 2 + log(m) with u = m 2^e, m in [sqrt(1/2), sqrt(2)), log(m) by Cephes' logf polynomial.
inline float log1p(float x) {
    const float u = 1.0f + x;
    const uint32_t bits = to_bits(u) + (0x3f800000u - 0x3f3504f3u);
    const float e = static_cast<float>(static_cast<int32_t>(bits >> 23) - 127);
    const float f = from_bits((bits & 0x007fffffu) + 0x3f3504f3u) - 1.0f;
    const float z = f * f;
    float y = ((((((((7.0376836292e-2f * f - 1.1514610310e-1f) * f + 1.1676998740e-1f) * f - 1.2420140846e-1f) * f
                   + 1.4249322787e-1f) * f - 1.6668057665e-1f) * f + 2.0000714765e-1f) * f - 2.4999993993e-1f) * f
              + 3.3333331174e-1f) * f * z;
    y = y + e * -2.12194440e-4f - 0.5f * z;
    const float r = (f + y + e * 0.693359375f) - ((u - 1.0f) - x) / u;
    const float special = u == 0.0f ? -HUGE_VALF : u == HUGE_VALF ? u : NAN;  // x = -1, inf; x < -1 or NaN
    return u > 0.0f && u < HUGE_VALF ? (x == 0.0f ? x : r) : special;  // x == 0: keeps -0
}

}  // namespace host_math
#endif

#if defined(__CUDA_ARCH__) || defined(__CUDACC_RTC__)
FASTGAN_HD float math_exp(float x) { return exp(x); }
FASTGAN_HD float math_tanh(float x) { return tanh(x); }
FASTGAN_HD float math_log1p(float x) { return log1p(x); }
#else
FASTGAN_HD float math_exp(float x) { return host_math::exp(x); }
FASTGAN_HD float math_tanh(float x) { return host_math::tanh(x); }
FASTGAN_HD float math_log1p(float x) { return host_math::log1p(x); }
#endif
FASTGAN_HD double math_exp(double x) { return exp(x); }
FASTGAN_HD double math_tanh(double x) { return tanh(x); }
FASTGAN_HD double math_log1p(double x) { return log1p(x); }

#if defined(__CUDACC__)
// The type kernels compute in: float for float, half and bfloat16; double for double.
template <typename T> struct MathType { using type = float; };
template <> struct MathType<double> { using type = double; };

// Element i of p in its math type. FASTGAN_TRACE_LOAD: the CPU emulation's count of the memory each warp's loads
// touch (tests/cuda_emu); nothing in a real build.
template <typename T>
__device__ __forceinline__ typename MathType<T>::type load(const T* p, int64_t i) {
#ifdef FASTGAN_TRACE_LOAD
    FASTGAN_TRACE_LOAD(p + i, sizeof(T));
#endif
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
