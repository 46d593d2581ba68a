// bias_act: torch-facing glue (schemas, argument checks, dispatch registration) and the CPU kernel.
// The math is in bias_act.h, shared with the CUDA kernel in bias_act.cu.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/OpMathType.h>

#include <c10/core/DeviceGuard.h>

#include <vector>

#include "glue.h"
#include "bias_act.h"
#include "cpu_vec.h"
#include "launch.h"
#include "nvrtc_launch.h"

#ifdef FASTGAN_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include "bias_act_cuda.h"
#endif

namespace fastgan {
namespace {

constexpr int kNumActs = static_cast<int>(Act::Silu) + 1;
enum Kind : int { kForward = 0, kBackward = 1, kBackward2 = 2 };

// A tensor laid out exactly like `like` (dense `like`), copying only when the strides differ.
at::Tensor with_layout_of(const at::Tensor& t, const at::Tensor& like) {
    if (t.strides() == like.strides()) return t;
    return at::empty_like(like).copy_(t);
}

struct Prepared {
    at::Tensor x, b, dy, g, out;
    BiasActParams p;
};

Prepared prepare(const at::Tensor& x_in, const std::optional<at::Tensor>& b_in, const at::Tensor* dy_in,
                 const at::Tensor* g_in, int64_t dim, int64_t act, double alpha, double gain,
                 std::optional<double> clamp) {
    check_kernel_dtype("bias_act", "x", x_in);
    TORCH_CHECK(act >= 0 && act < kNumActs, "bias_act: unknown activation index ", act);
    const int64_t ndim = x_in.dim();
    TORCH_CHECK(ndim == 0 ? false : (dim >= -ndim && dim < ndim), "bias_act: dim=", dim,
                " is out of range for x with ", ndim, " dimensions");
    if (dim < 0) dim += ndim;
    TORCH_CHECK(!clamp.has_value() || *clamp >= 0, "bias_act: clamp must be >= 0, got ", clamp.value_or(0));

    Prepared r;
    // Kernels walk memory linearly, so x must be dense; channels_last and other dense layouts are kept as given, and
    // anything else is copied densely in its own dimension order (as PyTorch's elementwise ops lay out a result).
    r.x = x_in.is_non_overlapping_and_dense() ? x_in : x_in.clone(at::MemoryFormat::Preserve);
    if (b_in.has_value() && b_in->defined()) {
        const at::Tensor& b = *b_in;
        TORCH_CHECK(b.dim() == 1 && b.size(0) == x_in.size(dim), "bias_act: b must be 1-D of length x.shape[",
                    dim, "] = ", x_in.size(dim), ", got shape ", b.sizes());
        TORCH_CHECK(b.device() == x_in.device(), "bias_act: b is on ", b.device(), " but x is on ",
                    x_in.device(), "; move b to x's device");
        check_kernel_dtype("bias_act", "b", b);
        r.b = b.to(r.x.scalar_type()).contiguous();
    }
    if (dy_in) {
        TORCH_CHECK(dy_in->sizes() == x_in.sizes(), "bias_act_backward: grad shape ", dy_in->sizes(),
                    " does not match x shape ", x_in.sizes());
        r.dy = with_layout_of(dy_in->to(r.x.scalar_type()), r.x);
    }
    if (g_in) {
        TORCH_CHECK(g_in->sizes() == x_in.sizes(), "bias_act_backward2: grad shape ", g_in->sizes(),
                    " does not match x shape ", x_in.sizes());
        r.g = with_layout_of(g_in->to(r.x.scalar_type()), r.x);
    }
    r.out = at::empty_like(r.x);
    BiasActParams& p = r.p;
    p.x = r.x.data_ptr();
    p.b = r.b.defined() ? r.b.data_ptr() : nullptr;
    p.dy = r.dy.defined() ? r.dy.data_ptr() : nullptr;
    p.g = r.g.defined() ? r.g.data_ptr() : nullptr;
    p.out = r.out.data_ptr();
    p.numel = r.x.numel();
    p.bias_size = x_in.size(dim);
    p.bias_stride = std::max<int64_t>(r.x.stride(dim), 1);
    p.act = static_cast<int>(act);
    p.alpha = alpha;
    p.gain = gain;
    p.clamp = clamp.has_value() ? *clamp : -1.0;
    return r;
}

template <int K, int A, typename M>
inline M cpu_element(M z, M dy, M g, M alpha, M gain, M clamp) {
    // A is a compile-time constant here, so the activation switch in bias_act.h folds away and loops vectorise.
    if constexpr (K == kForward) return bias_act_forward<M>(A, z, alpha, gain, clamp);
    else if constexpr (K == kBackward) return bias_act_backward<M>(A, z, dy, alpha, gain, clamp);
    else return bias_act_backward2<M>(A, z, dy, g, alpha, gain, clamp);
}

// n values of one run: bias bs[k] per value (a row) or the one bias (bs null); __restrict, so the loop vectorises
// without run-time alias checks.
template <int K, int A, typename M>
inline void cpu_block(const M* __restrict xs, const M* __restrict bs, M bias, const M* __restrict ds,
                      const M* __restrict gs, M* __restrict os, int64_t n, M alpha, M gain, M clamp) {
    if (bs) {
        for (int64_t k = 0; k < n; ++k) {
            os[k] = cpu_element<K, A, M>(xs[k] + bs[k], K != kForward ? ds[k] : M(0), K == kBackward2 ? gs[k] : M(0),
                                         alpha, gain, clamp);
        }
    } else {
        for (int64_t k = 0; k < n; ++k) {
            os[k] = cpu_element<K, A, M>(xs[k] + bias, K != kForward ? ds[k] : M(0), K == kBackward2 ? gs[k] : M(0),
                                         alpha, gain, clamp);
        }
    }
}

template <typename scalar_t, int K, int A>
void cpu_kernel(const BiasActParams& p) {
    // float64 computes in double (gradcheck); float, half and bfloat16 in float.
    using M = at::opmath_type<scalar_t>;
    using cpu::kCpuBlock;
    const scalar_t* x = static_cast<const scalar_t*>(p.x);
    const scalar_t* b = static_cast<const scalar_t*>(p.b);
    const scalar_t* dy = static_cast<const scalar_t*>(p.dy);
    const scalar_t* g = static_cast<const scalar_t*>(p.g);
    scalar_t* out = static_cast<scalar_t*>(p.out);
    const M alpha = static_cast<M>(p.alpha), gain = static_cast<M>(p.gain), clamp = static_cast<M>(p.clamp);
    // Memory splits into runs that share one bias value (bias_stride > 1: e.g. an NCHW plane) or into rows that
    // walk the whole bias (bias_stride == 1: channels_last or a Linear output). Either way a run is contiguous and
    // its bias index is known from the loop, never divided out of an element's index.
    // A size-1 bias dimension may carry any stride: its bias is one constant over all of memory.
    const bool constant = b == nullptr || p.bias_size == 1;
    const bool rows = !constant && p.bias_stride == 1;
    const int64_t run = constant ? p.numel : (rows ? p.bias_size : p.bias_stride);
    const int64_t runs = run == 0 ? 0 : p.numel / run;
    std::vector<M> bias_row;  // rows: the bias in the math type, once
    if (rows) {
        bias_row.resize(p.bias_size);
        for (int64_t j = 0; j < p.bias_size; ++j) bias_row[j] = static_cast<M>(b[j]);
    }
    // One task is a range of whole runs, or of blocks within the one constant run; ~32K values per task.
    const int64_t blocks_per_run = (run + kCpuBlock - 1) / kCpuBlock;
    const int64_t items = runs * blocks_per_run;
    const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / kCpuBlock);
    cpu::parallel_for(0, items, grain, [&](int64_t i0, int64_t i1) {
        M xbuf[kCpuBlock], dbuf[kCpuBlock], gbuf[kCpuBlock], obuf[kCpuBlock];
        for (int64_t item = i0; item < i1; ++item) {
            const int64_t r = item / blocks_per_run, j0 = (item % blocks_per_run) * kCpuBlock;  // per block
            const int64_t n = std::min(kCpuBlock, run - j0);
            const int64_t base = r * run + j0;
            const M* xs = cpu::as_math<scalar_t, M>(x + base, n, xbuf);
            const M* ds = K != kForward ? cpu::as_math<scalar_t, M>(dy + base, n, dbuf) : nullptr;
            const M* gs = K == kBackward2 ? cpu::as_math<scalar_t, M>(g + base, n, gbuf) : nullptr;
            M* os = cpu::out_math<scalar_t, M>(out + base, obuf);
            if (rows) {
                cpu_block<K, A, M>(xs, bias_row.data() + j0, M(0), ds, gs, os, n, alpha, gain, clamp);
            } else {
                const M bias = constant ? (b ? static_cast<M>(b[0]) : M(0)) : static_cast<M>(b[r % p.bias_size]);
                cpu_block<K, A, M>(xs, nullptr, bias, ds, gs, os, n, alpha, gain, clamp);
            }
            cpu::store_math<scalar_t, M>(obuf, n, out + base);
        }
    });
}

template <int K>
at::Tensor run_cpu(Prepared r) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r.x.scalar_type(), "bias_act_cpu", [&] {
        switch (static_cast<Act>(r.p.act)) {
            case Act::Relu: cpu_kernel<scalar_t, K, int(Act::Relu)>(r.p); break;
            case Act::Lrelu: cpu_kernel<scalar_t, K, int(Act::Lrelu)>(r.p); break;
            case Act::Tanh: cpu_kernel<scalar_t, K, int(Act::Tanh)>(r.p); break;
            case Act::Sigmoid: cpu_kernel<scalar_t, K, int(Act::Sigmoid)>(r.p); break;
            case Act::Elu: cpu_kernel<scalar_t, K, int(Act::Elu)>(r.p); break;
            case Act::Selu: cpu_kernel<scalar_t, K, int(Act::Selu)>(r.p); break;
            case Act::Softplus: cpu_kernel<scalar_t, K, int(Act::Softplus)>(r.p); break;
            case Act::Silu: cpu_kernel<scalar_t, K, int(Act::Silu)>(r.p); break;
            default: cpu_kernel<scalar_t, K, int(Act::Linear)>(r.p); break;
        }
    });
    return r.out;
}

at::Tensor forward_cpu(const at::Tensor& x, const std::optional<at::Tensor>& b, int64_t dim, int64_t act,
                       double alpha, double gain, std::optional<double> clamp) {
    return run_cpu<kForward>(prepare(x, b, nullptr, nullptr, dim, act, alpha, gain, clamp));
}

at::Tensor backward_cpu(const at::Tensor& dy, const at::Tensor& x, const std::optional<at::Tensor>& b, int64_t dim,
                        int64_t act, double alpha, double gain, std::optional<double> clamp) {
    return run_cpu<kBackward>(prepare(x, b, &dy, nullptr, dim, act, alpha, gain, clamp));
}

at::Tensor backward2_cpu(const at::Tensor& g, const at::Tensor& dy, const at::Tensor& x,
                         const std::optional<at::Tensor>& b, int64_t dim, int64_t act, double alpha, double gain,
                         std::optional<double> clamp) {
    return run_cpu<kBackward2>(prepare(x, b, &dy, &g, dim, act, alpha, gain, clamp));
}

// CUDA: nvcc's launcher (bias_act_cuda.cu), or the same kernel through NVRTC, launched by the same rule (launch.h).
at::Tensor run_cuda(Prepared r, int kind) {
    const c10::DeviceGuard guard(r.x.device());
    const DType dtype = kernel_dtype(r.x.scalar_type());
    if (use_nvrtc()) {
        if (r.p.numel == 0) return r.out;
        nvrtc_run("bias_act", r.x.device(),
                  {{"bias_act", kernel_name("bias_act_kernel", {cuda_type_name(dtype), std::to_string(kind)}),
                    elementwise_blocks(r.p.numel), kThreads, {kernel_arg(r.p)}}});
        return r.out;
    }
#ifdef FASTGAN_WITH_CUDA
    check_launch(bias_act_cuda_launch(r.p, dtype, kind, at::cuda::getCurrentCUDAStream().stream()), "bias_act");
#endif
    return r.out;
}

at::Tensor forward_cuda(const at::Tensor& x, const std::optional<at::Tensor>& b, int64_t dim, int64_t act,
                        double alpha, double gain, std::optional<double> clamp) {
    return run_cuda(prepare(x, b, nullptr, nullptr, dim, act, alpha, gain, clamp), kForward);
}

at::Tensor backward_cuda(const at::Tensor& dy, const at::Tensor& x, const std::optional<at::Tensor>& b, int64_t dim,
                         int64_t act, double alpha, double gain, std::optional<double> clamp) {
    return run_cuda(prepare(x, b, &dy, nullptr, dim, act, alpha, gain, clamp), kBackward);
}

at::Tensor backward2_cuda(const at::Tensor& g, const at::Tensor& dy, const at::Tensor& x,
                          const std::optional<at::Tensor>& b, int64_t dim, int64_t act, double alpha, double gain,
                          std::optional<double> clamp) {
    return run_cuda(prepare(x, b, &dy, &g, dim, act, alpha, gain, clamp), kBackward2);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastgan, m) {
    m.def("bias_act(Tensor x, Tensor? b, int dim, int act, float alpha, float gain, float? clamp) -> Tensor",
          {fastgan::any_layout});
    m.def("bias_act_backward(Tensor dy, Tensor x, Tensor? b, int dim, int act, float alpha, float gain, "
          "float? clamp) -> Tensor", {fastgan::any_layout});
    m.def("bias_act_backward2(Tensor g, Tensor dy, Tensor x, Tensor? b, int dim, int act, float alpha, float gain, "
          "float? clamp) -> Tensor", {fastgan::any_layout});
}

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
    m.impl("bias_act", &forward_cpu);
    m.impl("bias_act_backward", &backward_cpu);
    m.impl("bias_act_backward2", &backward2_cpu);
}

// Registered in every build: without nvcc the CUDA kernels run through NVRTC.
TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
    m.impl("bias_act", &forward_cuda);
    m.impl("bias_act_backward", &backward_cuda);
    m.impl("bias_act_backward2", &backward2_cuda);
}

}  // namespace fastgan
