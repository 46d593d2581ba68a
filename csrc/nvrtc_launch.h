// The NVRTC path of the CUDA kernels (torch-facing glue; .cpp files only). Where fastgan._C was built without nvcc
// (or FASTGAN_NATIVE=nvrtc asks for it), an op's CUDA kernel runs the same argument checks and parameter packing as
// the nvcc path, then hands a launch plan to fastgan/_nvrtc.py, which compiles csrc/<module>_kernels.cuh with NVRTC
// (through CuPy, cached on disk) and launches each step on PyTorch's current stream. Grid and block sizes come from
// launch.h, the rules the nvcc launchers use.
#pragma once

#include <c10/core/Device.h>

#include <functional>
#include <initializer_list>
#include <string>
#include <vector>

#include "common.h"

namespace fastgan {

// One kernel launch: an NVRTC name expression of csrc/<module>_kernels.cuh ("fastgan::bias_act_kernel<float, 0>"), a
// 1-D grid and block, and each argument's bytes exactly as the kernel takes it (parameter structs by value, pointers,
// integers): the host and device layouts of these plain structs are the same.
struct NvrtcLaunch {
    std::string module;
    std::string kernel;
    unsigned grid;
    unsigned block;
    std::vector<std::string> args;
};

template <typename T>
std::string kernel_arg(const T& value) {
    return std::string(reinterpret_cast<const char*>(&value), sizeof(T));
}

// "fastgan::<base><a, b, ...>": the spelling fastgan/_nvrtc.py::KERNELS uses for the same instantiation.
std::string kernel_name(const char* base, std::initializer_list<std::string> template_args);

// Runs a plan on `device` (its current stream), in order. Set by fastgan/_nvrtc.py through fastgan._C.
using NvrtcLauncher = std::function<void(int device, const std::vector<NvrtcLaunch>& plan)>;
void set_nvrtc_launcher(NvrtcLauncher launcher);

// Whether CUDA tensors take the NVRTC path: always in a build without nvcc's kernels, else when requested
// (FASTGAN_NATIVE=nvrtc, applied by fastgan/_backend.py).
bool use_nvrtc();
void set_nvrtc_requested(bool requested);

// Runs `plan` through the launcher; failures raise an error naming `op`.
void nvrtc_run(const char* op, const c10::Device& device, const std::vector<NvrtcLaunch>& plan);

}  // namespace fastgan
