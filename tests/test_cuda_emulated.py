"""fastgan's CUDA kernels run on the CPU, under an emulation of CUDA's thread model (tests/cuda_emu/cuda_emu.h: a
thread per CUDA thread, barriers for __syncthreads and warp shuffles). Most sessions have no GPU, and compiling
(tests/test_build.py, test_nvrtc.py) proves nothing about what a kernel computes. Both ways the kernels are launched
run here: nvcc's launchers (csrc/*_cuda.cu, through tests/cuda_emu/driver.cpp) against the float64 reference, for
every element type, with the launch geometry, the per-(group, chunk) and channels_last tile reductions and their edge
blocks (a last tile of fewer channels, a last chunk of fewer values); and every CUDA op of a build without nvcc (its
C++ glue and NVRTC launch plan) against the op's C++ CPU kernels. The GPU suite runs the kernels on a GPU when one is
lent."""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from fastgan import _nvrtc
from fastgan._backend import custom_ops, native_extension
from fastgan.ops import ACTIVATIONS, batch_norm_act_ref, bias_act_ref, instance_norm_act_ref
from fastgan.ops.gan_loss import TERMS
from fastgan.ops.norm_act import conditional_batch_norm_act_ref
from fastgan.ops.penalty import grad_norm_penalty_ref, interpolate_ref

from .conftest import require, tolerance

ROOT = Path(__file__).resolve().parents[1]
EMU = Path(__file__).resolve().parent / "cuda_emu"
DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}  # csrc/common.h::DType

# kernel<args><<<grid, block, shared, stream>>>(arguments);  ->  ::emu::launch([&] { kernel<args>(arguments); }, ...)
_LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:<[^;{}<>]*>)?)<<<(.*?)>>>\((.*?)\);", re.S)


def emulated_launchers(cu: Path) -> str:
    """The source of an nvcc launcher file with its kernel launches rewritten as emulated ones."""
    source = cu.read_text()
    rewritten, count = _LAUNCH.subn(lambda m: f"::emu::launch([&] {{ {m[1]}({m[3]}); }}, {m[2]});", source)
    assert count == source.count("<<<"), f"{cu.name}: {source.count('<<<') - count} launches not rewritten"
    return rewritten


def kernel_table(module: str) -> str:
    """A C function launching any kernel of fastgan._nvrtc.KERNELS[module] by its name expression, with an NVRTC
    plan's grid, block and argument bytes: emu_launch_<module>(name, grid, block, args) -> 0, or -1 if unknown."""
    branches = "".join(f'    if (std::strcmp(kernel, "{name}") == 0) {{\n'
                       f'        ::emu::kernel_name = "{name}";\n'
                       f"        ::emu::launch([&] {{ ::emu::call(&{name}, args); }}, grid, block);\n"
                       f'        ::emu::kernel_name = "";\n'
                       f"        return 0;\n    }}\n" for name in _nvrtc.KERNELS[module])
    return (f'#include <cstring>\n#include "cuda_runtime.h"\n#include "{module}_kernels.cuh"\n\n'
            f'extern "C" int emu_launch_{module}(const char* kernel, unsigned grid, unsigned block, '
            f"void* const* args) {{\n{branches}    return -1;\n}}\n")


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    """tests/cuda_emu/driver.cpp, the emulated launchers and the kernel tables of the NVRTC plans, compiled into one
    library (a translation unit each: the launchers' internal names repeat)."""
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("needs g++ to compile the CUDA sources for the emulation")
    build = tmp_path_factory.mktemp("cuda_emu")
    sources = [EMU / "driver.cpp"]
    for module in ("bias_act", "losses", "norm_act"):
        sources.append(build / f"{module}_cuda.cpp")
        sources[-1].write_text(emulated_launchers(ROOT / "csrc" / f"{module}_cuda.cu"))
        sources.append(build / f"{module}_table.cpp")
        sources[-1].write_text(kernel_table(module))
    library = build / "emulated.so"
    done = subprocess.run([compiler, "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-D__CUDACC__", f"-I{EMU}",
                           f"-I{ROOT / 'csrc'}", *map(str, sources), "-o", str(library)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    lib = ctypes.CDLL(str(library))
    lib.emu_norm_act.argtypes = ([ctypes.c_int, ctypes.c_bool] + [ctypes.c_void_p] * 10 + [ctypes.c_bool] * 3
                                 + [ctypes.c_double, ctypes.c_int, ctypes.c_double])
    lib.emu_bias_act.argtypes = ([ctypes.c_int] * 2 + [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 3 + [ctypes.c_int]
                                 + [ctypes.c_double] * 3)
    lib.emu_gan_loss.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 2 + [ctypes.c_int] * 2
    lib.emu_gan_loss_backward.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 2
    lib.emu_interpolate.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 2
    lib.emu_penalty.argtypes = ([ctypes.c_int, ctypes.c_bool] + [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 2
                                + [ctypes.c_double] * 3)
    lib.emu_update_stats.argtypes = ([ctypes.c_int, ctypes.c_bool] + [ctypes.c_void_p] * 2 + [ctypes.c_int64]
                                     + [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 3 + [ctypes.c_double])
    lib.emu_norm_act_train.argtypes = ([ctypes.c_int] + [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3
                                       + [ctypes.c_int, ctypes.c_double, ctypes.c_int] + [ctypes.c_void_p] * 2
                                       + [ctypes.c_int64, ctypes.c_void_p, ctypes.c_double])
    return lib


@pytest.fixture
def empty():
    """torch.empty with guard bands: each tensor lies in a larger buffer whose other elements hold a sentinel,
    checked after the test, so a kernel (or a launch geometry) writing out of bounds fails it. empty(like) takes
    like's shape, dtype and strides; empty(shape, dtype) is contiguous."""
    made = []

    def make(like, dtype=None):
        shape = tuple(like.shape) if isinstance(like, torch.Tensor) else tuple(like)
        dtype = like.dtype if dtype is None else dtype
        strides = like.stride() if isinstance(like, torch.Tensor) else torch.empty(shape, device="meta").stride()
        numel = max(1, torch.Size(shape).numel())
        buffer = torch.full((numel + 2 * 64,), -7.25, dtype=dtype)
        made.append((buffer, numel))
        return buffer.as_strided(shape, strides, 64)

    yield make
    for buffer, numel in made:
        guards = torch.cat([buffer[:64], buffer[64 + numel:]])
        assert (guards == -7.25).all(), "a kernel wrote outside its output"


def _ptr(t: torch.Tensor | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr() if t is not None else None)


def _shape(x: torch.Tensor):
    """(N, C, L, sN, sC, sL) of a dense 4-D tensor, as csrc/norm_act.cpp's prepare_forward packs them."""
    n, c, h, w = x.shape
    channels_last = x.stride(1) == 1 and c > 1
    return (ctypes.c_int64 * 6)(n, c, h * w, c * h * w, 1 if channels_last else h * w, c if channels_last else 1)


# kind -> activation; "eval" normalizes with given running statistics (no reduction), "conditional" takes a scale
# and shift per (sample, channel) and reduces its backward per (sample, channel).
KINDS = {"batch": "lrelu", "eval": "relu", "instance": "tanh", "conditional": "silu"}
SHAPES = [
    (3, 37, 5, 7),  # channels_last: two tiles, the second of 5 channels; one chunk of 105 values
    (4, 1, 3, 3),  # one channel: both layouts are planes
    (2, 40, 1, 1),  # one value a plane: NCHW's channel stride is 1 too, so it takes the rows walk
]
LARGE_SHAPES = [  # float32 only: the reductions are the same code for every type
    (2, 3, 50, 50),  # several chunks a group: NCHW 2 (of 4096 values; batch), channels_last 10 or 5 (of 512)
    (2, 40, 30, 40),  # channels_last: two tiles of several chunks each
]
# channels_last: 131769 values a group, in 129 chunks of 1024 (at most 256 chunks a group); batch and instance only.
LONG_GROUPS = (1, 2, 363, 363)


def _reference(kind, x, w, b, running, act):
    alpha = ACTIVATIONS[act].default_alpha
    if kind == "conditional":
        return conditional_batch_norm_act_ref(x, w, b, None, None, True, act=act, alpha=alpha)
    if kind == "instance":
        return instance_norm_act_ref(x, w, b, act=act, alpha=alpha)
    mean, var = running if kind == "eval" else (None, None)
    return batch_norm_act_ref(x, w, b, mean, var, kind != "eval", act=act, alpha=alpha)


def _per_entry(kind, values: torch.Tensor) -> torch.Tensor:
    """values [N, C, H, W] summed as the weight (or bias) gradient sums them: per (sample, channel) with a scale and
    shift per sample, else per channel."""
    return values.sum((2, 3)) if kind == "conditional" else values.sum((0, 2, 3))


def _parameter_gradients(kind, sum_dz, sum_dz_xhat, n, c):
    """The weight and bias gradients from the backward's per-group sums, as csrc/norm_act.cpp's finish_backward."""
    if kind == "conditional":
        return sum_dz_xhat.view(n, c), sum_dz.view(n, c)
    if kind == "instance":
        return sum_dz_xhat.view(n, c).sum(0), sum_dz.view(n, c).sum(0)
    return sum_dz_xhat, sum_dz


# The longest chain of float additions in the kernels' sums at these sizes: norm_act's 128 values a thread (a
# channels_last chunk of 1024 over 8 warps: LONG_GROUPS) then the 8 warps' totals, its chunks merged in double (the
# losses' shares and trees are shorter). The sum's error bound is CHAIN * eps * sum(|terms|).
CHAIN = 136


def _statistics_bound(x, xhat, invstd, instance):
    """Per value, the bound of the statistics' sums (shifted by the group's first value) as they reach xhat: through
    the mean and through invstd."""
    group_dims = (2, 3) if instance else (0, 2, 3)
    first = x.double()[:, :, :1, :1] if instance else x.double()[:1, :, :1, :1]
    spread = (x.double() - first).abs()
    return invstd * (spread.mean(group_dims, keepdim=True) +
                     xhat.abs() * invstd * spread.square().mean(group_dims, keepdim=True))


def _assert_close(ours, truth, torch_out, dtype, what, sum_bound: torch.Tensor | float = 0.0):
    """Within PyTorch's own error at dtype (conftest.tolerance) plus the error bound of the kernels' float sums that
    ours depends on: CHAIN * eps * sum_bound, sum_bound bounding sum(|terms|) (|dz| <= 1.1 |dy| for these
    activations). In float64 the truth is PyTorch's own result, so its error counts as none."""
    truth, torch_out = truth.detach(), torch_out.detach()
    assert ours.shape == truth.shape and ours.dtype == dtype, f"{what}: {ours.shape} {ours.dtype}"
    assert torch.isfinite(ours).all() == torch.isfinite(truth).all(), f"{what}: non-finite values differ"
    err = (ours.double() - truth).abs().max().item() if truth.numel() else 0.0
    sums = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps * 1.1 * CHAIN
    tol = tolerance(truth, torch_out, dtype) + sums * float(torch.as_tensor(sum_bound).max())
    assert err <= tol, f"{what}: max error {err:.3g} > tolerance {tol:.3g}"


# No instance norm of one-value planes (instance_norm_act refuses them with batch statistics).
NORM_CASES = [(kind, shape, dtype, layout) for kind in KINDS
              for shape, dtypes in [*((s, DTYPES) for s in SHAPES), *((s, [torch.float32]) for s in LARGE_SHAPES)]
              for dtype in dtypes for layout in ("contiguous", "channels_last")
              if not (kind == "instance" and shape[2:] == (1, 1))]
NORM_CASES += [(kind, LONG_GROUPS, torch.float32, "channels_last") for kind in ("batch", "instance")]


@pytest.mark.parametrize("kind,shape,dtype,layout", NORM_CASES, ids=str)
def test_norm_act_kernels_match_float64(emulated, empty, kind, shape, dtype, layout):
    act = KINDS[kind]
    alpha = ACTIVATIONS[act].default_alpha or 0.0
    n, c = shape[:2]
    gen = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x64 = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 1).contiguous(memory_format=fmt)
    dy64 = torch.randn(shape, generator=gen, dtype=torch.float64).contiguous(memory_format=fmt)
    affine = (n, c) if kind == "conditional" else (c,)
    w64 = torch.rand(affine, generator=gen, dtype=torch.float64) + 0.5
    b64 = torch.randn(affine, generator=gen, dtype=torch.float64)
    running64 = (torch.randn(c, generator=gen, dtype=torch.float64),
                 torch.rand(c, generator=gen, dtype=torch.float64) + 0.5)

    math = torch.float64 if dtype == torch.float64 else torch.float32
    x, dy = x64.to(dtype), dy64.to(dtype)
    w, b = w64.to(math), b64.to(math)
    instance, per_sample, training = kind == "instance", kind == "conditional", kind != "eval"
    groups = n * c if instance else c
    mean, var = (empty((groups,), math), empty((groups,), math)) if training else (
        running64[0].to(math), running64[1].to(math))

    y = empty(x)
    rc = emulated.emu_norm_act(DTYPES[dtype], False, _ptr(x), None, _ptr(y), _ptr(w), _ptr(b), _ptr(mean), _ptr(var),
                               None, None, _shape(x), instance, per_sample, training, 1e-5, ACTIVATIONS[act].index,
                               alpha)
    assert rc == 0

    # The truth from the inputs as rounded to dtype; PyTorch's own error from the reference run in dtype (float32
    # for the reduced types, whose CPU batch norm needs parameters of the input's type).
    leaves64 = [t.double().clone().requires_grad_() for t in (x, w, b)]
    leaves = [t.to(math).detach().requires_grad_() for t in leaves64]
    running = tuple(r.to(math).double() for r in running64)
    truth = _reference(kind, *leaves64, running, act)
    theirs = _reference(kind, *leaves, tuple(r.to(math) for r in running), act)
    per_group = (n, c, 1, 1) if instance else (1, c, 1, 1)
    group_dims = (2, 3) if instance else (0, 2, 3)
    w_abs = w.double().abs().view(n, c, 1, 1) if per_sample else w.double().abs().view(1, c, 1, 1)
    invstd = (var.double()[:groups] + 1e-5).rsqrt().view(per_group)
    xhat = (x.double() - mean.double()[:groups].view(per_group)) * invstd
    y_bound = w_abs * _statistics_bound(x, xhat, invstd, instance) if training else 0.0
    _assert_close(y, truth, theirs.to(dtype), dtype, f"{kind} forward", y_bound)
    if training:
        stats = x.double().transpose(0, 1).reshape(c, -1) if not instance else x.double().reshape(n * c, -1)
        torch.testing.assert_close(mean.double(), stats.mean(1), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(var.double(), stats.var(1, unbiased=False), rtol=1e-4, atol=1e-5)

    # Backward, from the forward's statistics (per_sample: repeated per sample, as prepare_conditional_backward).
    saved_mean, saved_var = (mean.repeat(n), var.repeat(n)) if per_sample else (mean, var)
    bw_groups = n * c if instance or per_sample else c
    dx = empty(x)
    sum_dz, sum_dz_xhat = empty((bw_groups,), math), empty((bw_groups,), math)
    rc = emulated.emu_norm_act(DTYPES[dtype], True, _ptr(x), _ptr(dy), _ptr(dx), _ptr(w), _ptr(b), _ptr(saved_mean),
                               _ptr(saved_var), _ptr(sum_dz), _ptr(sum_dz_xhat), _shape(x), instance or per_sample,
                               per_sample, training, 1e-5, ACTIVATIONS[act].index, alpha)
    assert rc == 0
    true_grads = torch.autograd.grad(truth, leaves64, dy.double())
    their_grads = torch.autograd.grad(theirs, leaves, dy.to(math))
    # Bounds of the sums' terms: dz and dz * xhat per group, and dx's means of them (times w * invstd).
    abs_dy, abs_dy_xhat = dy.double().abs(), (dy.double() * xhat).abs()
    dx_bound = w_abs * invstd * (abs_dy.mean(group_dims, keepdim=True) + xhat.abs() *
                                 abs_dy_xhat.mean(group_dims, keepdim=True))
    _assert_close(dx, true_grads[0], their_grads[0].to(dtype), dtype, f"{kind} dx", dx_bound if training else 0.0)
    for name, ours, true, their, terms in zip(("weight", "bias"),
                                              _parameter_gradients(kind, sum_dz, sum_dz_xhat, n, c),
                                              true_grads[1:], their_grads[1:], (abs_dy_xhat, abs_dy)):
        _assert_close(ours, true, their.to(math), math, f"{kind} {name} gradient", _per_entry(kind, terms))


def _assert_matches(ours, truth, torch_out, dtype, what):
    """Finite where the truth is, the same non-finite values elsewhere (NaN and inf propagate as in PyTorch), and
    within PyTorch's own error at dtype on the rest."""
    truth_finite = truth.isfinite()
    assert torch.equal(ours.isfinite(), truth_finite), f"{what}: finite at other places than the truth"
    special = ~truth_finite
    assert torch.equal(ours.double()[special].isnan(), truth[special].isnan()), f"{what}: NaN differs"
    torch.testing.assert_close(ours.double()[special & ~truth.isnan()], truth[special & ~truth.isnan()], msg=what)
    finite = truth_finite & torch_out.double().isfinite()
    _assert_close(ours[finite], truth[finite], torch_out[finite], dtype, what)


@pytest.mark.parametrize("params", [(None, None), (2**0.5, 1.5)], ids=["plain", "gain-clamp"])
@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "rows"])
@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_bias_act_kernel_matches_float64(emulated, empty, act, layout, dtype, params):
    gain, clamp = params
    alpha = ACTIVATIONS[act].default_alpha
    gen = torch.Generator().manual_seed(1)
    shape = (5, 70) if layout == "rows" else (3, 37, 5, 7)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x64 = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3).contiguous(memory_format=fmt)
    special = [float("nan"), float("inf"), -float("inf"), 0.0, -0.0]
    x64[(0,) * (x64.dim() - 1)][:5] = torch.tensor(special, dtype=torch.float64)
    dy64, g64 = (torch.randn(shape, generator=gen, dtype=torch.float64).contiguous(memory_format=fmt)
                 for _ in range(2))
    b64 = torch.randn(shape[1], generator=gen, dtype=torch.float64)
    x, dy, g, b = (t.to(dtype) for t in (x64, dy64, g64, b64))
    # bias index (i / stride) % size over memory offsets i: the channel's stride in memory
    stride = x.stride(1)

    def emulated_kind(kind):
        out = empty(x)
        rc = emulated.emu_bias_act(DTYPES[dtype], kind, _ptr(x), _ptr(b), _ptr(dy), _ptr(g), _ptr(out), x.numel(),
                                   shape[1], stride, ACTIVATIONS[act].index, alpha or 0.0,
                                   1.0 if gain is None else gain, -1.0 if clamp is None else clamp)
        assert rc == 0
        return out

    def reference(run_dtype):
        xr, br = x.to(run_dtype).clone().requires_grad_(), b.to(run_dtype)
        y = bias_act_ref(xr, br, 1, act, alpha, gain, clamp)
        (dx,) = torch.autograd.grad(y, xr, dy.to(run_dtype), create_graph=ACTIVATIONS[act].has_grad2)
        d2x = (torch.autograd.grad(dx, xr, g.to(run_dtype))[0] if ACTIVATIONS[act].has_grad2
               else torch.zeros_like(dx))
        return [t.detach() for t in (y, dx, d2x)]

    truths = reference(torch.float64)
    theirs = reference(torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype)
    for kind, name in enumerate(("forward", "backward", "second derivative")):
        ours = emulated_kind(kind)
        assert ours.stride() == x.stride()
        _assert_matches(ours, truths[kind], theirs[kind].to(dtype), dtype, f"{act} {name}")


D_TERMS = [("softplus_neg", "softplus"), ("hinge_real", "hinge_fake"), ("negate", "identity"),
           ("square_one", "square")]


# (terms, (numel_a, numel_b)): one block of 1024 threads up to 64K logits, else blocks of 256 and a finalizing block
# (in float32 only: the reduction is the same code for every type).
LOSS_CASES = ([((t, None), (37, 0), dtype) for t in TERMS for dtype in DTYPES]
              + [(terms, (37, 29), dtype) for terms in D_TERMS for dtype in DTYPES]
              + [(terms, (70001, 5003), torch.float32) for terms in D_TERMS]
              + [(("softplus_neg", None), (70001, 0), torch.float32)])


@pytest.mark.parametrize("terms,numel,dtype", LOSS_CASES, ids=str)
def test_gan_loss_kernels_match_float64(emulated, empty, terms, numel, dtype):
    """The loss of one or two terms, the saved gradients, and the backward's scaling of them."""
    gen = torch.Generator().manual_seed(2)
    logits64 = [torch.randn(n, generator=gen, dtype=torch.float64) * 3 for n in numel if n]
    logits64[0][:4] = torch.tensor([0.0, 1.0, -1.0, 30.0], dtype=torch.float64)  # kinks and softplus's threshold
    logits = [z.to(dtype) for z in logits64]
    math = torch.float64 if dtype == torch.float64 else torch.float32
    two = len(logits) == 2
    loss, grads = empty((), dtype), [empty(z.shape, math) for z in logits]
    partials = empty((256,), math)  # csrc/losses.h::kGanLossMaxBlocks
    rc = emulated.emu_gan_loss(DTYPES[dtype], _ptr(logits[0]), _ptr(logits[1] if two else None), _ptr(loss),
                               _ptr(grads[0]), _ptr(grads[1] if two else None), _ptr(partials), numel[0], numel[1],
                               TERMS[terms[0]].index, TERMS[terms[1]].index if two else 0)
    assert rc == 0

    def reference(run_dtype):
        zs = [z.to(run_dtype).clone().requires_grad_() for z in logits]
        value = sum(TERMS[t].fn(z).mean() for t, z in zip(terms, zs))
        return value.detach(), [g.detach() for g in torch.autograd.grad(value, zs)]

    (truth, true_grads), (theirs, their_grads) = reference(torch.float64), reference(math)
    abs_sum = sum(TERMS[t].fn(z.double()).abs().mean() for t, z in zip(terms, logits))
    _assert_close(loss, truth, theirs.to(dtype), dtype, "loss", abs_sum)
    for ours, true, their in zip(grads, true_grads, their_grads):
        _assert_close(ours, true, their, math, "saved gradient")

    go = torch.tensor(-0.75, dtype=dtype)
    da, db = empty(logits[0]), empty(logits[1]) if two else None
    rc = emulated.emu_gan_loss_backward(DTYPES[dtype], _ptr(go), _ptr(grads[0]), _ptr(grads[1] if two else None),
                                        _ptr(da), _ptr(db), numel[0], numel[1])
    assert rc == 0
    for ours, true, their in zip((da, db), true_grads, their_grads):
        _assert_close(ours, true * -0.75, (their * -0.75).to(dtype), dtype, "logits gradient")


@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("weight,center,scale", [(10.0, 1.0, 1.0), (5.0, 0.0, 0.5)], ids=["wgan-gp", "r1-scaled"])
def test_penalty_kernels_match_float64(emulated, empty, weight, center, scale, dtype):
    """WGAN-GP's interpolation, the norm penalty (one block per sample, then one block for the mean) and its
    gradient, a sample of zeros among them (norm 0: no division by it)."""
    gen = torch.Generator().manual_seed(3)
    shape = (5, 3, 11, 13)
    real64, fake64, grad64 = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(3))
    grad64[2] = 0
    eps = torch.rand(shape[0], generator=gen, dtype=torch.float64)
    math = torch.float64 if dtype == torch.float64 else torch.float32
    real, fake, grad, eps_m = real64.to(dtype), fake64.to(dtype), grad64.to(dtype), eps.to(math)
    batch, per_sample = shape[0], real[0].numel()

    out = empty(real)
    assert emulated.emu_interpolate(DTYPES[dtype], _ptr(real), _ptr(fake), _ptr(eps_m), _ptr(out), batch,
                                    per_sample) == 0
    truth = interpolate_ref(real.double(), fake.double(), eps_m.double())
    _assert_close(out, truth, interpolate_ref(real.to(math), fake.to(math), eps_m).to(dtype), dtype, "interpolate")

    penalty, norms = empty((), dtype), empty((batch,), math)
    assert emulated.emu_penalty(DTYPES[dtype], False, _ptr(grad), None, _ptr(norms), _ptr(penalty), batch,
                                per_sample, weight, center, scale) == 0
    g64, g_low = (grad.to(t).clone().requires_grad_() for t in (torch.float64, math))
    truth, theirs = (grad_norm_penalty_ref(g, weight, center, scale) for g in (g64, g_low))
    true_norms = grad.double().reshape(batch, -1).norm(dim=1)
    _assert_close(norms, true_norms, grad.to(math).reshape(batch, -1).norm(dim=1), math, "norms",
                  grad.double().reshape(batch, -1).square().sum(1))
    _assert_close(penalty, truth, theirs.to(dtype), dtype, "penalty", weight * (scale * true_norms + center).square())

    go = torch.tensor(0.5, dtype=dtype)
    dg = empty(grad)
    assert emulated.emu_penalty(DTYPES[dtype], True, _ptr(grad), _ptr(go), _ptr(norms), _ptr(dg), batch, per_sample,
                                weight, center, scale) == 0
    (true_dg,) = torch.autograd.grad(truth, g64, go.double())
    (their_dg,) = torch.autograd.grad(theirs, g_low, go.to(math))
    _assert_close(dg, true_dg, their_dg.to(dtype), dtype, "penalty gradient")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("kind", ["batch", "instance"])
def test_norm_act_kernels_propagate_nan_and_inf_as_torch(emulated, empty, kind, layout):
    """A channel holding an inf, one holding a NaN, one of a huge constant (3e38, which the shifted sums keep
    finite): the statistics and outputs PyTorch's batch norm gives, the other channels untouched."""
    gen = torch.Generator().manual_seed(7)
    n, c, h, w = 3, 37, 5, 7
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(n, c, h, w, generator=gen)
    x[1, 3, 2, 2], x[0, 4, 1, 3], x[:, 5] = float("inf"), float("nan"), 3e38
    x = x.contiguous(memory_format=fmt)
    instance = kind == "instance"
    groups = n * c if instance else c
    y, mean, var = empty(x), empty((groups,), torch.float32), empty((groups,), torch.float32)
    assert emulated.emu_norm_act(DTYPES[torch.float32], False, _ptr(x), None, _ptr(y), None, None, _ptr(mean),
                                 _ptr(var), None, None, _shape(x), instance, False, True, 1e-5,
                                 ACTIVATIONS["linear"].index, 0.0) == 0
    truth = _reference(kind, x.double(), None, None, None, "linear")
    theirs = _reference(kind, x, None, None, None, "linear")
    _assert_matches(y, truth, theirs, torch.float32, f"{kind} y")
    values = x.double().transpose(0, 1).reshape(c, -1) if not instance else x.double().reshape(n * c, -1)
    for ours, true in ((mean, values.mean(1)), (var, values.var(1, unbiased=False))):
        assert torch.equal(ours.isnan(), true.isnan()) and torch.equal(ours.isinf(), true.isinf())


def _strided_buffers(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[2, C] running mean and var as every other element of a buffer (their element stride is 2)."""
    out = torch.zeros(2, 2 * values.shape[1], dtype=dtype)[:, ::2]
    return out.copy_(values)


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("stats", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("buffers", list(DTYPES), ids=str)
def test_update_stats_kernel_matches_cpu_kernel(emulated, buffers, stats, batch, momentum):
    """The running statistics' kernel (one block: every thread reads the step counter before thread 0 advances it)
    against the C++ kernel, bit for bit: the same formula (csrc/norm_act.h::update_running_channel)."""
    require("native", "cpu")
    update = custom_ops("norm_act", "native").norm_act_update_stats
    gen = torch.Generator().manual_seed(4)
    channels = 300  # more channels than the block's 256 threads
    mean = (torch.randn(batch * channels, generator=gen, dtype=torch.float64) * 3).to(stats)
    var = (torch.rand(batch * channels, generator=gen, dtype=torch.float64) * 2).to(stats)
    start = torch.randn(2, channels, generator=gen, dtype=torch.float64)
    ours, theirs = _strided_buffers(start, buffers), _strided_buffers(start, buffers)
    our_steps, their_steps = torch.tensor(4), torch.tensor(4)
    assert emulated.emu_update_stats(DTYPES[buffers], stats == torch.float64, _ptr(ours[0]), _ptr(ours[1]), 2,
                                     _ptr(our_steps), _ptr(mean), _ptr(var), channels, batch, 25,
                                     -1.0 if momentum is None else momentum) == 0
    update(theirs[0], theirs[1], their_steps, mean, var, momentum, 25, batch)
    assert torch.equal(ours, theirs) and not torch.equal(ours, _strided_buffers(start, buffers))
    assert our_steps.item() == their_steps.item() == 5


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
@pytest.mark.parametrize("dtype,buffers", [(torch.float32, torch.float32), (torch.float16, torch.float32),
                                           (torch.bfloat16, torch.bfloat16), (torch.float64, torch.float64)], ids=str)
def test_training_forward_updates_running_stats(emulated, empty, dtype, buffers, momentum):
    """Batch norm's training forward updates the buffers in its merge kernel (the buffers' dtype a run-time value:
    float32 buffers under autocast) and counts the step in its apply kernel: as norm_act_update_stats would from the
    statistics it returns, bit for bit, y as the reference."""
    require("native", "cpu")
    update = custom_ops("norm_act", "native").norm_act_update_stats
    gen = torch.Generator().manual_seed(5)
    n, c, h, w = 3, 37, 5, 7
    x = (torch.randn(n, c, h, w, generator=gen, dtype=torch.float64) * 2 + 1).to(dtype)
    math = torch.float64 if dtype == torch.float64 else torch.float32
    y, mean, var = empty(x), empty((c,), math), empty((c,), math)
    start = torch.randn(2, c, generator=gen, dtype=torch.float64)
    running, steps = _strided_buffers(start, buffers), torch.tensor(7)
    assert emulated.emu_norm_act_train(DTYPES[dtype], _ptr(x), _ptr(y), _ptr(mean), _ptr(var), n, c, h * w,
                                       ACTIVATIONS["relu"].index, 0.0, DTYPES[buffers], _ptr(running[0]),
                                       _ptr(running[1]), 2, _ptr(steps), -1.0 if momentum is None else momentum) == 0
    expected, expected_steps = _strided_buffers(start, buffers), torch.tensor(7)
    update(expected[0], expected[1], expected_steps, mean, var, momentum, n * h * w, 1)
    assert torch.equal(running, expected) and steps.item() == expected_steps.item() == 8
    truth = batch_norm_act_ref(x.double(), None, None, None, None, True, act="relu")
    theirs = batch_norm_act_ref(x.to(math), None, None, None, None, True, act="relu").to(dtype)
    invstd = (var.double() + 1e-5).rsqrt().view(1, c, 1, 1)
    xhat = (x.double() - mean.double().view(1, c, 1, 1)) * invstd
    _assert_close(y, truth, theirs, dtype, "y", _statistics_bound(x, xhat, invstd, False))


# --- the NVRTC path: the ops' C++ glue and launch plans, end to end ------------------------------------------------


@pytest.fixture
def plans_emulated(emulated):
    """fastgan._C's CUDA kernels, called on CPU tensors, with their NVRTC launch plans run under the emulation: the
    whole CUDA op of a build without nvcc (argument checks, outputs, parameter packing, plan, kernels)."""
    module, reason = native_extension()
    if module is None or not hasattr(module, "_set_nvrtc_launcher"):
        pytest.skip(f"fastgan._C with the NVRTC path is not built: {reason or 'an older build'}")

    def run(device, plan):
        for kernel_module, kernel, grid, block, args in plan:
            buffers = [ctypes.create_string_buffer(bytes(a), len(a)) for a in args]
            pointers = (ctypes.c_void_p * len(buffers))(*[ctypes.addressof(b) for b in buffers])
            launch = getattr(emulated, f"emu_launch_{kernel_module}")
            assert launch(kernel.encode(), grid, block, pointers) == 0, f"{kernel} is not in the kernel table"

    module._set_nvrtc_launcher(run)
    module._set_nvrtc_requested(True)
    try:
        yield lambda op, *args: op.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA), *args)
    finally:
        module._set_nvrtc_requested(False)
        _nvrtc.install(module)


def _op_cases(dtype, shape=(3, 37, 5, 7)):
    """(name, op, arguments) of every CUDA op: CPU tensors of dtype, both layouts where the kernels differ."""
    ops = torch.ops.fastgan
    gen = torch.Generator().manual_seed(6)
    math = torch.float64 if dtype == torch.float64 else torch.float32

    def rand(*shape, like=dtype, cl=False):
        t = torch.randn(shape, generator=gen, dtype=torch.float64).to(like)
        return t.contiguous(memory_format=torch.channels_last) if cl else t

    n, c, h, w = shape
    cases = []
    for cl in (False, True):
        x, dy, g, b = rand(n, c, h, w, cl=cl), rand(n, c, h, w, cl=cl), rand(n, c, h, w, cl=cl), rand(c)
        cases += [(f"bias_act cl={cl}", ops.bias_act.default, (x, b, 1, 3, 0.0, 2**0.5, 1.5)),
                  (f"bias_act_backward cl={cl}", ops.bias_act_backward.default, (dy, x, b, 1, 2, 0.2, 1.0, None)),
                  (f"bias_act_backward2 cl={cl}", ops.bias_act_backward2.default, (g, dy, x, b, 1, 8, 0.0, 1.0, None))]
        wt, bt = rand(c, like=math).abs() + 0.5, rand(c, like=math)
        for instance in (False, True):
            y, mean, var = ops.norm_act.default(x, wt, bt, None, None, True, instance, 1e-5, 2, 0.2)
            cases += [(f"norm_act instance={instance} cl={cl}", ops.norm_act.default,
                       (x, wt, bt, None, None, True, instance, 1e-5, 2, 0.2)),
                      (f"norm_act_backward instance={instance} cl={cl}", ops.norm_act_backward.default,
                       (dy, x, wt, bt, mean, var, True, instance, 1e-5, 2, 0.2))]
        running = (rand(c, like=math), rand(c, like=math).abs() + 0.5)
        cases.append((f"norm_act eval cl={cl}", ops.norm_act.default, (x, wt, bt, *running, False, False, 1e-5, 1, 0)))
        scale, shift = rand(n, c, like=math), rand(n, c, like=math)
        _, cmean, cvar = ops.conditional_norm_act.default(x, scale, shift, None, None, True, 1e-5, 8, 0.0)
        cases += [(f"conditional_norm_act cl={cl}", ops.conditional_norm_act.default,
                   (x, scale, shift, None, None, True, 1e-5, 8, 0.0)),
                  (f"conditional_norm_act_backward cl={cl}", ops.conditional_norm_act_backward.default,
                   (dy, x, scale, shift, cmean, cvar, True, 1e-5, 8, 0.0))]
        cases.append((f"norm_act_train cl={cl}", ops.norm_act_train.default,
                      (x, wt, bt, rand(c, like=math), rand(c, like=math).abs(), torch.tensor(3), None, 1e-5, 1, 0.0)))
    cases.append(("norm_act_update_stats", ops.norm_act_update_stats.default,
                  (rand(c), rand(c).abs(), torch.tensor(2), rand(2 * c, like=math), rand(2 * c, like=math).abs(), 0.1,
                   35, 2)))
    fake, real = rand(70001), rand(5003)
    _, grad_a, grad_b = ops.gan_loss.default(fake, real, 0, 1)
    cases += [("gan_loss", ops.gan_loss.default, (fake, real, 0, 1)),
              ("gan_loss one term", ops.gan_loss.default, (real, None, 7, 0)),
              ("gan_loss_backward", ops.gan_loss_backward.default, (rand(), grad_a, grad_b)),
              ("penalty_interpolate", ops.penalty_interpolate.default, (rand(n, c, h, w), rand(n, c, h, w),
                                                                        torch.rand(n, generator=gen))),
              ("grad_norm_penalty", ops.grad_norm_penalty.default, (rand(n, c, h, w), 10.0, 1.0, 1.0))]
    gp = rand(n, c, h, w)
    _, norms = ops.grad_norm_penalty.default(gp, 10.0, 0.0, 0.5)
    cases.append(("grad_norm_penalty_backward", ops.grad_norm_penalty_backward.default,
                  (rand(), gp, norms, 10.0, 0.0, 0.5)))
    return cases


@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
def test_every_cuda_op_through_nvrtc_plans_matches_cpu(plans_emulated, dtype):
    """Each CUDA op's glue, NVRTC plan and kernels against the same op's C++ CPU kernels (checked against float64
    elsewhere): the same outputs, and the same in-place updates, up to the rounding of differently ordered sums."""
    tol = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    for name, op, args in _op_cases(dtype):
        cpu_args = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
        cuda_args = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
        expected, ours = op(*cpu_args), plans_emulated(op, *cuda_args)
        expected = expected if isinstance(expected, tuple) else (expected,)
        ours = ours if isinstance(ours, tuple) else (ours,)
        for i, (e, o) in enumerate([*zip(expected, ours), *zip(cpu_args, cuda_args)]):
            if isinstance(e, torch.Tensor):
                assert o.stride() == e.stride() or e.numel() <= 1, f"{name}: output {i} strides"
                torch.testing.assert_close(o, e, rtol=tol, atol=tol, msg=lambda m, i=i, name=name: f"{name}, {i}: {m}")


def _traffic(lib) -> dict[str, tuple[int, int, int]]:
    """kernel -> (warp-wide load requests, 32-byte sectors they touched, bytes they asked for), as counted."""
    out, name, counts = {}, ctypes.create_string_buffer(256), (ctypes.c_int64 * 3)()
    while lib.emu_traffic(len(out), name, 256, counts) == 0:
        out[name.value.decode()] = tuple(counts)
    return out


def test_cuda_kernels_read_memory_in_whole_sectors(emulated, plans_emulated):
    """Every CUDA kernel's warps read adjacent elements: over every op in both layouts (float32, 64 channels), the
    32-byte sectors a kernel's warp-wide loads touch hold at least 90% bytes it asked for (32 lanes reading 32 adjacent
    floats: 4 sectors, 100%; one channel's values C apart in channels_last, as norm_act's reductions read them
    before their row tiles: 32 sectors, 12.5%)."""
    emulated.emu_trace.argtypes = [ctypes.c_bool]
    emulated.emu_traffic.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p]
    emulated.emu_trace(True)
    try:
        for _, op, args in _op_cases(torch.float32, shape=(4, 64, 8, 8)):
            plans_emulated(op, *args)
    finally:
        emulated.emu_trace(False)
    traffic = _traffic(emulated)
    assert {"fastgan::stats_partial_kernel<float>", "fastgan::grad_partial_kernel<float>"} <= traffic.keys()
    for kernel, (requests, sectors, asked) in traffic.items():
        if not requests:  # a kernel that reads no tensor element through load() (the merges: a value per group)
            continue
        print(f"{kernel}: {requests} requests, {sectors / requests:.2f} sectors each, {asked / (32 * sectors):.0%}")
        assert asked >= 0.9 * 32 * sectors, f"{kernel}: {sectors / requests:.1f} sectors per warp-wide load"
