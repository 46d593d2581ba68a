"""What the shipped build promises without a GPU: CUDA kernels registered for every native op (when built with CUDA),
every Triton kernel reachable by the ahead-of-time compile check, dtypes and sizes the kernels cannot take refused by
name, and Triton launches made on the tensors' device."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig

import pytest
import torch

from fastgan._backend import native_extension
from fastgan.losses import d_loss, g_loss, gradient_penalty, r1_penalty
from fastgan.ops import (
    batch_norm_act,
    bias_act,
    conv2d_act,
    conv2d_batch_norm_act,
    conv_transpose2d_act,
    instance_norm_act,
)

from .conftest import require

ROOT = pathlib.Path(__file__).resolve().parents[1]
TRITON_DIR = ROOT / "fastgan" / "kernels" / "triton"


def _native_ops() -> list[str]:
    return sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("fastgan::") and "triton" not in n)


def test_every_native_op_has_a_cuda_kernel():
    """Every build registers a CUDA kernel for every native op: nvcc's, or without them the same kernels through NVRTC
    (fastgan/_nvrtc.py). .ci/run's CUDA-build stage sets FASTGAN_REQUIRE_CUDA_BUILD=1, where nvcc's must be built in."""
    module, reason = native_extension()
    if module is None:
        pytest.skip(reason)
    if not module.with_cuda() and os.environ.get("FASTGAN_REQUIRE_CUDA_BUILD") == "1":
        pytest.fail("FASTGAN_REQUIRE_CUDA_BUILD=1 but fastgan._C was built without CUDA kernels")
    has_kernel = torch._C._dispatch_has_kernel_for_dispatch_key
    with_cpu = [name for name in _native_ops() if has_kernel(name, "CPU")]
    assert len(with_cpu) >= 11, with_cpu
    assert [name for name in with_cpu if not has_kernel(name, "CUDA")] == []


def test_cpu_kernels_run_in_parallel():
    """at::parallel_for is an inline `#pragma omp parallel`: a build without -fopenmp runs the C++ kernels on one
    thread whatever torch.set_num_threads says (as this extension did until the build said -fopenmp)."""
    module, reason = native_extension()
    if module is None:
        pytest.skip(reason)
    compiler = os.environ.get("CXX") or sysconfig.get_config_var("CXX") or ""
    if not sys.platform.startswith("linux") or "clang" in compiler:
        pytest.skip("setup.py builds with OpenMP on Linux with GCC only (elsewhere PyTorch's runtime is not shared)")
    if "ATen parallel backend: OpenMP" not in torch.__config__.parallel_info():
        pytest.skip("this PyTorch's CPU threads are not OpenMP's")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert module._parallel_width() == 2
        torch.set_num_threads(1)
        assert module._parallel_width() == 1
    finally:
        torch.set_num_threads(threads)


def test_cpu_isa_follows_pytorch():
    """The C++ kernels run the copy for the instruction set PyTorch's own CPU kernels use (builds without the AVX
    copies: the baseline); a cap lowers it."""
    module, reason = native_extension()
    if module is None:
        pytest.skip(reason)
    expected = {"AVX512": "avx512", "AVX2": "avx2"}.get(torch.backends.cpu.get_cpu_capability(), "baseline")
    if expected not in module._cpu_isa_copies():
        expected = "baseline"
    assert module.cpu_isa() == expected
    try:
        module._limit_cpu_isa("baseline")
        assert module.cpu_isa() == "baseline"
        with pytest.raises(ValueError, match="_limit_cpu_isa"):
            module._limit_cpu_isa("sse9")
    finally:
        module._limit_cpu_isa("avx512")
    assert module.cpu_isa() == expected


def test_cpu_isa_copies_are_vector_code():
    """The AVX copies are real: the extension's machine code uses 512-bit (zmm) and 256-bit (ymm) registers, which
    the baseline x86-64 build alone never does (a flatten or target attribute the compiler ignored would not)."""
    module, reason = native_extension()
    if module is None:
        pytest.skip(reason)
    if "avx512" not in module._cpu_isa_copies():
        pytest.skip(f"this build has only {module._cpu_isa_copies()}")
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("objdump (binutils) is not installed")
    code = subprocess.run([objdump, "-d", "--no-show-raw-insn", module.__file__], capture_output=True, text=True,
                          check=True).stdout
    assert "%zmm" in code and "%ymm" in code


def _jit_kernels() -> set[str]:
    """Names of the @triton.jit functions in fastgan/kernels/triton named *_kernel (the ones launched)."""
    names = set()
    for path in TRITON_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.endswith("_kernel") and any(
                ast.unparse(d).endswith("triton.jit") for d in node.decorator_list
            ):
                names.add(node.name)
    return names


def test_aot_check_reaches_every_triton_kernel():
    """The compile check records what the ops launch with GPU tile sizes (no interpreter): every kernel is among them,
    and the tile sizes are the GPU's, not the interpreter's."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = (
        "import json, collections\n"
        "from fastgan.kernels.triton import aot\n"
        "specs = aot.specializations()\n"
        "conv = [s[2] for s in specs if s[0].__name__ == '_conv_fwd_kernel']\n"
        "print(json.dumps({'kernels': sorted({s[0].__name__ for s in specs}), 'count': len(specs),\n"
        "                  'conv_block_m': sorted({c['BLOCK_M'] for c in conv}),\n"
        "                  'int64': any(s[2].get('INT64') for s in specs)}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(found["kernels"]) == _jit_kernels()
    assert found["conv_block_m"] == [128], "the GPU conv tile (128 rows), not the interpreter's"
    assert found["int64"], "no 64-bit-offset branch recorded"
    assert found["count"] > 300


def test_aot_check_refuses_the_interpreter(monkeypatch):
    from fastgan.kernels.triton import aot

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="unset TRITON_INTERPRET"):
        aot.specializations()


# --- dtypes the kernels cannot take ---------------------------------------------------------------------------------

FLOAT8 = getattr(torch, "float8_e4m3fn", None)


def _f8(*shape):
    return torch.zeros(*shape).to(FLOAT8)


CALLS = {
    "bias_act": lambda impl: bias_act(_f8(2, 3), impl=impl),
    "batch_norm_act": lambda impl: batch_norm_act(_f8(2, 3, 4), None, None, None, None, True, impl=impl),
    "instance_norm_act": lambda impl: instance_norm_act(_f8(2, 3, 4), impl=impl),
    "conv2d_act": lambda impl: conv2d_act(_f8(1, 2, 4, 4), _f8(3, 2, 3, 3), impl=impl),
    "conv_transpose2d_act": lambda impl: conv_transpose2d_act(_f8(1, 2, 4, 4), _f8(2, 3, 3, 3), impl=impl),
    "conv2d_batch_norm_act": lambda impl: conv2d_batch_norm_act(
        _f8(2, 2, 4, 4), _f8(3, 2, 3, 3), None, norm_weight=None, norm_bias=None, running_mean=None,
        running_var=None, training=True, impl=impl),
    "d_loss": lambda impl: d_loss(_f8(4), _f8(4), impl=impl),
    "g_loss": lambda impl: g_loss(_f8(4), impl=impl),
    "gradient_penalty": lambda impl: gradient_penalty(torch.nn.Identity(), _f8(2, 3), _f8(2, 3), impl=impl),
    "r1_penalty": lambda impl: r1_penalty(_f8(2), _f8(2, 3), impl=impl),
}


@pytest.mark.skipif(FLOAT8 is None, reason="this PyTorch has no float8 dtype")
@pytest.mark.parametrize("impl", ["ref", "native"])
@pytest.mark.parametrize("op", sorted(CALLS))
def test_float8_refused_by_name(op, impl):
    with pytest.raises(TypeError, match=rf"{op}.*float32, float16, bfloat16 or float64"):
        CALLS[op](impl)


NATIVE_CALLS = {
    "bias_act": lambda: torch.ops.fastgan.bias_act(_f8(2, 3), None, 1, 0, 0.0, 1.0, None),
    "batch_norm_act": lambda: torch.ops.fastgan.norm_act(_f8(2, 3, 4), None, None, None, None, True, False, 1e-5, 0,
                                                         0.0),
    "gan_loss": lambda: torch.ops.fastgan.gan_loss(_f8(4), None, 0, 0),
    "penalty_interpolate": lambda: torch.ops.fastgan.penalty_interpolate(_f8(2, 3), _f8(2, 3), torch.zeros(2)),
    "grad_norm_penalty": lambda: torch.ops.fastgan.grad_norm_penalty(_f8(2, 3), 1.0, 1.0, 1.0),
}


@pytest.mark.skipif(FLOAT8 is None, reason="this PyTorch has no float8 dtype")
@pytest.mark.parametrize("op", sorted(NATIVE_CALLS))
def test_float8_refused_by_the_compiled_kernels(op):
    """The C++ glue checks too: a float8 tensor reaching a kernel would be read as 4-byte floats (out of bounds)."""
    module, reason = native_extension()
    if module is None:
        pytest.skip(reason)
    with pytest.raises(RuntimeError, match=rf"{op}.*float32, float16, bfloat16 or float64"):
        NATIVE_CALLS[op]()


# --- sizes and devices of Triton launches ---------------------------------------------------------------------------


def test_triton_losses_refuse_sizes_past_int32_offsets():
    pytest.importorskip("triton")
    from fastgan.kernels.triton import losses

    huge = torch.zeros(1).expand(2**31)  # 2^31 elements, no memory
    with pytest.raises(ValueError, match="gan_loss: the Triton kernel indexes in 32 bits"):
        losses.gan_loss_triton(huge, None, 0, 0)
    with pytest.raises(ValueError, match="penalty_interpolate: the Triton kernel indexes in 32 bits"):
        losses.penalty_interpolate_triton(huge.view(2, -1), huge.view(2, -1), torch.zeros(2))
    with pytest.raises(ValueError, match="grad_norm_penalty_backward: the Triton kernel indexes in 32 bits"):
        losses.grad_norm_penalty_backward_triton(torch.ones(()), huge.view(2, -1), torch.ones(2), 1.0, 1.0, 1.0)


def test_triton_convs_refuse_pixel_counts_past_int32():
    pytest.importorskip("triton")
    from fastgan.kernels.triton import conv

    # The launchers themselves: on meta tensors the ops run their fake implementations once fastgan.ops has
    # registered them (any torch.compile of a fused layer does), and those only compute shapes.
    x = torch.empty(2**25 + 1, 1, 8, 8, device="meta")  # 2^31 + 64 output pixels, no memory
    with pytest.raises(ValueError, match="conv2d_act: .* output pixels exceed the Triton kernel's 32-bit"):
        conv._launch(x, torch.empty(1, 1, 3, 3, device="meta"), None, [1, 1], [1, 1], None, 0, 0.0)
    with pytest.raises(ValueError, match="conv2d_weight_grad: .* output pixels exceed"):
        conv._launch_weight_grad(x, x, [1, 1], [1, 1], [0, 0], transposed=False)


def test_triton_launch_runs_on_the_tensors_device(monkeypatch):
    """Triton launches on the current CUDA device; launch() makes the tensors' device current first."""
    pytest.importorskip("triton")
    from torch._subclasses.fake_tensor import FakeTensorMode

    from fastgan.kernels.triton import launch as launch_module

    current = ["cuda:0"]
    launched_on = []

    @contextlib.contextmanager
    def device(d):
        previous, current[0] = current[0], str(d)
        try:
            yield
        finally:
            current[0] = previous

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **meta: launched_on.append(current[0])

    monkeypatch.setattr(torch.cuda, "device", device)
    monkeypatch.setattr(launch_module, "wrap_triton", lambda kernel: Kernel())
    with FakeTensorMode():
        x = torch.empty(4, device="cuda:1")
    launch_module.launch(object(), (1,), x, 4, BLOCK=4)
    assert launched_on == ["cuda:1"] and current[0] == "cuda:0"


def _conservative_launch(real_wrap, seen: list[str]):
    """``wrap_triton`` as Inductor's functionalization runs a user kernel whose written arguments it cannot read from
    the kernel (torch 2.11 could not for most of fastgan's): every tensor argument copied, the kernel run on the
    copies, each copy then written back over its argument in argument order. Each launch is also run as it is on the
    arguments' own tensors; the two must leave every argument the same."""

    class Wrapped:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            kernel = self.kernel

            def run(*args, **meta):
                # .data: the copies back must not bump the version counters autograd checks
                args = [a.data if isinstance(a, torch.Tensor) else a for a in args]
                tensors = list(dict.fromkeys(a for a in args if isinstance(a, torch.Tensor)))
                before = [t.clone() for t in tensors]
                copies = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
                real_wrap(kernel)[grid](*copies, **meta)
                for arg, copy in zip(args, copies):
                    if isinstance(arg, torch.Tensor):
                        arg.copy_(copy)
                functional = [t.clone() for t in tensors]
                for t, value in zip(tensors, before):
                    t.copy_(value)
                real_wrap(kernel)[grid](*args, **meta)
                name = getattr(kernel, "__name__", None) or kernel.fn.__name__
                seen.append(name)
                for t, value in zip(tensors, functional):
                    torch.testing.assert_close(t, value, rtol=0, atol=0, equal_nan=True,  # unwritten: any bits
                                               msg=f"{name}: an argument differs when every argument is copied back")
            return run

    return Wrapped


def test_triton_launches_survive_inductors_copy_back_of_every_argument(monkeypatch):
    """No kernel argument that a kernel writes is passed twice (the convolution's unused statistics pointer was its
    output, the one-sided loss's second gradient pointer the first's): under torch.compile, where Inductor cannot
    tell which arguments a user kernel writes, the unwritten copy landed last and the output was lost (the H200 run
    of 2026-12-04: a compiled fused block's loss 1.853 against eager's 1.631)."""
    require("triton", "cpu")
    from fastgan.kernels.triton import launch as launch_module

    seen: list[str] = []
    monkeypatch.setattr(launch_module, "wrap_triton", _conservative_launch(launch_module.wrap_triton, seen))
    gen = torch.Generator().manual_seed(0)

    def rand(*shape, grad=True):
        return torch.randn(*shape, generator=gen).requires_grad_(grad)

    x, w, wt, b = rand(2, 3, 6, 6), rand(4, 3, 3, 3), rand(3, 4, 4, 4), rand(4)
    outputs = [
        conv2d_act(x, w, None, 2, 1, act="lrelu", impl="triton"),
        conv_transpose2d_act(x, wt, b, 2, 1, act="relu", impl="triton"),
        conv2d_batch_norm_act(x, w, None, 1, 1, norm_weight=rand(4), norm_bias=rand(4), running_mean=torch.zeros(4),
                              running_var=torch.ones(4), training=True, act="relu", impl="triton"),
        batch_norm_act(x, rand(3), rand(3), torch.zeros(3), torch.ones(3), True, act="lrelu", impl="triton"),
        batch_norm_act(x, None, None, torch.zeros(3), torch.ones(3), True, None, impl="triton",
                       num_batches_tracked=torch.tensor(2)),
        instance_norm_act(x, act="relu", impl="triton"),
        bias_act(x, rand(3), act="lrelu", impl="triton"),
        bias_act(x, None, act="tanh", impl="triton"),
    ]
    loss = sum(o.square().mean() for o in outputs)
    logits = rand(5)
    many = rand(70000)  # past one program: the partial sums' second kernel
    loss = loss + g_loss(logits, impl="triton") + d_loss(rand(5), logits, impl="triton") + g_loss(many, impl="triton")
    loss = loss + gradient_penalty(lambda t: t.flatten(1).square().sum(1), rand(2, 3, 4), x[:, :, :4, 0],
                                   impl="triton")
    grads = torch.autograd.grad(loss, [x, w, wt, b, logits])
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    for kernel in ("_conv_fwd_kernel", "_conv_wgrad_kernel", "_gan_loss_fwd_kernel", "_sum_partials_kernel",
                   "_update_stats_kernel", "_norm_elementwise_kernel", "_bias_act_kernel", "_penalty_kernel"):
        assert kernel in seen, f"{kernel} was not launched"


def _kernels_inductor_cannot_read() -> dict:
    """Each distinct specialization the ops launch (``aot.recorded_launches``), through torch's own TTIR generation
    for user kernels (what Inductor reads a kernel's written arguments from), targeting sm_90 with no GPU: the ones
    it fails on, and the count. Run without the interpreter (the launchers then pick the GPU's tile sizes)."""
    from torch._higher_order_ops import triton_kernel_wrap
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver

    from fastgan.kernels.triton import aot

    class Hopper:
        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)

    launches = aot.recorded_launches()
    driver.set_active(Hopper())
    failed = {}
    for (kernel, *_), rec in launches:
        kwargs = {**dict(zip(kernel.arg_names, rec.args)), **rec.meta}
        kwargs = {k: torch.empty(1, dtype=v.dtype) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        try:
            triton_kernel_wrap.generate_ttir(kernel, kwargs, {})
        except Exception as error:  # noqa: BLE001 - the finding
            failed.setdefault(kernel.__name__, f"{type(error).__name__}: {str(error).strip().splitlines()[-1][:200]}")
    return {"failed": failed, "count": len(launches)}


def test_inductor_can_read_what_every_triton_kernel_writes():
    """torch.compile reads which arguments a user kernel writes from its TTIR; where that fails it copies every
    argument around every launch (and on torch 2.11 it failed for most of fastgan's kernels: Python-int scalars
    reached ``.to`` in scalars.f64_from_halves)."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = "import json, tests.test_build as t; print(json.dumps(t._kernels_inductor_cannot_read()))"
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["count"] > 100 and not found["failed"], found["failed"]
