"""fastgan's CUDA kernels compiled at run time by NVRTC through CuPy, for builds of ``fastgan._C`` without nvcc.

The kernels are the ones nvcc compiles: ``csrc/<module>_kernels.cuh``, included by ``csrc/<module>_cuda.cu`` and
compiled here as they are (no kernel code lives in Python). The ops' C++ glue checks arguments and packs the
parameter structs as for nvcc's kernels, then calls ``launch(device, plan)`` (installed into ``fastgan._C`` by
``install``) with the kernels to run, each with its grid and block (the rules of ``csrc/launch.h``) and its arguments'
bytes. Here each module is compiled once per GPU architecture with every kernel instantiation of ``KERNELS`` (the
three modules took 19 s for one architecture on 2 busy cores), cached on disk under a key of the sources' hash, the
architecture, the NVRTC version and the options, loaded into the device's context and launched on PyTorch's current
stream with the tensors' own pointers (no copies).

CuPy is imported on first use, never at ``import fastgan``. ``status()`` says whether this path can run and why not.
The cache: ``$FASTGAN_NVRTC_CACHE``, else ``$XDG_CACHE_HOME/fastgan/nvrtc``, else ``~/.cache/fastgan/nvrtc``.
"""

from __future__ import annotations

import base64
import ctypes
import functools
import hashlib
import itertools
import json
import os
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ._io import atomic_writer

DTYPES = ("float", "__half", "__nv_bfloat16", "double")  # csrc/launch.h::cuda_type_name
MATH_TYPES = ("float", "double")  # csrc/launch.h::cuda_math_type_name


def _expand(name: str, *choices: Sequence[str]) -> list[str]:
    """The name expressions of template ``name`` over every combination of its arguments' choices."""
    return [f"fastgan::{name}<{', '.join(args)}>" for args in itertools.product(*choices)]


# Every kernel instantiation the C++ launch plans ask for, per csrc/<module>_kernels.cuh, spelled as
# csrc/nvrtc_launch.cpp::kernel_name spells it. tests/test_nvrtc.py checks that every __global__ template of each file
# is listed.
KERNELS: dict[str, tuple[str, ...]] = {
    "bias_act": tuple(_expand("bias_act_kernel", DTYPES, ("0", "1", "2"))),
    "norm_act": tuple(
        _expand("stats_partial_kernel", DTYPES)
        + _expand("stats_merge_kernel", MATH_TYPES)
        + _expand("apply_kernel", DTYPES)
        + _expand("grad_partial_kernel", DTYPES)
        + _expand("grad_merge_kernel", MATH_TYPES)
        + _expand("per_sample_sums_kernel", MATH_TYPES)
        + _expand("dx_kernel", DTYPES)
        + _expand("update_stats_kernel", DTYPES, MATH_TYPES)
    ),
    "losses": tuple(
        kernel
        for name in ("gan_loss_kernel", "gan_loss_finalize_kernel", "gan_loss_backward_kernel", "interpolate_kernel",
                     "sample_norm_kernel", "penalty_kernel", "penalty_backward_kernel")
        for kernel in _expand(name, DTYPES)
    ),
}

# The macros PyTorch's extension build gives nvcc (torch.utils.cpp_extension.COMMON_NVCC_FLAGS), so both compilers
# see the same kernel text; C++17 as setup.py's nvcc build.
OPTIONS = (
    "-std=c++17",
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
    "--ptxas-options=-v",  # registers and spills per kernel, in the program log
)

FORMAT = 1  # bump when the cache entry's layout changes


class NvrtcError(RuntimeError):
    """A kernel module failed to compile or launch through NVRTC."""


# --- where things are ----------------------------------------------------------------------------------------------


def source_dir() -> Path:
    """The folder holding the kernel sources: ``$FASTGAN_CSRC``, else the copy an installed wheel ships
    (``fastgan/_csrc``, setup.py), else the repository's ``csrc`` beside the package (an editable install)."""
    if os.environ.get("FASTGAN_CSRC"):
        return Path(os.environ["FASTGAN_CSRC"])
    here = Path(__file__).resolve().parent
    shipped = here / "_csrc"
    return shipped if shipped.is_dir() else here.parent / "csrc"


def cache_dir() -> Path:
    """Where compiled modules are kept (see the module docstring)."""
    if os.environ.get("FASTGAN_NVRTC_CACHE"):
        return Path(os.environ["FASTGAN_NVRTC_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastgan" / "nvrtc"


@functools.cache
def _cuda_include_dir() -> str | None:
    """A folder with cuda_fp16.h/cuda_bf16.h for NVRTC: the nvidia-cuda-runtime wheel a CUDA PyTorch installs (found
    as CuPy finds it), else a toolkit's ($CUDA_PATH / $CUDA_HOME, /usr/local/cuda)."""
    candidates: list[str] = []
    try:
        from cuda.pathfinder import find_nvidia_header_directory

        found = find_nvidia_header_directory("cudart")
        if found:
            candidates.append(found)
    except Exception:  # an older cuda-pathfinder without it, or a broken install: try the toolkit folders
        pass
    for var in ("CUDA_PATH", "CUDA_HOME"):
        if os.environ.get(var):
            candidates.append(os.path.join(os.environ[var], "include"))
    candidates.append("/usr/local/cuda/include")
    return next((c for c in candidates if os.path.isfile(os.path.join(c, "cuda_fp16.h"))), None)


# --- availability --------------------------------------------------------------------------------------------------


@functools.cache
def status() -> tuple[bool, str]:
    """(True, a description of CuPy and NVRTC) if kernels can compile here, else (False, the reason and the fix).
    Imports CuPy (only when called)."""
    fix = "install it with `pip install 'fastgan[cupy]'` (cupy-cuda13x; cupy-cuda12x for CUDA 12)"
    try:
        import cupy
        from cupy_backends.cuda.libs import nvrtc
    except Exception as error:  # ImportError, or CuPy's own errors for a mismatched CUDA
        return False, f"CuPy is not importable ({type(error).__name__}: {error}); {fix}"
    try:
        major, minor = nvrtc.getVersion()
    except Exception as error:
        return False, (
            f"CuPy {cupy.__version__} cannot load the NVRTC library ({str(error).splitlines()[0]}); install the "
            "nvidia-cuda-nvrtc wheel of your CUDA (a CUDA build of PyTorch depends on it)"
        )
    if _cuda_include_dir() is None:
        return False, (
            "NVRTC needs the CUDA headers cuda_fp16.h and cuda_bf16.h: install the nvidia-cuda-runtime wheel of your "
            "CUDA (a CUDA build of PyTorch depends on it) or set CUDA_PATH to a CUDA toolkit"
        )
    missing = [m for m in KERNELS if not (source_dir() / f"{m}_kernels.cuh").is_file()]
    if missing:
        return False, (
            f"the kernel sources {', '.join(f'{m}_kernels.cuh' for m in missing)} are not in {source_dir()}; install "
            "fastgan from its repository (`pip install --no-build-isolation -e .`) or set FASTGAN_CSRC to its csrc"
        )
    return True, f"CuPy {cupy.__version__}, NVRTC {major}.{minor}"


def nvrtc_version() -> tuple[int, int]:
    from cupy_backends.cuda.libs import nvrtc

    return tuple(nvrtc.getVersion())


# --- compiling -----------------------------------------------------------------------------------------------------


def parse_arch(arch: str | int) -> int:
    """``"sm_90"``, ``"90"`` or ``90`` -> 90; anything else raises ValueError naming the expected form."""
    match = re.fullmatch(r"(?:sm_)?(\d{2,3})", str(arch).strip())
    if not match:
        raise ValueError(f"unknown CUDA architecture {arch!r}; expected sm_XY such as sm_80 or sm_90")
    return int(match.group(1))


def _sources() -> list[tuple[str, bytes]]:
    """Every header NVRTC may include from csrc, by name: any change to one changes the cache key."""
    root = source_dir()
    return [(p.name, p.read_bytes()) for p in sorted(root.glob("*.h")) + sorted(root.glob("*.cuh"))]


def cache_key(module: str, arch: int, version: tuple[int, int], sources: Iterable[tuple[str, bytes]]) -> str:
    """The cache key of ``module`` compiled for ``sm_<arch>`` by NVRTC ``version`` from ``sources``."""
    h = hashlib.sha256()
    h.update(json.dumps([FORMAT, module, arch, list(version), OPTIONS, KERNELS[module]]).encode())
    for name, text in sources:
        h.update(name.encode() + b"\0" + hashlib.sha256(text).digest())
    return h.hexdigest()[:32]


@dataclass
class Compiled:
    """A module compiled for one architecture: the cubin, each name expression's lowered (mangled) name, and the
    compiler's log (ptxas' per-kernel register and spill report)."""

    module: str
    arch: int
    cubin: bytes
    lowered: dict[str, str]
    log: str
    cached: bool = False

    def kernel_reports(self) -> dict[str, dict[str, int]]:
        """Per name expression: registers, stack bytes, spill stores and loads, parsed from ptxas' report."""
        by_mangled = {v: k for k, v in self.lowered.items()}
        reports: dict[str, dict[str, int]] = {}
        current: str | None = None
        for line in self.log.splitlines():
            entry = re.search(r"(?:Compiling entry function|Function properties for) '?([\w$]+)'?", line)
            if entry:
                current = by_mangled.get(entry.group(1))
                continue
            if current is None:
                continue
            report = reports.setdefault(current, {})
            frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
            if frame:
                report.update(stack=int(frame.group(1)), spill_stores=int(frame.group(2)),
                              spill_loads=int(frame.group(3)))
            used = re.search(r"Used (\d+) registers", line)
            if used:
                report["registers"] = int(used.group(1))
        return reports


def _compile_uncached(module: str, arch: int) -> Compiled:
    from cupy_backends.cuda.libs import nvrtc

    path = source_dir() / f"{module}_kernels.cuh"
    program = nvrtc.createProgram(path.read_text(), f"{module}_kernels.cu", [], [])
    try:
        for name in KERNELS[module]:
            nvrtc.addNameExpression(program, name)
        options = [*OPTIONS, f"--gpu-architecture=sm_{arch}", f"-I{source_dir()}", f"-I{_cuda_include_dir()}"]
        try:
            nvrtc.compileProgram(program, options)
        except nvrtc.NVRTCError as error:
            raise NvrtcError(
                f"NVRTC failed to compile {path} for sm_{arch} ({error}):\n{nvrtc.getProgramLog(program)}"
            ) from None
        lowered = {name: nvrtc.getLoweredName(program, name) for name in KERNELS[module]}
        return Compiled(module, arch, bytes(nvrtc.getCUBIN(program)), lowered, nvrtc.getProgramLog(program))
    finally:
        nvrtc.destroyProgram(program)


def compile_module(module: str, arch: int | str, use_cache: bool = True) -> Compiled:
    """``csrc/<module>_kernels.cuh`` compiled for ``arch`` with every kernel of ``KERNELS[module]``; from the disk
    cache when it holds this key (``use_cache=False`` compiles anyway and refreshes the entry). Needs no GPU."""
    if module not in KERNELS:
        raise ValueError(f"unknown kernel module {module!r}; expected one of {', '.join(KERNELS)}")
    arch = parse_arch(arch)
    key = cache_key(module, arch, nvrtc_version(), _sources())
    path = cache_dir() / f"{module}-sm_{arch}-{key}.json"
    if use_cache:
        try:
            entry = json.loads(path.read_text())
            return Compiled(module, arch, base64.b64decode(entry["cubin"]), entry["lowered"], entry["log"], True)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # absent or unreadable (a partial file cannot exist: entries are written atomically): compile
    compiled = _compile_uncached(module, arch)
    entry = {"format": FORMAT, "module": module, "arch": arch, "lowered": compiled.lowered, "log": compiled.log,
             "cubin": base64.b64encode(compiled.cubin).decode()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(path) as handle:
            handle.write(json.dumps(entry).encode())
    except OSError:
        pass  # a read-only cache folder costs a compile per process, nothing else
    return compiled


# --- launching -----------------------------------------------------------------------------------------------------

_loaded: dict[tuple[int, str], tuple[object, dict[str, str]]] = {}  # (device, module) -> (cupy Module, lowered names)
_functions: dict[tuple[int, str], object] = {}  # (device, kernel) -> cupy Function
_lock = threading.Lock()


def _function(device: int, module: str, kernel: str):
    """The loaded kernel ``kernel`` of ``module`` in ``device``'s context (compiled for its architecture)."""
    function = _functions.get((device, kernel))
    if function is not None:
        return function
    with _lock:
        if (device, module) not in _loaded:
            import cupy
            import torch

            major, minor = torch.cuda.get_device_capability(device)
            compiled = compile_module(module, major * 10 + minor)
            with cupy.cuda.Device(device):
                loaded = cupy.cuda.function.Module()
                loaded.load(compiled.cubin)
            _loaded[(device, module)] = (loaded, dict(compiled.lowered))
        loaded, lowered = _loaded[(device, module)]
        if kernel not in lowered:
            raise NvrtcError(f"kernel {kernel} is not in fastgan._nvrtc.KERNELS[{module!r}]; add it there")
        function = _functions[(device, kernel)] = loaded.get_function(lowered[kernel])
    return function


def launch(device: int, plan: Sequence[tuple[str, str, int, int, Sequence[bytes]]]) -> None:
    """Run ``plan`` (steps of module, kernel name, grid, block, argument bytes) on ``device``'s current PyTorch stream,
    in order. Called by fastgan._C's CUDA ops (on whichever thread runs them, autograd's included); the arguments are
    copied by the driver at launch, so the buffers may go when it returns."""
    import cupy
    import torch

    stream = torch.cuda.current_stream(device).cuda_stream
    with cupy.cuda.Device(device):
        for module, kernel, grid, block, args in plan:
            function = _function(device, module, kernel)
            buffers = [ctypes.create_string_buffer(bytes(a), len(a)) for a in args]
            pointers = (ctypes.c_void_p * len(buffers))(*[ctypes.addressof(b) for b in buffers])
            cupy.cuda.driver.launchKernel(function.ptr, grid, 1, 1, block, 1, 1, 0, stream,
                                          ctypes.addressof(pointers), 0)


def install(extension) -> None:
    """Give ``fastgan._C`` the launcher of this path (imports nothing; CuPy loads on the first launch)."""
    if hasattr(extension, "_set_nvrtc_launcher"):
        extension._set_nvrtc_launcher(launch)


# --- the compile check of `fastgan info --compile-kernels` ---------------------------------------------------------


def compile_check(archs: Sequence[str | int], echo=print) -> int:
    """Compile every kernel module for each architecture (no GPU needed), printing one line per kernel and
    architecture (registers, stack, spills); returns the number of modules that failed to compile."""
    arch_numbers = [parse_arch(a) for a in archs]
    failures = 0
    for arch in arch_numbers:
        for module in KERNELS:
            try:
                compiled = compile_module(module, arch, use_cache=False)
            except Exception as error:
                failures += 1
                echo(f"sm_{arch:<4} FAILED {module}: {error}")
                continue
            reports = compiled.kernel_reports()
            for name in KERNELS[module]:
                r = reports.get(name, {})
                echo(f"sm_{arch:<4} regs={r.get('registers', '?'):<4} stack={r.get('stack', '?'):<5} "
                     f"spill_st={r.get('spill_stores', '?'):<4} spill_ld={r.get('spill_loads', '?'):<4} {name}")
    return failures
