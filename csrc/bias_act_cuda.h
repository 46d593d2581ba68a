// Launchers for the bias_act CUDA kernels, callable from the torch-facing glue without CUDA headers.
#pragma once

#include "bias_act.h"

namespace fastgan {

// kind: 0 forward, 1 backward (dx), 2 second-derivative term. Returns a cudaError_t as int (0 = success).
int bias_act_cuda_launch(const BiasActParams& p, DType dtype, int kind, void* stream);

}  // namespace fastgan
