// Launchers for the loss and gradient-penalty CUDA kernels, callable from the torch-facing glue without CUDA headers.
#pragma once

#include "losses.h"

namespace fastgan {

// Same codes as bias_act_cuda.h::DType (redeclared here so this header stands alone).
enum class LossDType : int { Float32 = 0, Float16, BFloat16, Float64 };

// Each returns a cudaError_t as int (0 = success).
int gan_loss_cuda_launch(const GanLossParams& p, LossDType dtype, void* stream);
int gan_loss_backward_cuda_launch(const GanLossBackwardParams& p, LossDType dtype, void* stream);
int interpolate_cuda_launch(const InterpolateParams& p, LossDType dtype, void* stream);
int penalty_cuda_launch(const PenaltyParams& p, LossDType dtype, void* stream);
int penalty_backward_cuda_launch(const PenaltyParams& p, LossDType dtype, void* stream);

}  // namespace fastgan
