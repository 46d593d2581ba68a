// bias_act CUDA kernels: one templated elementwise kernel for the forward and both derivative maps.
// Includes only CUDA headers and our own (the CPU PyTorch wheel has no CUDA headers).
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include "bias_act_cuda.h"

namespace fastgan {
namespace {



template <typename T, int Kind>
__global__ void bias_act_kernel(BiasActParams p) {
    using M = typename MathType<T>::type;
    const T* x = static_cast<const T*>(p.x);
    const T* b = static_cast<const T*>(p.b);
    const T* dy = static_cast<const T*>(p.dy);
    const T* g = static_cast<const T*>(p.g);
    T* out = static_cast<T*>(p.out);
    const M alpha = static_cast<M>(p.alpha), gain = static_cast<M>(p.gain), clamp = static_cast<M>(p.clamp);
    const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
    // Grid-stride loop: a bounded grid covers any numel, including > 2^31 elements.
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < p.numel; i += stride) {
        M z = load(x, i);
        if (b != nullptr) z += load(b, (i / p.bias_stride) % p.bias_size);
        M v;
        if (Kind == 0) {
            v = bias_act_forward<M>(p.act, z, alpha, gain, clamp);
        } else if (Kind == 1) {
            v = bias_act_backward<M>(p.act, z, load(dy, i), alpha, gain, clamp);
        } else {
            v = bias_act_backward2<M>(p.act, z, load(dy, i), load(g, i), alpha, gain, clamp);
        }
        out[i] = cast_to<T>(v);
    }
}

template <typename T>
int launch(const BiasActParams& p, int kind, cudaStream_t stream) {
    if (p.numel == 0) return 0;
    constexpr int kThreads = 256;
    int64_t blocks = (p.numel + kThreads - 1) / kThreads;
    if (blocks > 65536) blocks = 65536;
    switch (kind) {
        case 0: bias_act_kernel<T, 0><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p); break;
        case 1: bias_act_kernel<T, 1><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p); break;
        default: bias_act_kernel<T, 2><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p); break;
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
