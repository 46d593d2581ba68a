// norm_act: torch-facing glue (schemas, argument checks, dispatch registration) and the CPU kernels of
// fastgan.ops.batch_norm_act / instance_norm_act. The math is in norm_act.h (and bias_act.h for the activation),
// shared with the CUDA kernels in norm_act.cu.
//
// CPU kernels: one task per statistic group (at::parallel_for over groups), each reducing its values serially in
// double with shifted sums, so results do not depend on the number of threads (deterministic by construction).
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/OpMathType.h>

#include <tuple>

#include <c10/core/DeviceGuard.h>

#include "glue.h"
#include "launch.h"
#include "norm_act.h"
#include "nvrtc_launch.h"

#ifdef FASTGAN_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include "norm_act_cuda.h"
#endif

namespace fastgan {
namespace {

constexpr int kNumActs = static_cast<int>(Act::Silu) + 1;
using Triple = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

struct Prepared {
    at::Tensor x, dy, w, b, mean, var, out;
    at::ScalarType math;
    NormActParams p;
};

// x as [N, C, L]: contiguous or 4-D channels_last are kept as given (the output is laid out the same), anything
// else is made contiguous. The strides are set from the layout, not read, so size-1 dims cannot confuse them.
Prepared prepare(const char* op, const at::Tensor& x_in, const std::optional<at::Tensor>& w_in,
                 const std::optional<at::Tensor>& b_in, bool use_input_stats, bool instance, double eps, int64_t act,
                 double alpha) {
    check_kernel_dtype(op, "x", x_in);
    TORCH_CHECK(x_in.dim() >= 2, op, ": x must have shape [N, C, ...], got ", x_in.sizes());
    TORCH_CHECK(act >= 0 && act < kNumActs, op, ": unknown activation index ", act);
    TORCH_CHECK(eps > 0, op, ": eps must be > 0, got ", eps);
    Prepared r;
    const int64_t N = x_in.size(0), C = x_in.size(1), L = x_in.numel() / std::max<int64_t>(N * C, 1);
    const bool channels_last = !x_in.is_contiguous() && x_in.dim() == 4 &&
                               x_in.is_contiguous(at::MemoryFormat::ChannelsLast);
    r.x = channels_last || x_in.is_contiguous() ? x_in : x_in.contiguous();
    r.math = x_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    auto affine = [&](const char* name, const std::optional<at::Tensor>& in) {
        if (!in.has_value() || !in->defined()) return at::Tensor();
        const at::Tensor& t = *in;
        TORCH_CHECK(t.dim() == 1 && t.size(0) == C, op, ": ", name, " must be 1-D of length x.shape[1] = ", C,
                    ", got shape ", t.sizes());
        TORCH_CHECK(t.device() == x_in.device(), op, ": ", name, " is on ", t.device(), " but x is on ",
                    x_in.device(), "; move it to x's device");
        check_kernel_dtype(op, name, t);
        return t.to(r.math).contiguous();
    };
    r.w = affine("weight", w_in);
    r.b = affine("bias", b_in);
    NormActParams& p = r.p;
    p = NormActParams{};
    p.x = r.x.data_ptr();
    p.w = r.w.defined() ? r.w.data_ptr() : nullptr;
    p.b = r.b.defined() ? r.b.data_ptr() : nullptr;
    p.N = N;
    p.C = C;
    p.L = L;
    p.sN = C * L;
    p.sC = channels_last ? 1 : L;
    p.sL = channels_last ? C : 1;
    p.instance = instance && use_input_stats;  // with running statistics both norms are per channel
    p.use_input_stats = use_input_stats;
    p.groups = p.instance ? N * C : C;
    p.group_size = p.instance ? L : N * L;
    p.eps = eps;
    p.act = static_cast<int>(act);
    p.alpha = alpha;
    r.out = at::empty_like(r.x);
    p.out = r.out.data_ptr();
    return r;
}

// The running statistics (evaluation) as per-channel mean/var in the math type.
void use_running_stats(const char* op, Prepared& r, const std::optional<at::Tensor>& running_mean,
                       const std::optional<at::Tensor>& running_var) {
    TORCH_CHECK(running_mean.has_value() && running_var.has_value() && running_mean->defined() &&
                    running_var->defined(),
                op, ": normalizing with running statistics (training=False / use_input_stats=False) needs "
                "running_mean and running_var");
    for (const at::Tensor* t : {&*running_mean, &*running_var}) {
        TORCH_CHECK(t->dim() == 1 && t->size(0) == r.p.C, op, ": running statistics must be 1-D of length ", r.p.C,
                    ", got shape ", t->sizes());
        TORCH_CHECK(t->device() == r.x.device(), op, ": running statistics are on ", t->device(), " but x is on ",
                    r.x.device());
    }
    // Copies: an op's outputs must not alias its inputs.
    r.mean = running_mean->to(r.math, /*non_blocking=*/false, /*copy=*/true).contiguous();
    r.var = running_var->to(r.math, /*non_blocking=*/false, /*copy=*/true).contiguous();
    r.p.mean = r.mean.data_ptr();
    r.p.var = r.var.data_ptr();
}

template <typename scalar_t>
void forward_cpu_kernel(const NormActParams& p, at::opmath_type<scalar_t>* mean_out,
                        at::opmath_type<scalar_t>* var_out) {
    using M = at::opmath_type<scalar_t>;
    const scalar_t* x = static_cast<const scalar_t*>(p.x);
    scalar_t* y = static_cast<scalar_t*>(p.out);
    const M* w = static_cast<const M*>(p.w);
    const M* b = static_cast<const M*>(p.b);
    const M alpha = static_cast<M>(p.alpha), eps = static_cast<M>(p.eps);
    at::parallel_for(0, p.groups, 1, [&](int64_t begin, int64_t end) {
        for (int64_t g = begin; g < end; ++g) {
            M mean, var;
            if (p.use_input_stats) {
                double s1 = 0, s2 = 0;
                const double shift = p.group_size ? shift_of(static_cast<double>(x[group_offset(p, g, 0)])) : 0.0;
                for (int64_t j = 0; j < p.group_size; ++j) {
                    const double d = static_cast<double>(x[group_offset(p, g, j)]) - shift;
                    s1 += d;
                    s2 += d * d;
                }
                double mean_d = 0, m2 = 0;
                if (p.group_size) shifted_moments<double>(static_cast<double>(p.group_size), shift, s1, s2, mean_d, m2);
                mean = static_cast<M>(mean_d);
                var = static_cast<M>(p.group_size ? m2 / p.group_size : 0.0);
                mean_out[g] = mean;
                var_out[g] = var;
            } else {
                mean = static_cast<const M*>(p.mean)[g];
                var = static_cast<const M*>(p.var)[g];
            }
            const int64_t c = g % p.C;
            const M invstd = inv_std<M>(var, eps), wc = w ? w[c] : M(1), bc = b ? b[c] : M(0);
            for (int64_t j = 0; j < p.group_size; ++j) {
                const int64_t i = group_offset(p, g, j);
                const M z = norm_z<M>(static_cast<M>(x[i]), mean, invstd, wc, bc);
                y[i] = static_cast<scalar_t>(act_forward<M>(p.act, z, alpha));
            }
        }
    });
}

template <typename scalar_t>
void backward_cpu_kernel(const NormActParams& p, at::opmath_type<scalar_t>* sum_dz_out,
                         at::opmath_type<scalar_t>* sum_dz_xhat_out) {
    using M = at::opmath_type<scalar_t>;
    const scalar_t* x = static_cast<const scalar_t*>(p.x);
    const scalar_t* dy = static_cast<const scalar_t*>(p.dy);
    scalar_t* dx = static_cast<scalar_t*>(p.out);
    const M* w = static_cast<const M*>(p.w);
    const M* b = static_cast<const M*>(p.b);
    const M alpha = static_cast<M>(p.alpha), eps = static_cast<M>(p.eps);
    at::parallel_for(0, p.groups, 1, [&](int64_t begin, int64_t end) {
        for (int64_t g = begin; g < end; ++g) {
            const int64_t c = g % p.C;
            const M mean = static_cast<const M*>(p.mean)[g], invstd = inv_std<M>(static_cast<const M*>(p.var)[g], eps);
            const M wc = w ? w[c] : M(1), bc = b ? b[c] : M(0);
            // Pass 1: the two per-group sums (and, with constant statistics, dx itself).
            double s_dz = 0, s_dzx = 0;
            for (int64_t j = 0; j < p.group_size; ++j) {
                const int64_t i = group_offset(p, g, j);
                const M xhat = (static_cast<M>(x[i]) - mean) * invstd;
                const M dz = act_backward<M>(p.act, xhat * wc + bc, static_cast<M>(dy[i]), alpha);
                s_dz += dz;
                s_dzx += dz * xhat;
                if (!p.use_input_stats) dx[i] = static_cast<scalar_t>(norm_dx<M>(false, dz, xhat, wc, invstd, 0, 0, 1));
            }
            sum_dz_out[g] = static_cast<M>(s_dz);
            sum_dz_xhat_out[g] = static_cast<M>(s_dzx);
            if (!p.use_input_stats) continue;
            // Pass 2: dx with the mean and variance terms.
            const M count = static_cast<M>(p.group_size), sdz = static_cast<M>(s_dz), sdzx = static_cast<M>(s_dzx);
            for (int64_t j = 0; j < p.group_size; ++j) {
                const int64_t i = group_offset(p, g, j);
                const M xhat = (static_cast<M>(x[i]) - mean) * invstd;
                const M dz = act_backward<M>(p.act, xhat * wc + bc, static_cast<M>(dy[i]), alpha);
                dx[i] = static_cast<scalar_t>(norm_dx<M>(true, dz, xhat, wc, invstd, sdz, sdzx, count));
            }
        }
    });
}

Prepared prepare_forward(const at::Tensor& x, const std::optional<at::Tensor>& w, const std::optional<at::Tensor>& b,
                         const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var,
                         bool use_input_stats, bool instance, double eps, int64_t act, double alpha) {
    const char* op = instance ? "instance_norm_act" : "batch_norm_act";
    Prepared r = prepare(op, x, w, b, use_input_stats, instance, eps, act, alpha);
    if (use_input_stats && running_mean.has_value() && running_mean->defined()) {
        // x's batch statistics, reduced by the convolution that wrote x: normalize with them, skip the reduction.
        TORCH_CHECK(!instance, op, ": precomputed batch statistics are supported for batch norm only");
        use_running_stats(op, r, running_mean, running_var);
        r.p.use_input_stats = false;  // the forward kernels only read this to decide whether to reduce
    } else if (use_input_stats) {
        TORCH_CHECK(r.p.group_size != 1 || x.numel() == 0, op, ": expected more than 1 value per statistic when "
                    "normalizing with batch statistics, got input of shape ", x.sizes());
        r.mean = at::empty({r.p.groups}, x.options().dtype(r.math));
        r.var = at::empty({r.p.groups}, x.options().dtype(r.math));
        r.p.mean = r.mean.data_ptr();
        r.p.var = r.var.data_ptr();
    } else {
        use_running_stats(op, r, running_mean, running_var);
    }
    return r;
}

Prepared prepare_backward(const at::Tensor& dy, const at::Tensor& x, const std::optional<at::Tensor>& w,
                          const std::optional<at::Tensor>& b, const at::Tensor& mean, const at::Tensor& var,
                          bool use_input_stats, bool instance, double eps, int64_t act, double alpha) {
    const char* op = instance ? "instance_norm_act_backward" : "batch_norm_act_backward";
    Prepared r = prepare(op, x, w, b, use_input_stats, instance, eps, act, alpha);
    TORCH_CHECK(dy.sizes() == x.sizes(), op, ": grad shape ", dy.sizes(), " does not match x shape ", x.sizes());
    TORCH_CHECK(mean.dim() == 1 && var.dim() == 1 && mean.size(0) == r.p.groups && var.size(0) == r.p.groups, op,
                ": mean and var must be 1-D of length ", r.p.groups, ", got ", mean.sizes(), " and ", var.sizes());
    r.dy = dy.to(x.scalar_type());
    if (r.dy.strides() != r.x.strides()) r.dy = at::empty_like(r.x).copy_(r.dy);
    r.p.dy = r.dy.data_ptr();
    r.mean = mean.to(r.math).contiguous();
    r.var = var.to(r.math).contiguous();
    r.p.mean = r.mean.data_ptr();
    r.p.var = r.var.data_ptr();
    return r;
}

// dw, db per channel from the per-group sums (instance statistics: summed over the samples).
Triple finish_backward(const Prepared& r, const at::Tensor& sum_dz, const at::Tensor& sum_dz_xhat) {
    if (!r.p.instance) return {r.out, sum_dz_xhat, sum_dz};
    return {r.out, sum_dz_xhat.view({r.p.N, r.p.C}).sum(0), sum_dz.view({r.p.N, r.p.C}).sum(0)};
}

Triple forward_cpu(const at::Tensor& x, const std::optional<at::Tensor>& w, const std::optional<at::Tensor>& b,
                   const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var,
                   bool use_input_stats, bool instance, double eps, int64_t act, double alpha) {
    Prepared r = prepare_forward(x, w, b, running_mean, running_var, use_input_stats, instance, eps, act, alpha);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r.x.scalar_type(), "norm_act_cpu", [&] {
        using M = at::opmath_type<scalar_t>;
        forward_cpu_kernel<scalar_t>(r.p, static_cast<M*>(r.mean.data_ptr()), static_cast<M*>(r.var.data_ptr()));
    });
    return {r.out, r.mean, r.var};
}

Triple backward_cpu(const at::Tensor& dy, const at::Tensor& x, const std::optional<at::Tensor>& w,
                    const std::optional<at::Tensor>& b, const at::Tensor& mean, const at::Tensor& var,
                    bool use_input_stats, bool instance, double eps, int64_t act, double alpha) {
    Prepared r = prepare_backward(dy, x, w, b, mean, var, use_input_stats, instance, eps, act, alpha);
    at::Tensor sum_dz = at::empty({r.p.groups}, x.options().dtype(r.math));
    at::Tensor sum_dz_xhat = at::empty({r.p.groups}, x.options().dtype(r.math));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r.x.scalar_type(), "norm_act_backward_cpu", [&] {
        using M = at::opmath_type<scalar_t>;
        backward_cpu_kernel<scalar_t>(r.p, static_cast<M*>(sum_dz.data_ptr()), static_cast<M*>(sum_dz_xhat.data_ptr()));
    });
    return finish_backward(r, sum_dz, sum_dz_xhat);
}

// The running-statistics update: checks naming the op, the statistics in their dtype (float32/float64, contiguous).
struct PreparedUpdate {
    at::Tensor mean, var;
    UpdateStatsParams p;
};

PreparedUpdate prepare_update(const at::Tensor& running_mean, const at::Tensor& running_var, const at::Tensor& mean,
                              const at::Tensor& var, double factor, int64_t count, int64_t batch) {
    const char* op = "norm_act_update_stats";
    TORCH_CHECK(running_mean.dim() == 1 && running_var.sizes() == running_mean.sizes(), op,
                ": running_mean and running_var must be 1-D of the same length, got ", running_mean.sizes(), " and ",
                running_var.sizes());
    TORCH_CHECK(is_kernel_dtype(running_mean.scalar_type()) &&
                    running_var.scalar_type() == running_mean.scalar_type(), op,
                ": running_mean and running_var must be floating-point tensors of one dtype, got ",
                running_mean.scalar_type(), " and ", running_var.scalar_type());
    const int64_t C = running_mean.size(0);
    TORCH_CHECK(batch >= 1, op, ": batch must be >= 1, got ", batch);
    TORCH_CHECK(count > 1, op, ": the unbiased variance needs more than 1 value per statistic group, got count = ",
                count, " (PyTorch rejects batch statistics of one value too); use a larger input or evaluation mode");
    TORCH_CHECK(mean.dim() == 1 && var.dim() == 1 && mean.size(0) == batch * C && var.size(0) == batch * C, op,
                ": mean and var must be 1-D of length batch * C = ", batch * C, ", got ", mean.sizes(), " and ",
                var.sizes());
    TORCH_CHECK((mean.scalar_type() == at::kFloat || mean.scalar_type() == at::kDouble) &&
                    var.scalar_type() == mean.scalar_type(), op,
                ": mean and var must both be float32 or both float64 (the statistics norm_act returns), got ",
                mean.scalar_type(), " and ", var.scalar_type());
    for (const at::Tensor* t : {&running_var, &mean, &var}) {
        TORCH_CHECK(t->device() == running_mean.device(), op, ": all tensors must be on one device, got ",
                    running_mean.device(), " and ", t->device());
    }
    PreparedUpdate r;
    r.mean = mean.contiguous();
    r.var = var.contiguous();
    UpdateStatsParams& p = r.p;
    p.running_mean = running_mean.data_ptr();
    p.running_var = running_var.data_ptr();
    p.stride_mean = running_mean.stride(0);
    p.stride_var = running_var.stride(0);
    p.mean = r.mean.data_ptr();
    p.var = r.var.data_ptr();
    p.C = C;
    p.batch = batch;
    p.ratio = static_cast<double>(count) / static_cast<double>(count - 1);
    p.factor = factor;
    return r;
}

void update_stats_cpu(const at::Tensor& running_mean, const at::Tensor& running_var, const at::Tensor& mean,
                      const at::Tensor& var, double factor, int64_t count, int64_t batch) {
    const PreparedUpdate r = prepare_update(running_mean, running_var, mean, var, factor, count, batch);
    const bool stats_double = r.mean.scalar_type() == at::kDouble;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, running_mean.scalar_type(), "norm_act_update_stats", [&] {
        using M = at::opmath_type<scalar_t>;
        at::parallel_for(0, r.p.C, 1024, [&](int64_t begin, int64_t end) {
            for (int64_t c = begin; c < end; ++c) {
                if (stats_double) {
                    update_running_channel<scalar_t, double, M>(r.p, c);
                } else {
                    update_running_channel<scalar_t, float, M>(r.p, c);
                }
            }
        });
    });
}

// --- CUDA: nvcc's launchers (norm_act_cuda.cu), or the same kernels through NVRTC in the same order and with the same
// grids (launch.h) -------------------------------------------------------------------------------------------------

// The NVRTC plan of norm_act_cuda.cu's forward: per-(group, chunk) partial moments, their merge, then y.
void forward_nvrtc(const char* op, const Prepared& r, DType dtype, void* mean, void* var, at::Tensor& partials) {
    NormActParams p = r.p;
    const std::string T = cuda_type_name(dtype), M = cuda_math_type_name(dtype);
    const int64_t numel = p.N * p.C * p.L;
    std::vector<NvrtcLaunch> plan;
    if (p.use_input_stats && p.groups > 0) {
        const int64_t chunks = norm_act_chunks(p.group_size);
        if (p.group_size > 0) {
            plan.push_back({"norm_act", kernel_name("stats_partial_kernel", {T}),
                            static_cast<unsigned>(p.groups * chunks), kThreads,
                            {kernel_arg(p), kernel_arg(partials.data_ptr()), kernel_arg(chunks)}});
        } else {
            partials.zero_();
        }
        plan.push_back({"norm_act", kernel_name("stats_merge_kernel", {M}), thread_per_item_blocks(p.groups), kThreads,
                        {kernel_arg(p), kernel_arg(partials.data_ptr()), kernel_arg(chunks), kernel_arg(mean),
                         kernel_arg(var)}});
        p.mean = mean;
        p.var = var;
    }
    if (numel > 0) {
        plan.push_back({"norm_act", kernel_name("apply_kernel", {T}), elementwise_blocks(numel), kThreads,
                        {kernel_arg(p), kernel_arg(numel)}});
    }
    nvrtc_run(op, r.x.device(), plan);
}

// The NVRTC plan of norm_act_cuda.cu's backward: partial sums of dz and dz * xhat, their merge, then dx.
void backward_nvrtc(const char* op, const Prepared& r, DType dtype, void* sum_dz, void* sum_dz_xhat,
                    at::Tensor& partials) {
    NormActParams p = r.p;
    const std::string T = cuda_type_name(dtype), M = cuda_math_type_name(dtype);
    const int64_t numel = p.N * p.C * p.L;
    std::vector<NvrtcLaunch> plan;
    if (p.groups > 0) {
        const int64_t chunks = norm_act_chunks(p.group_size);
        if (p.group_size > 0) {
            plan.push_back({"norm_act", kernel_name("grad_partial_kernel", {T}),
                            static_cast<unsigned>(p.groups * chunks), kThreads,
                            {kernel_arg(p), kernel_arg(partials.data_ptr()), kernel_arg(chunks)}});
        } else {
            partials.zero_();
        }
        plan.push_back({"norm_act", kernel_name("grad_merge_kernel", {M}), thread_per_item_blocks(p.groups), kThreads,
                        {kernel_arg(p), kernel_arg(partials.data_ptr()), kernel_arg(chunks), kernel_arg(sum_dz),
                         kernel_arg(sum_dz_xhat)}});
    }
    p.sum_dz = sum_dz;
    p.sum_dz_xhat = sum_dz_xhat;
    if (numel > 0) {
        plan.push_back({"norm_act", kernel_name("dx_kernel", {T}), elementwise_blocks(numel), kThreads,
                        {kernel_arg(p), kernel_arg(numel)}});
    }
    nvrtc_run(op, r.x.device(), plan);
}

Triple forward_cuda(const at::Tensor& x, const std::optional<at::Tensor>& w, const std::optional<at::Tensor>& b,
                    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var,
                    bool use_input_stats, bool instance, double eps, int64_t act, double alpha) {
    const c10::DeviceGuard guard(x.device());
    const char* op = instance ? "instance_norm_act" : "batch_norm_act";
    Prepared r = prepare_forward(x, w, b, running_mean, running_var, use_input_stats, instance, eps, act, alpha);
    at::Tensor partials;
    if (r.p.use_input_stats) {
        partials = at::empty({r.p.groups * norm_act_chunks(r.p.group_size) * 3}, x.options().dtype(r.math));
    }
    const DType dtype = kernel_dtype(r.x.scalar_type());
    if (use_nvrtc()) {
        forward_nvrtc(op, r, dtype, r.mean.data_ptr(), r.var.data_ptr(), partials);
        return {r.out, r.mean, r.var};
    }
#ifdef FASTGAN_WITH_CUDA
    check_launch(norm_act_cuda_forward(r.p, dtype, r.mean.data_ptr(), r.var.data_ptr(),
                                       partials.defined() ? partials.data_ptr() : nullptr,
                                       at::cuda::getCurrentCUDAStream().stream()),
                 op);
#endif
    return {r.out, r.mean, r.var};
}

Triple backward_cuda(const at::Tensor& dy, const at::Tensor& x, const std::optional<at::Tensor>& w,
                     const std::optional<at::Tensor>& b, const at::Tensor& mean, const at::Tensor& var,
                     bool use_input_stats, bool instance, double eps, int64_t act, double alpha) {
    const c10::DeviceGuard guard(x.device());
    const char* op = instance ? "instance_norm_act_backward" : "batch_norm_act_backward";
    Prepared r = prepare_backward(dy, x, w, b, mean, var, use_input_stats, instance, eps, act, alpha);
    at::Tensor sum_dz = at::empty({r.p.groups}, x.options().dtype(r.math));
    at::Tensor sum_dz_xhat = at::empty({r.p.groups}, x.options().dtype(r.math));
    at::Tensor partials = at::empty({r.p.groups * norm_act_chunks(r.p.group_size) * 2}, x.options().dtype(r.math));
    const DType dtype = kernel_dtype(r.x.scalar_type());
    if (use_nvrtc()) {
        backward_nvrtc(op, r, dtype, sum_dz.data_ptr(), sum_dz_xhat.data_ptr(), partials);
        return finish_backward(r, sum_dz, sum_dz_xhat);
    }
#ifdef FASTGAN_WITH_CUDA
    check_launch(norm_act_cuda_backward(r.p, dtype, sum_dz.data_ptr(), sum_dz_xhat.data_ptr(), partials.data_ptr(),
                                        at::cuda::getCurrentCUDAStream().stream()),
                 op);
#endif
    return finish_backward(r, sum_dz, sum_dz_xhat);
}

void update_stats_cuda(const at::Tensor& running_mean, const at::Tensor& running_var, const at::Tensor& mean,
                       const at::Tensor& var, double factor, int64_t count, int64_t batch) {
    const c10::DeviceGuard guard(running_mean.device());
    const PreparedUpdate r = prepare_update(running_mean, running_var, mean, var, factor, count, batch);
    const DType dtype = kernel_dtype(running_mean.scalar_type());
    const bool stats_double = r.mean.scalar_type() == at::kDouble;
    if (use_nvrtc()) {
        if (r.p.C == 0) return;
        nvrtc_run("norm_act_update_stats", running_mean.device(),
                  {{"norm_act", kernel_name("update_stats_kernel", {cuda_type_name(dtype),
                                                                    stats_double ? "double" : "float"}),
                    thread_per_item_blocks(r.p.C), kThreads, {kernel_arg(r.p)}}});
        return;
    }
#ifdef FASTGAN_WITH_CUDA
    check_launch(norm_act_cuda_update_stats(r.p, dtype, stats_double, at::cuda::getCurrentCUDAStream().stream()),
                 "norm_act_update_stats");
#endif
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastgan, m) {
    m.def("norm_act(Tensor x, Tensor? weight, Tensor? bias, Tensor? running_mean, Tensor? running_var, "
          "bool use_input_stats, bool instance, float eps, int act, float alpha) -> (Tensor, Tensor, Tensor)");
    m.def("norm_act_backward(Tensor dy, Tensor x, Tensor? weight, Tensor? bias, Tensor mean, Tensor var, "
          "bool use_input_stats, bool instance, float eps, int act, float alpha) -> (Tensor, Tensor, Tensor)");
    m.def("norm_act_update_stats(Tensor(a!) running_mean, Tensor(b!) running_var, Tensor mean, Tensor var, "
          "float factor, int count, int batch) -> ()");
}

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
    m.impl("norm_act", &forward_cpu);
    m.impl("norm_act_backward", &backward_cpu);
    m.impl("norm_act_update_stats", &update_stats_cpu);
}

// Registered in every build: without nvcc the CUDA kernels run through NVRTC.
TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
    m.impl("norm_act", &forward_cuda);
    m.impl("norm_act_backward", &backward_cuda);
    m.impl("norm_act_update_stats", &update_stats_cuda);
}

}  // namespace fastgan
