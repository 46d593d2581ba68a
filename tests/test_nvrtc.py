"""The NVRTC path of the native CUDA kernels (fastgan/_nvrtc.py): every kernel compiles for sm_80/sm_90 without a
GPU, the disk cache's keys and writes, the choice between nvcc's and NVRTC's kernels ($FASTGAN_NATIVE), `fastgan info`,
and CuPy staying out of `import fastgan`. Launches and parity on a GPU are in tests/test_gpu.py.

Without CuPy (or the NVRTC library) the compile tests skip, saying so; FASTGAN_REQUIRE_NVRTC=1 (CI's NVRTC stage)
turns that skip into a failure."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import types

import pytest

from fastgan import _backend, _nvrtc
from fastgan.cli import main

from .conftest import fresh_python


def _require_nvrtc() -> None:
    usable, detail = _nvrtc.status()
    if usable:
        return
    if os.environ.get("FASTGAN_REQUIRE_NVRTC") == "1":
        pytest.fail(f"FASTGAN_REQUIRE_NVRTC=1 but NVRTC via CuPy is unavailable: {detail}")
    pytest.skip(f"NVRTC via CuPy is unavailable here: {detail}")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTGAN_NVRTC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_import_fastgan_never_imports_cupy():
    code = ("import sys, fastgan, fastgan.ops, fastgan.nn, fastgan.losses; "
            "assert not [m for m in sys.modules if m.split('.')[0] in ('cupy', 'cupy_backends')], 'cupy imported'")
    fresh_python(code)


def test_every_global_kernel_of_the_kernel_headers_is_compiled():
    # A kernel added to csrc/<module>_kernels.cuh but not to KERNELS would be neither checked nor launchable.
    for module, names in _nvrtc.KERNELS.items():
        text = (_nvrtc.source_dir() / f"{module}_kernels.cuh").read_text()
        declared = set(re.findall(r"__global__\s+void\s+(\w+)\s*\(", text))
        listed = {re.match(r"fastgan::(\w+)<", name).group(1) for name in names}
        assert declared and declared == listed, (module, declared ^ listed)


def test_kernel_headers_include_no_torch_or_runtime_headers():
    # One source of truth for nvcc and NVRTC: the kernel headers (and what they include) must compile with NVRTC.
    for path in list(_nvrtc.source_dir().glob("*_kernels.cuh")) + [_nvrtc.source_dir() / h for h in
                                                                  ("common.h", "bias_act.h", "norm_act.h", "losses.h")]:
        includes = re.findall(r'#include [<"]([^>"]+)[>"]', path.read_text())
        assert not [i for i in includes if i.startswith(("torch", "ATen", "c10", "cuda_runtime"))], (path, includes)


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_every_kernel_compiles_through_nvrtc(arch, cache):
    _require_nvrtc()
    for module, names in _nvrtc.KERNELS.items():
        compiled = _nvrtc.compile_module(module, arch, use_cache=False)
        assert compiled.cubin[:4] == b"\x7fELF", module  # a cubin for sm_XY, not PTX
        assert set(compiled.lowered) == set(names)
        reports = compiled.kernel_reports()
        for name in names:
            assert compiled.lowered[name].startswith("_Z"), name
            assert reports[name]["registers"] > 0, (name, reports.get(name))
            assert reports[name]["spill_stores"] == 0, (name, reports[name])


def test_cache_hits_keys_and_atomic_entries(cache, monkeypatch):
    _require_nvrtc()
    first = _nvrtc.compile_module("bias_act", "sm_90")
    assert not first.cached
    entries = list(cache.iterdir())
    assert len(entries) == 1 and entries[0].name.startswith("bias_act-sm_90-")
    assert json.loads(entries[0].read_text())["lowered"] == first.lowered
    # A hit compiles nothing.
    monkeypatch.setattr(_nvrtc, "_compile_uncached", lambda *a: pytest.fail("compiled despite a cache entry"))
    again = _nvrtc.compile_module("bias_act", 90)
    assert again.cached and again.cubin == first.cubin and again.lowered == first.lowered
    monkeypatch.undo()
    monkeypatch.setenv("FASTGAN_NVRTC_CACHE", str(cache))
    # Another architecture is another entry; no temporary file is left behind.
    _nvrtc.compile_module("bias_act", "sm_80")
    names = sorted(p.name for p in cache.iterdir())
    assert len(names) == 2 and not [n for n in names if n.endswith(".tmp")], names
    # An unreadable entry is compiled again and replaced.
    entries[0].write_text("{not json")
    fresh = _nvrtc.compile_module("bias_act", "sm_90")
    assert not fresh.cached and json.loads(entries[0].read_text())["lowered"] == first.lowered


def test_cache_key_follows_sources_arch_and_nvrtc_version(tmp_path, monkeypatch):
    sources = [("bias_act.h", b"a"), ("common.h", b"b")]
    key = _nvrtc.cache_key("bias_act", 90, (13, 0), sources)
    assert key == _nvrtc.cache_key("bias_act", 90, (13, 0), list(sources))
    assert key != _nvrtc.cache_key("bias_act", 80, (13, 0), sources)
    assert key != _nvrtc.cache_key("bias_act", 90, (13, 1), sources)
    assert key != _nvrtc.cache_key("bias_act", 90, (13, 0), [("bias_act.h", b"a "), ("common.h", b"b")])
    assert key != _nvrtc.cache_key("norm_act", 90, (13, 0), sources)
    # The sources hashed are every header of csrc: editing one (here a copy) changes the key.
    copy = tmp_path / "csrc"
    shutil.copytree(_nvrtc.source_dir(), copy)
    monkeypatch.setenv("FASTGAN_CSRC", str(copy))
    before = _nvrtc.cache_key("losses", 90, (13, 0), _nvrtc._sources())
    (copy / "common.h").write_text((copy / "common.h").read_text() + "\n// edited\n")
    assert _nvrtc.cache_key("losses", 90, (13, 0), _nvrtc._sources()) != before


def test_a_compile_error_names_the_file_and_arch(tmp_path, monkeypatch, cache):
    _require_nvrtc()
    copy = tmp_path / "csrc"
    shutil.copytree(_nvrtc.source_dir(), copy)
    (copy / "bias_act_kernels.cuh").write_text((copy / "bias_act_kernels.cuh").read_text() + "\nnot c++;\n")
    monkeypatch.setenv("FASTGAN_CSRC", str(copy))
    with pytest.raises(_nvrtc.NvrtcError, match=r"bias_act_kernels.cuh for sm_90"):
        _nvrtc.compile_module("bias_act", "sm_90")
    assert not cache.exists() or not list(cache.iterdir())


@pytest.mark.parametrize("bad", ["90a", "sm90x", "compute_90", ""])
def test_bad_architectures_are_rejected(bad):
    with pytest.raises(ValueError, match="sm_80 or sm_90"):
        _nvrtc.parse_arch(bad)


# --- which CUDA kernels impl="native" runs -------------------------------------------------------------------------


class _FakeExtension(types.ModuleType):
    def __init__(self, nvcc: bool):
        super().__init__("fastgan._C")
        self.nvcc = nvcc
        self.requested: list[bool] = []

    def with_cuda(self) -> bool:
        return self.nvcc

    def _set_nvrtc_launcher(self, fn) -> None:
        pass

    def _set_nvrtc_requested(self, value: bool) -> None:
        self.requested.append(value)


@pytest.mark.parametrize(
    "nvcc, nvrtc_ok, choice, expected",
    [
        (True, True, "auto", "nvcc"),
        (True, True, "", "nvcc"),
        (True, True, "nvrtc", "nvrtc"),
        (True, False, "nvrtc", None),
        (True, True, "nvcc", "nvcc"),
        (False, True, "auto", "nvrtc"),
        (False, True, "nvcc", None),
        (False, False, "auto", None),
    ],
)
def test_native_cuda_path_choice(monkeypatch, nvcc, nvrtc_ok, choice, expected):
    ext = _FakeExtension(nvcc)
    monkeypatch.setattr(_backend, "native_extension", lambda: (ext, ""))
    monkeypatch.setattr(_nvrtc, "status", lambda: (nvrtc_ok, "CuPy test" if nvrtc_ok else "CuPy missing (test)"))
    monkeypatch.setenv("FASTGAN_NATIVE", choice)
    path, reason = _backend.native_cuda_path()
    assert path == expected
    if expected is None:
        assert reason and ("CuPy missing (test)" in reason or "without CUDA kernels" in reason), reason
        assert _backend._why_unavailable("native", "cuda") == reason
    else:
        assert reason == "" and ext.requested[-1] == (expected == "nvrtc")
        assert _backend._why_unavailable("native", "cuda") == ""
    assert _backend._why_unavailable("native", "cpu") == ""  # CPU tensors never depend on this


def test_bad_fastgan_native_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("FASTGAN_NATIVE", "cupy")
    with pytest.raises(ValueError, match=r"FASTGAN_NATIVE='cupy' is not one of auto, nvcc, nvrtc"):
        _backend.native_cuda_path()
    import torch

    with pytest.raises(ValueError, match="FASTGAN_NATIVE"):
        _backend.resolve_impl("native", torch.device("cuda"), "bias_act")
    table = _backend.available_impls()  # reported, not raised
    assert "FASTGAN_NATIVE" in table["native"]["cuda"][1]
    assert table["native"]["cpu"][0] == (_backend.native_extension()[0] is not None)


def test_without_cupy_the_path_is_unavailable_with_the_reason(monkeypatch):
    ext = _FakeExtension(nvcc=False)
    monkeypatch.setattr(_backend, "native_extension", lambda: (ext, ""))
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy raises ImportError
    _nvrtc.status.cache_clear()
    try:
        usable, detail = _nvrtc.status()
        path, reason = _backend.native_cuda_path()
    finally:
        _nvrtc.status.cache_clear()
    assert not usable and "fastgan[cupy]" in detail
    assert path is None and "without CUDA kernels" in reason and "fastgan[cupy]" in reason


def test_the_extension_registers_cuda_kernels_and_the_launcher():
    module, reason = _backend.native_extension()
    if module is None:
        pytest.skip(f"fastgan._C is not built: {reason}")
    import torch

    # Registered in every build, so builds without nvcc run CUDA tensors through NVRTC.
    assert torch._C._dispatch_has_kernel_for_dispatch_key("fastgan::bias_act", "CUDA")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("fastgan::norm_act", "CUDA")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("fastgan::gan_loss", "CUDA")
    if not module.with_cuda():
        assert module._uses_nvrtc()
    else:
        module._set_nvrtc_requested(True)
        assert module._uses_nvrtc()
        module._set_nvrtc_requested(False)
        assert not module._uses_nvrtc()


# --- fastgan info ---------------------------------------------------------------------------------------------------


def test_info_says_which_native_cuda_path_is_active(capsys, monkeypatch):
    monkeypatch.setattr(_backend, "native_cuda_path", lambda: ("nvrtc", ""))
    assert main(["info"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "native CUDA kernels" in x)
    assert "NVRTC via CuPy" in line and "kernel cache" in line
    monkeypatch.setattr(_backend, "native_cuda_path", lambda: (None, "no CuPy (test)"))
    assert main(["info"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "native CUDA kernels" in x)
    assert line.split(None, 3)[-1] == "none: no CuPy (test)"
    monkeypatch.setattr(_backend, "native_cuda_path", lambda: ("nvcc", ""))
    assert main(["info"]) == 0
    assert "compiled extension (nvcc)" in capsys.readouterr().out


def test_info_compile_kernels_prints_one_line_per_kernel_and_arch(capsys, cache):
    _require_nvrtc()
    assert main(["info", "--compile-kernels", "sm_80,sm_90"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("sm_")]
    total = sum(len(v) for v in _nvrtc.KERNELS.values())
    assert len(lines) == 2 * total
    assert all(re.match(r"sm_(80|90)\s+regs=\d+\s+stack=\d+\s+spill_st=0\s+spill_ld=0\s+fastgan::\w+<", x)
               for x in lines), lines[:3]


def test_info_compile_kernels_fails_loudly(capsys, monkeypatch, cache):
    assert main(["info", "--compile-kernels", "sm_9x"]) == 2
    assert "sm_80 or sm_90" in capsys.readouterr().err
    monkeypatch.setattr(_nvrtc, "status", lambda: (True, "test"))

    def broken(module, arch):
        raise _nvrtc.NvrtcError(f"{module} does not compile (test)")

    monkeypatch.setattr(_nvrtc, "_compile_uncached", broken)
    monkeypatch.setattr(_nvrtc, "nvrtc_version", lambda: (13, 0))
    assert main(["info", "--compile-kernels", "sm_90"]) == 1
    captured = capsys.readouterr()
    assert captured.out.count("FAILED") == len(_nvrtc.KERNELS) and "failed to compile" in captured.err
    monkeypatch.setattr(_nvrtc, "status", lambda: (False, "no CuPy (test)"))
    assert main(["info", "--compile-kernels", "sm_90"]) == 1
    assert "no CuPy (test)" in capsys.readouterr().err


# --- the launch plans of the C++ glue, run on CPU tensors through the ops' CUDA kernels -----------------------------


@pytest.fixture
def recorded_plans():
    """The plans fastgan._C's CUDA kernels hand to the NVRTC launcher, recorded instead of launched."""
    module, reason = _backend.native_extension()
    if module is None or not hasattr(module, "_set_nvrtc_launcher"):
        pytest.skip(f"fastgan._C with the NVRTC path is not built: {reason or 'an older build'}")
    plans: list[list[tuple]] = []
    module._set_nvrtc_launcher(lambda device, plan: plans.append(list(plan)))
    module._set_nvrtc_requested(True)
    try:
        yield plans
    finally:
        module._set_nvrtc_requested(False)
        _nvrtc.install(module)


def _cuda_kernel(op, *args):
    """Run ``op``'s CUDA kernel (its argument checks and launch plan) on CPU tensors."""
    import torch

    return op.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA), *args)


def _blocks(n: int) -> int:  # csrc/launch.h::elementwise_blocks
    return max(1, min(65536, -(-n // 256)))


def test_cuda_kernels_hand_nvrtc_plans_of_listed_kernels(recorded_plans):
    import struct

    import torch

    ops = torch.ops.fastgan
    x, b = torch.randn(2, 3, 40), torch.randn(3)
    for dtype, name in ((torch.float32, "float"), (torch.float16, "__half"), (torch.bfloat16, "__nv_bfloat16"),
                        (torch.float64, "double")):
        out = _cuda_kernel(ops.bias_act.default, x.to(dtype), b.to(dtype), 1, 2, 0.2, 1.0, None)
        ((module, kernel, grid, block, args),) = recorded_plans.pop()
        assert (module, kernel, grid, block) == ("bias_act", f"fastgan::bias_act_kernel<{name}, 0>", 1, 256)
        # BiasActParams by value: x, b, dy, g, out pointers first; the output is the op's result, not a copy.
        xp, bp, dyp, gp, outp = struct.unpack("5P", args[0][:40])
        assert outp == out.data_ptr() and dyp == gp == 0 and xp != 0 and bp != 0
    _cuda_kernel(ops.bias_act_backward2.default, x, x, x, b, 1, 5, 1.0, 1.0, 0.5)
    assert [s[1] for s in recorded_plans.pop()] == ["fastgan::bias_act_kernel<float, 2>"]

    y = torch.randn(4, 3, 50, 50)  # 10000 values per channel: 3 chunks of 4096
    _cuda_kernel(ops.norm_act.default, y, None, None, None, None, True, False, 1e-5, 1, 0.2)
    plan = recorded_plans.pop()
    assert [(s[1], s[2], [len(a) for a in s[4]][1:]) for s in plan] == [
        ("fastgan::stats_partial_kernel<float>", 3 * 3, [8, 8]),
        ("fastgan::stats_merge_kernel<float>", 1, [8, 8, 8, 8, 96]),  # UpdateStatsParams: no running statistics
        ("fastgan::apply_kernel<float>", _blocks(y.numel()), [8, 8]),  # no step counter
    ]
    assert struct.unpack("P", plan[1][4][5][:8]) == (0,) and struct.unpack("P", plan[2][4][2]) == (0,)
    # channels_last: the reductions' blocks are (tile of 32 channels, chunk of 512 values): 1 tile x 20 chunks.
    _cuda_kernel(ops.norm_act.default, y.contiguous(memory_format=torch.channels_last), None, None, None, None, True,
                 False, 1e-5, 1, 0.2)
    assert [(s[1], s[2]) for s in recorded_plans.pop()][0] == ("fastgan::stats_partial_kernel<float>", 20)
    # The training op: the same three launches; the merge also updates the buffers (UpdateStatsParams, running_mean
    # first), the apply kernel counts the step.
    running_mean, running_var, steps = torch.zeros(3), torch.ones(3), torch.tensor(5)
    _cuda_kernel(ops.norm_act_train.default, y, None, None, running_mean, running_var, steps, None, 1e-5, 1, 0.2)
    train_plan = recorded_plans.pop()
    assert [(s[1], s[2]) for s in train_plan] == [(s[1], s[2]) for s in plan]
    assert struct.unpack("P", train_plan[1][4][5][:8]) == (running_mean.data_ptr(),)
    assert struct.unpack("P", train_plan[2][4][2]) == (steps.data_ptr(),)
    mean, var = torch.zeros(12), torch.ones(12)  # instance statistics: one per (sample, channel)
    _cuda_kernel(ops.norm_act_backward.default, y.double(), y.double(), None, None, mean, var, True, True, 1e-5, 0, 0.2)
    assert [s[1] for s in recorded_plans.pop()] == [
        "fastgan::grad_partial_kernel<double>", "fastgan::grad_merge_kernel<double>", "fastgan::dx_kernel<double>"]
    # Conditional batch norm: batch norm's forward plan; the backward reduces per (sample, channel) (12 groups), and
    # in training weights those sums per channel (one thread each) before dx.
    scale, shift = torch.ones(4, 3), torch.zeros(4, 3)
    _, cmean, cvar = _cuda_kernel(ops.conditional_norm_act.default, y, scale, shift, None, None, True, 1e-5, 1, 0.2)
    assert [s[1] for s in recorded_plans.pop()] == [
        "fastgan::stats_partial_kernel<float>", "fastgan::stats_merge_kernel<float>", "fastgan::apply_kernel<float>"]
    _cuda_kernel(ops.conditional_norm_act_backward.default, y, y, scale, shift, cmean, cvar, True, 1e-5, 1, 0.2)
    assert [(s[1], s[2]) for s in recorded_plans.pop()] == [
        ("fastgan::grad_partial_kernel<float>", 12), ("fastgan::grad_merge_kernel<float>", 1),
        ("fastgan::per_sample_sums_kernel<float>", 1), ("fastgan::dx_kernel<float>", _blocks(y.numel()))]
    _cuda_kernel(ops.conditional_norm_act_backward.default, y, y, scale, shift, cmean, cvar, False, 1e-5, 1, 0.2)
    assert [s[1] for s in recorded_plans.pop()] == [
        "fastgan::grad_partial_kernel<float>", "fastgan::grad_merge_kernel<float>", "fastgan::dx_kernel<float>"]
    half = torch.float16
    _cuda_kernel(ops.norm_act_update_stats.default, torch.zeros(3, dtype=half), torch.ones(3, dtype=half),
                 torch.tensor(2), mean[:3], var[:3], None, 10, 1)
    # one block: its threads read the step counter before thread 0 advances it
    assert [(s[1], s[2]) for s in recorded_plans.pop()] == [("fastgan::update_stats_kernel<__half, float>", 1)]

    _cuda_kernel(ops.gan_loss.default, torch.randn(100_000), torch.randn(10), 0, 1)
    plan = recorded_plans.pop()
    assert [(s[1], s[2], s[3]) for s in plan] == [("fastgan::gan_loss_kernel<float>", 25, 256),
                                                  ("fastgan::gan_loss_finalize_kernel<float>", 1, 256)]
    assert struct.unpack("i", plan[1][4][1]) == (25,)
    _cuda_kernel(ops.gan_loss.default, torch.randn(10), None, 0, 0)
    assert [(s[1], s[2], s[3]) for s in recorded_plans.pop()] == [("fastgan::gan_loss_kernel<float>", 1, 1024)]
    g = torch.randn(5, 3, 4, 4, dtype=torch.bfloat16)
    _cuda_kernel(ops.grad_norm_penalty.default, g, 10.0, 1.0, 1.0)
    assert [(s[1], s[2]) for s in recorded_plans.pop()] == [("fastgan::sample_norm_kernel<__nv_bfloat16>", 5),
                                                            ("fastgan::penalty_kernel<__nv_bfloat16>", 1)]
    _cuda_kernel(ops.penalty_interpolate.default, g, g, torch.rand(5))
    assert [s[1] for s in recorded_plans.pop()] == ["fastgan::interpolate_kernel<__nv_bfloat16>"]
    assert not recorded_plans


def test_the_plans_use_exactly_the_listed_kernels(recorded_plans):
    # The C++ plans and fastgan._nvrtc.KERNELS spell the same instantiations, and every listed one is launched by some
    # plan (every op, kind and dtype below).
    import torch

    ops = torch.ops.fastgan
    z = torch.randn(3, 4, 5)
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        zd, mt = z.to(dtype), torch.float64 if dtype == torch.float64 else torch.float32
        _cuda_kernel(ops.bias_act.default, zd, None, 1, 3, 0.2, 1.0, None)
        _cuda_kernel(ops.bias_act_backward.default, zd, zd, None, 1, 3, 0.2, 1.0, None)
        _cuda_kernel(ops.bias_act_backward2.default, zd, zd, zd, None, 1, 3, 0.2, 1.0, None)
        _, mean, var = _cuda_kernel(ops.norm_act.default, zd, None, None, None, None, True, False, 1e-5, 0, 0.0)
        _cuda_kernel(ops.norm_act_backward.default, zd, zd, None, None, mean, var, True, False, 1e-5, 0, 0.0)
        _cuda_kernel(ops.conditional_norm_act_backward.default, zd, zd, torch.ones(3, 4), torch.zeros(3, 4), mean,
                     var, True, 1e-5, 0, 0.0)
        for stats in (torch.float32, torch.float64):
            _cuda_kernel(ops.norm_act_update_stats.default, torch.zeros(4, dtype=dtype), torch.ones(4, dtype=dtype),
                         None, mean.to(stats), var.to(stats), 0.1, 15, 1)
        _cuda_kernel(ops.norm_act_train.default, zd, None, None, torch.zeros(4), torch.ones(4), torch.tensor(1), None,
                     1e-5, 0, 0.0)
        _, grad_a, grad_b = _cuda_kernel(ops.gan_loss.default, torch.randn(70_000, dtype=dtype), zd, 0, 1)
        _cuda_kernel(ops.gan_loss_backward.default, torch.ones((), dtype=dtype), grad_a, grad_b)
        _, norms = _cuda_kernel(ops.grad_norm_penalty.default, zd, 10.0, 1.0, 1.0)
        _cuda_kernel(ops.grad_norm_penalty_backward.default, torch.ones((), dtype=dtype), zd, norms.to(mt), 10.0,
                     1.0, 1.0)
        _cuda_kernel(ops.penalty_interpolate.default, zd, zd, torch.rand(3))
    planned = {(s[0], s[1]) for plan in recorded_plans for s in plan}
    listed = {(module, kernel) for module, names in _nvrtc.KERNELS.items() for kernel in names}
    assert planned == listed, (planned - listed, listed - planned)
    assert len(listed) == sum(len(v) for v in _nvrtc.KERNELS.values())  # no name listed twice


def test_launch_passes_each_argument_by_pointer_on_torchs_stream(monkeypatch):
    import contextlib

    cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
    import ctypes

    import torch

    calls = []

    def fake_launch(f, gx, gy, gz, bx, by, bz, shared, stream, params, extra):
        pointers = (ctypes.c_void_p * 3).from_address(params)
        calls.append((f, gx, gy, gz, bx, by, bz, shared, stream, extra,
                      [ctypes.string_at(pointers[i], n) for i, n in enumerate((16, 8, 4))]))

    monkeypatch.setattr(cupy.cuda.driver, "launchKernel", fake_launch)
    monkeypatch.setattr(cupy.cuda, "Device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: types.SimpleNamespace(cuda_stream=4242))
    monkeypatch.setattr(_nvrtc, "_function", lambda device, module, kernel: types.SimpleNamespace(ptr=77))
    args = [bytes(range(16)), (123456789).to_bytes(8, "little"), (7).to_bytes(4, "little")]
    _nvrtc.launch(0, [("bias_act", "fastgan::bias_act_kernel<float, 0>", 12, 256, args)])
    assert calls == [(77, 12, 1, 1, 256, 1, 1, 0, 4242, 0, args)]


def test_sources_are_found_in_a_wheel_an_editable_install_or_fastgan_csrc(tmp_path, monkeypatch):
    monkeypatch.delenv("FASTGAN_CSRC", raising=False)
    package = tmp_path / "site" / "fastgan"
    package.mkdir(parents=True)
    monkeypatch.setattr(_nvrtc, "__file__", str(package / "_nvrtc.py"))
    assert _nvrtc.source_dir() == tmp_path / "site" / "csrc"  # editable: the repository's csrc beside the package
    (package / "_csrc").mkdir()
    assert _nvrtc.source_dir() == package / "_csrc"  # a wheel: the copy setup.py's build_py ships
    monkeypatch.setenv("FASTGAN_CSRC", str(tmp_path / "mine"))
    assert _nvrtc.source_dir() == tmp_path / "mine"
