// Launchers for the norm_act CUDA kernels, callable from the torch-facing glue without CUDA headers.
#pragma once

#include "launch.h"
#include "norm_act.h"

namespace fastgan {

// Forward. With p.use_input_stats, first reduces mean and biased var per group into `mean`/`var` (math type,
// [groups]) using `partials` (math type, [groups * chunks * 3]); then writes y. Otherwise p.mean/p.var are given.
// With running.running_mean (batch statistics only), the merge also updates the running statistics and the step
// counter advances, in the same launches. Returns a cudaError_t as int (0 = success).
int norm_act_cuda_forward(NormActParams p, DType dtype, void* mean, void* var, void* partials,
                          const UpdateStatsParams& running, void* stream);

// Backward: reduces sum(dz) and sum(dz * xhat) per group into `sum_dz`/`sum_dz_xhat` (math type, [groups]) using
// `partials` ([groups * chunks * 2]; with p.per_sample in training, then dx's channel sums), then writes dx.
int norm_act_cuda_backward(NormActParams p, DType dtype, void* sum_dz, void* sum_dz_xhat, void* partials,
                           void* stream);

// Running statistics: one thread per channel updates both buffers (dtype `dtype`) in place from the statistics
// (float64 if `stats_double`, else float32). Returns a cudaError_t as int (0 = success).
int norm_act_cuda_update_stats(UpdateStatsParams p, DType dtype, bool stats_double, void* stream);

}  // namespace fastgan
