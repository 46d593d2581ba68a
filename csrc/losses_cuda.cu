// Loss and gradient-penalty CUDA launchers: the kernels are in losses_kernels.cuh (shared with the NVRTC path), the
// launch rules in launch.h. Includes only CUDA headers and our own (the CPU PyTorch wheel has no CUDA headers).
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include "launch.h"
#include "losses_cuda.h"
#include "losses_kernels.cuh"

namespace fastgan {
namespace {

template <typename T>
int launch_gan_loss(const GanLossParams& p, cudaStream_t s) {
    const int64_t total = p.numel_a + (p.b != nullptr ? p.numel_b : 0);
    const unsigned blocks = gan_loss_blocks(total, p.partials != nullptr);
    gan_loss_kernel<T><<<blocks, gan_loss_threads(blocks), 0, s>>>(p);
    int err = static_cast<int>(cudaGetLastError());
    if (err != 0 || blocks == 1) return err;
    gan_loss_finalize_kernel<T><<<1, kGanLossMaxBlocks, 0, s>>>(p, static_cast<int>(blocks));
    return static_cast<int>(cudaGetLastError());
}

template <typename T>
int launch_gan_loss_backward(const GanLossBackwardParams& p, cudaStream_t s) {
    const int64_t total = p.numel_a + (p.grad_b != nullptr ? p.numel_b : 0);
    gan_loss_backward_kernel<T><<<elementwise_blocks(total), kThreads, 0, s>>>(p);
    return static_cast<int>(cudaGetLastError());
}

template <typename T>
int launch_interpolate(const InterpolateParams& p, cudaStream_t s) {
    interpolate_kernel<T><<<elementwise_blocks(p.batch * p.per_sample), kThreads, 0, s>>>(p);
    return static_cast<int>(cudaGetLastError());
}

template <typename T>
int launch_penalty(const PenaltyParams& p, cudaStream_t s) {
    sample_norm_kernel<T><<<static_cast<unsigned>(p.batch), kThreads, 0, s>>>(p);
    const int err = static_cast<int>(cudaGetLastError());
    if (err != 0) return err;
    penalty_kernel<T><<<1, kThreads, 0, s>>>(p);
    return static_cast<int>(cudaGetLastError());
}

template <typename T>
int launch_penalty_backward(const PenaltyParams& p, cudaStream_t s) {
    penalty_backward_kernel<T><<<elementwise_blocks(p.batch * p.per_sample), kThreads, 0, s>>>(p);
    return static_cast<int>(cudaGetLastError());
}

}  // namespace

#define FASTGAN_DISPATCH_LOSS_DTYPE(LAUNCH, P, DTYPE, STREAM)                                     \
    switch (DTYPE) {                                                                              \
        case DType::Float16: return LAUNCH<__half>(P, static_cast<cudaStream_t>(STREAM));         \
        case DType::BFloat16: return LAUNCH<__nv_bfloat16>(P, static_cast<cudaStream_t>(STREAM)); \
        case DType::Float64: return LAUNCH<double>(P, static_cast<cudaStream_t>(STREAM));         \
        default: return LAUNCH<float>(P, static_cast<cudaStream_t>(STREAM));                      \
    }

int gan_loss_cuda_launch(const GanLossParams& p, DType dtype, void* stream) {
    if (p.numel_a == 0) return 0;
    FASTGAN_DISPATCH_LOSS_DTYPE(launch_gan_loss, p, dtype, stream)
}

int gan_loss_backward_cuda_launch(const GanLossBackwardParams& p, DType dtype, void* stream) {
    if (p.numel_a == 0) return 0;
    FASTGAN_DISPATCH_LOSS_DTYPE(launch_gan_loss_backward, p, dtype, stream)
}

int interpolate_cuda_launch(const InterpolateParams& p, DType dtype, void* stream) {
    if (p.batch * p.per_sample == 0) return 0;
    FASTGAN_DISPATCH_LOSS_DTYPE(launch_interpolate, p, dtype, stream)
}

int penalty_cuda_launch(const PenaltyParams& p, DType dtype, void* stream) {
    if (p.batch == 0) return 0;
    FASTGAN_DISPATCH_LOSS_DTYPE(launch_penalty, p, dtype, stream)
}

int penalty_backward_cuda_launch(const PenaltyParams& p, DType dtype, void* stream) {
    if (p.batch * p.per_sample == 0) return 0;
    FASTGAN_DISPATCH_LOSS_DTYPE(launch_penalty_backward, p, dtype, stream)
}

#undef FASTGAN_DISPATCH_LOSS_DTYPE

}  // namespace fastgan
