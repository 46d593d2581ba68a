// Loss and gradient-penalty CUDA kernels. Reductions are deterministic: fixed block shapes, tree sums in shared
// memory, no atomics.
//
// Kernel code only: the same text is compiled by nvcc (included by losses_cuda.cu) and by NVRTC at run time
// (fastgan/_nvrtc.py, for builds without nvcc), so it includes nothing but the project's math headers, and everything
// a kernel calls is a __device__ or host-and-device function. Launch rules (grid, block) are in launch.h.
#pragma once

#include "losses.h"

namespace fastgan {

// Sum of v over the block (blockDim.x a power of two <= kMaxThreads); the result is valid in thread 0.
template <typename M>
__device__ M block_sum(M v, M* shared) {
    shared[threadIdx.x] = v;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) shared[threadIdx.x] += shared[threadIdx.x + half];
        __syncthreads();
    }
    return shared[0];
}

// Each block sums a grid-stride share of both terms (each element weighted by 1/numel of its tensor) and writes the
// gradients; with one block (small logits) it writes the loss, else its partial sum for gan_loss_finalize_kernel.
template <typename T>
__global__ void gan_loss_kernel(GanLossParams p) {
    using M = typename MathType<T>::type;
    __shared__ M shared[kMaxThreads];
    const T* a = static_cast<const T*>(p.a);
    const T* b = static_cast<const T*>(p.b);
    M* grad_a = static_cast<M*>(p.grad_a);
    M* grad_b = static_cast<M*>(p.grad_b);
    const M inv_a = M(1) / static_cast<M>(p.numel_a);
    const M inv_b = b != nullptr ? M(1) / static_cast<M>(p.numel_b) : M(0);
    const int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
    M acc = M(0);
    for (int64_t i = start; i < p.numel_a; i += stride) {
        const M z = load(a, i);
        acc += loss_term_value<M>(p.term_a, z) * inv_a;
        grad_a[i] = loss_term_grad<M>(p.term_a, z) * inv_a;
    }
    if (b != nullptr) {
        for (int64_t i = start; i < p.numel_b; i += stride) {
            const M z = load(b, i);
            acc += loss_term_value<M>(p.term_b, z) * inv_b;
            grad_b[i] = loss_term_grad<M>(p.term_b, z) * inv_b;
        }
    }
    const M total = block_sum<M>(acc, shared);
    if (threadIdx.x != 0) return;
    if (gridDim.x == 1) {
        *static_cast<T*>(p.loss) = cast_to<T>(total);
    } else {
        static_cast<M*>(p.partials)[blockIdx.x] = total;
    }
}

// Sums the per-block partials in a fixed order (deterministic, no atomics).
template <typename T>
__global__ void gan_loss_finalize_kernel(GanLossParams p, int blocks) {
    using M = typename MathType<T>::type;
    __shared__ M shared[kMaxThreads];
    const M v = static_cast<int>(threadIdx.x) < blocks ? static_cast<const M*>(p.partials)[threadIdx.x] : M(0);
    const M total = block_sum<M>(v, shared);
    if (threadIdx.x == 0) *static_cast<T*>(p.loss) = cast_to<T>(total);
}

template <typename T>
__global__ void gan_loss_backward_kernel(GanLossBackwardParams p) {
    using M = typename MathType<T>::type;
    const M go = load(static_cast<const T*>(p.go), 0);
    const M* grad_a = static_cast<const M*>(p.grad_a);
    const M* grad_b = static_cast<const M*>(p.grad_b);
    T* da = static_cast<T*>(p.da);
    T* db = static_cast<T*>(p.db);
    const int64_t total = p.numel_a + (grad_b != nullptr ? p.numel_b : 0);
    const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
        if (i < p.numel_a) {
            da[i] = cast_to<T>(go * grad_a[i]);
        } else {
            db[i - p.numel_a] = cast_to<T>(go * grad_b[i - p.numel_a]);
        }
    }
}

template <typename T>
__global__ void interpolate_kernel(InterpolateParams p) {
    using M = typename MathType<T>::type;
    const T* real = static_cast<const T*>(p.real);
    const T* fake = static_cast<const T*>(p.fake);
    T* out = static_cast<T*>(p.out);
    const int64_t total = p.batch * p.per_sample;
    const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
    int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= total) return;
    RadixWalker at(i, stride, p.per_sample, p.batch);  // the sample of value i (digit 1) without a division
    for (; i < total; i += stride, at.advance()) {
        const M e = static_cast<const M*>(p.eps)[at.d1];
        out[i] = cast_to<T>(interpolate_value<M>(e, load(real, i), load(fake, i)));
    }
}

// One block per sample: n_i = ||g_i||.
template <typename T>
__global__ void sample_norm_kernel(PenaltyParams p) {
    using M = typename MathType<T>::type;
    __shared__ M shared[kMaxThreads];
    const T* g = static_cast<const T*>(p.g) + static_cast<int64_t>(blockIdx.x) * p.per_sample;
    M acc = M(0);
    for (int64_t j = threadIdx.x; j < p.per_sample; j += blockDim.x) {
        const M v = load(g, j);
        acc += v * v;
    }
    const M sq = block_sum<M>(acc, shared);
    if (threadIdx.x == 0) static_cast<M*>(p.norms)[blockIdx.x] = sqrt(sq);
}

// One block: out = weight / B * sum_i (scale * n_i - center)^2.
template <typename T>
__global__ void penalty_kernel(PenaltyParams p) {
    using M = typename MathType<T>::type;
    __shared__ M shared[kMaxThreads];
    const M* norms = static_cast<const M*>(p.norms);
    M acc = M(0);
    for (int64_t i = threadIdx.x; i < p.batch; i += blockDim.x) {
        acc += penalty_term<M>(norms[i], M(p.scale), M(p.center));
    }
    const M total = block_sum<M>(acc, shared);
    if (threadIdx.x == 0) *static_cast<T*>(p.out) = cast_to<T>(M(p.weight) * total / static_cast<M>(p.batch));
}

template <typename T>
__global__ void penalty_backward_kernel(PenaltyParams p) {
    using M = typename MathType<T>::type;
    const T* g = static_cast<const T*>(p.g);
    const M* norms = static_cast<const M*>(p.norms);
    const M go = load(static_cast<const T*>(p.go), 0);
    T* out = static_cast<T*>(p.out);
    const int64_t total = p.batch * p.per_sample;
    const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
    int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= total) return;
    RadixWalker at(i, stride, p.per_sample, p.batch);  // the sample of value i (digit 1) without a division
    for (; i < total; i += stride, at.advance()) {
        const M coef = penalty_coef<M>(norms[at.d1], go, M(p.weight), M(p.center), M(p.scale), p.batch);
        out[i] = cast_to<T>(coef * load(g, i));
    }
}

}  // namespace fastgan
