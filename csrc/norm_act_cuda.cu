// norm_act CUDA launchers: the kernels are in norm_act_kernels.cuh (shared with the NVRTC path), the launch rules in
// launch.h. Two passes over x each way: reduce, then write.
// Includes only CUDA headers and our own (the CPU PyTorch wheel has no CUDA headers).
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include "norm_act_cuda.h"
#include "norm_act_kernels.cuh"

namespace fastgan {
namespace {

template <typename T>
int forward(NormActParams p, void* mean, void* var, void* partials, const UpdateStatsParams& u, cudaStream_t stream) {
    using M = typename MathType<T>::type;
    const int64_t numel = p.N * p.C * p.L;
    if (p.use_input_stats && p.groups > 0) {
        const int64_t chunks = norm_act_chunks(p);
        if (p.group_size > 0) {
            stats_partial_kernel<T><<<norm_act_partial_blocks(p), kThreads, 0, stream>>>(
                p, static_cast<M*>(partials), chunks);
        } else {
            cudaMemsetAsync(partials, 0, sizeof(M) * 3 * p.groups * chunks, stream);
        }
        const unsigned merge_blocks = thread_per_item_blocks(p.groups);
        stats_merge_kernel<M><<<merge_blocks, kThreads, 0, stream>>>(p, static_cast<const M*>(partials), chunks,
                                                                    static_cast<M*>(mean), static_cast<M*>(var), u);
        p.mean = mean;
        p.var = var;
    }
    int64_t* advance = u.running_mean != nullptr ? u.steps : nullptr;
    if (numel > 0) apply_kernel<T><<<elementwise_blocks(numel), kThreads, 0, stream>>>(p, numel, advance);
    return static_cast<int>(cudaGetLastError());
}

template <typename T>
int backward(NormActParams p, void* sum_dz, void* sum_dz_xhat, void* partials, cudaStream_t stream) {
    using M = typename MathType<T>::type;
    const int64_t numel = p.N * p.C * p.L;
    if (p.groups > 0) {
        const int64_t chunks = norm_act_chunks(p);
        if (p.group_size > 0) {
            grad_partial_kernel<T><<<norm_act_partial_blocks(p), kThreads, 0, stream>>>(
                p, static_cast<M*>(partials), chunks);
        } else {
            cudaMemsetAsync(partials, 0, sizeof(M) * 2 * p.groups * chunks, stream);
        }
        const unsigned merge_blocks = thread_per_item_blocks(p.groups);
        grad_merge_kernel<M><<<merge_blocks, kThreads, 0, stream>>>(
            p, static_cast<const M*>(partials), chunks, static_cast<M*>(sum_dz), static_cast<M*>(sum_dz_xhat));
    }
    p.sum_dz = sum_dz;
    p.sum_dz_xhat = sum_dz_xhat;
    if (p.per_sample && p.use_input_stats && p.groups > 0) {
        // dx's channel sums into the partials (2 * groups values at least, no longer read after the merge).
        M* weighted = static_cast<M*>(partials);
        per_sample_sums_kernel<M><<<thread_per_item_blocks(p.C), kThreads, 0, stream>>>(
            p, static_cast<const M*>(sum_dz), static_cast<const M*>(sum_dz_xhat), weighted, weighted + p.groups);
        p.sum_dz = weighted;
        p.sum_dz_xhat = weighted + p.groups;
    }
    if (numel > 0) dx_kernel<T><<<elementwise_blocks(numel), kThreads, 0, stream>>>(p, numel);
    return static_cast<int>(cudaGetLastError());
}

template <typename B>
int update_stats(const UpdateStatsParams& p, bool stats_double, cudaStream_t stream) {
    if (p.C == 0 && p.steps == nullptr) return 0;
    if (stats_double) {
        update_stats_kernel<B, double><<<1, kThreads, 0, stream>>>(p);
    } else {
        update_stats_kernel<B, float><<<1, kThreads, 0, stream>>>(p);
    }
    return static_cast<int>(cudaGetLastError());
}

}  // namespace

int norm_act_cuda_forward(NormActParams p, DType dtype, void* mean, void* var, void* partials,
                          const UpdateStatsParams& running, void* stream) {
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    switch (dtype) {
        case DType::Float16: return forward<__half>(p, mean, var, partials, running, s);
        case DType::BFloat16: return forward<__nv_bfloat16>(p, mean, var, partials, running, s);
        case DType::Float64: return forward<double>(p, mean, var, partials, running, s);
        default: return forward<float>(p, mean, var, partials, running, s);
    }
}

int norm_act_cuda_backward(NormActParams p, DType dtype, void* sum_dz, void* sum_dz_xhat, void* partials,
                           void* stream) {
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    switch (dtype) {
        case DType::Float16: return backward<__half>(p, sum_dz, sum_dz_xhat, partials, s);
        case DType::BFloat16: return backward<__nv_bfloat16>(p, sum_dz, sum_dz_xhat, partials, s);
        case DType::Float64: return backward<double>(p, sum_dz, sum_dz_xhat, partials, s);
        default: return backward<float>(p, sum_dz, sum_dz_xhat, partials, s);
    }
}

int norm_act_cuda_update_stats(UpdateStatsParams p, DType dtype, bool stats_double, void* stream) {
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    switch (dtype) {
        case DType::Float16: return update_stats<__half>(p, stats_double, s);
        case DType::BFloat16: return update_stats<__nv_bfloat16>(p, stats_double, s);
        case DType::Float64: return update_stats<double>(p, stats_double, s);
        default: return update_stats<float>(p, stats_double, s);
    }
}

}  // namespace fastgan
