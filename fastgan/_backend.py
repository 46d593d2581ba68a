"""Implementation dispatch: which implementation of an op runs, and why another cannot.

Every op takes ``impl=`` with one of ``IMPLS`` or ``"auto"``:

- ``"ref"``: pure PyTorch, the specification; runs everywhere.
- ``"triton"``: Triton kernels; on CUDA tensors, or on CPU tensors through the Triton interpreter
  (``TRITON_INTERPRET=1`` set before fastgan's kernels are first used).
- ``"native"``: the compiled extension ``fastgan._C``: C++ kernels for CPU tensors, CUDA kernels for CUDA tensors,
  compiled by nvcc into the extension or, where it was built without nvcc, the same kernel source compiled at run
  time by NVRTC through CuPy (``fastgan/_nvrtc.py``). ``$FASTGAN_NATIVE`` chooses between them: ``auto`` (default:
  nvcc's if built in, else NVRTC's), ``nvcc`` or ``nvrtc``; ``native_cuda_path()`` says which one runs and why.

The process-wide default (used when an op gets ``impl="auto"``) comes from ``set_impl``/``use_impl``, else the
environment variable ``FASTGAN_IMPL``, else ``"auto"``. ``"auto"`` picks the fastest implementation available for
the tensor's device and warns once, naming the reason, when a faster one is unavailable. Asking for an
unavailable implementation by name raises ``ImplUnavailableError`` saying how to get it. Nothing here compiles
or imports Triton at ``import fastgan`` time; availability is probed on first use and cached.

Under forward-mode AD and ``torch.func`` transforms ``"auto"`` runs the reference (``needs_reference``): the custom
ops' derivatives are reverse-mode autograd formulas, which ``torch.func.grad`` refuses and forward-mode AD passes by
with no tangent. Asked for by name there, ``"native"`` and ``"triton"`` raise rather than return a wrong tangent.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import importlib
import os
import platform
import warnings
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import TypeVar

import torch
import torch.autograd.forward_ad as fwAD
from torch._C._functorch import TransformType
from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

T = TypeVar("T")

IMPLS = ("ref", "triton", "native")
_CHOICES = ("auto", *IMPLS)

# Fastest first. The Triton interpreter is a correctness tool, not a fast path, so "auto" never picks it on CPU.
_AUTO_ORDER = {"cuda": ("triton", "native", "ref"), "cpu": ("native", "ref")}

# impl="auto" on the CPU is native, except for the op classes where the CPU benchmarks (benchmarks/bench_cpu.py, the
# README's CPU table) measured the C++ kernel slower than the reference, which "auto" then runs instead:
# - smooth activations in bias_act, the conv epilogues and norm_act: the C++ backward recomputes the activation from
#   its input where PyTorch's reads the output (64x64x14x14 with a bias, forward+backward: tanh 1.6-1.8 ms against
#   0.90, sigmoid 1.3-1.5 against 0.87-0.94, softplus 2.4-2.5 against 1.4, elu and selu at parity);
# - g_loss, and d_loss's wasserstein kind: one or two means, where the custom op's fixed cost is the whole time
#   (forward+backward, 2 threads: g_loss 0.92-1.46x the reference's time up to 4096 logits, d_loss wasserstein
#   0.98-1.04x; every other d_loss kind 0.66-0.87x, and 0.51-0.84x of both ops at 65536);
# - float16 and bfloat16 tensors: with the AVX-512 copies of the C++ kernels, faster than eager on most bfloat16 rows
#   but not on all (NCHW batch norm + ReLU forward at 64x128x7x7: 0.56 ms against 0.36 ms).
# - fused layers (fastgan.nn, so fastgan.optimize's) whose largest tensor has at most CPU_REF_MAX_NUMEL values:
#   there a fused layer's fixed cost in Python (argument checks, autograd Functions: ~0.05 ms forward and 0.02 ms
#   backward a layer) is more than its kernels save (``layer_runs_ref``; measured in the README's CPU section).
CPU_REF_ACTIVATIONS = frozenset({"tanh", "sigmoid", "elu", "selu", "softplus", "silu", "swish"})
# (op, kind): the op for that loss kind; (op, None): for every kind.
CPU_REF_OPS = frozenset({("g_loss", None), ("d_loss", "wasserstein")})
CPU_REF_DTYPES = frozenset({torch.float16, torch.bfloat16})
# Per layer kind: where the fused layer measured faster than its reference (README's CPU section).
CPU_REF_MAX_NUMEL = {"batch_norm": 1 << 18, "instance_norm": 1 << 17, "act": 1 << 18}
# The native CPU path's own convolutions from and to one channel (fastgan/ops/conv_act.py::_one_channel_route) run
# when the side with many channels has at least this many values; below it oneDNN's. A DCGAN-28 training step
# (fastgan train, interleaved, 2 threads) with the routes took 1.085x the time without them at batch 4 (the first
# layer's output: 50,176 values), 1.028x at 16, 1.006x at 32 (401,408) and 0.963x at 64 (802,816; README's CPU
# section).
CPU_ONE_CHANNEL_MIN_NUMEL = 1 << 18

_default_impl: str | None = None
_warned: set[tuple[str, str]] = set()


class ImplUnavailableError(RuntimeError):
    """An implementation was requested by name but cannot run here."""


def _check_choice(name: str, where: str) -> str:
    if name not in _CHOICES:
        raise ValueError(f"{where}: unknown implementation {name!r}; expected one of {', '.join(_CHOICES)}")
    return name


def set_impl(name: str) -> None:
    """Set the process-wide default implementation (``"auto"``, ``"ref"``, ``"triton"`` or ``"native"``)."""
    global _default_impl
    _default_impl = _check_choice(name, "fastgan.set_impl")


def get_impl() -> str:
    """The process-wide default: ``set_impl``/``use_impl``, else ``$FASTGAN_IMPL``, else ``"auto"``."""
    if _default_impl is not None:
        return _default_impl
    return _check_choice(os.environ.get("FASTGAN_IMPL", "auto") or "auto", "FASTGAN_IMPL")


@contextlib.contextmanager
def use_impl(name: str) -> Iterator[None]:
    """Context manager: ops called inside with ``impl="auto"`` use ``name``."""
    global _default_impl
    previous = _default_impl
    set_impl(name)
    try:
        yield
    finally:
        _default_impl = previous


@functools.cache
def native_extension() -> tuple[ModuleType | None, str]:
    """The compiled extension and '' if it loads, else None and the reason."""
    try:
        module = importlib.import_module("fastgan._C")
    except ImportError as error:
        return None, (
            f"the compiled extension fastgan._C is not built ({error}); build it with "
            "`pip install --no-build-isolation -e .` from the repository root"
        )
    from . import _nvrtc

    _nvrtc.install(module)  # CuPy itself loads on the first NVRTC launch
    return module, ""


NATIVE_CUDA_CHOICES = ("auto", "nvcc", "nvrtc")


def native_cuda_choice() -> str:
    """``$FASTGAN_NATIVE``: which CUDA kernels ``impl="native"`` runs (``auto``, ``nvcc`` or ``nvrtc``)."""
    choice = os.environ.get("FASTGAN_NATIVE", "auto") or "auto"
    if choice not in NATIVE_CUDA_CHOICES:
        raise ValueError(
            f"FASTGAN_NATIVE={choice!r} is not one of {', '.join(NATIVE_CUDA_CHOICES)}: 'nvcc' runs the CUDA kernels "
            "compiled into fastgan._C, 'nvrtc' the same kernels compiled at run time through CuPy, 'auto' (the "
            "default) the first of them available; unset it or set one of these"
        )
    return choice


def native_cuda_path() -> tuple[str | None, str]:
    """Which CUDA kernels ``impl="native"`` runs here: ``("nvcc", "")`` (compiled into fastgan._C), ``("nvrtc", "")``
    (compiled at run time by NVRTC through CuPy) or ``(None, why neither)``; follows ``$FASTGAN_NATIVE`` and applies
    the choice to fastgan._C. Asking about NVRTC imports CuPy (never at ``import fastgan``)."""
    choice = native_cuda_choice()
    module, reason = native_extension()
    if module is None:
        return None, reason
    nvcc_built = bool(module.with_cuda())
    no_nvcc = (
        "fastgan._C was built without CUDA kernels (nvcc or a CUDA build of PyTorch was missing at build time; "
        "rebuild with both: `pip install --no-build-isolation -e .`)"
    )
    path: str | None = None
    if choice == "nvcc":
        path, reason = ("nvcc", "") if nvcc_built else (None, f"FASTGAN_NATIVE=nvcc, but {no_nvcc}")
    elif choice == "auto" and nvcc_built:
        path = "nvcc"
    elif not hasattr(module, "_set_nvrtc_launcher"):
        reason = "fastgan._C predates the NVRTC path; rebuild it (`pip install --no-build-isolation -e .`)"
    else:
        from . import _nvrtc

        usable, detail = _nvrtc.status()
        if usable:
            path = "nvrtc"
        elif choice == "nvrtc":
            reason = f"FASTGAN_NATIVE=nvrtc, but NVRTC via CuPy is unavailable: {detail}"
        else:
            reason = f"{no_nvcc}, and NVRTC via CuPy is unavailable: {detail}"
    if path is not None and hasattr(module, "_set_nvrtc_requested"):
        module._set_nvrtc_requested(path == "nvrtc")
    return path, reason


@functools.cache
def _triton_version() -> tuple[str | None, str]:
    try:
        import triton
    except ImportError as error:
        return None, f"Triton is not installed ({error}); `pip install triton`"
    return triton.__version__, ""


@functools.cache
def cpu_name(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model ("AMD EPYC 7B13"), as ``cpuinfo`` names it on Linux, else as the platform module does, else
    the architecture: CPU timings (the autotune cache's scope) hold for one model, not for all of "x86_64"."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() in ("model name", "Model") and value.strip():
                    return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def triton_interpreting() -> bool:
    """Whether Triton kernels run through the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@torch.compiler.assume_constant_result
def _why_unavailable(impl: str, device_type: str) -> str:
    """'' if ``impl`` can run on ``device_type`` here, else the reason and the fix."""
    if impl == "ref":
        return ""
    if device_type not in ("cpu", "cuda"):
        return f"fastgan has no {impl} kernels for {device_type} tensors; use impl='ref'"
    if impl == "native":
        module, reason = native_extension()
        if module is None:
            return reason
        if device_type == "cuda":
            return native_cuda_path()[1]
        return ""
    version, reason = _triton_version()
    if version is None:
        return reason
    if device_type == "cpu" and not triton_interpreting():
        return "Triton runs on CPU tensors only through its interpreter: set TRITON_INTERPRET=1 before starting Python"
    if device_type == "cuda" and triton_interpreting():
        return "TRITON_INTERPRET=1 is set, so Triton cannot launch CUDA kernels; unset it"
    return ""


def available_impls() -> dict[str, dict[str, tuple[bool, str]]]:
    """For each implementation, whether it is usable on ``"cpu"`` and ``"cuda"`` here, and why not.

    Returns ``{impl: {"cpu": (usable, reason), "cuda": (usable, reason)}}``; ``reason`` is ``""`` when usable.
    """
    table: dict[str, dict[str, tuple[bool, str]]] = {}
    for impl in IMPLS:
        table[impl] = {}
        for device_type in ("cpu", "cuda"):
            try:
                reason = _why_unavailable(impl, device_type)
            except ValueError as error:  # a bad $FASTGAN_NATIVE: reported here, raised by the ops
                reason = str(error)
            if not reason and device_type == "cuda" and not torch.cuda.is_available():
                reason = "no CUDA device is visible to PyTorch"
            table[impl][device_type] = (not reason, reason)
    return table


# The architecture map calls the same table "backends".
available_backends = available_impls


def cpu_prefers_ref(op: str, act: str | None = None, dtype: torch.dtype | None = None, kind: str | None = None) -> bool:
    """Whether ``impl="auto"`` runs the reference for ``op`` (with activation ``act``, on ``dtype`` tensors, a loss of
    ``kind``) on the CPU, because the CPU benchmarks measured the C++ kernel slower there (``CPU_REF_ACTIVATIONS``,
    ``CPU_REF_OPS``, ``CPU_REF_DTYPES``)."""
    return ((op, None) in CPU_REF_OPS or (op, kind) in CPU_REF_OPS or act in CPU_REF_ACTIVATIONS
            or dtype in CPU_REF_DTYPES)


def layer_runs_ref(impl: str, x: torch.Tensor, kind: str, largest: Callable[[], int] | None = None) -> bool:
    """Whether a fused layer (a ``fastgan.nn`` module with ``impl``) runs its reference for input ``x``: under
    ``"auto"`` on the CPU, in eager mode (compiled code has no per-op Python cost), when its largest tensor
    (``largest()``, else ``x``) has at most ``CPU_REF_MAX_NUMEL[kind]`` values (``"batch_norm"``, ``"instance_norm"``,
    or ``"act"``: no norm). The size is compared last: while tracing, a comparison of sizes would be a guard."""
    if impl != "auto" or not x.is_cpu or torch.compiler.is_compiling() or get_impl() != "auto":
        return False
    return (x.numel() if largest is None else largest()) <= CPU_REF_MAX_NUMEL[kind]


def checked_on_failure(run: Callable[[], T], check: Callable[[], object]) -> T:
    """``run()``, a small layer's reference (PyTorch's ops, its arguments unchecked); if PyTorch refuses them,
    ``check()`` raises the fused op's own error for them, naming the op, from PyTorch's. Checked up front, the
    arguments took about as long as the ops at these sizes (10-20 us a layer: a 4-channel model ran 1.07-1.13x plain's
    time through ``optimize``)."""
    try:
        return run()
    except Exception as refused:
        try:
            check()
        except (TypeError, ValueError) as named:
            raise named from refused
        raise


def resolve_impl(
    impl: str, device: torch.device, op: str, act: str | None = None, dtype: torch.dtype | None = None,
    kind: str | None = None,
) -> str:
    """The concrete implementation ``op`` runs for a tensor on ``device``.

    ``impl="auto"`` consults the process-wide default, then picks the fastest available implementation,
    warning once per (op, reason) when it has to fall back. On the CPU that is native, or the reference for the op
    classes measured faster there (``cpu_prefers_ref``; ``act``: the op's activation name, if it has one; ``dtype``:
    its input's; ``kind``: a loss's).
    """
    _check_choice(impl, op)
    if impl == "auto":
        impl = get_impl()
    if impl == "auto" and needs_reference():
        return "ref"
    device_type = device.type
    if impl != "auto":
        reason = _why_unavailable(impl, device_type)
        if reason:
            raise ImplUnavailableError(f"{op}: impl={impl!r} is unavailable for {device_type} tensors: {reason}")
        return impl
    if device_type == "cpu" and cpu_prefers_ref(op, act, dtype, kind):
        return "ref"
    order = _AUTO_ORDER.get(device_type, ("ref",))
    for candidate in order:
        reason = _why_unavailable(candidate, device_type)
        if not reason:
            return candidate
        if candidate == order[0] and (op, reason) not in _warned:
            _warned.add((op, reason))
            warnings.warn(f"{op}: falling back from impl={candidate!r} on {device_type}: {reason}", stacklevel=3)
    return "ref"


# --- custom ops of the compiled and Triton implementations, loaded on first use ----------------------------------

_DECLARED: dict[str, tuple[tuple[str, ...], str, Callable[..., None]]] = {}
_LOADED: dict[tuple[str, str], tuple] = {}


class CustomOp:
    """A custom op (``.op``: its OpOverload or Triton CustomOpDef), called as the op itself, whose autograd formula
    runs in eager mode in a plain ``torch.autograd.Function``.

    Forward-mode AD and ``torch.func.grad``/``jvp`` cannot differentiate the op (``needs_reference``): a call
    with a tangent, or under those transforms, raises and names the fix (``torch.func.vmap`` alone runs the op
    sample by sample, correctly).

    ``torch.library.register_autograd`` puts a generic Python kernel in front of every call of the op (it fills in
    default arguments and redispatches): on the 2-core CPU about 25 us per call, and as much again in the backward,
    where ``F.leaky_relu`` costs 2 and 20 us together, which is more than the kernels take on DCGAN-sized layers. The
    same ``setup_context`` and ``backward`` formulas run here in a Function of their own with the op called below
    autograd (fwd+bwd of a small bias_act: 42 us against 63). Inside torch.compile and functorch transforms, and for
    ops without a formula, the call goes to the op as registered."""

    def __init__(self, op) -> None:
        self.op = op
        self.name = op.name() if isinstance(op, torch._ops.OpOverload) else op._qualname  # fastgan::<op>
        self.function: type[torch.autograd.Function] | None = None

    def __call__(self, *args):
        self.refuse_lost_derivatives(args)
        if self.function is None or torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
            return self.op(*args)
        if torch.is_grad_enabled() and torch._C._any_requires_grad(*args):
            return self.function.apply(*args)
        with torch._C._AutoDispatchBelowAutograd():
            return self.op(*args)

    def refuse_lost_derivatives(self, args) -> None:
        """Raise, naming the fix, where this op's derivative would be lost: a forward-mode tangent among ``args``,
        or a ``torch.func`` transform that differentiates (see the class docstring)."""
        if not needs_reference():
            return
        if torch.compiler.is_compiling():  # Dynamo's fake tensors show no tangent; it reads no transform stack
            what = "forward-mode AD or a torch.func transform (vmap too) inside torch.compile"
        elif torch._C._are_functorch_transforms_active() and {
                i.key() for i in retrieve_all_functorch_interpreters()} & {TransformType.Grad, TransformType.Jvp}:
            what = "torch.func.grad, jvp, jacrev, jacfwd or hessian"
        elif fwAD._current_level >= 0 and any(
                isinstance(a, torch.Tensor) and fwAD.unpack_dual(a).tangent is not None for a in args):
            what = "forward-mode AD (a dual tensor)"
        else:
            return
        raise RuntimeError(
            f"{self.name}: {what} cannot differentiate this fastgan kernel (its custom op has reverse-mode formulas "
            "only). There impl='auto' runs the reference: call the op with impl='auto' (and no process default "
            "from fastgan.set_impl/use_impl or $FASTGAN_IMPL) or impl='ref', inside the transform (a graph recorded "
            "outside it keeps the kernels it ran)")


def needs_reference() -> bool:
    """Forward-mode AD (a dual level entered) or a ``torch.func`` transform is active: only the reference, made of
    PyTorch's ops, is differentiated right there (``torch.func.vmap`` alone could run the custom ops sample by
    sample; the reference's batching rules are faster). Also while torch.compile traces: its graph would call the
    custom ops, whose tangents AOTAutograd drops too (Dynamo reads both flags without a graph break)."""
    return fwAD._current_level >= 0 or torch._C._are_functorch_transforms_active()


def register_fake(op: CustomOp, fake: Callable) -> None:
    """``torch.library.register_fake`` for a declared custom op."""
    torch.library.register_fake(op.op, fake)


def register_autograd(op: CustomOp, backward: Callable, *, setup_context: Callable) -> None:
    """``torch.library.register_autograd`` for a declared custom op (used by torch.compile), and the same formulas as
    the op's eager Function (``CustomOp``)."""
    torch.library.register_autograd(op.op, backward, setup_context=setup_context)
    raw = op.op

    def forward(ctx, *args):
        with torch._C._AutoDispatchBelowAutograd():
            output = raw(*args)
        setup_context(ctx, args, output)
        return output

    name = getattr(raw, "__name__", None) or str(raw)
    methods = {"forward": staticmethod(forward), "backward": staticmethod(backward)}
    op.function = type(f"Eager_{name.replace('.', '_')}", (torch.autograd.Function,), methods)


def declare_custom_ops(key: str, names: tuple[str, ...], triton_module: str, register: Callable[..., None]) -> None:
    """Declare an op unit's custom ops: ``fastgan::<name>`` (native, defined by fastgan._C) and
    ``fastgan.kernels.triton.<triton_module>.<name>_triton`` (Triton) for each name; ``register(*ops)`` installs
    their fakes and autograd formulas (``register_fake``, ``register_autograd``) once per implementation."""
    _DECLARED[key] = (names, triton_module, register)


def custom_ops(key: str, impl: str) -> tuple:
    """The custom ops declared under ``key`` for ``impl`` ("native" or "triton"), in declaration order and by name
    (``custom_ops("norm_act", impl).norm_act``), each a ``CustomOp``."""
    _load_custom_ops(key, impl)
    return _LOADED[(key, impl)]


@torch.compiler.assume_constant_result
def _load_custom_ops(key: str, impl: str) -> bool:
    # Runs eagerly even while torch.compile traces (its result is a constant), so an op's first call may sit
    # inside a compiled function: importing and registering are not traceable. A trace keeps its own copy of
    # _LOADED from its first read and would miss a unit loaded later in it: a trace loads every unit at once, for
    # every implementation usable here.
    if (key, impl) not in _LOADED:
        wanted = [(key, impl)]
        if torch.compiler.is_compiling():
            wanted += [(k, i) for i in ("native", "triton") if i == impl or _usable_somewhere(i) for k in _DECLARED]
        for key_, impl_ in wanted:
            if (key_, impl_) not in _LOADED and (key_ == key or _has_unit(key_, impl_)):
                _LOADED[(key_, impl_)] = _load_unit(key_, impl_)
    return True


def _has_unit(key: str, impl: str) -> bool:
    """Whether ``impl`` defines the unit's ops (some units are Triton's alone, e.g. the implicit-GEMM convolution)."""
    if impl == "native":
        native_extension()
        return all(hasattr(torch.ops.fastgan, name) for name in _DECLARED[key][0])
    return True


def _usable_somewhere(impl: str) -> bool:
    try:
        return any(not _why_unavailable(impl, device_type) for device_type in ("cpu", "cuda"))
    except ValueError:  # a bad $FASTGAN_NATIVE: the ops raise it when called
        return False


def _load_unit(key: str, impl: str) -> tuple:
    names, triton_module, register = _DECLARED[key]
    if impl == "native":
        native_extension()  # importing fastgan._C defines the fastgan:: operators
        ops = tuple(getattr(torch.ops.fastgan, name).default for name in names)
    else:
        kernels = importlib.import_module(f"fastgan.kernels.triton.{triton_module}")
        ops = tuple(getattr(kernels, f"{name}_triton") for name in names)
    ops = tuple(CustomOp(op) for op in ops)
    register(*ops)
    return collections.namedtuple(f"{key}_ops", names)(*ops)
