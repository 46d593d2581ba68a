// bias_act: y = clamp(act(x + b) * gain, -clamp, clamp), with b broadcast along one dimension.
//
// The activation table lives here once, as host-and-device functions, so the CPU kernels tested on every
// commit run exactly the formulas the CUDA kernels run. Each activation has f (forward), its backward and its double
// backward, written as PyTorch's kernels write them, so conventions at the kinks (relu'(0) = 0, lrelu'(0) = alpha,
// elu'(0) = alpha but elu''(0) = 0, softplus linear above its threshold of 20) and NaN/inf propagation are
// torch.nn.functional's.
#pragma once

#if !defined(__CUDACC_RTC__)  // NVRTC: common.h defines the integers, math functions are built in
#include <stdint.h>
#include <math.h>
#endif

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
FASTGAN_HD T sigmoid_of(T z) { return T(1) / (T(1) + math_exp(-z)); }

template <typename T>
FASTGAN_HD T act_forward(int act, T z, T alpha) {
    switch (static_cast<Act>(act)) {
        case Act::Relu: return z < T(0) ? T(0) : z;  // NaN stays NaN, as torch.relu (max(z, 0) would drop it)
        case Act::Lrelu: return z > T(0) ? z : z * alpha;
        case Act::Tanh: return math_tanh(z);
        case Act::Sigmoid: return sigmoid_of(z);
        case Act::Elu: return z > T(0) ? z : alpha * (math_exp(z) - T(1));
        case Act::Selu: return T(kSeluScale) * (z > T(0) ? z : T(kSeluAlpha) * (math_exp(z) - T(1)));
        case Act::Softplus: return z > T(kSoftplusThreshold) ? z : math_log1p(math_exp(z));
        case Act::Silu: return z * sigmoid_of(z);
        default: return z;
    }
}

// dL/dz given d = dL/d f(z), written as PyTorch's own backward kernels write it (threshold_backward,
// leaky_relu_backward, tanh_backward, sigmoid_backward, elu_backward, softplus_backward, silu_backward): the same
// selects and the same products in the same order, so NaN and inf propagate exactly as in torch.nn.functional
// (relu passes d at z = NaN; a piecewise branch that is not taken never multiplies d).
template <typename T>
FASTGAN_HD T act_backward(int act, T z, T d, T alpha) {
    switch (static_cast<Act>(act)) {
        case Act::Relu: return z <= T(0) ? T(0) : d;
        case Act::Lrelu: return z > T(0) ? d : d * alpha;
        case Act::Tanh: { T t = math_tanh(z); return d * (T(1) - t * t); }
        case Act::Sigmoid: { T s = sigmoid_of(z); return d * (T(1) - s) * s; }
        // elu_backward tests z <= 0; at a NaN z its vectorized CPU kernel, which every tensor but a short tail goes
        // through, gives NaN (its scalar tail and the CUDA kernel pass d): the NaN is kept here, everywhere.
        case Act::Elu: return z > T(0) ? d : d * alpha * math_exp(z);
        case Act::Selu: return z > T(0) ? d * T(kSeluScale) : d * T(kSeluAlpha * kSeluScale) * math_exp(z);
        case Act::Softplus: {
            if (z > T(kSoftplusThreshold)) return d;
            T e = math_exp(z);
            return d * e / (e + T(1));
        }
        case Act::Silu: { T s = sigmoid_of(z); return d * s * (T(1) + z * (T(1) - s)); }
        default: return d;
    }
}

// d/dz of <g, act_backward(z, d)> (second order), as PyTorch's double-backward formulas compute it: tanh and sigmoid
// through their backward's output derivative, elu/selu as elu_backward(g * d) masked by a multiply with [z < 0] (so
// elu''(0) = 0), softplus masked below its threshold by a multiply (a NaN z stays NaN). Zero for the
// piecewise-linear activations, whose backward's z-derivative PyTorch defines as zeros.
template <typename T>
FASTGAN_HD T act_double_backward(int act, T z, T d, T g, T alpha) {
    switch (static_cast<Act>(act)) {
        case Act::Tanh: { T t = math_tanh(z); return g * (T(-2) * t * d) * (T(1) - t * t); }
        case Act::Sigmoid: { T s = sigmoid_of(z); return g * d * (T(-2) * s + T(1)) * (T(1) - s) * s; }
        case Act::Elu: return act_backward<T>(act, z, g * d, alpha) * (z < T(0) ? T(1) : T(0));
        case Act::Selu: return act_backward<T>(act, z, g * d, alpha) * (z < T(0) ? T(1) : T(0));
        case Act::Softplus: {
            T s = sigmoid_of(z);
            return g * d * (T(1) - s) * s * (z < T(kSoftplusThreshold) ? T(1) : T(0));
        }
        case Act::Silu: { T s = sigmoid_of(z); return g * d * s * (T(1) - s) * (T(2) + z * (T(1) - T(2) * s)); }
        default: return T(0);
    }
}

// Gradients pass the clamp where |act(z) * gain| <= clamp, as torch.clamp's backward does (bounds inclusive; a NaN
// output passes nothing).
template <typename T>
FASTGAN_HD bool clamp_passes(int act, T z, T alpha, T gain, T clamp) {
    if (clamp < T(0)) return true;
    T v = act_forward(act, z, alpha) * gain;
    return v >= -clamp && v <= clamp;
}

template <typename T>
FASTGAN_HD T clamp_value(T v, T clamp) {  // NaN stays NaN, as torch.clamp
    if (clamp < T(0)) return v;
    return v < -clamp ? -clamp : (v > clamp ? clamp : v);
}

// The three elementwise maps every implementation computes, in the math type T (float, or double for float64), in
// the order autograd runs the reference's backward (clamp's select, gain's product, the activation's backward):
//   forward:   y   = clamp(f(z) * gain)
//   backward:  dx  = act_backward(z, d),            d = [clamp passes ? dy : 0] * gain
//   backward2: d2x = act_double_backward(z, d, g)   (d/dz of <g, dx>)
template <typename T>
FASTGAN_HD T bias_act_forward(int act, T z, T alpha, T gain, T clamp) {
    return clamp_value(act_forward(act, z, alpha) * gain, clamp);
}

template <typename T>
FASTGAN_HD T bias_act_backward(int act, T z, T dy, T alpha, T gain, T clamp) {
    const T d = (clamp_passes(act, z, alpha, gain, clamp) ? dy : T(0)) * gain;
    return act_backward(act, z, d, alpha);
}

template <typename T>
FASTGAN_HD T bias_act_backward2(int act, T z, T dy, T g, T alpha, T gain, T clamp) {
    const T d = (clamp_passes(act, z, alpha, gain, clamp) ? dy : T(0)) * gain;
    return act_double_backward(act, z, d, g, alpha);
}

}  // namespace fastgan
