// fastgan's nvcc launchers (csrc/*_cuda.cu, compiled apart with their launches rewritten for cuda_emu.h by
// tests/test_cuda_emulated.py) behind a C interface for ctypes: the parameters packed as the ops' C++ glue packs
// them (csrc/*.cpp) and the scratch buffers it allocates.
#include <cstdio>
#include <vector>

#include "bias_act_cuda.h"
#include "launch.h"
#include "losses_cuda.h"
#include "norm_act_cuda.h"

namespace {

size_t math_size(int dtype) { return static_cast<fastgan::DType>(dtype) == fastgan::DType::Float64 ? 8 : 4; }

// The scratch buffer of norm_act's partial results (as the glue sizes it), with a guard band after it: launch()
// returns -2 when a kernel wrote into the band.
struct Partials {
    static constexpr size_t kGuard = 256;
    std::vector<unsigned char> bytes;

    Partials(const fastgan::NormActParams& p, int dtype)
        : bytes(p.groups * fastgan::norm_act_chunks(p) * 3 * math_size(dtype) + kGuard, 0x5a) {}
    void* data() { return bytes.data(); }
    int checked(int error) const {
        for (size_t i = bytes.size() - kGuard; i < bytes.size(); ++i) {
            if (bytes[i] != 0x5a) return -2;
        }
        return error;
    }
};

// As prepare_update packs them: buffers of `buffers` dtype (element stride `stride`), [batch * C] statistics of
// groups of `count` values; momentum < 0 is None (the cumulative average, counted by steps).
fastgan::UpdateStatsParams update_params(int buffers, void* running_mean, void* running_var, int64_t stride,
                                         int64_t* steps, const void* mean, const void* var, int64_t C, int64_t batch,
                                         int64_t count, double momentum) {
    return {.running_mean = running_mean, .running_var = running_var, .stride_mean = stride, .stride_var = stride,
            .mean = mean, .var = var, .C = C, .batch = batch,
            .ratio = static_cast<double>(count) / static_cast<double>(count - 1),
            .momentum = momentum < 0 ? 0.0 : momentum, .steps = steps, .cumulative = momentum < 0,
            .buffers = static_cast<fastgan::DType>(buffers)};
}

}  // namespace

extern "C" {

// out = forward (kind 0), backward (1) or second-derivative term (2) of bias_act; b broadcast as (i / stride) % size.
int emu_bias_act(int dtype, int kind, const void* x, const void* b, const void* dy, const void* g, void* out,
                 int64_t numel, int64_t bias_size, int64_t bias_stride, int act, double alpha, double gain,
                 double clamp) {
    const fastgan::BiasActParams p{x, b, dy, g, out, numel, bias_size, bias_stride, act, alpha, gain, clamp};
    return fastgan::bias_act_cuda_launch(p, static_cast<fastgan::DType>(dtype), kind, nullptr);
}

// backward false: out = act(norm(x)), mean and var ([groups], math type) written with use_input_stats, else read.
// backward true: out = dx, and the [groups] sums of dz and dz * xhat; mean and var are the forward's.
// shape: N, C, L, sN, sC, sL.
int emu_norm_act(int dtype, bool backward, const void* x, const void* dy, void* out, const void* w, const void* b,
                 void* mean, void* var, void* sum_dz, void* sum_dz_xhat, const int64_t* shape, bool instance,
                 bool per_sample, bool use_input_stats, double eps, int act, double alpha) {
    const fastgan::NormActParams p{.x = x, .dy = dy, .out = out, .w = w, .b = b, .mean = mean, .var = var,
                                   .N = shape[0], .C = shape[1], .L = shape[2],
                                   .sN = shape[3], .sC = shape[4], .sL = shape[5],
                                   .groups = instance ? shape[0] * shape[1] : shape[1],
                                   .group_size = instance ? shape[2] : shape[0] * shape[2],
                                   .instance = instance, .per_sample = per_sample, .use_input_stats = use_input_stats,
                                   .eps = eps, .act = act, .alpha = alpha};
    const auto type = static_cast<fastgan::DType>(dtype);
    Partials partials(p, dtype);
    return partials.checked(
        backward ? fastgan::norm_act_cuda_backward(p, type, sum_dz, sum_dz_xhat, partials.data(), nullptr)
                 : fastgan::norm_act_cuda_forward(p, type, mean, var, partials.data(), fastgan::UpdateStatsParams{},
                                                  nullptr));
}

// norm_act_update_stats: the running statistics from given ones (stats_double: float64 statistics, else float32).
int emu_update_stats(int buffers, bool stats_double, void* running_mean, void* running_var, int64_t stride,
                     int64_t* steps, const void* mean, const void* var, int64_t C, int64_t batch, int64_t count,
                     double momentum) {
    const fastgan::UpdateStatsParams u =
        update_params(buffers, running_mean, running_var, stride, steps, mean, var, C, batch, count, momentum);
    return fastgan::norm_act_cuda_update_stats(u, static_cast<fastgan::DType>(buffers), stats_double, nullptr);
}

// norm_act_train: batch norm's training forward of contiguous [N, C, L] x (y, mean, var as emu_norm_act's), its
// merge kernel updating the running statistics from mean and var.
int emu_norm_act_train(int dtype, const void* x, void* y, void* mean, void* var, int64_t N, int64_t C, int64_t L,
                       int act, double alpha, int buffers, void* running_mean, void* running_var, int64_t stride,
                       int64_t* steps, double momentum) {
    const fastgan::NormActParams p{.x = x, .out = y, .N = N, .C = C, .L = L, .sN = C * L, .sC = L, .sL = 1,
                                   .groups = C, .group_size = N * L, .use_input_stats = true, .eps = 1e-5,
                                   .act = act, .alpha = alpha};
    const fastgan::UpdateStatsParams u =
        update_params(buffers, running_mean, running_var, stride, steps, mean, var, C, 1, N * L, momentum);
    Partials partials(p, dtype);
    return partials.checked(
        fastgan::norm_act_cuda_forward(p, static_cast<fastgan::DType>(dtype), mean, var, partials.data(), u, nullptr));
}

// gan_loss: the loss (0-dim, the logits' dtype) and the gradients (math type); b nullptr for one term. partials:
// kGanLossMaxBlocks math-type values, as the glue allocates for large logits.
int emu_gan_loss(int dtype, const void* a, const void* b, void* loss, void* grad_a, void* grad_b, void* partials,
                 int64_t numel_a, int64_t numel_b, int term_a, int term_b) {
    const fastgan::GanLossParams p{a, b, loss, grad_a, grad_b, partials, numel_a, numel_b, term_a, term_b};
    return fastgan::gan_loss_cuda_launch(p, static_cast<fastgan::DType>(dtype), nullptr);
}

int emu_gan_loss_backward(int dtype, const void* go, const void* grad_a, const void* grad_b, void* da, void* db,
                          int64_t numel_a, int64_t numel_b) {
    const fastgan::GanLossBackwardParams p{go, grad_a, grad_b, da, db, numel_a, numel_b};
    return fastgan::gan_loss_backward_cuda_launch(p, static_cast<fastgan::DType>(dtype), nullptr);
}

int emu_interpolate(int dtype, const void* real, const void* fake, const void* eps, void* out, int64_t batch,
                    int64_t per_sample) {
    const fastgan::InterpolateParams p{real, fake, eps, out, batch, per_sample};
    return fastgan::interpolate_cuda_launch(p, static_cast<fastgan::DType>(dtype), nullptr);
}

// The penalty (backward false: out is the 0-dim penalty, norms written) or its gradient (true: out is dg).
int emu_penalty(int dtype, bool backward, const void* g, const void* go, void* norms, void* out, int64_t batch,
                int64_t per_sample, double weight, double center, double scale) {
    const fastgan::PenaltyParams p{g, go, norms, out, batch, per_sample, weight, center, scale};
    const auto type = static_cast<fastgan::DType>(dtype);
    return backward ? fastgan::penalty_backward_cuda_launch(p, type, nullptr)
                    : fastgan::penalty_cuda_launch(p, type, nullptr);
}

// Memory-traffic counting (cuda_emu.h): emu_trace(true) clears the counts and starts, emu_trace(false) stops.
void emu_trace(bool on) {
    if (on) emu::traffic.clear();
    emu::tracing = on;
}

// The index-th kernel's counts: its name into name (size bytes), requests, sectors and bytes into counts; -1 past
// the last.
int emu_traffic(int index, char* name, int size, int64_t* counts) {
    auto it = emu::traffic.begin();
    for (int i = 0; i < index && it != emu::traffic.end(); ++i) ++it;
    if (it == emu::traffic.end()) return -1;
    std::snprintf(name, size, "%s", it->first.c_str());
    counts[0] = it->second.requests;
    counts[1] = it->second.sectors;
    counts[2] = it->second.bytes;
    return 0;
}

}  // extern "C"
