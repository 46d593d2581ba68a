// Adversarial losses and gradient-penalty heads: the math shared by the CPU kernels (losses.cpp) and the CUDA
// kernels (losses.cu), as host-and-device functions, plus the plain parameter blocks the glue hands to a kernel.
//
// A GAN loss is a sum of at most two "terms", each the mean over one logits tensor of an elementwise function
// (softplus(-z), relu(1 + z), (z - 1)^2, ...). One kernel computes a term's mean and its gradient dterm/dz = f'(z)/N
// together, so the backward only scales the saved gradient. Softplus is evaluated in the stable form
// max(u, 0) + log1p(exp(-|u|)) and its derivative, the sigmoid, without overflow for any |u|.
#pragma once

#if !defined(__CUDACC_RTC__)  // NVRTC: common.h defines the integers, math functions are built in
#include <stdint.h>
#include <math.h>
#endif

#include "common.h"

namespace fastgan {

// Order must match fastgan/losses/adversarial.py::TERMS and the Triton kernels.
enum class LossTerm : int {
    SoftplusNeg = 0,  // softplus(-z)
    Softplus,         // softplus(z)
    NegSoftplus,      // -softplus(z)
    HingeReal,        // relu(1 - z)
    HingeFake,        // relu(1 + z)
    Identity,         // z
    Negate,           // -z
    SquareOne,        // (z - 1)^2
    Square,           // z^2
};
constexpr int kNumLossTerms = static_cast<int>(LossTerm::Square) + 1;

// Linear above PyTorch's softplus threshold of 20 (F.softplus returns u there, and its gradient is exactly 1).
constexpr double kLossSoftplusThreshold = 20.0;

template <typename T>
FASTGAN_HD T stable_softplus(T u) {
    if (u > T(kLossSoftplusThreshold)) return u;
    return (u > T(0) ? u : T(0)) + math_log1p(math_exp(-fabs(u)));
}

template <typename T>
FASTGAN_HD T stable_sigmoid(T u) {  // softplus'(u)
    if (u > T(kLossSoftplusThreshold)) return T(1);
    const T e = math_exp(-fabs(u));  // in (0, 1]: never overflows
    return u >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
}

template <typename T>
FASTGAN_HD T loss_term_value(int term, T z) {
    switch (static_cast<LossTerm>(term)) {
        case LossTerm::SoftplusNeg: return stable_softplus(-z);
        case LossTerm::Softplus: return stable_softplus(z);
        case LossTerm::NegSoftplus: return -stable_softplus(z);
        case LossTerm::HingeReal: return T(1) - z < T(0) ? T(0) : T(1) - z;  // relu: NaN stays NaN
        case LossTerm::HingeFake: return T(1) + z < T(0) ? T(0) : T(1) + z;
        case LossTerm::Identity: return z;
        case LossTerm::Negate: return -z;
        case LossTerm::SquareOne: return (z - T(1)) * (z - T(1));
        default: return z * z;
    }
}

// f'(z); at the hinge's kink the derivative is 0, as PyTorch's relu'(0); at a NaN logit it passes, as relu's backward.
template <typename T>
FASTGAN_HD T loss_term_grad(int term, T z) {
    switch (static_cast<LossTerm>(term)) {
        case LossTerm::SoftplusNeg: return -stable_sigmoid(-z);
        case LossTerm::Softplus: return stable_sigmoid(z);
        case LossTerm::NegSoftplus: return -stable_sigmoid(z);
        case LossTerm::HingeReal: return T(1) - z <= T(0) ? T(0) : T(-1);  // as relu's backward: NaN passes
        case LossTerm::HingeFake: return T(1) + z <= T(0) ? T(0) : T(1);
        case LossTerm::Identity: return T(1);
        case LossTerm::Negate: return T(-1);
        case LossTerm::SquareOne: return T(2) * (z - T(1));
        default: return T(2) * z;
    }
}

// gan_loss: loss = mean(term_a(a)) [+ mean(term_b(b))], grad_a = term_a'(a) / numel_a, grad_b likewise.
// Inputs are dense; each gradient has its input's layout, in the math type (float, double for float64).
struct GanLossParams {
    const void* a;
    const void* b;         // nullptr: a one-term loss (the generator's)
    void* loss;            // 0-dim, the inputs' dtype
    void* grad_a;          // math type
    void* grad_b;
    void* partials;        // CUDA only: kGanLossMaxBlocks per-block sums (math type) for large logits
    int64_t numel_a;
    int64_t numel_b;
    int term_a;
    int term_b;
};
constexpr int kGanLossMaxBlocks = 256;

// gan_loss_backward: da = go * grad_a, db = go * grad_b, in the logits' dtype.
struct GanLossBackwardParams {
    const void* go;        // 0-dim, the logits' dtype
    const void* grad_a;    // math type
    const void* grad_b;    // nullptr when there is no second term
    void* da;
    void* db;
    int64_t numel_a;
    int64_t numel_b;
};

// Gradient-penalty head. Tensors are [B, D] in memory (each sample's D elements contiguous, any order within).
//   interpolate: x_hat = eps_i * real + (1 - eps_i) * fake
//   penalty:     n_i = ||g_i||, out = weight / B * sum_i (scale * n_i - center)^2
//   backward:    dg = go * weight * 2 / B * (scale * n_i - center) * scale / n_i * g   (0 where n_i = 0;
//                go * weight * 2 / B * scale^2 * g for center = 0, the squared norm)
// `scale` unscales gradients computed from a GradScaler-scaled loss (1 otherwise).
struct InterpolateParams {
    const void* real;
    const void* fake;
    const void* eps;       // [B], math type
    void* out;
    int64_t batch;
    int64_t per_sample;
};

struct PenaltyParams {
    const void* g;
    const void* go;        // backward: 0-dim, g's dtype
    void* norms;           // [B], math type: written by the forward, read by the backward
    void* out;             // forward: 0-dim penalty in g's dtype; backward: dg like g
    int64_t batch;
    int64_t per_sample;
    double weight;
    double center;
    double scale;
};

template <typename T>
FASTGAN_HD T interpolate_value(T eps, T real, T fake) {
    return eps * real + (T(1) - eps) * fake;
}

template <typename T>
FASTGAN_HD T penalty_term(T norm, T scale, T center) {
    const T d = scale * norm - center;
    return d * d;
}

// d penalty / d g_i = coef_i * g_i; the norm's gradient is taken as 0 at n_i = 0, as PyTorch's vector_norm does
// (only there: an infinite or NaN norm gives NaN, as in PyTorch). A zero-centred penalty (R1/R2) is the squared
// norm, whose gradient 2 scale^2 g_i does not divide by the norm: an inf or NaN element of g_i leaves the other
// elements' gradients finite, as the sum of squares differentiates.
template <typename T>
FASTGAN_HD T penalty_coef(T norm, T go, T weight, T center, T scale, int64_t batch) {
    if (center == T(0)) return go * weight * T(2) / T(batch) * scale * scale;
    const T up = go * weight * T(2) / T(batch) * (scale * norm - center) * scale;  // d penalty / d n_i
    return norm == T(0) ? up * T(0) : up / norm;  // PyTorch multiplies its masked 0 by up: NaN if up is
}

}  // namespace fastgan
