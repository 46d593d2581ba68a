// Torch-facing helpers shared by every op's glue (.cpp files only: it includes ATen).
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/enum_tag.h>

#include "common.h"

namespace fastgan {

// at::isFloatingType admits float8 and other 1-byte formats; the kernels take only these four (a float8 tensor read
// as float32 would be read out of bounds on CUDA).
inline bool is_kernel_dtype(at::ScalarType t) {
    return t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble;
}

inline void check_kernel_dtype(const char* op, const char* name, const at::Tensor& t) {
    TORCH_CHECK(is_kernel_dtype(t.scalar_type()), op, ": ", name,
                " must be a floating-point tensor of float32, float16, bfloat16 or float64, got ", t.scalar_type(),
                "; convert it with .float()");
}

inline DType kernel_dtype(at::ScalarType t) {
    switch (t) {
        case at::kHalf: return DType::Float16;
        case at::kBFloat16: return DType::BFloat16;
        case at::kDouble: return DType::Float64;
        case at::kFloat: return DType::Float32;
        default: TORCH_CHECK(false, "fastgan: no kernel for dtype ", t);
    }
}

// The schema tags of the ops whose kernels take any strides and lay their results out as x: torch.compile then hands
// them its channels_last convolution outputs as they are. Without the tag Inductor copies each input of a custom op to
// the strides seen while tracing and the results back (a CPU DCGAN-28 step compiled took 1.30-1.34x plain's time).
// Given braced (m.def(schema, {any_layout})): a std::vector argument would pick def(name, function) instead.
constexpr at::Tag any_layout = at::Tag::flexible_layout;

inline void check_launch(int cuda_error, const char* op) {
    TORCH_CHECK(cuda_error == 0, op, ": CUDA kernel launch failed with cudaError ", cuda_error);
}

}  // namespace fastgan
