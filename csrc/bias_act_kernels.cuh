// bias_act CUDA kernels: one templated elementwise kernel for the forward (Kind 0), the backward (1) and the
// second-derivative term (2).
//
// Kernel code only: the same text is compiled by nvcc (included by bias_act_cuda.cu) and by NVRTC at run time
// (fastgan/_nvrtc.py, for builds without nvcc), so it includes nothing but the project's math headers, and everything
// a kernel calls is a __device__ or host-and-device function. Launch rules (grid, block) are in launch.h.
#pragma once

#include "bias_act.h"

namespace fastgan {

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
    int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= p.numel) return;
    // The bias index (i / bias_stride) % bias_size is digit 1 of i in the radix (bias_stride, bias_size), walked
    // along with i: no division per element.
    RadixWalker at(i, stride, p.bias_stride, p.bias_size);
    // Grid-stride loop: a bounded grid covers any numel, including > 2^31 elements.
    for (; i < p.numel; i += stride, at.advance()) {
        M z = load(x, i);
        if (b != nullptr) z += load(b, at.d1);
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

}  // namespace fastgan
