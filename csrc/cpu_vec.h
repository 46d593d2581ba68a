// Building blocks of the CPU kernels (C++ only: includes ATen). Every CPU kernel walks memory in contiguous runs whose
// channel is known from the loop (an NCHW plane: one channel; a channels_last row: channel j at position j), so no
// element computes an index by division. A run is processed in blocks of kCpuBlock values: reduced-precision
// elements are converted to the math type into a stack buffer (at::vec::convert), the shared formulas of the *.h
// headers run in plain loops over those buffers (the activation is a template constant, so they compile to
// branch-free vector code), and sums use kCpuLanes accumulators in a fixed lane order. Every parallel task runs
// compiled for the instruction set PyTorch's own CPU kernels use here (cpu::parallel_for below).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/Version.h>

#include <algorithm>
#include <atomic>
#include <string>
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

// Adds a[0..n) and a[k] * b[k] into kCpuLanes accumulators each (value k into lane k % kCpuLanes), which a caller
// keeps across blocks and folds (fold_lanes) in index order: the same bits for any thread count (each call runs on
// one thread), whatever the caller's split into tasks. Plain loops rather than at::vec::Vectorized, which in this
// extension's baseline build is an array class compiled to scalar code through the stack (3x slower).
template <typename M>
inline void add_lanes(const M* __restrict a, const M* __restrict b, int64_t n, M* __restrict acc_a,
                      M* __restrict acc_ab) {
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
}

// Adds the lanes, in index order, to total, and clears them.
template <typename M, typename T>
inline void fold_lanes(M* acc, T& total) {
    M s = M(0);
    for (int64_t j = 0; j < kCpuLanes; ++j) {
        s += acc[j];
        acc[j] = M(0);
    }
    total += s;
}

// --- instruction sets ---
// The extension is built for the baseline of its architecture (x86-64: SSE2), like any wheel. On x86-64 each task of
// cpu::parallel_for runs in one of three copies of its body: the task's code with every call in it inlined
// (flatten) and compiled for AVX-512, for AVX2 + FMA, or for the baseline. The copy is the instruction set PyTorch
// chose for its own kernels (torch.backends.cpu.get_cpu_capability(): the CPU's best, or ATEN_CPU_CAPABILITY's),
// capped by limit_isa (tests run every copy). The copies compute the same bits: no FMA contraction
// (-ffp-contract=off, which the build declares by FASTGAN_FP_CONTRACT_OFF; without it only the baseline copy is
// built), sums in fixed lanes, no reassociation. The targets are what PyTorch checks for its AVX2 and AVX512 kernels.
enum class Isa : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

inline const char* isa_name(Isa isa) {
    return isa == Isa::kAvx512 ? "avx512" : isa == Isa::kAvx2 ? "avx2" : "baseline";
}

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && defined(FASTGAN_FP_CONTRACT_OFF)
#define FASTGAN_CPU_MULTI_ISA 1
#define FASTGAN_FLATTEN __attribute__((flatten))
#define FASTGAN_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define FASTGAN_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
#else
#define FASTGAN_CPU_MULTI_ISA 0
#define FASTGAN_FLATTEN
#endif

inline std::atomic<int>& isa_limit() {
    static std::atomic<int> limit{static_cast<int>(Isa::kAvx512)};
    return limit;
}

// The instruction set of PyTorch's CPU kernels in this process, as one of ours.
inline Isa torch_isa() {
#if FASTGAN_CPU_MULTI_ISA
    static const Isa isa = [] {
        const std::string cap = at::get_cpu_capability();  // "AVX512", "AVX2", "NO AVX"
        return cap == "AVX512" ? Isa::kAvx512 : cap == "AVX2" ? Isa::kAvx2 : Isa::kBaseline;
    }();
    return isa;
#else
    return Isa::kBaseline;
#endif
}

// The instruction set the kernels run with now.
inline Isa current_isa() { return static_cast<Isa>(std::min(static_cast<int>(torch_isa()), isa_limit().load())); }

// Caps the instruction set (tests; a limit above what the CPU has changes nothing).
inline void limit_isa(Isa isa) { isa_limit().store(static_cast<int>(isa)); }

template <typename F>
FASTGAN_FLATTEN void run_baseline(const F& f) { f(); }

#if FASTGAN_CPU_MULTI_ISA
template <typename F>
FASTGAN_TARGET_AVX2 FASTGAN_FLATTEN void run_avx2(const F& f) { f(); }

template <typename F>
FASTGAN_TARGET_AVX512 FASTGAN_FLATTEN void run_avx512(const F& f) { f(); }
#endif

// at::parallel_for whose tasks run body(begin, end) compiled for current_isa().
template <typename F>
void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& body) {
    const Isa isa = current_isa();
    at::parallel_for(begin, end, grain, [&](int64_t b, int64_t e) {
        const auto task = [&] { body(b, e); };
#if FASTGAN_CPU_MULTI_ISA
        if (isa == Isa::kAvx512) return run_avx512(task);
        if (isa == Isa::kAvx2) return run_avx2(task);
#endif
        run_baseline(task);
    });
}

}  // namespace cpu
}  // namespace fastgan
