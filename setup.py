"""Build fastgan and its compiled extension fastgan._C.

C++ kernels are always built. CUDA kernels are added when the installed PyTorch has CUDA and a CUDA toolkit (nvcc)
is found; no GPU is needed to build them. Without them, CUDA tensors run the same kernel source compiled at run time
by NVRTC when CuPy is installed (`pip install -e ".[cupy]"`, fastgan/_nvrtc.py). Knobs (all optional):
    FASTGAN_CUDA=0           skip the CUDA kernels
    CUDA_HOME=/path          the toolkit (default: found from nvcc on PATH, then /usr/local/cuda)
    TORCH_CUDA_ARCH_LIST     architectures (default: the visible GPUs', else sm_80 and sm_90 + PTX)
    MAX_JOBS=N               parallel compile jobs
PyTorch extensions need the installed torch, so install with build isolation off:
    pip install --no-build-isolation -e .
"""

import glob
import os
import shutil
import sys
import sysconfig

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

# Without a visible GPU and without TORCH_CUDA_ARCH_LIST, build for the GPUs fastgan targets: A100 (sm_80) and
# H100/H200 (sm_90), plus PTX so newer GPUs JIT-compile the sm_90 code.
DEFAULT_CUDA_ARCHS = ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90",
                      "-gencode=arch=compute_90,code=compute_90"]


def _is_toolkit(root):
    return bool(root) and os.path.isfile(os.path.join(root, "bin", "nvcc")) and os.path.isfile(
        os.path.join(root, "include", "cuda_runtime.h"))


def _find_toolkit():
    """The CUDA toolkit root: $CUDA_HOME / $CUDA_PATH if set, else the first real toolkit among nvcc's parent folder
    (an nvcc on PATH may be a wrapper script outside the toolkit), /usr/local/cuda and /usr/local/cuda-*."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    candidates = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else []
    candidates += ["/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"), reverse=True)]
    return next((root for root in candidates if _is_toolkit(root)), None)


# torch.utils.cpp_extension reads the toolkit location once, when it is imported: set it first (this build's
# environment only).
if os.environ.get("FASTGAN_CUDA", "1") != "0" and not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")):
    _toolkit = _find_toolkit()
    if _toolkit:
        os.environ["CUDA_HOME"] = _toolkit

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as error:  # pragma: no cover - only hit when torch is missing at build time
    raise SystemExit(
        f"fastgan's build needs PyTorch installed first ({error}): `pip install torch`, then "
        "`pip install --no-build-isolation -e .`"
    ) from error

HERE = os.path.dirname(os.path.abspath(__file__))


def _wheel_cuda_includes():
    """Header folders of the nvidia-* wheels a CUDA PyTorch depends on (cuSPARSE, cuBLAS, ...). ATen's CUDA headers
    include them, and a toolkit installed without those libraries lacks them. Searched after the toolkit's own."""
    if os.path.isfile(os.path.join(CUDA_HOME, "include", "cusparse.h")):
        return []
    try:
        import nvidia
    except ImportError:
        return []
    return sorted(d for root in nvidia.__path__ for d in glob.glob(os.path.join(root, "*", "include")))


def _extension():
    cpp_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    cu_sources = sorted(glob.glob(os.path.join("csrc", "*.cu")))
    # No -std flag: PyTorch adds the standard its headers need (C++17 up to 2.13, C++20 from 2.14).
    # -fno-trapping-math lets the compiler turn the activations' selects (z > 0 ? z : z * alpha) into branch-free
    # vector code: with trapping math on, GCC keeps a branch per element (a multiply it must not run speculatively),
    # which made the C++ bias_act 5x slower than PyTorch's leaky_relu on random data. Results are unchanged (no
    # reassociation; only floating-point exception flags may differ). -ffp-contract=off: the CPU kernels' AVX2 and
    # AVX-512 copies (csrc/cpu_vec.h) compute the baseline's bits, no a * b + c fused where the baseline rounds twice.
    # (FASTGAN_FP_CONTRACT_OFF tells csrc/cpu_vec.h the flag is set, which its AVX copies require.)
    cxx_flags = ["-O3"] if os.name == "nt" else ["-O3", "-fno-trapping-math", "-ffp-contract=off",
                                                  "-DFASTGAN_FP_CONTRACT_OFF"]
    # at::parallel_for is inline (a `#pragma omp parallel` in ATen/ParallelOpenMP.h): without -fopenmp the
    # extension's CPU kernels run on one thread whatever torch.set_num_threads says. With GCC on Linux the OpenMP
    # runtime is the one PyTorch has loaded (its libgomp.so.1, the same soname); elsewhere a second runtime could
    # load beside PyTorch's, so the kernels stay serial there.
    link_flags = []
    compiler = os.environ.get("CXX") or sysconfig.get_config_var("CXX") or ""
    openmp_torch = "ATen parallel backend: OpenMP" in torch.__config__.parallel_info()
    if sys.platform.startswith("linux") and openmp_torch and "clang" not in compiler:
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    with_cuda = (
        os.environ.get("FASTGAN_CUDA", "1") != "0" and torch.version.cuda is not None and CUDA_HOME is not None
    )
    if not with_cuda:
        return CppExtension("fastgan._C", cpp_sources, include_dirs=[os.path.join(HERE, "csrc")],
                            extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags)
    nvcc_flags = ["-O3", "-lineinfo"]
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        nvcc_flags += DEFAULT_CUDA_ARCHS
    for include in _wheel_cuda_includes():
        cxx_flags += ["-idirafter", include]
    return CUDAExtension(
        "fastgan._C",
        cpp_sources + cu_sources,
        include_dirs=[os.path.join(HERE, "csrc")],
        define_macros=[("FASTGAN_WITH_CUDA", None)],
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
        extra_link_args=link_flags,
    )


class BuildPyWithKernelSources(build_py):
    """Also ships the CUDA kernel sources (csrc/*.h, csrc/*.cuh) as fastgan/_csrc, where the NVRTC path of an install
    that is not editable finds them (fastgan/_nvrtc.py); an editable install reads csrc/ itself."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = os.path.join(self.build_lib, "fastgan", "_csrc")
        os.makedirs(target, exist_ok=True)
        for pattern in ("*.h", "*.cuh"):
            for path in sorted(glob.glob(os.path.join(HERE, "csrc", pattern))):
                shutil.copy2(path, target)


setup(
    name="fastgan",
    version="0.1.0",
    description="Fast GAN training for PyTorch: fused Triton/CUDA kernels behind a PyTorch-compatible API",
    packages=find_packages(include=["fastgan", "fastgan.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.5", "numpy", "pillow", "tqdm", "triton; platform_system == 'Linux'"],
    # cupy: the CUDA kernels compiled at run time by NVRTC where fastgan._C was built without nvcc (CUDA 13; for a
    # PyTorch built for CUDA 12 install cupy-cuda12x instead).
    extras_require={"test": ["pytest", "pytest-benchmark", "scikit-learn", "ruff"], "cupy": ["cupy-cuda13x"]},
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True), "build_py": BuildPyWithKernelSources},
    entry_points={"console_scripts": ["fastgan = fastgan.cli:main"]},
)
