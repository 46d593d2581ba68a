// Python module fastgan._C. Importing it registers the fastgan:: operators (TORCH_LIBRARY blocks in the op
// files); the module itself reports how it was built and connects the NVRTC path (nvrtc_launch.h) to Python.
#include <torch/extension.h>

#include <algorithm>
#include <stdexcept>
#include <vector>
#include <string>

#include "cpu_vec.h"
#include "nvrtc_launch.h"

namespace py = pybind11;

namespace {

// Wraps fastgan/_nvrtc.py's launch(device, plan) for the C++ ops. A Python error becomes a C++ exception carrying
// its message (the error object itself needs the GIL, which is released on the way out).
fastgan::NvrtcLauncher python_launcher(py::function fn) {
    auto* held = new py::function(std::move(fn));  // kept for the process: ops may launch until interpreter exit
    return [held](int device, const std::vector<fastgan::NvrtcLaunch>& plan) {
        py::gil_scoped_acquire gil;
        std::string message;
        try {
            py::list steps;
            for (const fastgan::NvrtcLaunch& s : plan) {
                py::list args;
                for (const std::string& a : s.args) args.append(py::bytes(a));
                steps.append(py::make_tuple(s.module, s.kernel, s.grid, s.block, args));
            }
            (*held)(device, steps);
            return;
        } catch (py::error_already_set& error) {
            message = error.what();
        }
        throw std::runtime_error(message);
    };
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "fastgan compiled kernels (C++ for CPU tensors; CUDA for CUDA tensors, compiled by nvcc at build time "
              "or by NVRTC at run time)";
    m.def("with_cuda", [] {
#ifdef FASTGAN_WITH_CUDA
        return true;
#else
        return false;
#endif
    }, "Whether the CUDA kernels were compiled into this build by nvcc.");
    m.def("_set_nvrtc_launcher", [](py::function fn) { fastgan::set_nvrtc_launcher(python_launcher(std::move(fn))); },
          "Install launch(device, plan), which runs the CUDA kernels of builds without nvcc (fastgan/_nvrtc.py).");
    m.def("_set_nvrtc_requested", &fastgan::set_nvrtc_requested,
          "Send CUDA tensors to the NVRTC kernels even where nvcc's are built in (FASTGAN_NATIVE=nvrtc).");
    m.def("_uses_nvrtc", &fastgan::use_nvrtc, "Whether CUDA tensors take the NVRTC path now.");
    m.def("cpu_isa", [] { return std::string(fastgan::cpu::isa_name(fastgan::cpu::current_isa())); },
          "The instruction set the CPU kernels run with: 'avx512', 'avx2' or 'baseline' (PyTorch's own choice).");
    m.def("_cpu_isa_copies", [] {
        std::vector<std::string> names;
        if (FASTGAN_CPU_MULTI_ISA) names = {"avx512", "avx2"};
        names.push_back("baseline");
        return names;
    }, "The instruction sets the CPU kernels were compiled for (x86-64 GCC/Clang builds: three copies).");
    m.def("_limit_cpu_isa", [](const std::string& name) {
        using fastgan::cpu::Isa;
        const Isa isa = name == "avx512" ? Isa::kAvx512 : name == "avx2" ? Isa::kAvx2 : Isa::kBaseline;
        if (name != fastgan::cpu::isa_name(isa)) {
            throw std::invalid_argument("_limit_cpu_isa: expected 'avx512', 'avx2' or 'baseline', got '" + name + "'");
        }
        fastgan::cpu::limit_isa(isa);
    }, "Cap the CPU kernels' instruction set (tests run every copy).");
    m.def("_parallel_width", [] {
        std::vector<int> ran(at::get_num_threads(), 0);
        fastgan::cpu::parallel_for(0, at::get_num_threads(), 1, [&](int64_t b, int64_t e) {
            for (int64_t i = b; i < e; ++i) ran[at::get_thread_num()] = 1;
        });
        return std::count(ran.begin(), ran.end(), 1);
    }, "How many threads ran the tasks of cpu::parallel_for over one task per thread (a build check: without "
       "OpenMP at compile time the extension's parallel loops run on one).");
}
