// norm_act: torch-facing glue (schemas, argument checks, dispatch registration) and the CPU kernels of
// fastgan.ops.batch_norm_act / instance_norm_act. The math is in norm_act.h (and bias_act.h for the activation),
// shared with the CUDA kernels in norm_act.cu.
//
// CPU kernels: parallel (cpu::parallel_for) over planes or rows, vectorised, shifted sums of a fixed task split merged
// in a fixed order, so results do not depend on the number of threads (deterministic by construction); see below.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include <c10/core/DeviceGuard.h>

#include "cpu_vec.h"
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

// fn(std::integral_constant<int, act>{}): the activation as a compile-time constant, so the kernels' loops compile to
// branch-free vector code (the activation switch of bias_act.h folds away).
template <typename Fn>
void with_act(int act, Fn&& fn) {
    switch (static_cast<Act>(act)) {
        case Act::Relu: fn(std::integral_constant<int, int(Act::Relu)>{}); break;
        case Act::Lrelu: fn(std::integral_constant<int, int(Act::Lrelu)>{}); break;
        case Act::Tanh: fn(std::integral_constant<int, int(Act::Tanh)>{}); break;
        case Act::Sigmoid: fn(std::integral_constant<int, int(Act::Sigmoid)>{}); break;
        case Act::Elu: fn(std::integral_constant<int, int(Act::Elu)>{}); break;
        case Act::Selu: fn(std::integral_constant<int, int(Act::Selu)>{}); break;
        case Act::Softplus: fn(std::integral_constant<int, int(Act::Softplus)>{}); break;
        case Act::Silu: fn(std::integral_constant<int, int(Act::Silu)>{}); break;
        default: fn(std::integral_constant<int, int(Act::Linear)>{}); break;
    }
}

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

// --- CPU kernels ----------------------------------------------------------------------------------------------
//
// Two layouts, each walked so an element's channel comes from the loop, never from dividing its index:
// - planes (contiguous NCHW, or C == 1): plane q = n * C + c holds L contiguous values of channel c (n and c
//   stepped along the loops, not divided out per plane); its group is q (instance) or c (batch).
// - rows (channels_last): row r = n * L + l holds C contiguous values, value j of channel j.
// Reductions are split into tasks of a fixed geometry (planes: a group's planes, i.e. one plane for instance
// statistics, a channel's N planes for batch statistics; rows: up to kRowsPerTask rows of one sample), each summing
// its values (kCpuLanes accumulators for planes, one per channel for rows) into per-task partial sums in double (the
// statistics: in double throughout; the backward's sums: in the math type, folded into double every kCpuFold values
// of planes and per task of rows); the partials of a group are then added in task order. (One task per batch-norm
// channel rather than per plane: a DCGAN's 4x4 and 7x7 planes are too short to pay for a task's set-up each.) The split
// depends on the shape only, so the results are the same bits for any number of threads. The inner loops are
// functions of __restrict pointers, so the compiler vectorises them without run-time alias checks; the activation
// is a template constant.

constexpr int64_t kRowsPerTask = 64;

struct CpuGeometry {
    bool rows;         // channels_last rows, else planes
    int64_t tasks;     // reduction tasks; planes: task q is group q
    int64_t planes;    // planes path: planes per task (1, or N for batch statistics)
    int64_t per_n;     // rows path: tasks per sample

    // planes path: plane k of task q (NCHW index n * C + c)
    int64_t plane(const NormActParams& p, int64_t q, int64_t k) const { return p.instance ? q : k * p.C + q; }
};

CpuGeometry cpu_geometry(const NormActParams& p) {
    CpuGeometry geo{};
    geo.rows = p.sL != 1;  // channels_last with C > 1 (with C == 1 both layouts are the same planes)
    geo.per_n = geo.rows ? (p.L + kRowsPerTask - 1) / kRowsPerTask : 0;
    geo.planes = geo.rows ? 0 : (p.instance ? 1 : p.N);
    geo.tasks = geo.rows ? p.N * geo.per_n : p.groups;
    return geo;
}

// The per-task partial sums of each group added in task order: (s1[g], s2[g]) in double.
void merge_partials(const NormActParams& p, const CpuGeometry& geo, const std::vector<double>& part1,
                    const std::vector<double>& part2, std::vector<double>& s1, std::vector<double>& s2) {
    if (!geo.rows) {  // a task per group
        s1 = part1;
        s2 = part2;
        return;
    }
    s1.assign(p.groups, 0.0);
    s2.assign(p.groups, 0.0);
    for (int64_t t = 0; t < geo.tasks; ++t) {
        const int64_t base = p.instance ? (t / geo.per_n) * p.C : 0;  // per task
        const double* a = part1.data() + t * p.C;
        const double* b = part2.data() + t * p.C;
        for (int64_t c = 0; c < p.C; ++c) {
            s1[base + c] += a[c];
            s2[base + c] += b[c];
        }
    }
}

// --- inner loops: n values of one plane (scalar parameters) or one row (a parameter per value) ---

// The statistics' shifted sums are accumulated in double: with float32 sums the instance-norm output of a 64-value
// group was 4.7e-6 off (tests/test_parity.py allows 2x PyTorch's own error, and PyTorch's CPU batch norm sums in
// double). d = x - shift is exact in double.
template <typename M>
inline void shifted_plane_sums(const M* __restrict xs, int64_t n, double shift, double* __restrict s1,
                               double* __restrict s2) {
    int64_t k = 0;
    for (; k + cpu::kCpuLanes <= n; k += cpu::kCpuLanes) {
        for (int64_t j = 0; j < cpu::kCpuLanes; ++j) {
            const double d = static_cast<double>(xs[k + j]) - shift;
            s1[j] += d;
            s2[j] += d * d;
        }
    }
    for (int64_t j = 0; k + j < n; ++j) {
        const double d = static_cast<double>(xs[k + j]) - shift;
        s1[j] += d;
        s2[j] += d * d;
    }
}

template <typename M>
inline void shifted_row_sums(const M* __restrict xs, int64_t C, const double* __restrict shift, double* __restrict s1,
                             double* __restrict s2) {
    for (int64_t c = 0; c < C; ++c) {
        const double d = static_cast<double>(xs[c]) - shift[c];
        s1[c] += d;
        s2[c] += d * d;
    }
}

template <int A, typename M>
inline void apply_plane(const M* __restrict xs, M* __restrict ys, int64_t n, M mu, M inv, M w, M b, M alpha) {
    for (int64_t k = 0; k < n; ++k) ys[k] = act_forward<M>(A, norm_z<M>(xs[k], mu, inv, w, b), alpha);
}

template <int A, typename M>
inline void apply_row(const M* __restrict xs, M* __restrict ys, int64_t C, const M* __restrict mu,
                      const M* __restrict inv, const M* __restrict w, const M* __restrict b, M alpha) {
    for (int64_t c = 0; c < C; ++c) ys[c] = act_forward<M>(A, norm_z<M>(xs[c], mu[c], inv[c], w[c], b[c]), alpha);
}

// Backward pass 1 of a plane block: dz and xhat, and with constant statistics dx = dz * w * invstd.
template <int A, typename M>
inline void grads_plane(const M* __restrict xs, const M* __restrict ds, int64_t n, M mu, M inv, M w, M b, M alpha,
                        M* __restrict dz, M* __restrict xhat, M* __restrict dx) {
    for (int64_t k = 0; k < n; ++k) {
        xhat[k] = (xs[k] - mu) * inv;
        dz[k] = act_backward<M>(A, xhat[k] * w + b, ds[k], alpha);
    }
    if (dx) {
        for (int64_t k = 0; k < n; ++k) dx[k] = norm_dx<M>(false, dz[k], xhat[k], w, inv, M(0), M(0), M(1));
    }
}

// Backward pass 1 of a row: the per-channel sums of dz and dz * xhat, and with constant statistics dx.
template <int A, typename M>
inline void grads_row_sums(const M* __restrict xs, const M* __restrict ds, int64_t C, const M* __restrict mu,
                           const M* __restrict inv, const M* __restrict w, const M* __restrict b, M alpha,
                           M* __restrict s_dz, M* __restrict s_dzx, M* __restrict dx) {
    for (int64_t c = 0; c < C; ++c) {
        const M xhat = (xs[c] - mu[c]) * inv[c];
        const M dz = act_backward<M>(A, xhat * w[c] + b[c], ds[c], alpha);
        s_dz[c] += dz;
        s_dzx[c] += dz * xhat;
    }
    if (dx) {
        for (int64_t c = 0; c < C; ++c) {
            const M xhat = (xs[c] - mu[c]) * inv[c];
            const M dz = act_backward<M>(A, xhat * w[c] + b[c], ds[c], alpha);
            dx[c] = norm_dx<M>(false, dz, xhat, w[c], inv[c], M(0), M(0), M(1));
        }
    }
}

// PerSample (conditional batch norm's dx, norm_dx_any) is a template constant: a run-time flag in these loops made
// batch norm's backward 1.7x slower on one core (32x64x32x32 float32), its loops no longer vectorised.
template <int A, bool PerSample, typename M>
inline void dx_plane(const M* __restrict xs, const M* __restrict ds, M* __restrict dx, int64_t n, M mu, M inv, M w,
                     M b, M alpha, M s_dz, M s_dzx, M count) {
    for (int64_t k = 0; k < n; ++k) {
        const M xhat = (xs[k] - mu) * inv;
        const M dz = act_backward<M>(A, xhat * w + b, ds[k], alpha);
        dx[k] = norm_dx_any<M>(true, PerSample, dz, xhat, w, inv, s_dz, s_dzx, count);
    }
}

// dx_plane over n stored values (one block of a plane), through the math-type buffers of reduced precision.
template <typename scalar_t, int A, bool PerSample, typename M>
inline void dx_plane_stored(const scalar_t* x, const scalar_t* dy, scalar_t* dx, int64_t n, M mu, M inv, M w, M b,
                            M alpha, M s_dz, M s_dzx, M count) {
    M xbuf[cpu::kCpuBlock], dbuf[cpu::kCpuBlock], obuf[cpu::kCpuBlock];
    dx_plane<A, PerSample, M>(cpu::as_math<scalar_t, M>(x, n, xbuf), cpu::as_math<scalar_t, M>(dy, n, dbuf),
                              cpu::out_math<scalar_t, M>(dx, obuf), n, mu, inv, w, b, alpha, s_dz, s_dzx, count);
    cpu::store_math<scalar_t, M>(obuf, n, dx);
}

template <int A, bool PerSample, typename M>
inline void dx_row(const M* __restrict xs, const M* __restrict ds, M* __restrict dx, int64_t C, const M* __restrict mu,
                   const M* __restrict inv, const M* __restrict w, const M* __restrict b, M alpha,
                   const M* __restrict s_dz, const M* __restrict s_dzx, M count) {
    for (int64_t c = 0; c < C; ++c) {
        const M xhat = (xs[c] - mu[c]) * inv[c];
        const M dz = act_backward<M>(A, xhat * w[c] + b[c], ds[c], alpha);
        dx[c] = norm_dx_any<M>(true, PerSample, dz, xhat, w[c], inv[c], s_dz[c], s_dzx[c], count);
    }
}

// --- drivers ---

// Per-group parameters in M: mean and invstd per group, w and b per channel (1 and 0 when absent; per_sample: per
// (sample, channel), affine_index).
template <typename M>
struct GroupParams {
    std::vector<M> mean, invstd, w, b;
};

template <typename M>
GroupParams<M> group_params(const NormActParams& p, const M* mean, const M* var) {
    GroupParams<M> gp;
    const M eps = static_cast<M>(p.eps);
    gp.mean.assign(mean, mean + p.groups);
    gp.invstd.resize(p.groups);
    for (int64_t g = 0; g < p.groups; ++g) gp.invstd[g] = inv_std<M>(var[g], eps);
    const M* w = static_cast<const M*>(p.w);
    const M* b = static_cast<const M*>(p.b);
    const int64_t affine = p.per_sample ? p.N * p.C : p.C;
    gp.w.resize(affine);
    gp.b.resize(affine);
    for (int64_t a = 0; a < affine; ++a) {
        gp.w[a] = w ? w[a] : M(1);
        gp.b[a] = b ? b[a] : M(0);
    }
    return gp;
}

// Sums over `planes` planes of L values, in blocks: fill(k, j0, n, a, b) writes the n values of a and b from j0 on
// in plane k, which are summed (a and a * b) in lanes of the math type, folded into double every kCpuFold values.
template <typename M, typename Fill>
void plane_sums(int64_t planes, int64_t L, Fill&& fill, double& sum_a, double& sum_ab) {
    M abuf[cpu::kCpuBlock], bbuf[cpu::kCpuBlock];
    M lanes_a[cpu::kCpuLanes] = {}, lanes_ab[cpu::kCpuLanes] = {};
    double s = 0.0, sp = 0.0;
    int64_t since_fold = 0;
    for (int64_t k = 0; k < planes; ++k) {
        for (int64_t j0 = 0; j0 < L; j0 += cpu::kCpuBlock) {
            const int64_t n = std::min(cpu::kCpuBlock, L - j0);
            fill(k, j0, n, abuf, bbuf);
            cpu::add_lanes<M>(abuf, bbuf, n, lanes_a, lanes_ab);
            since_fold += n;
            if (since_fold >= cpu::kCpuFold) {
                cpu::fold_lanes(lanes_a, s);
                cpu::fold_lanes(lanes_ab, sp);
                since_fold = 0;
            }
        }
    }
    cpu::fold_lanes(lanes_a, s);
    cpu::fold_lanes(lanes_ab, sp);
    sum_a = s;
    sum_ab = sp;
}

// Runs plane_body(offset, n, group, affine index) over blocks of every plane, or row_body(offset, group base, affine
// base, scratch) over every row (group base n * C for instance statistics, else 0; affine base n * C with per_sample,
// else 0; scratch: 3 * C values of M), in parallel.
template <typename M, typename PlaneBody, typename RowBody>
void for_each_run(const NormActParams& p, const CpuGeometry& geo, PlaneBody&& plane_body, RowBody&& row_body) {
    constexpr int64_t kValuesPerTask = int64_t(1) << 14;
    if (p.N * p.C * p.L == 0) return;  // nothing to visit, and L may be 0 (no grain to divide by)
    if (!geo.rows) {
        const int64_t blocks = (p.L + cpu::kCpuBlock - 1) / cpu::kCpuBlock;
        const int64_t grain = std::max<int64_t>(1, kValuesPerTask / std::min(p.L, cpu::kCpuBlock));
        cpu::parallel_for(0, p.N * p.C * blocks, grain, [&](int64_t i0, int64_t i1) {
            int64_t q = i0 / blocks, j = i0 - q * blocks;  // per task: plane q = n * C + c, block j; then stepped
            int64_t n = q / p.C, c = q - n * p.C;
            for (int64_t item = i0; item < i1; ++item) {
                const int64_t j0 = j * cpu::kCpuBlock;
                plane_body(q * p.L + j0, std::min(cpu::kCpuBlock, p.L - j0), p.instance ? q : c,
                           affine_index(p, n, c));
                if (++j == blocks) {
                    j = 0;
                    ++q;
                    if (++c == p.C) {
                        c = 0;
                        ++n;
                    }
                }
            }
        });
    } else {
        const int64_t grain = std::max<int64_t>(1, kValuesPerTask / std::max<int64_t>(p.C, 1));
        cpu::parallel_for(0, p.N * p.L, grain, [&](int64_t r0, int64_t r1) {
            std::vector<M> scratch(3 * p.C);
            for (int64_t r = r0; r < r1; ++r) {
                const int64_t n = r / p.L;  // per row
                row_body(r * p.C, p.instance ? n * p.C : 0, affine_index(p, n, 0), scratch.data());
            }
        });
    }
}

template <typename scalar_t, int A>
void forward_cpu_kernel(const NormActParams& p, at::opmath_type<scalar_t>* mean_out,
                        at::opmath_type<scalar_t>* var_out) {
    using M = at::opmath_type<scalar_t>;
    const scalar_t* x = static_cast<const scalar_t*>(p.x);
    scalar_t* y = static_cast<scalar_t*>(p.out);
    const M alpha = static_cast<M>(p.alpha);
    const CpuGeometry geo = cpu_geometry(p);
    const M* mean = static_cast<const M*>(p.mean);
    const M* var = static_cast<const M*>(p.var);
    if (p.use_input_stats) {
        if (p.group_size == 0) {
            for (int64_t g = 0; g < p.groups; ++g) mean_out[g] = var_out[g] = M(0);
            return;
        }
        // The shift of each group: its first value (l = 0; batch statistics: of sample 0).
        std::vector<double> shift(p.groups);
        for (int64_t g = 0; g < p.groups; ++g) {
            const int64_t n = p.instance ? g / p.C : 0, c = p.instance ? g % p.C : g;  // per group
            shift[g] = shift_of(static_cast<double>(x[n * p.sN + c * p.sC]));
        }
        std::vector<double> part1, part2;
        if (!geo.rows) {
            part1.resize(geo.tasks);
            part2.resize(geo.tasks);
            cpu::parallel_for(0, geo.tasks, 1, [&](int64_t q0, int64_t q1) {
                M xbuf[cpu::kCpuBlock];
                for (int64_t q = q0; q < q1; ++q) {
                    const double s = shift[q];  // per group
                    double s1[cpu::kCpuLanes] = {}, s2[cpu::kCpuLanes] = {};
                    for (int64_t k = 0; k < geo.planes; ++k) {
                        const scalar_t* xq = x + geo.plane(p, q, k) * p.L;
                        for (int64_t j0 = 0; j0 < p.L; j0 += cpu::kCpuBlock) {
                            const int64_t n = std::min(cpu::kCpuBlock, p.L - j0);
                            shifted_plane_sums<M>(cpu::as_math<scalar_t, M>(xq + j0, n, xbuf), n, s, s1, s2);
                        }
                    }
                    double a = 0.0, b = 0.0;
                    for (int64_t j = 0; j < cpu::kCpuLanes; ++j) {
                        a += s1[j];
                        b += s2[j];
                    }
                    part1[q] = a;
                    part2[q] = b;
                }
            });
        } else {
            part1.resize(geo.tasks * p.C);
            part2.resize(geo.tasks * p.C);
            cpu::parallel_for(0, geo.tasks, 1, [&](int64_t t0, int64_t t1) {
                std::vector<M> row(p.C);
                for (int64_t t = t0; t < t1; ++t) {
                    const int64_t n = t / geo.per_n, l0 = (t - n * geo.per_n) * kRowsPerTask;  // per task
                    const int64_t l1 = std::min(p.L, l0 + kRowsPerTask);
                    const double* s = shift.data() + (p.instance ? n * p.C : 0);
                    double* s1 = part1.data() + t * p.C;
                    double* s2 = part2.data() + t * p.C;
                    for (int64_t r = n * p.L + l0; r < n * p.L + l1; ++r) {
                        shifted_row_sums<M>(cpu::as_math<scalar_t, M>(x + r * p.C, p.C, row.data()), p.C, s, s1, s2);
                    }
                }
            });
        }
        std::vector<double> s1, s2;
        merge_partials(p, geo, part1, part2, s1, s2);
        const double count = static_cast<double>(p.group_size);
        for (int64_t g = 0; g < p.groups; ++g) {
            double mean_d = 0, m2 = 0;
            shifted_moments<double>(count, shift[g], s1[g], s2[g], mean_d, m2);
            mean_out[g] = static_cast<M>(mean_d);
            var_out[g] = static_cast<M>(m2 / count);
        }
        mean = mean_out;
        var = var_out;
    }
    const GroupParams<M> gp = group_params<M>(p, mean, var);
    for_each_run<M>(p, geo, [&](int64_t i, int64_t n, int64_t g, int64_t a) {
        M xbuf[cpu::kCpuBlock], ybuf[cpu::kCpuBlock];
        apply_plane<A, M>(cpu::as_math<scalar_t, M>(x + i, n, xbuf), cpu::out_math<scalar_t, M>(y + i, ybuf), n,
                          gp.mean[g], gp.invstd[g], gp.w[a], gp.b[a], alpha);
        cpu::store_math<scalar_t, M>(ybuf, n, y + i);
    }, [&](int64_t i, int64_t gbase, int64_t abase, M* scratch) {
        apply_row<A, M>(cpu::as_math<scalar_t, M>(x + i, p.C, scratch),
                        cpu::out_math<scalar_t, M>(y + i, scratch + p.C), p.C, gp.mean.data() + gbase,
                        gp.invstd.data() + gbase, gp.w.data() + abase, gp.b.data() + abase, alpha);
        cpu::store_math<scalar_t, M>(scratch + p.C, p.C, y + i);
    });
}

// Batch norm's training backward on short NCHW planes (L < kCpuBlock: a DCGAN's 4x4 to 14x14 maps). A channel's
// planes are L values each, C * L apart, so walking them channel by channel touched a few cache lines per plane and
// paid a plane's set-up per L values (0.7-0.85x eager at DCGAN shapes). Here sample n's C * L values are one row,
// walked in memory order, with the per-channel parameters expanded to one per value (value j: channel j / L). Pass 1
// sums dz and dz * xhat per value position over a task's samples in M (at most kMaxTasks tasks of consecutive
// samples: the split depends on the shape only), then each channel adds its positions' partials in double, task by
// task in order; pass 2 writes dx.
constexpr int64_t kShortPlane = cpu::kCpuBlock;
constexpr int64_t kMaxTasks = 8;  // pass-1 tasks: each keeps 2 * C * L partial sums

// Adds a[0..n) into double lanes (value k into lane k % kCpuLanes).
template <typename M>
inline void add_in_lanes(const M* __restrict a, int64_t n, double* __restrict lanes) {
    int64_t k = 0;
    for (; k + cpu::kCpuLanes <= n; k += cpu::kCpuLanes) {
        for (int64_t j = 0; j < cpu::kCpuLanes; ++j) lanes[j] += static_cast<double>(a[k + j]);
    }
    for (int64_t j = 0; k + j < n; ++j) lanes[j] += static_cast<double>(a[k + j]);
}

bool short_planes(const NormActParams& p, const CpuGeometry& geo) {
    // At most kCpuFold samples per task (kMaxTasks tasks): a position's float sum is as long as the planes path's.
    return !geo.rows && !p.instance && !p.per_sample && p.use_input_stats && p.L < kShortPlane &&
           p.C * p.L <= (int64_t(1) << 16) && p.N * p.C * p.L > 0 && p.N <= kMaxTasks * cpu::kCpuFold;
}

template <typename scalar_t, int A>
void backward_short_planes(const NormActParams& p, const GroupParams<at::opmath_type<scalar_t>>& gp,
                           at::opmath_type<scalar_t>* sum_dz_out, at::opmath_type<scalar_t>* sum_dz_xhat_out) {
    using M = at::opmath_type<scalar_t>;
    const scalar_t* x = static_cast<const scalar_t*>(p.x);
    const scalar_t* dy = static_cast<const scalar_t*>(p.dy);
    scalar_t* dx = static_cast<scalar_t*>(p.out);
    const M alpha = static_cast<M>(p.alpha);
    const int64_t row = p.C * p.L;
    // mean, invstd, w, b, then (after pass 1) sum_dz and sum_dz_xhat of each value's channel
    std::vector<M> expanded(6 * row);
    M* e = expanded.data();
    for (int64_t c = 0; c < p.C; ++c) {
        for (int64_t l = c * p.L; l < (c + 1) * p.L; ++l) {
            e[l] = gp.mean[c];
            e[row + l] = gp.invstd[c];
            e[2 * row + l] = gp.w[c];
            e[3 * row + l] = gp.b[c];
        }
    }
    const int64_t per_task = (p.N + kMaxTasks - 1) / kMaxTasks;  // samples per pass-1 task
    const int64_t tasks = (p.N + per_task - 1) / per_task;
    std::vector<M> part1(tasks * row, M(0)), part2(tasks * row, M(0));
    // Both passes go through the row in chunks of kChunk values, each chunk for all of a task's samples, so the
    // chunk's expanded parameters and sums stay in L1.
    constexpr int64_t kChunk = 4 * cpu::kCpuBlock;
    cpu::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
        M xbuf[kChunk], dbuf[kChunk];
        for (int64_t t = t0; t < t1; ++t) {
            for (int64_t j0 = 0; j0 < row; j0 += kChunk) {
                const int64_t nj = std::min(kChunk, row - j0);
                for (int64_t n = t * per_task; n < std::min(p.N, (t + 1) * per_task); ++n) {
                    const int64_t i = n * row + j0;
                    grads_row_sums<A, M>(cpu::as_math<scalar_t, M>(x + i, nj, xbuf),
                                         cpu::as_math<scalar_t, M>(dy + i, nj, dbuf), nj, e + j0, e + row + j0,
                                         e + 2 * row + j0, e + 3 * row + j0, alpha, part1.data() + t * row + j0,
                                         part2.data() + t * row + j0, nullptr);
                }
            }
        }
    });
    cpu::parallel_for(0, p.C, 16, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
            // In double lanes (the plane's value l into lane l % kCpuLanes), task by task, folded in lane order:
            // independent chains; one chain of tasks * L additions took 12% of the kernel's samples on one thread,
            // these lanes 4.5% (perf, 64x64x14x14).
            double lanes_a[cpu::kCpuLanes] = {}, lanes_b[cpu::kCpuLanes] = {};
            for (int64_t t = 0; t < tasks; ++t) {
                add_in_lanes(part1.data() + t * row + c * p.L, p.L, lanes_a);
                add_in_lanes(part2.data() + t * row + c * p.L, p.L, lanes_b);
            }
            double a = 0.0, b = 0.0;
            cpu::fold_lanes(lanes_a, a);
            cpu::fold_lanes(lanes_b, b);
            sum_dz_out[c] = static_cast<M>(a);
            sum_dz_xhat_out[c] = static_cast<M>(b);
            std::fill(e + 4 * row + c * p.L, e + 4 * row + (c + 1) * p.L, sum_dz_out[c]);
            std::fill(e + 5 * row + c * p.L, e + 5 * row + (c + 1) * p.L, sum_dz_xhat_out[c]);
        }
    });
    const M count = static_cast<M>(norm_dx_count(p));
    const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 14) / row);
    cpu::parallel_for(0, p.N, grain, [&](int64_t n0, int64_t n1) {
        M xbuf[kChunk], dbuf[kChunk], obuf[kChunk];
        for (int64_t j0 = 0; j0 < row; j0 += kChunk) {
            const int64_t nj = std::min(kChunk, row - j0);
            for (int64_t n = n0; n < n1; ++n) {
                const int64_t i = n * row + j0;
                dx_row<A, false, M>(cpu::as_math<scalar_t, M>(x + i, nj, xbuf),
                                    cpu::as_math<scalar_t, M>(dy + i, nj, dbuf),
                                    cpu::out_math<scalar_t, M>(dx + i, obuf), nj, e + j0, e + row + j0,
                                    e + 2 * row + j0, e + 3 * row + j0, alpha, e + 4 * row + j0, e + 5 * row + j0,
                                    count);
                cpu::store_math<scalar_t, M>(obuf, nj, dx + i);
            }
        }
    });
}

template <typename scalar_t, int A>
void backward_cpu_kernel(const NormActParams& p, at::opmath_type<scalar_t>* sum_dz_out,
                         at::opmath_type<scalar_t>* sum_dz_xhat_out) {
    using M = at::opmath_type<scalar_t>;
    const scalar_t* x = static_cast<const scalar_t*>(p.x);
    const scalar_t* dy = static_cast<const scalar_t*>(p.dy);
    scalar_t* dx = static_cast<scalar_t*>(p.out);
    const M alpha = static_cast<M>(p.alpha);
    const CpuGeometry geo = cpu_geometry(p);
    const GroupParams<M> gp = group_params<M>(p, static_cast<const M*>(p.mean), static_cast<const M*>(p.var));
    if (short_planes(p, geo)) return backward_short_planes<scalar_t, A>(p, gp, sum_dz_out, sum_dz_xhat_out);
    const bool eval = !p.use_input_stats;
    const M count = static_cast<M>(norm_dx_count(p));
    // Planes without per-sample parameters: a task computes its group's dx right after the group's sums, while the
    // group's x and dy are still in cache (PyTorch's batch norm does the same per channel); a second pass over the
    // whole tensor read them back from memory and made the backward 0.73-0.86x eager's at DCGAN shapes.
    const bool dx_in_task = !geo.rows && !eval && !p.per_sample;
    // Pass 1: per group sum(dz) and sum(dz * xhat) (and, with constant statistics, dx = dz * w * invstd itself).
    std::vector<double> part1, part2;
    if (p.group_size > 0 && !geo.rows) {
        part1.resize(geo.tasks);
        part2.resize(geo.tasks);
        cpu::parallel_for(0, geo.tasks, 1, [&](int64_t q0, int64_t q1) {
            M xbuf[cpu::kCpuBlock], dbuf[cpu::kCpuBlock], obuf[cpu::kCpuBlock];
            for (int64_t q = q0; q < q1; ++q) {  // group q
                const int64_t qn = p.instance ? q / p.C : 0, qc = p.instance ? q - qn * p.C : q;  // per group
                plane_sums<M>(geo.planes, p.L, [&](int64_t k, int64_t j0, int64_t n, M* dz, M* xhat) {
                    const int64_t a = affine_index(p, p.instance ? qn : k, qc), i = geo.plane(p, q, k) * p.L + j0;
                    M* os = eval ? cpu::out_math<scalar_t, M>(dx + i, obuf) : nullptr;
                    grads_plane<A, M>(cpu::as_math<scalar_t, M>(x + i, n, xbuf),
                                      cpu::as_math<scalar_t, M>(dy + i, n, dbuf), n, gp.mean[q], gp.invstd[q],
                                      gp.w[a], gp.b[a], alpha, dz, xhat, os);
                    if (eval) cpu::store_math<scalar_t, M>(obuf, n, dx + i);
                }, part1[q], part2[q]);
                if (!dx_in_task) continue;
                const M sdz = static_cast<M>(part1[q]), sdzx = static_cast<M>(part2[q]);
                for (int64_t k = 0; k < geo.planes; ++k) {
                    const int64_t a = affine_index(p, p.instance ? qn : k, qc);
                    for (int64_t j0 = 0; j0 < p.L; j0 += cpu::kCpuBlock) {
                        const int64_t n = std::min(cpu::kCpuBlock, p.L - j0), i = geo.plane(p, q, k) * p.L + j0;
                        dx_plane_stored<scalar_t, A, false, M>(x + i, dy + i, dx + i, n, gp.mean[q], gp.invstd[q],
                                                               gp.w[a], gp.b[a], alpha, sdz, sdzx, count);
                    }
                }
            }
        });
    } else if (p.group_size > 0) {
        part1.resize(geo.tasks * p.C);
        part2.resize(geo.tasks * p.C);
        cpu::parallel_for(0, geo.tasks, 1, [&](int64_t t0, int64_t t1) {
            std::vector<M> scratch(5 * p.C);
            M* s1 = scratch.data() + 3 * p.C;
            M* s2 = scratch.data() + 4 * p.C;
            for (int64_t t = t0; t < t1; ++t) {
                const int64_t n = t / geo.per_n, l0 = (t - n * geo.per_n) * kRowsPerTask;  // per task
                const int64_t l1 = std::min(p.L, l0 + kRowsPerTask);
                const int64_t gbase = p.instance ? n * p.C : 0, abase = affine_index(p, n, 0);
                std::fill(s1, s1 + 2 * p.C, M(0));
                for (int64_t r = n * p.L + l0; r < n * p.L + l1; ++r) {
                    const int64_t i = r * p.C;
                    M* os = eval ? cpu::out_math<scalar_t, M>(dx + i, scratch.data() + 2 * p.C) : nullptr;
                    grads_row_sums<A, M>(cpu::as_math<scalar_t, M>(x + i, p.C, scratch.data()),
                                         cpu::as_math<scalar_t, M>(dy + i, p.C, scratch.data() + p.C), p.C,
                                         gp.mean.data() + gbase, gp.invstd.data() + gbase, gp.w.data() + abase,
                                         gp.b.data() + abase, alpha, s1, s2, os);
                    if (eval) cpu::store_math<scalar_t, M>(scratch.data() + 2 * p.C, p.C, dx + i);
                }
                std::copy(s1, s1 + p.C, part1.begin() + t * p.C);
                std::copy(s2, s2 + p.C, part2.begin() + t * p.C);
            }
        });
    }
    std::vector<double> s1, s2;
    if (p.group_size > 0) {
        merge_partials(p, geo, part1, part2, s1, s2);
    } else {
        s1.assign(p.groups, 0.0);
        s2.assign(p.groups, 0.0);
    }
    std::vector<M> sdz(p.groups), sdzx(p.groups);
    for (int64_t g = 0; g < p.groups; ++g) {
        sum_dz_out[g] = sdz[g] = static_cast<M>(s1[g]);
        sum_dz_xhat_out[g] = sdzx[g] = static_cast<M>(s2[g]);
    }
    if (eval || dx_in_task) return;
    if (p.per_sample) {  // dx's channel sums: w-weighted over the samples, written per group
        const std::vector<M> s_dz(sdz), s_dzx(sdzx);
        for (int64_t c = 0; c < p.C; ++c) per_sample_sums<M>(p, c, s_dz.data(), s_dzx.data(), sdz.data(), sdzx.data());
    }
    // Pass 2: dx with the mean and variance terms.
    auto pass2 = [&](auto per_sample) {
        constexpr bool PS = decltype(per_sample)::value;
        for_each_run<M>(p, geo, [&](int64_t i, int64_t n, int64_t g, int64_t a) {
            dx_plane_stored<scalar_t, A, PS, M>(x + i, dy + i, dx + i, n, gp.mean[g], gp.invstd[g], gp.w[a], gp.b[a],
                                                alpha, sdz[g], sdzx[g], count);
        }, [&](int64_t i, int64_t gbase, int64_t abase, M* scratch) {
            dx_row<A, PS, M>(cpu::as_math<scalar_t, M>(x + i, p.C, scratch),
                             cpu::as_math<scalar_t, M>(dy + i, p.C, scratch + p.C),
                             cpu::out_math<scalar_t, M>(dx + i, scratch + 2 * p.C), p.C, gp.mean.data() + gbase,
                             gp.invstd.data() + gbase, gp.w.data() + abase, gp.b.data() + abase, alpha,
                             sdz.data() + gbase, sdzx.data() + gbase, count);
            cpu::store_math<scalar_t, M>(scratch + 2 * p.C, p.C, dx + i);
        });
    };
    if (p.per_sample) {
        pass2(std::true_type{});
    } else {
        pass2(std::false_type{});
    }
}

const char* forward_name(bool instance) { return instance ? "instance_norm_act" : "batch_norm_act"; }

const char* backward_name(bool instance) { return instance ? "instance_norm_act_backward" : "batch_norm_act_backward"; }

Prepared prepare_forward(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& w,
                         const std::optional<at::Tensor>& b, const std::optional<at::Tensor>& running_mean,
                         const std::optional<at::Tensor>& running_var, bool use_input_stats, bool instance, double eps,
                         int64_t act, double alpha) {
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

Prepared prepare_backward(const char* op, const at::Tensor& dy, const at::Tensor& x,
                          const std::optional<at::Tensor>& w, const std::optional<at::Tensor>& b,
                          const at::Tensor& mean, const at::Tensor& var, bool use_input_stats, bool instance,
                          double eps, int64_t act, double alpha) {
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

// Conditional batch norm (fastgan::conditional_norm_act*): the per-sample scale and shift [N, C] as w and b.
void use_per_sample_affine(const char* op, Prepared& r, const at::Tensor& scale, const at::Tensor& shift) {
    auto affine = [&](const char* name, const at::Tensor& t) {
        TORCH_CHECK(t.dim() == 2 && t.size(0) == r.p.N && t.size(1) == r.p.C, op, ": ", name, " must be [N, C] = [",
                    r.p.N, ", ", r.p.C, "] (one row per sample), got shape ", t.sizes());
        TORCH_CHECK(t.device() == r.x.device(), op, ": ", name, " is on ", t.device(), " but x is on ", r.x.device(),
                    "; move it to x's device");
        check_kernel_dtype(op, name, t);
        return t.to(r.math).contiguous();
    };
    r.w = affine("scale", scale);
    r.b = affine("shift", shift);
    r.p.w = r.w.data_ptr();
    r.p.b = r.b.data_ptr();
    r.p.per_sample = true;
}

// Forward: batch norm's (per-channel statistics, reduced or given), with the per-sample map.
Prepared prepare_conditional_forward(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift,
                                     const std::optional<at::Tensor>& running_mean,
                                     const std::optional<at::Tensor>& running_var, bool use_input_stats, double eps,
                                     int64_t act, double alpha) {
    const char* op = "conditional_norm_act";
    Prepared r = prepare_forward(op, x, std::nullopt, std::nullopt, running_mean, running_var, use_input_stats, false,
                                 eps, act, alpha);
    use_per_sample_affine(op, r, scale, shift);
    return r;
}

// Backward: groups of one (sample, channel) pair, the per-channel statistics repeated per sample, so the reductions
// give dscale and dshift [N, C] (also with running statistics); dx takes their scale-weighted sums over the samples.
Prepared prepare_conditional_backward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& scale,
                                      const at::Tensor& shift, const at::Tensor& mean, const at::Tensor& var,
                                      bool use_input_stats, double eps, int64_t act, double alpha) {
    const char* op = "conditional_norm_act_backward";
    Prepared r = prepare_backward(op, dy, x, std::nullopt, std::nullopt, mean, var, use_input_stats, false, eps, act,
                                  alpha);
    use_per_sample_affine(op, r, scale, shift);
    NormActParams& p = r.p;
    p.instance = true;
    p.groups = p.N * p.C;
    p.group_size = p.L;
    r.mean = r.mean.repeat({p.N});
    r.var = r.var.repeat({p.N});
    p.mean = r.mean.data_ptr();
    p.var = r.var.data_ptr();
    return r;
}

// dw, db per channel from the per-group sums (instance statistics: summed over the samples); per_sample: dscale and
// dshift per (sample, channel), the sums themselves.
Triple finish_backward(const Prepared& r, const at::Tensor& sum_dz, const at::Tensor& sum_dz_xhat) {
    if (r.p.per_sample) return {r.out, sum_dz_xhat.view({r.p.N, r.p.C}), sum_dz.view({r.p.N, r.p.C})};
    if (!r.p.instance) return {r.out, sum_dz_xhat, sum_dz};
    return {r.out, sum_dz_xhat.view({r.p.N, r.p.C}).sum(0), sum_dz.view({r.p.N, r.p.C}).sum(0)};
}

Triple run_forward_cpu(Prepared& r) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r.x.scalar_type(), "norm_act_cpu", [&] {
        using M = at::opmath_type<scalar_t>;
        M* mean = r.p.use_input_stats ? static_cast<M*>(r.mean.data_ptr()) : nullptr;
        M* var = r.p.use_input_stats ? static_cast<M*>(r.var.data_ptr()) : nullptr;
        with_act(r.p.act, [&](auto a) { forward_cpu_kernel<scalar_t, decltype(a)::value>(r.p, mean, var); });
    });
    return {r.out, r.mean, r.var};
}

Triple forward_cpu(const at::Tensor& x, const std::optional<at::Tensor>& w, const std::optional<at::Tensor>& b,
                   const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var,
                   bool use_input_stats, bool instance, double eps, int64_t act, double alpha) {
    Prepared r = prepare_forward(forward_name(instance), x, w, b, running_mean, running_var, use_input_stats, instance,
                                 eps, act, alpha);
    return run_forward_cpu(r);
}

Triple conditional_forward_cpu(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift,
                               const std::optional<at::Tensor>& running_mean,
                               const std::optional<at::Tensor>& running_var, bool use_input_stats, double eps,
                               int64_t act, double alpha) {
    Prepared r = prepare_conditional_forward(x, scale, shift, running_mean, running_var, use_input_stats, eps, act,
                                             alpha);
    return run_forward_cpu(r);
}

Triple run_backward_cpu(const Prepared& r) {
    at::Tensor sum_dz = at::empty({r.p.groups}, r.x.options().dtype(r.math));
    at::Tensor sum_dz_xhat = at::empty({r.p.groups}, r.x.options().dtype(r.math));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r.x.scalar_type(), "norm_act_backward_cpu", [&] {
        using M = at::opmath_type<scalar_t>;
        with_act(r.p.act, [&](auto a) {
            backward_cpu_kernel<scalar_t, decltype(a)::value>(r.p, static_cast<M*>(sum_dz.data_ptr()),
                                                              static_cast<M*>(sum_dz_xhat.data_ptr()));
        });
    });
    return finish_backward(r, sum_dz, sum_dz_xhat);
}

Triple backward_cpu(const at::Tensor& dy, const at::Tensor& x, const std::optional<at::Tensor>& w,
                    const std::optional<at::Tensor>& b, const at::Tensor& mean, const at::Tensor& var,
                    bool use_input_stats, bool instance, double eps, int64_t act, double alpha) {
    return run_backward_cpu(prepare_backward(backward_name(instance), dy, x, w, b, mean, var, use_input_stats,
                                             instance, eps, act, alpha));
}

Triple conditional_backward_cpu(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& scale,
                                const at::Tensor& shift, const at::Tensor& mean, const at::Tensor& var,
                                bool use_input_stats, double eps, int64_t act, double alpha) {
    return run_backward_cpu(prepare_conditional_backward(dy, x, scale, shift, mean, var, use_input_stats, eps, act,
                                                         alpha));
}

// The running-statistics update: checks naming the op, the statistics in their dtype (float32/float64, contiguous).
struct PreparedUpdate {
    at::Tensor mean, var;
    at::ScalarType buffers;
    UpdateStatsParams p;
};

PreparedUpdate prepare_update(const at::Tensor& running_mean, const at::Tensor& running_var,
                              const std::optional<at::Tensor>& steps, const at::Tensor& mean, const at::Tensor& var,
                              std::optional<double> momentum, int64_t count, int64_t batch) {
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
    const bool has_steps = steps.has_value() && steps->defined();
    TORCH_CHECK(momentum.has_value() || has_steps, op,
                ": momentum=None (cumulative moving average) needs num_batches_tracked (the step counter)");
    if (has_steps) {
        TORCH_CHECK(steps->dim() == 0 && steps->scalar_type() == at::kLong, op,
                    ": num_batches_tracked must be a 0-dim int64 tensor (nn.BatchNorm's buffer), got ",
                    steps->scalar_type(), " of shape ", steps->sizes());
    }
    for (const at::Tensor* t : {&running_var, &mean, &var}) {
        TORCH_CHECK(t->device() == running_mean.device(), op, ": all tensors must be on one device, got ",
                    running_mean.device(), " and ", t->device());
    }
    TORCH_CHECK(!has_steps || steps->device() == running_mean.device(), op,
                ": all tensors must be on one device, got ", running_mean.device(), " and ", steps->device());
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
    p.momentum = momentum.value_or(0.0);
    p.steps = has_steps ? steps->data_ptr<int64_t>() : nullptr;
    p.cumulative = !momentum.has_value();
    p.buffers = kernel_dtype(running_mean.scalar_type());
    r.buffers = running_mean.scalar_type();
    return r;
}

void run_update_cpu(const PreparedUpdate& r) {
    const bool stats_double = r.mean.scalar_type() == at::kDouble;
    const double factor = running_factor(r.p);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r.buffers, "norm_act_update_stats", [&] {
        using M = at::opmath_type<scalar_t>;
        cpu::parallel_for(0, r.p.C, 1024, [&](int64_t begin, int64_t end) {
            for (int64_t c = begin; c < end; ++c) {
                if (stats_double) {
                    update_running_channel<scalar_t, double, M>(r.p, c, factor);
                } else {
                    update_running_channel<scalar_t, float, M>(r.p, c, factor);
                }
            }
        });
    });
    if (r.p.steps != nullptr) *r.p.steps += 1;
}

void update_stats_cpu(const at::Tensor& running_mean, const at::Tensor& running_var,
                      const std::optional<at::Tensor>& steps, const at::Tensor& mean, const at::Tensor& var,
                      std::optional<double> momentum, int64_t count, int64_t batch) {
    run_update_cpu(prepare_update(running_mean, running_var, steps, mean, var, momentum, count, batch));
}

// Batch norm in training with its running statistics (fastgan::norm_act_train): the forward's statistics, then the
// buffers and the step counter, in one op (on CUDA in the forward's own launches).
struct PreparedTraining {
    Prepared forward;
    PreparedUpdate update;
};

PreparedTraining prepare_training(const at::Tensor& x, const std::optional<at::Tensor>& w,
                                  const std::optional<at::Tensor>& b, const at::Tensor& running_mean,
                                  const at::Tensor& running_var, const std::optional<at::Tensor>& steps,
                                  std::optional<double> momentum, double eps, int64_t act, double alpha) {
    PreparedTraining r{prepare_forward("batch_norm_act", x, w, b, std::nullopt, std::nullopt, true, false, eps, act,
                                       alpha), {}};
    TORCH_CHECK(running_mean.dim() == 1 && running_mean.size(0) == r.forward.p.C, "norm_act_train: running_mean "
                "must be 1-D with one value per channel (", r.forward.p.C, "), got ", running_mean.sizes());
    r.update = prepare_update(running_mean, running_var, steps, r.forward.mean, r.forward.var, momentum,
                              r.forward.p.group_size, 1);
    return r;
}

Triple train_forward_cpu(const at::Tensor& x, const std::optional<at::Tensor>& w, const std::optional<at::Tensor>& b,
                         const at::Tensor& running_mean, const at::Tensor& running_var,
                         const std::optional<at::Tensor>& steps, std::optional<double> momentum, double eps,
                         int64_t act, double alpha) {
    PreparedTraining r = prepare_training(x, w, b, running_mean, running_var, steps, momentum, eps, act, alpha);
    Triple out = run_forward_cpu(r.forward);
    run_update_cpu(r.update);
    return out;
}

// --- CUDA: nvcc's launchers (norm_act_cuda.cu), or the same kernels through NVRTC in the same order and with the same
// grids (launch.h) -------------------------------------------------------------------------------------------------

// The NVRTC plan of norm_act_cuda.cu's forward: per-(group, chunk) partial moments, their merge, then y.
void forward_nvrtc(const char* op, const Prepared& r, DType dtype, void* mean, void* var, at::Tensor& partials,
                   const UpdateStatsParams& running) {
    NormActParams p = r.p;
    const std::string T = cuda_type_name(dtype), M = cuda_math_type_name(dtype);
    const int64_t numel = p.N * p.C * p.L;
    std::vector<NvrtcLaunch> plan;
    if (p.use_input_stats && p.groups > 0) {
        const int64_t chunks = norm_act_chunks(p);
        if (p.group_size > 0) {
            plan.push_back({"norm_act", kernel_name("stats_partial_kernel", {T}),
                            norm_act_partial_blocks(p), kThreads,
                            {kernel_arg(p), kernel_arg(partials.data_ptr()), kernel_arg(chunks)}});
        } else {
            partials.zero_();
        }
        plan.push_back({"norm_act", kernel_name("stats_merge_kernel", {M}), thread_per_item_blocks(p.groups), kThreads,
                        {kernel_arg(p), kernel_arg(partials.data_ptr()), kernel_arg(chunks), kernel_arg(mean),
                         kernel_arg(var), kernel_arg(running)}});
        p.mean = mean;
        p.var = var;
    }
    if (numel > 0) {
        int64_t* advance = running.running_mean != nullptr ? running.steps : nullptr;
        plan.push_back({"norm_act", kernel_name("apply_kernel", {T}), elementwise_blocks(numel), kThreads,
                        {kernel_arg(p), kernel_arg(numel), kernel_arg(advance)}});
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
        const int64_t chunks = norm_act_chunks(p);
        if (p.group_size > 0) {
            plan.push_back({"norm_act", kernel_name("grad_partial_kernel", {T}),
                            norm_act_partial_blocks(p), kThreads,
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
    if (p.per_sample && p.use_input_stats && p.groups > 0) {
        // dx's channel sums into the partials, as norm_act_cuda.cu's backward.
        void* weighted_dz = partials.data_ptr();
        void* weighted_dz_xhat = static_cast<char*>(partials.data_ptr()) + p.groups * partials.element_size();
        plan.push_back({"norm_act", kernel_name("per_sample_sums_kernel", {M}), thread_per_item_blocks(p.C), kThreads,
                        {kernel_arg(p), kernel_arg(sum_dz), kernel_arg(sum_dz_xhat), kernel_arg(weighted_dz),
                         kernel_arg(weighted_dz_xhat)}});
        p.sum_dz = weighted_dz;
        p.sum_dz_xhat = weighted_dz_xhat;
    }
    if (numel > 0) {
        plan.push_back({"norm_act", kernel_name("dx_kernel", {T}), elementwise_blocks(numel), kThreads,
                        {kernel_arg(p), kernel_arg(numel)}});
    }
    nvrtc_run(op, r.x.device(), plan);
}

Triple run_forward_cuda(const char* op, const Prepared& r, const UpdateStatsParams& running = UpdateStatsParams{}) {
    at::Tensor partials;
    if (r.p.use_input_stats) {
        partials = at::empty({r.p.groups * norm_act_chunks(r.p) * 3}, r.x.options().dtype(r.math));
    }
    const DType dtype = kernel_dtype(r.x.scalar_type());
    if (use_nvrtc()) {
        forward_nvrtc(op, r, dtype, r.mean.data_ptr(), r.var.data_ptr(), partials, running);
        return {r.out, r.mean, r.var};
    }
#ifdef FASTGAN_WITH_CUDA
    check_launch(norm_act_cuda_forward(r.p, dtype, r.mean.data_ptr(), r.var.data_ptr(),
                                       partials.defined() ? partials.data_ptr() : nullptr, running,
                                       at::cuda::getCurrentCUDAStream().stream()),
                 op);
#endif
    return {r.out, r.mean, r.var};
}

Triple forward_cuda(const at::Tensor& x, const std::optional<at::Tensor>& w, const std::optional<at::Tensor>& b,
                    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var,
                    bool use_input_stats, bool instance, double eps, int64_t act, double alpha) {
    const c10::DeviceGuard guard(x.device());
    const char* op = forward_name(instance);
    return run_forward_cuda(op, prepare_forward(op, x, w, b, running_mean, running_var, use_input_stats, instance,
                                                eps, act, alpha));
}

Triple train_forward_cuda(const at::Tensor& x, const std::optional<at::Tensor>& w, const std::optional<at::Tensor>& b,
                          const at::Tensor& running_mean, const at::Tensor& running_var,
                          const std::optional<at::Tensor>& steps, std::optional<double> momentum, double eps,
                          int64_t act, double alpha) {
    const c10::DeviceGuard guard(x.device());
    const PreparedTraining r = prepare_training(x, w, b, running_mean, running_var, steps, momentum, eps, act, alpha);
    return run_forward_cuda("batch_norm_act", r.forward, r.update.p);
}

Triple conditional_forward_cuda(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift,
                                const std::optional<at::Tensor>& running_mean,
                                const std::optional<at::Tensor>& running_var, bool use_input_stats, double eps,
                                int64_t act, double alpha) {
    const c10::DeviceGuard guard(x.device());
    return run_forward_cuda("conditional_norm_act", prepare_conditional_forward(x, scale, shift, running_mean,
                                                                                running_var, use_input_stats, eps,
                                                                                act, alpha));
}

// The partials hold 2 * groups values at least (per_sample: dx's channel sums after the merge).
Triple run_backward_cuda(const char* op, const Prepared& r) {
    at::Tensor sum_dz = at::empty({r.p.groups}, r.x.options().dtype(r.math));
    at::Tensor sum_dz_xhat = at::empty({r.p.groups}, r.x.options().dtype(r.math));
    at::Tensor partials = at::empty({r.p.groups * norm_act_chunks(r.p) * 2}, r.x.options().dtype(r.math));
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

Triple backward_cuda(const at::Tensor& dy, const at::Tensor& x, const std::optional<at::Tensor>& w,
                     const std::optional<at::Tensor>& b, const at::Tensor& mean, const at::Tensor& var,
                     bool use_input_stats, bool instance, double eps, int64_t act, double alpha) {
    const c10::DeviceGuard guard(x.device());
    const char* op = backward_name(instance);
    return run_backward_cuda(op, prepare_backward(op, dy, x, w, b, mean, var, use_input_stats, instance, eps, act,
                                                  alpha));
}

Triple conditional_backward_cuda(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& scale,
                                 const at::Tensor& shift, const at::Tensor& mean, const at::Tensor& var,
                                 bool use_input_stats, double eps, int64_t act, double alpha) {
    const c10::DeviceGuard guard(x.device());
    return run_backward_cuda("conditional_norm_act_backward", prepare_conditional_backward(
        dy, x, scale, shift, mean, var, use_input_stats, eps, act, alpha));
}

void update_stats_cuda(const at::Tensor& running_mean, const at::Tensor& running_var,
                       const std::optional<at::Tensor>& steps, const at::Tensor& mean, const at::Tensor& var,
                       std::optional<double> momentum, int64_t count, int64_t batch) {
    const c10::DeviceGuard guard(running_mean.device());
    const PreparedUpdate r = prepare_update(running_mean, running_var, steps, mean, var, momentum, count, batch);
    const DType dtype = kernel_dtype(running_mean.scalar_type());
    const bool stats_double = r.mean.scalar_type() == at::kDouble;
    if (use_nvrtc()) {
        if (r.p.C == 0 && r.p.steps == nullptr) return;
        nvrtc_run("norm_act_update_stats", running_mean.device(),
                  {{"norm_act", kernel_name("update_stats_kernel", {cuda_type_name(dtype),
                                                                    stats_double ? "double" : "float"}),
                    1, kThreads, {kernel_arg(r.p)}}});
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
          "bool use_input_stats, bool instance, float eps, int act, float alpha) -> (Tensor, Tensor, Tensor)",
          {fastgan::any_layout});
    m.def("norm_act_backward(Tensor dy, Tensor x, Tensor? weight, Tensor? bias, Tensor mean, Tensor var, "
          "bool use_input_stats, bool instance, float eps, int act, float alpha) -> (Tensor, Tensor, Tensor)",
          {fastgan::any_layout});
    // Batch norm's training forward that also updates running_mean/var and the step counter in place: one op where
    // norm_act + norm_act_update_stats are two (its gradient: fastgan/ops/norm_act.py, through norm_act_backward).
    m.def("norm_act_train(Tensor x, Tensor? weight, Tensor? bias, Tensor(a!) running_mean, Tensor(b!) running_var, "
          "Tensor(c!)? num_batches_tracked, float? momentum, float eps, int act, float alpha) -> (Tensor, Tensor, Tensor)",
          {fastgan::any_layout});
    m.def("norm_act_update_stats(Tensor(a!) running_mean, Tensor(b!) running_var, Tensor(c!)? num_batches_tracked, "
          "Tensor mean, Tensor var, float? momentum, int count, int batch) -> ()");
    // Conditional batch norm: per-channel statistics, a per-sample scale and shift [N, C] (the Triton ops' schemas).
    m.def("conditional_norm_act(Tensor x, Tensor scale, Tensor shift, Tensor? running_mean, Tensor? running_var, "
          "bool use_input_stats, float eps, int act, float alpha) -> (Tensor y, Tensor mean, Tensor var)",
          {fastgan::any_layout});
    m.def("conditional_norm_act_backward(Tensor dy, Tensor x, Tensor scale, Tensor shift, Tensor mean, Tensor var, "
          "bool use_input_stats, float eps, int act, float alpha) -> (Tensor dx, Tensor dscale, Tensor dshift)",
          {fastgan::any_layout});
}

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
    m.impl("norm_act", &forward_cpu);
    m.impl("norm_act_backward", &backward_cpu);
    m.impl("norm_act_update_stats", &update_stats_cpu);
    m.impl("norm_act_train", &train_forward_cpu);
    m.impl("conditional_norm_act", &conditional_forward_cpu);
    m.impl("conditional_norm_act_backward", &conditional_backward_cpu);
}

// Registered in every build: without nvcc the CUDA kernels run through NVRTC.
TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
    m.impl("norm_act", &forward_cuda);
    m.impl("norm_act_backward", &backward_cuda);
    m.impl("norm_act_update_stats", &update_stats_cuda);
    m.impl("norm_act_train", &train_forward_cuda);
    m.impl("conditional_norm_act", &conditional_forward_cuda);
    m.impl("conditional_norm_act_backward", &conditional_backward_cuda);
}

}  // namespace fastgan
