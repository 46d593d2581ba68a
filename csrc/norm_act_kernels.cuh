// norm_act CUDA kernels: per-(group, chunk) block reductions merged in a fixed order (deterministic), grid-stride
// elementwise kernels for y and dx, and the running-statistics update (one thread per channel).
//
// Kernel code only: the same text is compiled by nvcc (included by norm_act_cuda.cu) and by NVRTC at run time
// (fastgan/_nvrtc.py, for builds without nvcc), so it includes nothing but the project's math headers, and everything
// a kernel calls is a __device__ or host-and-device function. Launch rules (grid, block) are in launch.h.
#pragma once

#include "norm_act.h"

namespace fastgan {

// Sum of (a, b) over the block, in a fixed tree order (warp shuffles, then one warp over the warp sums).
template <typename M>
__device__ void block_sum2(M& a, M& b) {
    __shared__ M shared[2][kThreads / 32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    for (int offset = 16; offset > 0; offset /= 2) {
        a += __shfl_down_sync(0xffffffffu, a, offset);
        b += __shfl_down_sync(0xffffffffu, b, offset);
    }
    if (lane == 0) {
        shared[0][warp] = a;
        shared[1][warp] = b;
    }
    __syncthreads();
    if (warp == 0) {
        a = lane < kThreads / 32 ? shared[0][lane] : M(0);
        b = lane < kThreads / 32 ? shared[1][lane] : M(0);
        for (int offset = 16; offset > 0; offset /= 2) {
            a += __shfl_down_sync(0xffffffffu, a, offset);
            b += __shfl_down_sync(0xffffffffu, b, offset);
        }
    }
}

// The warps of a channels_last reduction block, each over the block's kNormActTile channels (a lane each).
constexpr int kRowWarps = kThreads / kNormActTile;

// Sums of (a, b) over the warps of each lane (a channel of a RowTile), in warp order; the result is valid in warp 0.
template <typename M>
__device__ void tile_sum2(M& a, M& b) {
    __shared__ M shared[2][kRowWarps][kNormActTile];
    const int lane = threadIdx.x % kNormActTile, warp = threadIdx.x / kNormActTile;
    shared[0][warp][lane] = a;
    shared[1][warp][lane] = b;
    __syncthreads();
    if (warp == 0) {
        for (int w = 1; w < kRowWarps; ++w) {
            a += shared[0][w][lane];
            b += shared[1][w][lane];
        }
    }
}

// A thread's share of a channels_last partial reduction (norm_act_rows; blocks: launch.h::norm_act_partial_blocks):
// the block takes tile t of kNormActTile channels (of sample t / tiles with instance statistics) and chunk k, lane l
// of every warp the tile's channel l, and warp w the values j0 + w, j0 + w + kRowWarps, ... (below j1) of its group.
struct RowTile {
    int64_t g, k, j0, j1;
    bool valid;  // a channel < C: a lane past the last channel only joins the block's sums

    __device__ RowTile(const NormActParams& p, int64_t chunks) {
        const int64_t tiles = (p.C + kNormActTile - 1) / kNormActTile, t = blockIdx.x / chunks;
        const int64_t c = (t % tiles) * kNormActTile + threadIdx.x % kNormActTile;
        k = blockIdx.x % chunks;
        valid = c < p.C;
        g = (t / tiles) * p.C + c;
        const int64_t chunk = norm_act_row_chunk(p);
        j0 = k * chunk;
        j1 = j0 + chunk < p.group_size ? j0 + chunk : p.group_size;
    }

    __device__ int64_t first() const { return j0 + threadIdx.x / kNormActTile; }
};

// One thread's sums over values first, first + step, ... (below end) of group g: of d = x - shift and d^2.
template <typename T>
__device__ void add_shifted_sums(const NormActParams& p, int64_t g, int64_t first, int64_t end, int64_t step,
                                 typename MathType<T>::type shift, typename MathType<T>::type& s1,
                                 typename MathType<T>::type& s2) {
    using M = typename MathType<T>::type;
    if (first >= end) return;
    const T* x = static_cast<const T*>(p.x);
    const int64_t base = group_base(p, g);
    RadixWalker at(first, step, p.L, p.N);  // (l, n) of value j: no division per value
    for (int64_t j = first; j < end; j += step, at.advance()) {
        const M d = load(x, walker_offset(p, base, at)) - shift;
        s1 += d;
        s2 += d * d;
    }
}

// (count, mean, m2) of a chunk of a group, from its shifted sums.
template <typename M>
__device__ void write_moments(M* out, int64_t count, M shift, M s1, M s2) {
    const M n = static_cast<M>(count);
    M mean, m2;
    shifted_moments<M>(n, shift, s1, s2, mean, m2);
    out[0] = n;
    out[1] = mean;
    out[2] = m2;
}

// One block per (group, chunk), or per (tile, chunk) with norm_act_rows: shifted sums of the chunk's values ->
// (count, mean, m2) partial.
template <typename T>
__global__ void stats_partial_kernel(NormActParams p, typename MathType<T>::type* partials, int64_t chunks) {
    using M = typename MathType<T>::type;
    const T* x = static_cast<const T*>(p.x);
    M s1 = 0, s2 = 0;
    if (norm_act_rows(p)) {
        const RowTile t(p, chunks);
        const M shift = t.valid ? shift_of(load(x, group_base(p, t.g))) : M(0);
        if (t.valid) add_shifted_sums<T>(p, t.g, t.first(), t.j1, kRowWarps, shift, s1, s2);
        tile_sum2(s1, s2);
        if (threadIdx.x < kNormActTile && t.valid) {
            write_moments<M>(partials + (t.g * chunks + t.k) * 3, t.j1 - t.j0, shift, s1, s2);
        }
        return;
    }
    const int64_t g = blockIdx.x / chunks, k = blockIdx.x % chunks;
    const int64_t j0 = k * kNormActChunk;
    const int64_t j1 = j0 + kNormActChunk < p.group_size ? j0 + kNormActChunk : p.group_size;
    const M shift = shift_of(load(x, group_base(p, g)));
    add_shifted_sums<T>(p, g, j0 + threadIdx.x, j1, kThreads, shift, s1, s2);
    block_sum2(s1, s2);
    if (threadIdx.x == 0) write_moments<M>(partials + (g * chunks + k) * 3, j1 - j0, shift, s1, s2);
}

// Channel c's running statistics from its statistics just merged, the buffers' dtype chosen at run time (they need
// not be x's: float32 buffers under autocast).
template <typename S>
__device__ void update_running_any(const UpdateStatsParams& u, int64_t c, double factor) {
    switch (u.buffers) {
        case DType::Float16: update_running_channel<__half, S, float>(u, c, factor); break;
        case DType::BFloat16: update_running_channel<__nv_bfloat16, S, float>(u, c, factor); break;
        case DType::Float64: update_running_channel<double, S, double>(u, c, factor); break;
        default: update_running_channel<float, S, float>(u, c, factor);
    }
}

// One thread per group: Chan's merge of the chunks, in chunk order, in double, into (mean, biased variance); with
// u.running_mean (the training forward, fastgan::norm_act_train) also that channel's running statistics, so the
// update costs no launch. The step counter is only read here (momentum=None): apply_kernel, launched next, advances
// it.
template <typename M>
__global__ void stats_merge_kernel(NormActParams p, const M* partials, int64_t chunks, M* mean, M* var,
                                   UpdateStatsParams u) {
    const int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (g >= p.groups) return;
    Moments<double> m;
    for (int64_t k = 0; k < chunks; ++k) {
        const M* part = partials + (g * chunks + k) * 3;
        m.merge(part[0], part[1], part[2]);
    }
    mean[g] = static_cast<M>(m.mean);
    var[g] = static_cast<M>(m.count > 0 ? m.m2 / m.count : 0.0);
    if (u.running_mean != nullptr) update_running_any<M>(u, g, running_factor(u));
}

// y = act(norm(x)); with `advance` (the training forward's step counter) its first thread counts the step, after
// stats_merge_kernel has read it.
template <typename T>
__global__ void apply_kernel(NormActParams p, int64_t numel, int64_t* advance) {
    using M = typename MathType<T>::type;
    const T* x = static_cast<const T*>(p.x);
    T* y = static_cast<T*>(p.out);
    const M* w = static_cast<const M*>(p.w);
    const M* b = static_cast<const M*>(p.b);
    const M* mean = static_cast<const M*>(p.mean);
    const M* var = static_cast<const M*>(p.var);
    const M alpha = static_cast<M>(p.alpha), eps = static_cast<M>(p.eps);
    const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
    int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (advance != nullptr && i == 0) *advance += 1;
    if (i >= numel) return;
    RadixWalker at = element_walker(p, i, stride);  // each value's channel and sample without a division
    for (; i < numel; i += stride, at.advance()) {
        const int64_t g = walker_group(p, at), a = walker_affine(p, at);
        const M z = norm_z<M>(load(x, i), mean[g], inv_std<M>(var[g], eps), w ? w[a] : M(1), b ? b[a] : M(0));
        y[i] = cast_to<T>(act_forward<M>(p.act, z, alpha));
    }
}

// One thread's sums over values first, first + step, ... (below end) of group g: of dz and dz * xhat.
template <typename T>
__device__ void add_grad_sums(const NormActParams& p, int64_t g, int64_t first, int64_t end, int64_t step,
                              typename MathType<T>::type& s_dz, typename MathType<T>::type& s_dzx) {
    using M = typename MathType<T>::type;
    if (first >= end) return;
    const T* x = static_cast<const T*>(p.x);
    const T* dy = static_cast<const T*>(p.dy);
    const int64_t a = p.per_sample ? g : g % p.C;  // per_sample: groups are (sample, channel) pairs, as w and b
    const M mean = static_cast<const M*>(p.mean)[g], invstd = inv_std<M>(static_cast<const M*>(p.var)[g], M(p.eps));
    const M wc = p.w ? static_cast<const M*>(p.w)[a] : M(1), bc = p.b ? static_cast<const M*>(p.b)[a] : M(0);
    const M alpha = static_cast<M>(p.alpha);
    const int64_t base = group_base(p, g);
    RadixWalker at(first, step, p.L, p.N);  // (l, n) of value j: no division per value
    for (int64_t j = first; j < end; j += step, at.advance()) {
        const int64_t i = walker_offset(p, base, at);
        const M xhat = (load(x, i) - mean) * invstd;
        const M dz = act_backward<M>(p.act, xhat * wc + bc, load(dy, i), alpha);
        s_dz += dz;
        s_dzx += dz * xhat;
    }
}

// One block per (group, chunk), or per (tile, chunk) with norm_act_rows: partial sums of dz and dz * xhat.
template <typename T>
__global__ void grad_partial_kernel(NormActParams p, typename MathType<T>::type* partials, int64_t chunks) {
    using M = typename MathType<T>::type;
    M s_dz = 0, s_dzx = 0;
    if (norm_act_rows(p)) {
        const RowTile t(p, chunks);
        if (t.valid) add_grad_sums<T>(p, t.g, t.first(), t.j1, kRowWarps, s_dz, s_dzx);
        tile_sum2(s_dz, s_dzx);
        if (threadIdx.x < kNormActTile && t.valid) {
            partials[(t.g * chunks + t.k) * 2] = s_dz;
            partials[(t.g * chunks + t.k) * 2 + 1] = s_dzx;
        }
        return;
    }
    const int64_t g = blockIdx.x / chunks, k = blockIdx.x % chunks;
    const int64_t j0 = k * kNormActChunk;
    const int64_t j1 = j0 + kNormActChunk < p.group_size ? j0 + kNormActChunk : p.group_size;
    add_grad_sums<T>(p, g, j0 + threadIdx.x, j1, kThreads, s_dz, s_dzx);
    block_sum2(s_dz, s_dzx);
    if (threadIdx.x == 0) {
        partials[(g * chunks + k) * 2] = s_dz;
        partials[(g * chunks + k) * 2 + 1] = s_dzx;
    }
}

template <typename M>
__global__ void grad_merge_kernel(NormActParams p, const M* partials, int64_t chunks, M* sum_dz, M* sum_dz_xhat) {
    const int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (g >= p.groups) return;
    double a = 0, b = 0;
    for (int64_t k = 0; k < chunks; ++k) {
        a += partials[(g * chunks + k) * 2];
        b += partials[(g * chunks + k) * 2 + 1];
    }
    sum_dz[g] = static_cast<M>(a);
    sum_dz_xhat[g] = static_cast<M>(b);
}

// Conditional batch norm, training: one thread per channel, the w-weighted sums over the samples (per_sample_sums).
template <typename M>
__global__ void per_sample_sums_kernel(NormActParams p, const M* sum_dz, const M* sum_dz_xhat, M* out_dz,
                                       M* out_dz_xhat) {
    const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (c < p.C) per_sample_sums<M>(p, c, sum_dz, sum_dz_xhat, out_dz, out_dz_xhat);
}

template <typename T>
__global__ void dx_kernel(NormActParams p, int64_t numel) {
    using M = typename MathType<T>::type;
    const T* x = static_cast<const T*>(p.x);
    const T* dy = static_cast<const T*>(p.dy);
    T* dx = static_cast<T*>(p.out);
    const M* w = static_cast<const M*>(p.w);
    const M* b = static_cast<const M*>(p.b);
    const M* mean = static_cast<const M*>(p.mean);
    const M* var = static_cast<const M*>(p.var);
    const M* sum_dz = static_cast<const M*>(p.sum_dz);
    const M* sum_dz_xhat = static_cast<const M*>(p.sum_dz_xhat);
    const M alpha = static_cast<M>(p.alpha), eps = static_cast<M>(p.eps), count = static_cast<M>(norm_dx_count(p));
    const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
    int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= numel) return;
    RadixWalker at = element_walker(p, i, stride);  // each value's channel and sample without a division
    for (; i < numel; i += stride, at.advance()) {
        const int64_t g = walker_group(p, at), a = walker_affine(p, at);
        const M invstd = inv_std<M>(var[g], eps), wc = w ? w[a] : M(1), bc = b ? b[a] : M(0);
        const M xhat = (load(x, i) - mean[g]) * invstd;
        const M dz = act_backward<M>(p.act, xhat * wc + bc, load(dy, i), alpha);
        dx[i] = cast_to<T>(norm_dx_any<M>(p.use_input_stats, p.per_sample, dz, xhat, wc, invstd, sum_dz[g],
                                          sum_dz_xhat[g], count));
    }
}

// One block (a layer's channels are few): every thread reads the step counter before thread 0 advances it.
template <typename B, typename S>
__global__ void update_stats_kernel(UpdateStatsParams p) {
    const double factor = running_factor(p);
    for (int64_t c = threadIdx.x; c < p.C; c += kThreads) {
        update_running_channel<B, S, typename MathType<B>::type>(p, c, factor);
    }
    if (p.steps != nullptr) {
        __syncthreads();
        if (threadIdx.x == 0) *p.steps += 1;
    }
}

}  // namespace fastgan
