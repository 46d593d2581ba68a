// Python module fastgan._C. Importing it registers the fastgan:: operators (TORCH_LIBRARY blocks in the op
// files); the module itself only reports how it was built.
#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "fastgan compiled kernels (C++ for CPU tensors, CUDA for CUDA tensors when built with nvcc)";
    m.def("with_cuda", [] {
#ifdef FASTGAN_WITH_CUDA
        return true;
#else
        return false;
#endif
    }, "Whether the CUDA kernels were compiled into this build.");
}
