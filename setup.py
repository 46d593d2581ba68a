"""Build fastgan and its compiled extension fastgan._C.

C++ kernels are always built. CUDA kernels are added when the installed PyTorch has CUDA and nvcc is found
(CUDA_HOME or PATH); set FASTGAN_CUDA=0 to skip them, TORCH_CUDA_ARCH_LIST to choose architectures, MAX_JOBS for
parallel compilation. PyTorch extensions need the installed torch, so install with build isolation off:
    pip install --no-build-isolation -e .
"""

import glob
import os

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as error:  # pragma: no cover - only hit when torch is missing at build time
    raise SystemExit(
        f"fastgan's build needs PyTorch installed first ({error}): `pip install torch`, then "
        "`pip install --no-build-isolation -e .`"
    ) from error

HERE = os.path.dirname(os.path.abspath(__file__))


def _extension():
    cpp_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    cu_sources = sorted(glob.glob(os.path.join("csrc", "*.cu")))
    cxx_flags = ["-O3", "-std=c++17"]
    with_cuda = (
        os.environ.get("FASTGAN_CUDA", "1") != "0" and torch.version.cuda is not None and CUDA_HOME is not None
    )
    if with_cuda:
        nvcc_flags = ["-O3", "-std=c++17", "-lineinfo"]
        return CUDAExtension(
            "fastgan._C",
            cpp_sources + cu_sources,
            include_dirs=[os.path.join(HERE, "csrc")],
            define_macros=[("FASTGAN_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
        )
    return CppExtension(
        "fastgan._C",
        cpp_sources,
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_compile_args={"cxx": cxx_flags},
    )


setup(
    name="fastgan",
    version="0.1.0",
    description="Fast GAN training for PyTorch: fused Triton/CUDA kernels behind a PyTorch-compatible API",
    packages=find_packages(include=["fastgan", "fastgan.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.5", "numpy", "pillow", "triton; platform_system == 'Linux'"],
    extras_require={"test": ["pytest", "pytest-benchmark", "scikit-learn", "ruff"]},
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    entry_points={"console_scripts": ["fastgan = fastgan.cli:main"]},
)
