// Launchers for the loss and gradient-penalty CUDA kernels, callable from the torch-facing glue without CUDA headers.
#pragma once

#include "losses.h"

namespace fastgan {

// Each returns a cudaError_t as int (0 = success).
int gan_loss_cuda_launch(const GanLossParams& p, DType dtype, void* stream);
int gan_loss_backward_cuda_launch(const GanLossBackwardParams& p, DType dtype, void* stream);
int interpolate_cuda_launch(const InterpolateParams& p, DType dtype, void* stream);
int penalty_cuda_launch(const PenaltyParams& p, DType dtype, void* stream);
int penalty_backward_cuda_launch(const PenaltyParams& p, DType dtype, void* stream);

}  // namespace fastgan
