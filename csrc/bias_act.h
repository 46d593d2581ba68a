// bias_act: y = clamp(act(x + b) * gain, -clamp, clamp), with b broadcast along one dimension.
//
// The activation table lives here once, as host-and-device functions, so the CPU kernels tested on every
// commit run exactly the formulas the CUDA kernels run. Each activation has f (forward), f' and f''; the
// derivatives follow PyTorch's conventions at the kinks (relu'(0) = 0, lrelu'(0) = alpha, elu'(0) = alpha but
// elu''(0) = 0, softplus is linear above its threshold of 20 and its f'' vanishes from 20 on) so that results match torch.nn.functional bit for bit in float64.
#pragma once

#include <stdint.h>
#include <math.h>

#include "common.h"

namespace fastgan {

// Order must match fastgan/ops/bias_act.py::ACTIVATIONS.
enum class Act : int { Linear = 0, Relu, Lrelu, Tanh, Sigmoid, Elu, Selu, Softplus, Silu };

constexpr double kSeluAlpha = 1.6732632423543772848170429916717;
constexpr double kSeluScale = 1.0507009873554804934193349852946;
constexpr double kSoftplusThreshold = 20.0;

// Plain parameter block handed from the torch-facing glue to a kernel. Tensors are dense (contiguous in some
// memory format) and share one layout; the bias index of element i is (i / bias_stride) % bias_size.
struct BiasActParams {
    const void* x;     // input, or for the backward the saved input
    const void* b;     // bias (same dtype as x) or nullptr
    const void* dy;    // incoming gradient (backward kernels)
    const void* g;     // gradient of the gradient (second-derivative kernel)
    void* out;
    int64_t numel;
    int64_t bias_size;
    int64_t bias_stride;
    int act;
    double alpha;      // double, so float64 kernels see the exact values (gradcheck)
    double gain;
    double clamp;      // < 0: no clamp
};

template <typename T>
FASTGAN_HD T sigmoid_of(T z) { return T(1) / (T(1) + exp(-z)); }

template <typename T>
FASTGAN_HD T act_forward(int act, T z, T alpha) {
    switch (static_cast<Act>(act)) {
        case Act::Relu: return z > T(0) ? z : T(0);
        case Act::Lrelu: return z > T(0) ? z : z * alpha;
        case Act::Tanh: return tanh(z);
        case Act::Sigmoid: return sigmoid_of(z);
        case Act::Elu: return z > T(0) ? z : alpha * (exp(z) - T(1));
        case Act::Selu: return T(kSeluScale) * (z > T(0) ? z : T(kSeluAlpha) * (exp(z) - T(1)));
        case Act::Softplus: return z > T(kSoftplusThreshold) ? z : log1p(exp(z));
        case Act::Silu: return z * sigmoid_of(z);
        default: return z;
    }
}

template <typename T>
FASTGAN_HD T act_grad(int act, T z, T alpha) {  // f'(z)
    switch (static_cast<Act>(act)) {
        case Act::Relu: return z > T(0) ? T(1) : T(0);
        case Act::Lrelu: return z > T(0) ? T(1) : alpha;
        case Act::Tanh: { T t = tanh(z); return T(1) - t * t; }
        case Act::Sigmoid: { T s = sigmoid_of(z); return s * (T(1) - s); }
        case Act::Elu: return z > T(0) ? T(1) : alpha * exp(z);
        case Act::Selu: return z > T(0) ? T(kSeluScale) : T(kSeluScale * kSeluAlpha) * exp(z);
        case Act::Softplus: return z > T(kSoftplusThreshold) ? T(1) : sigmoid_of(z);
        case Act::Silu: { T s = sigmoid_of(z); return s * (T(1) + z * (T(1) - s)); }
        default: return T(1);
    }
}

template <typename T>
FASTGAN_HD T act_grad2(int act, T z, T alpha) {  // f''(z); zero for the piecewise-linear activations
    switch (static_cast<Act>(act)) {
        case Act::Tanh: { T t = tanh(z); return T(-2) * t * (T(1) - t * t); }
        case Act::Sigmoid: { T s = sigmoid_of(z); return s * (T(1) - s) * (T(1) - T(2) * s); }
        case Act::Elu: return z < T(0) ? alpha * exp(z) : T(0);
        case Act::Selu: return z < T(0) ? T(kSeluScale * kSeluAlpha) * exp(z) : T(0);
        case Act::Softplus: { if (!(z < T(kSoftplusThreshold))) return T(0); T s = sigmoid_of(z); return s * (T(1) - s); }
        case Act::Silu: { T s = sigmoid_of(z); return s * (T(1) - s) * (T(2) + z * (T(1) - T(2) * s)); }
        default: return T(0);
    }
}

// Gradients pass the clamp where |act(z) * gain| <= clamp, as torch.clamp's backward does (bounds inclusive).
template <typename T>
FASTGAN_HD bool clamp_passes(int act, T z, T alpha, T gain, T clamp) {
    if (clamp < T(0)) return true;
    T v = act_forward(act, z, alpha) * gain;
    return v >= -clamp && v <= clamp;
}

template <typename T>
FASTGAN_HD T clamp_value(T v, T clamp) {
    if (clamp < T(0)) return v;
    return v < -clamp ? -clamp : (v > clamp ? clamp : v);
}

// The three elementwise maps every implementation computes, in the math type T (float, or double for float64):
//   forward:   y   = clamp(f(z) * gain)
//   backward:  dx  = dy * f'(z) * gain * [clamp passes]
//   backward2: d2x = g * dy * f''(z) * gain * [clamp passes]   (d/dz of <g, dx>)
template <typename T>
FASTGAN_HD T bias_act_forward(int act, T z, T alpha, T gain, T clamp) {
    return clamp_value(act_forward(act, z, alpha) * gain, clamp);
}

template <typename T>
FASTGAN_HD T bias_act_backward(int act, T z, T dy, T alpha, T gain, T clamp) {
    return clamp_passes(act, z, alpha, gain, clamp) ? dy * act_grad(act, z, alpha) * gain : T(0);
}

template <typename T>
FASTGAN_HD T bias_act_backward2(int act, T z, T dy, T g, T alpha, T gain, T clamp) {
    return clamp_passes(act, z, alpha, gain, clamp) ? g * dy * act_grad2(act, z, alpha) * gain : T(0);
}

}  // namespace fastgan
