// bias_act CUDA launcher: the kernel is in bias_act_kernels.cuh (shared with the NVRTC path), the launch rules in
// launch.h. Includes only CUDA headers and our own (the CPU PyTorch wheel has no CUDA headers).
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include "bias_act_cuda.h"
#include "bias_act_kernels.cuh"
#include "launch.h"

namespace fastgan {
namespace {

template <typename T>
int launch(const BiasActParams& p, int kind, cudaStream_t stream) {
    if (p.numel == 0) return 0;
    const unsigned blocks = elementwise_blocks(p.numel);
    switch (kind) {
        case 0: bias_act_kernel<T, 0><<<blocks, kThreads, 0, stream>>>(p); break;
        case 1: bias_act_kernel<T, 1><<<blocks, kThreads, 0, stream>>>(p); break;
        default: bias_act_kernel<T, 2><<<blocks, kThreads, 0, stream>>>(p); break;
    }
    return static_cast<int>(cudaGetLastError());
}

}  // namespace

int bias_act_cuda_launch(const BiasActParams& p, DType dtype, int kind, void* stream) {
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    switch (dtype) {
        case DType::Float16: return launch<__half>(p, kind, s);
        case DType::BFloat16: return launch<__nv_bfloat16>(p, kind, s);
        case DType::Float64: return launch<double>(p, kind, s);
        default: return launch<float>(p, kind, s);
    }
}

}  // namespace fastgan
