// Building blocks of the CPU kernels (C++ only: includes ATen). Every CPU kernel walks memory in contiguous runs whose
// channel is known from the loop (an NCHW plane: one channel; a channels_last row: channel j at position j), so no
// element computes an index by division. A run is processed in blocks of kCpuBlock values: reduced-precision
// elements are converted to the math type into a stack buffer (at::vec::convert), the shared formulas of the *.h
// headers run in plain loops over those buffers (the activation is a template constant, so they compile to
// branch-free vector code), and sums use kCpuLanes accumulators in a fixed lane order.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/cpu/vec/functional.h>

#include <algorithm>
#include <type_traits>

namespace fastgan {
namespace cpu {

// Values per block: small enough that a block's buffers stay in L1, large enough to amortize the loop overhead.
constexpr int64_t kCpuBlock = 256;

// Values summed in the math type before the running total moves to double: float32 sums of up to 2048 values stay
// within ~1e-6 relative of exact for data of one sign, and the double totals keep long groups (a CycleGAN plane has
// 65536 values) as exact as the former all-double loops.
constexpr int64_t kCpuFold = 2048;

// A read-only view of n values of T at p in the math type M: p itself when T is M, else a converted copy in buf.
template <typename T, typename M>
inline const M* as_math(const T* p, int64_t n, M* buf) {
    if constexpr (std::is_same_v<T, M>) {
        return p;
    } else {
        at::vec::convert<T, M>(p, buf, n);
        return buf;
    }
}

// Where a block's results in M go before they reach n values of T at p: p itself when T is M, else buf (flushed to
// p by store_math).
template <typename T, typename M>
inline M* out_math(T* p, M* buf) {
    if constexpr (std::is_same_v<T, M>) {
        return p;
    } else {
        return buf;
    }
}

template <typename T, typename M>
inline void store_math(const M* buf, int64_t n, T* p) {
    if constexpr (!std::is_same_v<T, M>) at::vec::convert<M, T>(buf, p, n);
}

// Lanes of the sums below: each lane is a separate accumulator, so the compiler vectorises them without
// reassociating (no -ffast-math) and the result is the same bits for any instruction set.
constexpr int64_t kCpuLanes = 8;

// The sums of a[0..n) and of a[k] * b[k] over kCpuLanes accumulators, lanes added in index order: the same bits for
// any thread count (each call runs on one thread), whatever the caller's split into tasks. Plain loops rather than
// at::vec::Vectorized: this extension is built for the baseline ISA (no CPU_CAPABILITY), where Vectorized is an
// array class whose operators compiled to scalar code through the stack (measured: 3x slower than these loops).
template <typename M>
inline void sum_and_dot(const M* a, const M* b, int64_t n, M& sum_a, M& sum_ab) {
    M acc_a[kCpuLanes] = {}, acc_ab[kCpuLanes] = {};
    int64_t k = 0;
    for (; k + kCpuLanes <= n; k += kCpuLanes) {
        for (int64_t j = 0; j < kCpuLanes; ++j) {
            acc_a[j] += a[k + j];
            acc_ab[j] += a[k + j] * b[k + j];
        }
    }
    for (int64_t j = 0; k + j < n; ++j) {  // the tail, into the first lanes
        acc_a[j] += a[k + j];
        acc_ab[j] += a[k + j] * b[k + j];
    }
    M s = M(0), sp = M(0);
    for (int64_t j = 0; j < kCpuLanes; ++j) {
        s += acc_a[j];
        sp += acc_ab[j];
    }
    sum_a += s;
    sum_ab += sp;
}

}  // namespace cpu
}  // namespace fastgan
