// Adversarial losses and gradient-penalty heads: torch-facing glue (schemas, argument checks, dispatch
// registration) and the CPU kernels. The math is in losses.h, shared with the CUDA kernels in losses.cu.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <vector>

#include <c10/core/DeviceGuard.h>

#include "cpu_vec.h"
#include "glue.h"
#include "launch.h"
#include "losses.h"
#include "nvrtc_launch.h"

#ifdef FASTGAN_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include "losses_cuda.h"
#endif

namespace fastgan {
namespace {

// float64 computes in double (gradcheck); float, half and bfloat16 in float.
at::ScalarType math_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

at::Tensor dense(const at::Tensor& t) { return t.is_non_overlapping_and_dense() ? t : t.contiguous(); }

// Dense with each sample's elements contiguous (contiguous or channels_last; anything else is copied).
at::Tensor sample_major(const at::Tensor& t) {
    const int64_t batch = t.size(0);
    const bool ok = t.is_non_overlapping_and_dense() && (batch <= 1 || t.stride(0) * batch == t.numel());
    return ok ? t : t.contiguous();
}

// The interpolation's result in the layout PyTorch's elementwise ops give `e * real + (1 - e) * fake`: real's own when
// real is dense, else dense in real's dimension order (empty_like's preserve_format). The kernel computes sample-major.
at::Tensor in_layout_of_real(const at::Tensor& out, const at::Tensor& real) {
    at::Tensor target = at::empty_like(real);
    if (target.strides() == out.strides()) return out;
    return target.copy_(out);
}

// `t` laid out exactly like `like` (same shape), copying only when the strides differ.
at::Tensor with_layout_of(const at::Tensor& t, const at::Tensor& like) {
    if (t.strides() == like.strides()) return t;
    return at::empty_like(like).copy_(t);
}

void check_logits(const at::Tensor& t, const char* name) {
    check_kernel_dtype("gan_loss", name, t);
    TORCH_CHECK(t.numel() > 0, "gan_loss: ", name, " logits are empty (an empty batch); the mean is undefined");
}

// --- gan_loss -------------------------------------------------------------------------------------------------

struct GanLossPrepared {
    at::Tensor a, b, loss, grad_a, grad_b;
    GanLossParams p;
};

GanLossPrepared prepare_gan_loss(const at::Tensor& a_in, const std::optional<at::Tensor>& b_in, int64_t term_a,
                                 int64_t term_b) {
    check_logits(a_in, "first");
    TORCH_CHECK(term_a >= 0 && term_a < kNumLossTerms, "gan_loss: unknown loss term ", term_a);
    GanLossPrepared r;
    r.a = dense(a_in);
    const auto mt = math_dtype(a_in.scalar_type());
    r.loss = at::empty({}, a_in.options());
    r.grad_a = at::empty_like(r.a, r.a.options().dtype(mt));
    const bool has_b = b_in.has_value() && b_in->defined();
    if (has_b) {
        check_logits(*b_in, "second");
        TORCH_CHECK(term_b >= 0 && term_b < kNumLossTerms, "gan_loss: unknown loss term ", term_b);
        TORCH_CHECK(b_in->scalar_type() == a_in.scalar_type() && b_in->device() == a_in.device(),
                    "gan_loss: real and fake logits must share dtype and device, got ", a_in.scalar_type(), " on ",
                    a_in.device(), " and ", b_in->scalar_type(), " on ", b_in->device());
        r.b = dense(*b_in);
        r.grad_b = at::empty_like(r.b, r.b.options().dtype(mt));
    } else {
        r.grad_b = at::empty({0}, a_in.options().dtype(mt));
    }
    GanLossParams& p = r.p;
    p.a = r.a.data_ptr();
    p.b = has_b ? r.b.data_ptr() : nullptr;
    p.loss = r.loss.data_ptr();
    p.grad_a = r.grad_a.data_ptr();
    p.grad_b = has_b ? r.grad_b.data_ptr() : nullptr;
    p.partials = nullptr;
    p.numel_a = r.a.numel();
    p.numel_b = has_b ? r.b.numel() : 0;
    p.term_a = static_cast<int>(term_a);
    p.term_b = static_cast<int>(term_b);
    return r;
}

// Mean of one term over n elements, writing its gradient; sums in double, so the result does not depend on n (the
// CUDA kernel accumulates in float32), over chunks fixed by n alone added in chunk order, so it does not depend on
// the number of threads either. Term is a compile-time constant and a chunk's values go into kCpuLanes double
// accumulators (value i into lane i % kCpuLanes, folded in lane order), so the loop vectorises.
template <typename scalar_t, int Term>
double term_cpu(const scalar_t* z, at::opmath_type<scalar_t>* grad, int64_t n) {
    using M = at::opmath_type<scalar_t>;
    using cpu::kCpuBlock;
    using cpu::kCpuLanes;
    constexpr int64_t kChunk = int64_t(1) << 14;  // a multiple of kCpuBlock, which is one of kCpuLanes
    const M count = static_cast<M>(n);
    std::vector<double> partial((n + kChunk - 1) / kChunk, 0.0);
    cpu::parallel_for(0, static_cast<int64_t>(partial.size()), 1, [&](int64_t c0, int64_t c1) {
        M zbuf[kCpuBlock], values[kCpuBlock];
        for (int64_t c = c0; c < c1; ++c) {
            double lanes[kCpuLanes] = {};
            const int64_t end = std::min(n, (c + 1) * kChunk);
            for (int64_t i0 = c * kChunk; i0 < end; i0 += kCpuBlock) {
                const int64_t m = std::min(kCpuBlock, end - i0);
                const M* zs = cpu::as_math<scalar_t, M>(z + i0, m, zbuf);
                M* gs = grad + i0;
                for (int64_t k = 0; k < m; ++k) {
                    values[k] = loss_term_value<M>(Term, zs[k]);
                    gs[k] = loss_term_grad<M>(Term, zs[k]) / count;
                }
                int64_t k = 0;
                for (; k + kCpuLanes <= m; k += kCpuLanes) {
                    for (int64_t j = 0; j < kCpuLanes; ++j) lanes[j] += static_cast<double>(values[k + j]);
                }
                for (int64_t j = 0; k + j < m; ++j) lanes[j] += static_cast<double>(values[k + j]);
            }
            double acc = 0.0;
            for (int64_t j = 0; j < kCpuLanes; ++j) acc += lanes[j];
            partial[c] = acc;
        }
    });
    double sum = 0.0;
    for (const double v : partial) sum += v;
    return sum / static_cast<double>(n);
}

template <typename scalar_t>
double term_cpu(const scalar_t* z, at::opmath_type<scalar_t>* grad, int64_t n, int term) {
    switch (static_cast<LossTerm>(term)) {
        case LossTerm::SoftplusNeg: return term_cpu<scalar_t, int(LossTerm::SoftplusNeg)>(z, grad, n);
        case LossTerm::Softplus: return term_cpu<scalar_t, int(LossTerm::Softplus)>(z, grad, n);
        case LossTerm::NegSoftplus: return term_cpu<scalar_t, int(LossTerm::NegSoftplus)>(z, grad, n);
        case LossTerm::HingeReal: return term_cpu<scalar_t, int(LossTerm::HingeReal)>(z, grad, n);
        case LossTerm::HingeFake: return term_cpu<scalar_t, int(LossTerm::HingeFake)>(z, grad, n);
        case LossTerm::Identity: return term_cpu<scalar_t, int(LossTerm::Identity)>(z, grad, n);
        case LossTerm::Negate: return term_cpu<scalar_t, int(LossTerm::Negate)>(z, grad, n);
        case LossTerm::SquareOne: return term_cpu<scalar_t, int(LossTerm::SquareOne)>(z, grad, n);
        default: return term_cpu<scalar_t, int(LossTerm::Square)>(z, grad, n);
    }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gan_loss_cpu(const at::Tensor& a, const std::optional<at::Tensor>& b,
                                                            int64_t term_a, int64_t term_b) {
    GanLossPrepared r = prepare_gan_loss(a, b, term_a, term_b);
    const GanLossParams& p = r.p;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r.a.scalar_type(), "gan_loss_cpu", [&] {
        using M = at::opmath_type<scalar_t>;
        double loss = term_cpu<scalar_t>(static_cast<const scalar_t*>(p.a), static_cast<M*>(p.grad_a), p.numel_a,
                                         p.term_a);
        if (p.b) {
            loss += term_cpu<scalar_t>(static_cast<const scalar_t*>(p.b), static_cast<M*>(p.grad_b), p.numel_b,
                                       p.term_b);
        }
        *static_cast<scalar_t*>(p.loss) = static_cast<scalar_t>(loss);
    });
    return {r.loss, r.grad_a, r.grad_b};
}

struct GanLossBackwardPrepared {
    at::Tensor go, da, db;
    GanLossBackwardParams p;
};

GanLossBackwardPrepared prepare_gan_loss_backward(const at::Tensor& go, const at::Tensor& grad_a,
                                                  const at::Tensor& grad_b) {
    TORCH_CHECK(go.numel() == 1, "gan_loss_backward: the incoming gradient must be a scalar, got shape ",
                go.sizes());
    check_kernel_dtype("gan_loss_backward", "grad", go);
    const auto mt = math_dtype(go.scalar_type());
    TORCH_CHECK(grad_a.scalar_type() == mt && grad_b.scalar_type() == mt,
                "gan_loss_backward: saved gradients must be ", mt, ", got ", grad_a.scalar_type(), " and ",
                grad_b.scalar_type());
    TORCH_CHECK(grad_a.is_non_overlapping_and_dense() && grad_b.is_non_overlapping_and_dense(),
                "gan_loss_backward: saved gradients must be dense");
    GanLossBackwardPrepared r;
    r.go = go.reshape({});
    r.da = at::empty_like(grad_a, grad_a.options().dtype(go.scalar_type()));
    r.db = at::empty_like(grad_b, grad_b.options().dtype(go.scalar_type()));
    GanLossBackwardParams& p = r.p;
    p.go = r.go.data_ptr();
    p.grad_a = grad_a.data_ptr();
    p.grad_b = grad_b.numel() ? grad_b.data_ptr() : nullptr;
    p.da = r.da.data_ptr();
    p.db = grad_b.numel() ? r.db.data_ptr() : nullptr;
    p.numel_a = grad_a.numel();
    p.numel_b = grad_b.numel();
    return r;
}

std::tuple<at::Tensor, at::Tensor> gan_loss_backward_cpu(const at::Tensor& go, const at::Tensor& grad_a,
                                                         const at::Tensor& grad_b) {
    GanLossBackwardPrepared r = prepare_gan_loss_backward(go, grad_a, grad_b);
    const GanLossBackwardParams& p = r.p;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r.go.scalar_type(), "gan_loss_backward_cpu", [&] {
        using M = at::opmath_type<scalar_t>;
        const M go_v = static_cast<M>(*static_cast<const scalar_t*>(p.go));
        auto scale = [&](const void* src, void* dst, int64_t n) {
            const M* g = static_cast<const M*>(src);
            scalar_t* out = static_cast<scalar_t*>(dst);
            cpu::parallel_for(0, n, 1 << 15, [&](int64_t begin, int64_t end) {
                for (int64_t i = begin; i < end; ++i) out[i] = static_cast<scalar_t>(go_v * g[i]);
            });
        };
        scale(p.grad_a, p.da, p.numel_a);
        if (p.grad_b) scale(p.grad_b, p.db, p.numel_b);
    });
    return {r.da, r.db};
}

// --- gradient-penalty head ----------------------------------------------------------------------------------------

struct InterpolatePrepared {
    at::Tensor real, fake, eps, out;
    InterpolateParams p;
};

InterpolatePrepared prepare_interpolate(const at::Tensor& real, const at::Tensor& fake, const at::Tensor& eps) {
    check_kernel_dtype("penalty_interpolate", "real", real);
    TORCH_CHECK(real.dim() >= 1 && real.size(0) > 0, "penalty_interpolate: real must have a non-empty batch, got ",
                real.sizes());
    TORCH_CHECK(fake.sizes() == real.sizes(), "penalty_interpolate: fake shape ", fake.sizes(),
                " does not match real shape ", real.sizes());
    TORCH_CHECK(eps.dim() == 1 && eps.size(0) == real.size(0), "penalty_interpolate: eps must have shape [",
                real.size(0), "], got ", eps.sizes());
    TORCH_CHECK(fake.device() == real.device() && eps.device() == real.device(),
                "penalty_interpolate: real, fake and eps must be on one device");
    InterpolatePrepared r;
    r.real = sample_major(real);
    r.fake = with_layout_of(fake.to(real.scalar_type()), r.real);
    r.eps = eps.to(math_dtype(real.scalar_type())).contiguous();
    r.out = at::empty_like(r.real);
    InterpolateParams& p = r.p;
    p.real = r.real.data_ptr();
    p.fake = r.fake.data_ptr();
    p.eps = r.eps.data_ptr();
    p.out = r.out.data_ptr();
    p.batch = real.size(0);
    p.per_sample = real.numel() / real.size(0);
    return r;
}

at::Tensor interpolate_cpu(const at::Tensor& real, const at::Tensor& fake, const at::Tensor& eps) {
    InterpolatePrepared r = prepare_interpolate(real, fake, eps);
    const InterpolateParams& p = r.p;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r.real.scalar_type(), "penalty_interpolate_cpu", [&] {
        using M = at::opmath_type<scalar_t>;
        const scalar_t* x = static_cast<const scalar_t*>(p.real);
        const scalar_t* y = static_cast<const scalar_t*>(p.fake);
        scalar_t* out = static_cast<scalar_t*>(p.out);
        const M* eps = static_cast<const M*>(p.eps);
        cpu::parallel_for(0, p.batch * p.per_sample, 1 << 15, [&](int64_t begin, int64_t end) {
            for (int64_t i = begin; i < end; ++i) {
                const M e = eps[i / p.per_sample];
                out[i] = static_cast<scalar_t>(interpolate_value<M>(e, static_cast<M>(x[i]), static_cast<M>(y[i])));
            }
        });
    });
    return in_layout_of_real(r.out, real);
}

struct PenaltyPrepared {
    at::Tensor g, go, norms, out;
    PenaltyParams p;
};

PenaltyPrepared prepare_penalty(const at::Tensor& g_in, const at::Tensor* go, const at::Tensor* norms,
                                double weight, double center, double scale) {
    check_kernel_dtype("grad_norm_penalty", "the gradient", g_in);
    TORCH_CHECK(g_in.dim() >= 1 && g_in.size(0) > 0,
                "grad_norm_penalty: the gradient must have a non-empty batch dimension, got shape ", g_in.sizes());
    PenaltyPrepared r;
    r.g = sample_major(g_in);
    const int64_t batch = g_in.size(0);
    const auto mt = math_dtype(g_in.scalar_type());
    if (go) {
        TORCH_CHECK(go->numel() == 1, "grad_norm_penalty_backward: the incoming gradient must be a scalar");
        TORCH_CHECK(norms->dim() == 1 && norms->size(0) == batch && norms->scalar_type() == mt,
                    "grad_norm_penalty_backward: norms must be [", batch, "] ", mt, ", got ", norms->sizes(), " ",
                    norms->scalar_type());
        r.go = go->reshape({}).to(g_in.scalar_type());
        r.norms = norms->contiguous();
        r.out = at::empty_like(r.g);
    } else {
        r.norms = at::empty({batch}, g_in.options().dtype(mt));
        r.out = at::empty({}, g_in.options());
    }
    PenaltyParams& p = r.p;
    p.g = r.g.data_ptr();
    p.go = go ? r.go.data_ptr() : nullptr;
    p.norms = r.norms.data_ptr();
    p.out = r.out.data_ptr();
    p.batch = batch;
    p.per_sample = g_in.numel() / batch;
    p.weight = weight;
    p.center = center;
    p.scale = scale;
    return r;
}

std::tuple<at::Tensor, at::Tensor> penalty_cpu(const at::Tensor& g, double weight, double center, double scale) {
    PenaltyPrepared r = prepare_penalty(g, nullptr, nullptr, weight, center, scale);
    const PenaltyParams& p = r.p;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r.g.scalar_type(), "grad_norm_penalty_cpu", [&] {
        using M = at::opmath_type<scalar_t>;
        const scalar_t* gp = static_cast<const scalar_t*>(p.g);
        M* norms = static_cast<M*>(p.norms);
        cpu::parallel_for(0, p.batch, 1, [&](int64_t begin, int64_t end) {
            for (int64_t s = begin; s < end; ++s) {
                double sq = 0;  // double partial sums: the norm does not depend on the sample size
                for (int64_t j = s * p.per_sample; j < (s + 1) * p.per_sample; ++j) {
                    const double v = static_cast<double>(static_cast<M>(gp[j]));
                    sq += v * v;
                }
                norms[s] = static_cast<M>(std::sqrt(sq));
            }
        });
        double total = 0;
        for (int64_t s = 0; s < p.batch; ++s) total += penalty_term<double>(norms[s], p.scale, p.center);
        *static_cast<scalar_t*>(p.out) = static_cast<scalar_t>(p.weight * total / static_cast<double>(p.batch));
    });
    return {r.out, r.norms};
}

at::Tensor penalty_backward_cpu(const at::Tensor& go, const at::Tensor& g, const at::Tensor& norms, double weight,
                                double center, double scale) {
    PenaltyPrepared r = prepare_penalty(g, &go, &norms, weight, center, scale);
    const PenaltyParams& p = r.p;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r.g.scalar_type(), "grad_norm_penalty_backward_cpu",
                                    [&] {
        using M = at::opmath_type<scalar_t>;
        const scalar_t* gp = static_cast<const scalar_t*>(p.g);
        const M* n = static_cast<const M*>(p.norms);
        const M go_v = static_cast<M>(*static_cast<const scalar_t*>(p.go));
        scalar_t* out = static_cast<scalar_t*>(p.out);
        cpu::parallel_for(0, p.batch, 1, [&](int64_t begin, int64_t end) {
            for (int64_t s = begin; s < end; ++s) {
                const M coef = penalty_coef<M>(n[s], go_v, M(p.weight), M(p.center), M(p.scale), p.batch);
                for (int64_t j = s * p.per_sample; j < (s + 1) * p.per_sample; ++j) {
                    out[j] = static_cast<scalar_t>(coef * static_cast<M>(gp[j]));
                }
            }
        });
    });
    return r.out;
}

// --- CUDA: nvcc's launchers (losses_cuda.cu), or the same kernels through NVRTC in the same order and with the same
// grids (launch.h) ---------------------------------------------------------------------------------------------------

#ifdef FASTGAN_WITH_CUDA
void* current_stream() { return at::cuda::getCurrentCUDAStream().stream(); }
#endif

// One elementwise kernel "<base><T>(params)" over n elements, through NVRTC.
template <typename P>
void nvrtc_elementwise(const char* op, const at::Device& device, const char* base, DType dtype, const P& p,
                       int64_t n) {
    nvrtc_run(op, device, {{"losses", kernel_name(base, {cuda_type_name(dtype)}), elementwise_blocks(n), kThreads,
                            {kernel_arg(p)}}});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gan_loss_cuda(const at::Tensor& a, const std::optional<at::Tensor>& b,
                                                             int64_t term_a, int64_t term_b) {
    GanLossPrepared r = prepare_gan_loss(a, b, term_a, term_b);
    const c10::DeviceGuard guard(r.a.device());
    const at::Tensor partials = at::empty({kGanLossMaxBlocks}, r.grad_a.options());
    r.p.partials = partials.data_ptr();
    const DType dtype = kernel_dtype(r.a.scalar_type());
    if (use_nvrtc()) {
        const GanLossParams& p = r.p;
        if (p.numel_a == 0) return {r.loss, r.grad_a, r.grad_b};
        const unsigned blocks = gan_loss_blocks(p.numel_a + (p.b != nullptr ? p.numel_b : 0), true);
        const std::string T = cuda_type_name(dtype);
        std::vector<NvrtcLaunch> plan{{"losses", kernel_name("gan_loss_kernel", {T}), blocks,
                                       static_cast<unsigned>(gan_loss_threads(blocks)), {kernel_arg(p)}}};
        if (blocks > 1) {
            plan.push_back({"losses", kernel_name("gan_loss_finalize_kernel", {T}), 1, kGanLossMaxBlocks,
                            {kernel_arg(p), kernel_arg(static_cast<int>(blocks))}});
        }
        nvrtc_run("gan_loss", r.a.device(), plan);
        return {r.loss, r.grad_a, r.grad_b};
    }
#ifdef FASTGAN_WITH_CUDA
    check_launch(gan_loss_cuda_launch(r.p, dtype, current_stream()), "gan_loss");
#endif
    return {r.loss, r.grad_a, r.grad_b};
}

std::tuple<at::Tensor, at::Tensor> gan_loss_backward_cuda(const at::Tensor& go, const at::Tensor& grad_a,
                                                          const at::Tensor& grad_b) {
    GanLossBackwardPrepared r = prepare_gan_loss_backward(go, grad_a, grad_b);
    const c10::DeviceGuard guard(grad_a.device());
    const DType dtype = kernel_dtype(r.go.scalar_type());
    if (use_nvrtc()) {
        const GanLossBackwardParams& p = r.p;
        if (p.numel_a == 0) return {r.da, r.db};
        nvrtc_elementwise("gan_loss_backward", grad_a.device(), "gan_loss_backward_kernel", dtype, p,
                          p.numel_a + (p.grad_b != nullptr ? p.numel_b : 0));
        return {r.da, r.db};
    }
#ifdef FASTGAN_WITH_CUDA
    check_launch(gan_loss_backward_cuda_launch(r.p, dtype, current_stream()), "gan_loss_backward");
#endif
    return {r.da, r.db};
}

at::Tensor interpolate_cuda(const at::Tensor& real, const at::Tensor& fake, const at::Tensor& eps) {
    InterpolatePrepared r = prepare_interpolate(real, fake, eps);
    const c10::DeviceGuard guard(r.real.device());
    const DType dtype = kernel_dtype(r.real.scalar_type());
    if (use_nvrtc()) {
        const int64_t n = r.p.batch * r.p.per_sample;
        if (n > 0) nvrtc_elementwise("penalty_interpolate", r.real.device(), "interpolate_kernel", dtype, r.p, n);
        return in_layout_of_real(r.out, real);
    }
#ifdef FASTGAN_WITH_CUDA
    check_launch(interpolate_cuda_launch(r.p, dtype, current_stream()), "penalty_interpolate");
#endif
    return in_layout_of_real(r.out, real);
}

std::tuple<at::Tensor, at::Tensor> penalty_cuda(const at::Tensor& g, double weight, double center, double scale) {
    PenaltyPrepared r = prepare_penalty(g, nullptr, nullptr, weight, center, scale);
    const c10::DeviceGuard guard(r.g.device());
    const DType dtype = kernel_dtype(r.g.scalar_type());
    if (use_nvrtc()) {
        if (r.p.batch == 0) return {r.out, r.norms};
        const std::string T = cuda_type_name(dtype);
        nvrtc_run("grad_norm_penalty", r.g.device(),
                  {{"losses", kernel_name("sample_norm_kernel", {T}), static_cast<unsigned>(r.p.batch), kThreads,
                    {kernel_arg(r.p)}},
                   {"losses", kernel_name("penalty_kernel", {T}), 1, kThreads, {kernel_arg(r.p)}}});
        return {r.out, r.norms};
    }
#ifdef FASTGAN_WITH_CUDA
    check_launch(penalty_cuda_launch(r.p, dtype, current_stream()), "grad_norm_penalty");
#endif
    return {r.out, r.norms};
}

at::Tensor penalty_backward_cuda(const at::Tensor& go, const at::Tensor& g, const at::Tensor& norms, double weight,
                                 double center, double scale) {
    PenaltyPrepared r = prepare_penalty(g, &go, &norms, weight, center, scale);
    const c10::DeviceGuard guard(r.g.device());
    const DType dtype = kernel_dtype(r.g.scalar_type());
    if (use_nvrtc()) {
        const int64_t n = r.p.batch * r.p.per_sample;
        if (n > 0) {
            nvrtc_elementwise("grad_norm_penalty_backward", r.g.device(), "penalty_backward_kernel", dtype, r.p, n);
        }
        return r.out;
    }
#ifdef FASTGAN_WITH_CUDA
    check_launch(penalty_backward_cuda_launch(r.p, dtype, current_stream()), "grad_norm_penalty_backward");
#endif
    return r.out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastgan, m) {
    m.def("gan_loss(Tensor a, Tensor? b, int term_a, int term_b) -> (Tensor, Tensor, Tensor)");
    m.def("gan_loss_backward(Tensor go, Tensor grad_a, Tensor grad_b) -> (Tensor, Tensor)");
    m.def("penalty_interpolate(Tensor real, Tensor fake, Tensor eps) -> Tensor");
    m.def("grad_norm_penalty(Tensor g, float weight, float center, float scale) -> (Tensor, Tensor)");
    m.def("grad_norm_penalty_backward(Tensor go, Tensor g, Tensor norms, float weight, float center, float scale) "
          "-> Tensor");
}

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
    m.impl("gan_loss", &gan_loss_cpu);
    m.impl("gan_loss_backward", &gan_loss_backward_cpu);
    m.impl("penalty_interpolate", &interpolate_cpu);
    m.impl("grad_norm_penalty", &penalty_cpu);
    m.impl("grad_norm_penalty_backward", &penalty_backward_cpu);
}

// Registered in every build: without nvcc the CUDA kernels run through NVRTC.
TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
    m.impl("gan_loss", &gan_loss_cuda);
    m.impl("gan_loss_backward", &gan_loss_backward_cuda);
    m.impl("penalty_interpolate", &interpolate_cuda);
    m.impl("grad_norm_penalty", &penalty_cuda);
    m.impl("grad_norm_penalty_backward", &penalty_backward_cuda);
}

}  // namespace fastgan
