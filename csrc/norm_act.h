// norm_act: batch / instance normalization followed by an activation (bias_act.h's table), shared by the CPU kernels
// in norm_act.cpp and the CUDA kernels in norm_act.cu.
//
// x is seen as [N, C, L] (L = the spatial dims flattened) with strides (sN, sC, sL): contiguous NCHW has
// (C*L, L, 1), channels_last (L*C, 1, C). A statistic group is a channel (batch norm: its N*L values) or a
// (sample, channel) pair (instance norm: its L values); group g has channel g % C. The j-th value of a group lives at
// group_offset(g, j), and the value at memory offset i belongs to group element_group(i): the specification (and the
// Triton kernels'); the CUDA kernels walk the same offsets and groups without their per-value divisions
// (walker_offset, walker_group).
#pragma once

#if !defined(__CUDACC_RTC__)  // NVRTC: common.h defines the integers, math functions are built in
#include <stdint.h>
#include <math.h>
#endif

#include "bias_act.h"

namespace fastgan {

// Values of one group reduced by one CUDA block (NCHW; channels_last: norm_act_row_chunk below); a group has
// norm_act_chunks() (launch.h) chunks whose partial results are merged in a fixed order: deterministic reductions.
constexpr int64_t kNormActChunk = 4096;

// channels_last (norm_act_rows): a CUDA block reduces kNormActTile adjacent channels (one per lane of a warp) over a
// chunk of norm_act_row_chunk() values of each (rows (n, l) of the [N, L, C] memory), so a warp reads a row's
// channels side by side instead of one channel's values C apart.
constexpr int kNormActTile = 32;

struct NormActParams {
    const void* x;        // input [N, C, L] in the strides below
    const void* dy;       // incoming gradient, laid out as x (backward)
    void* out;            // y (forward) or dx (backward), laid out as x
    const void* w;        // [C] weight in the math type, or nullptr (1); per_sample: [N, C] scale
    const void* b;        // [C] bias in the math type, or nullptr (0); per_sample: [N, C] shift
    const void* mean;     // [groups] mean in the math type
    const void* var;      // [groups] biased variance in the math type
    const void* sum_dz;       // [groups] sum of dL/dz (backward, training)
    const void* sum_dz_xhat;  // [groups] sum of dL/dz * xhat (backward, training)
    int64_t N, C, L;
    int64_t sN, sC, sL;
    int64_t groups;       // C, or N * C for instance statistics
    int64_t group_size;   // values per group: N * L, or L
    bool instance;        // groups are (sample, channel) pairs
    // Conditional batch norm: w and b are read per (sample, channel) (affine_index), the statistics stay per channel.
    // Its forward reduces per channel (instance false); its backward reduces per (sample, channel) (instance true,
    // mean/var repeated per sample), which gives the [N, C] gradients, and its dx takes the channel's sums of
    // w * dz and w * dz * xhat (per_sample_sums) over the channel's N * L values (norm_dx_count).
    bool per_sample;
    bool use_input_stats; // training: dx carries the mean/variance terms
    double eps;           // double, so float64 kernels see the exact values (cast to the math type)
    int act;
    double alpha;
};

FASTGAN_HD int64_t group_offset(const NormActParams& p, int64_t g, int64_t j) {
    const int64_t c = g % p.C;
    const int64_t n = p.instance ? g / p.C : j / p.L;
    const int64_t l = p.instance ? j : j % p.L;
    return n * p.sN + c * p.sC + l * p.sL;
}

FASTGAN_HD int64_t element_group(const NormActParams& p, int64_t i) {
    // The batch stride is the largest (C * L) in both supported layouts, so i / sN is the sample.
    const int64_t c = (i / p.sC) % p.C;
    return p.instance ? (i / p.sN) * p.C + c : c;
}

// Value j of group g is at group_base(g) + (j / L) * sN + (j % L) * sL (instance statistics: j < L, so j / L = 0):
// group_offset without its divisions, from a RadixWalker over j in the radix (L, N) (walker_offset).
FASTGAN_HD int64_t group_base(const NormActParams& p, int64_t g) {
    return (p.instance ? (g / p.C) * p.sN : 0) + (g % p.C) * p.sC;
}

// The reductions walk rows of channels: channel stride 1 with more than one channel (with one, or with L == 1 in
// NCHW, either walk reads memory in order; the rows walk is right for any strides).
FASTGAN_HD bool norm_act_rows(const NormActParams& p) { return p.sC == 1 && p.C > 1; }

// The chunk of a channels_last reduction block: 512 values (64 a thread: enough blocks for a GPU at DCGAN sizes), or
// more in multiples of 512 so that a group has at most 256 chunks, which one thread merges in turn.
FASTGAN_HD int64_t norm_act_row_chunk(const NormActParams& p) {
    const int64_t per_chunk = (p.group_size + 255) / 256;
    return per_chunk <= 512 ? 512 : (per_chunk + 511) / 512 * 512;
}

FASTGAN_HD int64_t walker_offset(const NormActParams& p, int64_t base, const RadixWalker& at) {
    return base + at.d1 * p.sN + at.d0 * p.sL;
}

// The walker of a grid-stride loop over memory offsets (see RadixWalker in common.h): contiguous memory is
// (n, c, l) with l fastest, radix (L, C); channels_last is (n, l, c), radix (C, L). walker_channel/walker_group read
// the walker's digits, so the elementwise kernels find each value's group without dividing.
FASTGAN_HD RadixWalker element_walker(const NormActParams& p, int64_t i, int64_t step) {
    return p.sC == 1 ? RadixWalker(i, step, p.C, p.L) : RadixWalker(i, step, p.L, p.C);
}

FASTGAN_HD int64_t walker_channel(const NormActParams& p, const RadixWalker& at) {
    return p.sC == 1 ? at.d0 : at.d1;
}

FASTGAN_HD int64_t walker_group(const NormActParams& p, const RadixWalker& at) {
    const int64_t c = walker_channel(p, at);
    return p.instance ? at.d2 * p.C + c : c;
}

// Where w and b of sample n, channel c are: c, or n * C + c with per_sample ([N, C] scale and shift).
FASTGAN_HD int64_t affine_index(const NormActParams& p, int64_t n, int64_t c) {
    return p.per_sample ? n * p.C + c : c;
}

FASTGAN_HD int64_t walker_affine(const NormActParams& p, const RadixWalker& at) {
    return affine_index(p, at.d2, walker_channel(p, at));
}

// Running (count, mean, m2) of a sequence, merged with Chan et al.'s pairwise formula: exact up to rounding for any
// split, so chunks can be reduced independently and merged in a fixed order (deterministic results).
template <typename T>
struct Moments {
    T count = T(0), mean = T(0), m2 = T(0);

    FASTGAN_HD void merge(T n_b, T mean_b, T m2_b) {
        if (n_b == T(0)) return;
        const T n = count + n_b;
        if (!isfinite(mean) || !isfinite(mean_b)) {
            // Non-finite data: the mean is +-inf or NaN as sum(x) / n is (inf + inf = inf, inf - inf = NaN), and
            // m2 is already NaN (PyTorch's variance of data holding an inf or a NaN).
            mean += mean_b;
            m2 += m2_b;
            count = n;
            return;
        }
        const T delta = mean_b - mean;
        mean += delta * (n_b / n);
        m2 += m2_b + delta * (delta * (count * n_b / n));  // not delta^2 first: inf * 0 on the first merge
        count = n;
    }
};

// Moments of a chunk from sums of shifted values d = x - shift: with the shift a value of the data, the sums stay
// of the order of the spread, so m2 = s2 - s1^2 / n does not cancel catastrophically (x = 1000 + randn is fine).
// Data holding an inf or a NaN give the mean sum(x) / n gives (+-inf or NaN) and a NaN m2, as PyTorch's batch norm:
// the shift is then finite (shift_of), and a NaN m2 is not clamped to 0; finite data too large to square give inf.
template <typename T>
FASTGAN_HD void shifted_moments(T n, T shift, T s1, T s2, T& mean, T& m2) {
    mean = shift + s1 / n;
    const T m = s2 - s1 * (s1 / n);
    m2 = m < T(0) ? T(0) : m;
    // Finite data whose squares overflow: the variance overflows too (inf, not the NaN of inf - inf).
    if (isfinite(s1) && isinf(s2)) m2 = s2;
}

// The shift of a group's sums: its first value, or 0 if that is not finite (an inf shift would turn the sums of
// data holding another inf into NaN, where PyTorch's mean is inf).
template <typename T>
FASTGAN_HD T shift_of(T first) { return isfinite(first) ? first : T(0); }

template <typename T>
FASTGAN_HD T inv_std(T var, T eps) { return T(1) / sqrt(var + eps); }

// z = (x - mean) * invstd * w + b: the pre-activation of one value.
template <typename T>
FASTGAN_HD T norm_z(T x, T mean, T invstd, T w, T b) { return (x - mean) * invstd * w + b; }

// dx of one value. Training: dx = w * invstd * (dz - mean(dz) - xhat * mean(dz * xhat)); evaluation (running
// statistics are constants): dx = dz * w * invstd.
template <typename T>
FASTGAN_HD T norm_dx(bool use_input_stats, T dz, T xhat, T w, T invstd, T sum_dz, T sum_dz_xhat, T count) {
    if (!use_input_stats) return dz * w * invstd;
    return w * invstd * (dz - sum_dz / count - xhat * (sum_dz_xhat / count));
}

// norm_dx with per_sample w: dL/dxhat = w * dz is no longer w times a function of the channel's values, so the
// means are of w * dz (sum_dz, sum_dz_xhat: the channel's sums of w * dz and w * dz * xhat, per_sample_sums):
// dx = invstd * (w * dz - mean(w * dz) - xhat * mean(w * dz * xhat)); with w per channel this is norm_dx.
template <typename T>
FASTGAN_HD T norm_dx_any(bool use_input_stats, bool per_sample, T dz, T xhat, T w, T invstd, T sum_dz,
                         T sum_dz_xhat, T count) {
    if (!per_sample) return norm_dx<T>(use_input_stats, dz, xhat, w, invstd, sum_dz, sum_dz_xhat, count);
    return norm_dx<T>(use_input_stats, dz * w, xhat, T(1), invstd, sum_dz, sum_dz_xhat, count);
}

// The count of the means in dx: a group's values, or with per_sample (groups of one sample) the channel's N * L.
FASTGAN_HD int64_t norm_dx_count(const NormActParams& p) {
    return p.per_sample ? p.N * p.L : p.group_size;
}

// Channel c of conditional batch norm's backward: the per-(sample, channel) sums s_dz, s_dzx (dshift, dscale)
// weighted by w and added over the samples in order, in double, written for every sample (out_dz[n * C + c]), so dx
// reads them per group.
template <typename M>
FASTGAN_HD void per_sample_sums(const NormActParams& p, int64_t c, const M* s_dz, const M* s_dzx, M* out_dz,
                                M* out_dzx) {
    const M* w = static_cast<const M*>(p.w);
    double a = 0, b = 0;
    for (int64_t n = 0; n < p.N; ++n) {
        const int64_t g = n * p.C + c;
        const double wg = w ? static_cast<double>(w[g]) : 1.0;
        a += wg * static_cast<double>(s_dz[g]);
        b += wg * static_cast<double>(s_dzx[g]);
    }
    for (int64_t n = 0; n < p.N; ++n) {
        out_dz[n * p.C + c] = static_cast<M>(a);
        out_dzx[n * p.C + c] = static_cast<M>(b);
    }
}

// --- running statistics (fastgan::norm_act_update_stats) ---------------------------------------------------------

struct UpdateStatsParams {
    void* running_mean;   // [C] buffer (any floating dtype), element stride below
    void* running_var;
    int64_t stride_mean, stride_var;
    const void* mean;     // [batch * C] per-group mean (float32 or float64: the statistics dtype)
    const void* var;      // [batch * C] per-group biased variance
    int64_t C;
    int64_t batch;        // 1 (batch norm), or the samples whose statistics are averaged (instance norm)
    double ratio;         // count / (count - 1): biased -> unbiased variance
    double momentum;      // the running-average weight of this step, unless cumulative
    int64_t* steps;       // num_batches_tracked (0-dim int64), advanced by 1 after the update; nullptr: none
    bool cumulative;      // momentum=None: the weight is 1 / steps, counting this step (needs steps)
    DType buffers;        // the buffers' dtype (a runtime value in the training forward's merge kernel)
};

// The weight of this step's statistics, read before the step counter advances (as nn.BatchNorm computes it after
// its increment: 1 / (steps + 1) over the old count).
FASTGAN_HD double running_factor(const UpdateStatsParams& p) {
    return p.cumulative ? 1.0 / static_cast<double>(*p.steps + 1) : p.momentum;
}

// torch.lerp(start, end, weight) as PyTorch's vectorized kernel computes it: from `start` for weights below 0.5, from
// `end` otherwise (exact at weight 1, the first step of a cumulative average), with one fused multiply-add.
template <typename T>
FASTGAN_HD T lerp_like_torch(T start, T end, T weight) {
    const bool small = fabs(weight) < T(0.5);
    return fma(small ? weight : weight - T(1), end - start, small ? start : end);
}

// Channel c of `running = lerp(running, stat, factor)` for both buffers: the unbiased variance per group and the
// batch average in the statistics type S (samples in order), the lerp in B's math type M (float for half/bfloat16/
// float) and one rounding to the buffer type B, as PyTorch's batch norm updates its buffers (a statistic beyond the
// range of a float16 buffer, such as a variance of 1e5, is not rounded to inf before the lerp). The variance
// sum takes one explicit fma per sample, so compilers that contract (nvcc, Triton) cannot make the CPU, CUDA and
// Triton results differ; with one sample (batch norm) that is the rounded product the former ops computed.
template <typename B, typename S, typename M>
FASTGAN_HD void update_running_channel(const UpdateStatsParams& p, int64_t c, double factor) {
    const S* mean = static_cast<const S*>(p.mean);
    const S* var = static_cast<const S*>(p.var);
    const S ratio = static_cast<S>(p.ratio);
    S m = S(0), v = S(0);
    for (int64_t n = 0; n < p.batch; ++n) {
        m += mean[n * p.C + c];
        v = fma(var[n * p.C + c], ratio, v);
    }
    if (p.batch > 1) {
        m /= static_cast<S>(p.batch);
        v /= static_cast<S>(p.batch);
    }
    B* rm = static_cast<B*>(p.running_mean) + c * p.stride_mean;
    B* rv = static_cast<B*>(p.running_var) + c * p.stride_var;
    const M weight = static_cast<M>(factor);
    *rm = cast_to<B>(lerp_like_torch<M>(cast_to<M>(*rm), static_cast<M>(m), weight));
    *rv = cast_to<B>(lerp_like_torch<M>(cast_to<M>(*rv), static_cast<M>(v), weight));
}

}  // namespace fastgan
