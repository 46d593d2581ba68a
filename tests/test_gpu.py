"""On a CUDA GPU: the branches the Triton launchers take only there, against the float64 reference, and the
Triton-specific checks the CPU suite runs under the interpreter, run for real. Everything here but the first test
skips on CPU (the GPU suite, benchmarks/gpu_suite.py, runs it).

GPU-only branches (the interpreter picks other tile sizes):

- convolutions in 128-row tiles with a 3-stage software pipeline, 128-wide channel tiles with 8 warps, row / channel
  / reduction tails; the batch-statistics epilogue on those tiles;
- the weight gradient's split reduction (partials over programs, summed in a fixed order: bitwise deterministic);
- adversarial losses past 65,536 logits (several programs' partial sums added by a second kernel);
- 64-bit offsets of the elementwise and normalization kernels (tensors past 2^31 elements: ``bigmem``, tens of GiB).

``test_the_gpu_shapes_reach_the_gpu_branches`` (CPU too) proves, by recording the launches on meta tensors with the
GPU tile choices, that the shapes below reach those branches.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fastgan._backend import custom_ops
from fastgan.losses import LOSS_KINDS, d_loss, d_loss_ref, g_loss, g_loss_ref
from fastgan.ops import (
    batch_norm_act,
    batch_norm_act_ref,
    bias_act,
    bias_act_ref,
    conv2d_act,
    conv2d_act_ref,
    conv2d_batch_norm_act,
    conv_transpose2d_act,
    conv_transpose2d_act_ref,
    conv_transpose2d_batch_norm_act,
    instance_norm_act,
    instance_norm_act_ref,
)

from .conftest import assert_close_to_truth, opcheck, require

FAST = ("triton", "native")
LOW = (torch.float32, torch.float16, torch.bfloat16)
DTYPE_IDS = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.float64: "f64"}

# (transposed, x shape, C_out, kernel, stride, padding, output_padding). On a GPU every conv runs 128-row tiles with
# num_stages=3; these add several row tiles and a row tail, 128-wide (8 warps) and 64-wide channel tiles with a
# masked tail (96, 72 channels), and an input-channel tail past the 32-wide reduction block (48, 40 channels).
CONVS = [
    (False, (8, 64, 16, 16), 128, 4, 2, 1, 0),
    (False, (5, 48, 13, 11), 96, 3, 1, 1, 0),
    (True, (8, 128, 8, 8), 64, 4, 2, 1, 0),
    (True, (3, 40, 7, 5), 72, 4, 2, 1, 1),
]
# (transposed, dz shape, x shape, kernel, stride, padding): reductions long enough to be split over programs.
WGRADS = [
    (False, (32, 64, 32, 32), (32, 64, 32, 32), 3, 1, 1),
    (False, (8, 128, 8, 8), (8, 64, 16, 16), 4, 2, 1),
    (True, (16, 64, 16, 16), (16, 128, 8, 8), 4, 2, 1),
]
LOGITS = ((128, 1, 30, 30), (96, 1, 30, 30))  # 203,520 logits in all: past the one-program limit of 65,536
BIG_BIAS_ACT = (2**23 + 3, 256)  # 2^31 + 768 elements
BIG_NORM = (129, 4, 2048, 2048)  # 2,164,260,864 elements


def _conv_id(c):
    return f"{'convT' if c[0] else 'conv'}-{'x'.join(map(str, c[1]))}-{c[2]}"


# --- the shapes reach the branches (runs on CPU too) ----------------------------------------------------------------


def test_the_gpu_shapes_reach_the_gpu_branches(monkeypatch):
    """With the GPU tile choices (TRITON_INTERPRET unset), recorded launches on meta tensors show each shape of this
    file taking the branch it is meant to test."""
    pytest.importorskip("triton")
    # Imported first, as the session has them: Triton decides at import whether a kernel is interpreted, and a kernel
    # module imported here without TRITON_INTERPRET would stay compiled-for-GPU for every later test of this process.
    from fastgan.kernels.triton import bias_act as bias_act_k
    from fastgan.kernels.triton import conv as conv_k
    from fastgan.kernels.triton import losses as losses_k
    from fastgan.kernels.triton import norm_act as norm_k
    from fastgan.kernels.triton.launch import recording

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the launchers pick the GPU tile sizes

    def meta(*shape, dtype=torch.bfloat16):
        return torch.empty(shape, dtype=dtype, device="meta")

    with recording() as launches:
        for transposed, xs, co, k, s, p, op in CONVS:
            w = meta(xs[1], co, k, k) if transposed else meta(co, xs[1], k, k)
            conv_k._launch(meta(*xs), w, meta(co), [s, s], [p, p], [op, op] if transposed else None, 2, 0.2)
            conv_k._launch(meta(*xs), w, meta(co), [s, s], [p, p], [op, op] if transposed else None, 0, 0.0, True)
    fwd = [rec.meta for rec in launches if rec.kernel.__name__ == "_conv_fwd_kernel"]
    assert len(fwd) == 2 * len(CONVS)
    assert all(m["BLOCK_M"] == 128 and m["num_stages"] == 3 for m in fwd)
    assert {m["BLOCK_N"] for m in fwd} >= {64, 128} and any(m["num_warps"] == 8 for m in fwd)
    assert any(m["STATS"] for m in fwd)
    rows = [rec.grid[0] for rec in launches if rec.kernel.__name__ == "_conv_fwd_kernel"]
    assert min(rows) >= 2  # several row tiles per launch

    for transposed, dzs, xs, k, s, p in WGRADS:
        with recording() as launches:
            conv_k._launch_weight_grad(meta(*dzs), meta(*xs), (k, k), (s, s), (p, p), transposed)
        (rec,) = launches
        assert rec.grid[2] > k * k, f"no split reduction for {dzs}"  # kh * kw * split programs on axis 2

    with recording() as launches:
        losses_k.gan_loss_triton._init_fn(meta(*LOGITS[0], dtype=torch.float32),
                                          meta(*LOGITS[1], dtype=torch.float32), 0, 1)
    assert [rec.kernel.__name__ for rec in launches] == ["_gan_loss_fwd_kernel", "_sum_partials_kernel"]
    assert launches[0].grid[0] > 1

    with recording() as launches:
        x = meta(*BIG_BIAS_ACT)
        bias_act_k._launch(0, x, meta(BIG_BIAS_ACT[1]), None, None, 1, 2, 0.2, 1.0, None)
        bias_act_k._launch(1, x, meta(BIG_BIAS_ACT[1]), x, None, 1, 2, 0.2, 1.0, None)
        big = meta(*BIG_NORM)
        for instance in (False, True):
            norm_k.norm_act_triton._init_fn(big, None, None, None, None, True, instance, 1e-5, 0, 0.0)
            stats = meta(BIG_NORM[0] * BIG_NORM[1] if instance else BIG_NORM[1], dtype=torch.float32)
            norm_k.norm_act_backward_triton._init_fn(big, big, None, None, stats, stats, True, instance, 1e-5, 0, 0.0)
    int64 = {rec.kernel.__name__ for rec in launches if rec.meta.get("INT64")}
    assert {"_bias_act_kernel", "_norm_elementwise_kernel", "_norm_partial_kernel"} <= int64


# --- convolutions in GPU tiles ---------------------------------------------------------------------------------------


def _rand(shape, dtype, device, seed, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(device=device, dtype=dtype)


def _conv_inputs(config, dtype, layout):
    transposed, xs, co, k, s, p, op = config
    x = _rand(xs, dtype, "cuda", 0)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w_shape = (xs[1], co, k, k) if transposed else (co, xs[1], k, k)
    w = _rand(w_shape, dtype, "cuda", 1, scale=1 / math.sqrt(xs[1] * k * k))
    b = _rand((co,), dtype, "cuda", 2)
    return x, w, b


def _grads(fn, inputs, seed=3):
    inputs = [t.detach().requires_grad_() for t in inputs]
    out = fn(*inputs)
    go = _rand(out.shape, out.dtype, out.device, seed)
    return [out.detach(), *torch.autograd.grad(out, inputs, go)]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", LOW, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("config", CONVS, ids=_conv_id)
def test_conv_in_gpu_tiles_matches_float64(config, impl, dtype, layout):
    """Forward, input, weight and bias gradients of conv(+bias+lrelu) against the specification in float64, within
    twice PyTorch's own error at ``dtype`` (+ ulps)."""
    require(impl, "cuda")
    transposed, _, _, _, s, p, op = config

    def run(impl_):
        if transposed:
            return lambda x, w, b: conv_transpose2d_act(x, w, b, s, p, op, "lrelu", 0.2, impl=impl_)
        return lambda x, w, b: conv2d_act(x, w, b, s, p, "lrelu", 0.2, impl=impl_)

    def spec(x, w, b):
        if transposed:
            return conv_transpose2d_act_ref(x, w, b, s, p, op, "lrelu", 0.2)
        return conv2d_act_ref(x, w, b, s, p, "lrelu", 0.2)

    inputs = _conv_inputs(config, dtype, layout)
    ours = _grads(run(impl), inputs)
    truth = _grads(spec, [t.double() for t in inputs])
    torch_low = _grads(spec, inputs)
    for name, a, t, r in zip(("y", "dx", "dw", "db"), ours, truth, torch_low):
        assert_close_to_truth(a, t.cpu(), r, dtype, f"{_conv_id(config)} {name}")
    if layout == "channels_last":
        assert ours[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", LOW, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("config", [CONVS[0], CONVS[2], CONVS[3]], ids=_conv_id)
def test_conv_batch_norm_statistics_epilogue_in_gpu_tiles(config, impl, dtype):
    """Conv -> batch norm -> ReLU in training (on Triton the statistics come from the conv's epilogue over 128-row
    tiles), forward and gradients, and the running statistics, against float64."""
    require(impl, "cuda")
    transposed, _, co, _, s, p, op = config
    x, w, b = _conv_inputs(config, dtype, "channels_last")
    gamma, beta = _rand((co,), torch.float32, "cuda", 4).abs() + 0.5, _rand((co,), torch.float32, "cuda", 5)

    def block(impl_, buffers):
        def fn(x, w, b, gamma, beta):
            common = dict(norm_weight=gamma, norm_bias=beta, running_mean=buffers[0], running_var=buffers[1],
                          training=True, act="relu")
            if transposed:
                if impl_ is None:
                    z = conv_transpose2d_act_ref(x, w, b, s, p, op)
                    return batch_norm_act_ref(z, gamma, beta, buffers[0], buffers[1], True, act="relu")
                return conv_transpose2d_batch_norm_act(x, w, b, s, p, op, impl=impl_, **common)
            if impl_ is None:
                return batch_norm_act_ref(conv2d_act_ref(x, w, b, s, p), gamma, beta, buffers[0], buffers[1], True,
                                          act="relu")
            return conv2d_batch_norm_act(x, w, b, s, p, impl=impl_, **common)

        return fn

    def buffers(dtype_):
        return [torch.zeros(co, device="cuda", dtype=dtype_), torch.ones(co, device="cuda", dtype=dtype_)]

    ours_buf, truth_buf, low_buf = buffers(torch.float32), buffers(torch.float64), buffers(torch.float32)
    ours = _grads(block(impl, ours_buf), [x, w, b, gamma, beta])
    truth = _grads(block(None, truth_buf), [t.double() for t in (x, w, b, gamma, beta)])
    torch_low = _grads(block(None, low_buf), [x, w, b, gamma, beta])
    for name, a, t, r in zip(("y", "dx", "dw", "db", "dgamma", "dbeta"), ours, truth, torch_low):
        assert_close_to_truth(a, t.cpu(), r, a.dtype, f"{_conv_id(config)} {name}")
    for name, a, t in zip(("running_mean", "running_var"), ours_buf, truth_buf):
        torch.testing.assert_close(a.double(), t, rtol=1e-2, atol=1e-2, msg=lambda m, n=name: f"{n}: {m}")


# --- the weight gradient's split reduction ---------------------------------------------------------------------------


def _aten_wgrad(dz, x, w_shape, s, p, transposed):
    w = torch.zeros(w_shape, dtype=dz.dtype, device=dz.device)
    op = [0, 0]
    if transposed:  # the output_padding that makes conv_transpose2d(x) the shape of dz
        op = [dz.shape[2 + d] - ((x.shape[2 + d] - 1) * s - 2 * p + w_shape[2 + d]) for d in range(2)]
    return torch.ops.aten.convolution_backward(dz, x, w, None, [s, s], [p, p], [1, 1], transposed, op, 1,
                                               [False, True, False])[1]


@pytest.mark.parametrize("dtype", (torch.float64, *LOW), ids=DTYPE_IDS.get)
@pytest.mark.parametrize("config", WGRADS, ids=lambda c: f"{'convT' if c[0] else 'conv'}-{'x'.join(map(str, c[2]))}")
def test_split_weight_gradient_matches_float64_and_is_deterministic(config, dtype):
    require("triton", "cuda")
    from fastgan.kernels.triton.conv import _launch_weight_grad

    transposed, dzs, xs, k, s, p = config
    dz = _rand(dzs, dtype, "cuda", 0).contiguous(memory_format=torch.channels_last)
    x = _rand(xs, dtype, "cuda", 1).contiguous(memory_format=torch.channels_last)
    w_shape = (xs[1], dzs[1], k, k) if transposed else (dzs[1], xs[1], k, k)
    truth = _aten_wgrad(dz.double(), x.double(), w_shape, s, p, transposed)
    ours = [_launch_weight_grad(dz, x, (k, k), (s, s), (p, p), transposed) for _ in range(2)]
    assert torch.equal(ours[0], ours[1]), "the split reduction is not deterministic"
    if dtype == torch.float64:
        for split in (1, 5):
            forced = _launch_weight_grad(dz, x, (k, k), (s, s), (p, p), transposed, split)
            torch.testing.assert_close(forced, truth, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(ours[0], truth, rtol=1e-10, atol=1e-10)
    else:
        torch_low = _aten_wgrad(dz, x, w_shape, s, p, transposed)
        assert_close_to_truth(ours[0], truth.cpu(), torch_low, dtype, "split weight gradient")


# --- losses past 65,536 logits ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", LOW, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("kind", list(LOSS_KINDS))
def test_losses_past_65536_logits(kind, impl, dtype):
    require(impl, "cuda")
    real, fake = _rand(LOGITS[0], dtype, "cuda", 0, 3.0), _rand(LOGITS[1], dtype, "cuda", 1, 3.0)
    for name, fn, spec, inputs in (
        ("d_loss", lambda r, f: d_loss(r, f, kind, impl=impl), lambda r, f: d_loss_ref(r, f, kind), [real, fake]),
        ("g_loss", lambda f: g_loss(f, kind, impl=impl), lambda f: g_loss_ref(f, kind), [fake]),
    ):
        ours, truth = _grads(fn, inputs), _grads(spec, [t.double() for t in inputs])
        torch_low = _grads(spec, inputs)
        for i, (a, t, r) in enumerate(zip(ours, truth, torch_low)):
            assert_close_to_truth(a, t.cpu(), r, dtype, f"{name}[{kind}] output {i}")


# --- 64-bit offsets (tensors past 2^31 elements) ---------------------------------------------------------------------


@pytest.fixture
def free_gpu_memory():
    yield
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _chunks(n: int, size: int):
    return [(i, min(i + size, n)) for i in range(0, n, size)]


@pytest.mark.bigmem
@pytest.mark.parametrize("impl", FAST)
def test_bias_act_past_int32_offsets(impl, free_gpu_memory):
    """bias + lrelu forward and backward on 2^31 + 768 bfloat16 elements: the first rows, the rows around element
    2^31 and the last rows against float64, and the bias gradient against the float64 sum of the input gradient."""
    require(impl, "cuda")
    rows, c = BIG_BIAS_ACT
    x = torch.randn(rows, c, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(c, device="cuda", dtype=torch.bfloat16)
    xg, bg = x.requires_grad_(), b.detach().clone().requires_grad_()
    y = bias_act(xg, bg, act="lrelu", alpha=0.2, impl=impl)
    dy = torch.randn_like(y)
    dx, db = torch.autograd.grad(y, (xg, bg), dy)
    boundary = 2**31 // c
    for lo, hi in ((0, 4), (boundary - 4, boundary + 4), (rows - 4, rows)):
        z = x[lo:hi].detach().double() + b.double()
        y_ref = F.leaky_relu(z, 0.2)
        dx_ref = dy[lo:hi].double() * torch.where(z > 0, 1.0, 0.2)
        torch.testing.assert_close(y[lo:hi].double(), y_ref, rtol=1.6e-2, atol=1e-2, msg=f"y rows {lo}:{hi}")
        torch.testing.assert_close(dx[lo:hi].double(), dx_ref, rtol=1.6e-2, atol=1e-2, msg=f"dx rows {lo}:{hi}")
    db_ref = sum(dx[lo:hi].double().sum(0) for lo, hi in _chunks(rows, 2**19))
    torch.testing.assert_close(db.double(), db_ref, rtol=2e-2, atol=2.0)


def _channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of [N, C, H, W] in float64, a few samples at a time."""
    s1 = s2 = 0
    for lo, hi in _chunks(x.shape[0], 8):
        part = x[lo:hi].double()
        s1 = s1 + part.sum((0, 2, 3))
        s2 = s2 + part.square().sum((0, 2, 3))
    count = x.numel() // x.shape[1]
    mean = s1 / count
    return mean, s2 / count - mean.square()


@pytest.mark.bigmem
@pytest.mark.parametrize("impl", FAST)
def test_batch_norm_past_int32_offsets(impl, free_gpu_memory):
    """Batch norm (training) forward and backward on 2.16e9 bfloat16 elements: samples at the start, around element
    2^31 and at the end against float64 computed from the full batch statistics."""
    require(impl, "cuda")
    n, c, h, w = BIG_NORM
    x = torch.randn(BIG_NORM, device="cuda", dtype=torch.bfloat16)
    weight, bias = torch.rand(c, device="cuda") + 0.5, torch.randn(c, device="cuda")
    xg = x.requires_grad_()
    y = batch_norm_act(xg, weight, bias, None, None, True, impl=impl)
    dy = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, xg, dy)
    mean, var = _channel_stats(x.detach())
    rstd = (var + 1e-5).rsqrt()
    view = (1, c, 1, 1)
    sum_dy = sum(dy[lo:hi].double().sum((0, 2, 3)) for lo, hi in _chunks(n, 8))
    sum_dy_xhat = sum(((x[lo:hi].detach().double() - mean.view(view)) * rstd.view(view) * dy[lo:hi].double())
                      .sum((0, 2, 3)) for lo, hi in _chunks(n, 8))
    count = n * h * w
    for i in (0, n // 2, n - 1):  # element 2^31 is in the last sample
        xhat = (x[i].detach().double() - mean.view(c, 1, 1)) * rstd.view(c, 1, 1)
        y_ref = xhat * weight.double().view(c, 1, 1) + bias.double().view(c, 1, 1)
        dx_ref = (weight.double() * rstd).view(c, 1, 1) * (
            dy[i].double() - (sum_dy / count).view(c, 1, 1) - xhat * (sum_dy_xhat / count).view(c, 1, 1))
        torch.testing.assert_close(y[i].double(), y_ref, rtol=1.6e-2, atol=2e-2, msg=f"y sample {i}")
        torch.testing.assert_close(dx[i].double(), dx_ref, rtol=1.6e-2, atol=2e-2, msg=f"dx sample {i}")


@pytest.mark.bigmem
@pytest.mark.parametrize("impl", FAST)
def test_instance_norm_past_int32_offsets(impl, free_gpu_memory):
    """Instance norm forward and backward on 2.16e9 bfloat16 elements: each sample only depends on itself, so
    samples at the start, around element 2^31 and at the end are checked against the float64 reference alone."""
    require(impl, "cuda")
    n, c, h, w = BIG_NORM
    x = torch.randn(BIG_NORM, device="cuda", dtype=torch.bfloat16)
    xg = x.requires_grad_()
    y = instance_norm_act(xg, impl=impl)
    dy = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, xg, dy)
    for i in (0, n // 2, n - 1):  # element 2^31 is in the last sample
        xi = x[i:i + 1].detach().double().requires_grad_()
        y_ref = instance_norm_act_ref(xi)
        (dx_ref,) = torch.autograd.grad(y_ref, xi, dy[i:i + 1].double())
        torch.testing.assert_close(y[i:i + 1].double(), y_ref.detach(), rtol=1.6e-2, atol=2e-2)
        torch.testing.assert_close(dx[i:i + 1].double(), dx_ref, rtol=1.6e-2, atol=2e-2)


# --- the Triton-specific checks, on the GPU --------------------------------------------------------------------------


def _f64(*shape, seed=0):
    return _rand(shape, torch.float64, "cuda", seed).requires_grad_()


@pytest.mark.parametrize("act", ["lrelu", "tanh", "silu"])
def test_triton_conv_gradgradcheck(act):
    """gradcheck and gradgradcheck of the Triton conv and conv-transpose (float64, GPU tiles)."""
    require("triton", "cuda")
    x, b = _f64(2, 3, 6, 5), _f64(4, seed=1)
    w, wt = _f64(4, 3, 3, 3, seed=2), _f64(3, 4, 4, 4, seed=3)
    alpha = 0.2 if act == "lrelu" else None
    for fn, weight in (
        (lambda x, w, b: conv2d_act(x, w, b, 2, 1, act, alpha, impl="triton"), w),
        (lambda x, w, b: conv_transpose2d_act(x, w, b, 2, 1, 1, act, alpha, impl="triton"), wt),
    ):
        assert torch.autograd.gradcheck(fn, (x, weight, b), fast_mode=True)
        assert torch.autograd.gradgradcheck(fn, (x, weight, b), fast_mode=True)


@pytest.mark.parametrize("impl", FAST)
def test_norm_gradgradcheck(impl):
    require(impl, "cuda")
    x, w, b = _f64(3, 4, 5, 5), _f64(4, seed=1), _f64(4, seed=2)
    for instance in (False, True):
        def fn(x, w, b, instance=instance):
            if instance:
                return instance_norm_act(x, w, b, act="tanh", impl=impl)
            return batch_norm_act(x, w, b, None, None, True, act="tanh", impl=impl)

        assert torch.autograd.gradcheck(fn, (x, w, b), fast_mode=True)
        assert torch.autograd.gradgradcheck(fn, (x, w, b), fast_mode=True)


def test_triton_weight_grad_gradgradcheck():
    require("triton", "cuda")
    ops = custom_ops("conv_act", "triton")
    for transposed, op in ((False, ops.conv2d_weight_grad), (True, ops.conv_transpose2d_weight_grad)):
        x = _f64(2, 3, 5, 4)
        dz = _f64(2, 2, 10, 8, seed=1) if transposed else _f64(2, 2, 3, 2, seed=1)

        def fn(dz, x, op=op, k=4 if transposed else 3):
            return op(dz, x, [k, k], [2, 2], [1, 1])

        assert torch.autograd.gradcheck(fn, (dz, x), fast_mode=True)
        assert torch.autograd.gradgradcheck(fn, (dz, x), fast_mode=True)


def test_triton_ops_pass_opcheck_with_aot_dispatch():
    """Schemas, fakes, autograd registration and AOT dispatch of every Triton op family on CUDA tensors (the
    interpreter cannot run the AOT-dispatch check)."""
    require("triton", "cuda")
    checks = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    conv = custom_ops("conv_act", "triton")
    x = _rand((2, 3, 6, 5), torch.float32, "cuda", 0).contiguous(memory_format=torch.channels_last)
    w, wt, b = (_rand(s, torch.float32, "cuda", i) for i, s in enumerate([(4, 3, 3, 3), (3, 4, 4, 4), (4,)], 1))
    opcheck(conv.conv2d_act, (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), [2, 2],
                                            [1, 1], 2, 0.2), test_utils=checks)
    opcheck(conv.conv_transpose2d_act, (x, wt.requires_grad_(), b, [2, 2], [1, 1], [1, 0], 3, 0.0),
                          test_utils=checks)
    dz = _rand((2, 4, 3, 3), torch.float32, "cuda", 5).requires_grad_()
    opcheck(conv.conv2d_weight_grad, (dz, x, [3, 3], [2, 2], [1, 1]), test_utils=checks)
    norm = custom_ops("norm_act", "triton")
    xn = _rand((2, 3, 4, 5), torch.float32, "cuda", 6)
    opcheck(norm.norm_act, (xn, None, None, None, None, True, False, 1e-5, 2, 0.2), test_utils=checks)
    bias = custom_ops("bias_act", "triton")
    opcheck(bias.bias_act, (xn.requires_grad_(), b[:3].detach().requires_grad_(), 1, 3, 0.0, 1.0,
                                          None), test_utils=checks)
    loss = custom_ops("gan_loss", "triton")
    logits = _rand((70000,), torch.float32, "cuda", 7).requires_grad_()
    opcheck(loss.gan_loss, (logits, logits.detach().clone().requires_grad_(), 0, 1), test_utils=checks)
    opcheck(loss.gan_loss, (logits, None, 1, 0), test_utils=checks)  # one-sided (g_loss): grad_b is empty


def test_triton_backward_dispatches_no_aten_convolution():
    """Forward, first and second order of the Triton conv path on the GPU dispatch no aten convolution."""
    require("triton", "cuda")
    from torch.utils._python_dispatch import TorchDispatchMode

    class Recorder(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.add(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    x, w, wt = _f64(2, 4, 9, 8).float(), _f64(8, 4, 3, 3, seed=1).float(), _f64(8, 3, 4, 4, seed=2).float()
    for t in (x, w, wt):
        t.retain_grad()
    with Recorder() as recorder:
        h = conv2d_act(x, w, None, 2, 1, "lrelu", 0.2, impl="triton")
        y = conv_transpose2d_act(h, wt, None, 2, 1, 1, "tanh", impl="triton")
        grads = torch.autograd.grad(y.square().sum(), (x, w, wt), create_graph=True)
        sum(g.square().sum() for g in grads).backward()
    assert not {op for op in recorder.ops if "convolution" in op}, sorted(recorder.ops)
    assert {"fastgan.conv2d_weight_grad_triton", "fastgan.conv_transpose2d_weight_grad_triton"} <= recorder.ops


def test_torch_compile_inductor_runs_the_triton_ops():
    """A fused conv -> batch norm -> lrelu block and a loss under torch.compile (Inductor, fullgraph) give eager's
    forward and gradients."""
    require("triton", "cuda")
    from fastgan.nn import BatchNormAct2d, FusedConv2d

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(FusedConv2d(3, 8, 4, 2, 1, act="lrelu", alpha=0.2, impl="triton"),
                                BatchNormAct2d(8, act="lrelu", alpha=0.2, impl="triton")).cuda()

    def step(x, fake):
        return d_loss(model(x).mean((1, 2, 3)), fake, "hinge", impl="triton")

    compiled = torch.compile(step, fullgraph=True)
    x, fake = torch.randn(4, 3, 16, 16, device="cuda"), torch.randn(4, device="cuda")
    ours = compiled(x, fake)
    grads = torch.autograd.grad(ours, list(model.parameters()))
    ref = step(x, fake)
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


# --- impl="auto" by measurement on the GPU ----------------------------------------------------------------------------


def test_auto_measures_on_cuda(tmp_path, monkeypatch):
    """The first call of bias_act on CUDA checks and times every usable implementation with CUDA events, keeps the
    fastest correct one, and the result is right."""
    require("ref", "cuda")
    from fastgan import _autotune

    monkeypatch.setenv("FASTGAN_AUTOTUNE_CACHE", str(tmp_path / "autotune.json"))
    monkeypatch.delenv("FASTGAN_AUTOTUNE", raising=False)
    monkeypatch.delenv("FASTGAN_IMPL", raising=False)
    _autotune.clear()
    try:
        x = torch.randn(64, 256, 32, 32, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        b = torch.randn(256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        y = bias_act(x, b, act="lrelu", alpha=0.2)
        torch.testing.assert_close(y, F.leaky_relu(x + b.view(1, -1, 1, 1), 0.2))
        (entries,) = _autotune.entries().values()
        (entry,) = entries.values()
        usable = set(_autotune.default_candidates(torch.device("cuda")))
        assert set(entry["ms"]) | set(entry["rejected"]) == usable
        assert not entry["rejected"], entry["rejected"]
        assert entry["impl"] == min(entry["ms"], key=entry["ms"].get)
    finally:
        _autotune.clear()


# --- the NVRTC path of the native CUDA kernels (fastgan/_nvrtc.py) ----------------------------------------------------


@pytest.mark.parametrize("dtype", LOW, ids=DTYPE_IDS.get)
def test_nvrtc_kernels_run_on_the_current_stream_past_the_one_block_branches(dtype, tmp_path, monkeypatch):
    """FASTGAN_NATIVE=nvrtc: the kernels compiled by NVRTC (cache in tmp_path) run on a side stream, the one current
    when the op is called, on shapes that take the multi-block branches (several norm chunks, the loss finalize
    kernel), and match the float64 reference; where nvcc's kernels are built in too, the two paths agree closely."""
    from fastgan import _nvrtc
    from fastgan._backend import native_extension

    monkeypatch.setenv("FASTGAN_NATIVE", "nvrtc")
    monkeypatch.setenv("FASTGAN_NVRTC_CACHE", str(tmp_path))
    require("native", "cuda")
    assert native_extension()[0]._uses_nvrtc()
    x = _rand((8, 16, 40, 40), dtype, "cuda", 0, 2.0)  # 12,800 values per channel: 4 chunks of 4096
    b = _rand((16,), dtype, "cuda", 1, 1.0)
    logits = _rand(LOGITS[0], dtype, "cuda", 2, 3.0)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    cases = [  # (ours, the specification)
        (lambda t: bias_act(t, b, act="lrelu", alpha=0.2, impl="native"),
         lambda t: bias_act_ref(t, b.to(t.dtype), act="lrelu", alpha=0.2)),
        (lambda t: batch_norm_act(t, None, None, None, None, True, act="relu", impl="native"),
         lambda t: batch_norm_act_ref(t, None, None, None, None, True, act="relu")),
        (lambda t: instance_norm_act(t, act="tanh", impl="native"), lambda t: instance_norm_act_ref(t, act="tanh")),
    ]
    with torch.cuda.stream(side):
        outs = [ours(x) for ours, _ in cases] + [g_loss(logits, "nonsaturating", impl="native")]
    side.synchronize()
    for i, (_, spec) in enumerate(cases):
        assert_close_to_truth(outs[i], spec(x.double()).cpu(), spec(x), dtype, f"NVRTC case {i}")
    assert_close_to_truth(outs[-1], g_loss_ref(logits.double(), "nonsaturating").cpu(),
                          g_loss_ref(logits, "nonsaturating"), dtype, "NVRTC g_loss")
    assert list(tmp_path.glob("*.json")), "no compiled module was cached"
    if native_extension()[0].with_cuda():
        monkeypatch.setenv("FASTGAN_NATIVE", "nvcc")
        nvcc = bias_act(x, b, act="lrelu", alpha=0.2, impl="native")
        assert not native_extension()[0]._uses_nvrtc()
        torch.testing.assert_close(outs[0], nvcc)  # the same code; two compilers' versions may round differently
    assert _nvrtc.KERNELS  # the module imported CuPy only now, on a GPU


# --- whole training steps as CUDA graphs ------------------------------------------------------------------------------


def test_graphed_step_replays_a_training_step_as_eager_runs_it():
    """A fused-Adam step of a small network with a gradient penalty (double backward) and noise from a registered
    generator: 8 calls graphed (3 warm-up, a capture, replays) against 8 eager calls from the same state."""
    require("ref", "cuda")
    from fastgan.losses import gradient_penalty
    from fastgan.train import graphed_step

    def make():
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LeakyReLU(0.2), torch.nn.Linear(32, 1)).cuda()
        opt = torch.optim.Adam(net.parameters(), lr=1e-2, fused=True, capturable=True)  # capture refuses others
        return net, opt, torch.Generator("cuda").manual_seed(1)

    def step(net, opt, noise, real):
        opt.zero_grad(set_to_none=True)
        fake = torch.randn(real.shape, device="cuda", generator=noise)
        eps = torch.rand(real.shape[0], device="cuda", generator=noise)
        loss = net(fake).mean() - net(real).mean() + gradient_penalty(net, real, fake, eps=eps, impl="ref")
        loss.backward()
        opt.step()
        return loss.detach()

    batches = [torch.randn(8, 16, device="cuda", generator=torch.Generator("cuda").manual_seed(i)) for i in range(8)]
    eager_net, eager_opt, eager_noise = make()
    eager_losses = [step(eager_net, eager_opt, eager_noise, b).clone() for b in batches]
    net, opt, noise = make()
    graphed = graphed_step(lambda real: step(net, opt, noise, real), generators=[noise])
    losses = [graphed(b).clone() for b in batches]
    assert graphed.graph is not None  # the last calls were replays
    torch.testing.assert_close(torch.stack(losses), torch.stack(eager_losses), rtol=1e-5, atol=1e-6)
    for p, q in zip(net.parameters(), eager_net.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="graphed_step: argument 0 is"):
        graphed(torch.randn(4, 16, device="cuda"))


@pytest.mark.parametrize("changes", [dict(model="wgan-gp", n_critic=2), dict(model="dcgan", r1_gamma=1.0, r1_every=2),
                                     dict(model="dcgan", amp="bf16")], ids=["wgan-gp", "dcgan-lazy-r1", "dcgan-bf16"])
def test_trainer_cuda_graphs_train_as_the_eager_trainer_does(changes, tmp_path):
    require("ref", "cuda")
    from fastgan.train import TrainConfig, Trainer

    torch.backends.cudnn.deterministic = True
    try:
        runs = []
        for graphs in (False, True):
            config = TrainConfig(data="digits", image_size=16, ngf=8, ndf=8, z_dim=16, batch_size=8, steps=20,
                                 device="cuda", cuda_graphs=graphs, out=str(tmp_path / str(graphs)), **changes)
            trainer = Trainer(config, verbose=False)
            for _ in range(10):
                trainer.train_step()
            runs.append(trainer)
    finally:
        torch.backends.cudnn.deterministic = False
    eager, graphed = runs
    assert graphed.graphs and all(g.graph is not None for g in graphed.graphs.values())
    for (name, p), q in zip(eager.nets["G"].named_parameters(), graphed.nets["G"].parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"G.{name}: {m}")
    assert torch.equal(eager.noise.get_state(), graphed.noise.get_state())  # the same random numbers were drawn


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_training_batch_norm_updates_its_buffers_within_its_forward(impl, momentum, dtype):
    """fastgan::norm_act_train on the GPU (native: the statistics merge updates the buffers, the normalization kernel
    counts the step; momentum=None reads the counter there): output, float32 buffers and step counter as
    nn.BatchNorm2d's over several steps, for a float32 and a float16 input (autocast's mix), and captured in a CUDA
    graph, whose replays keep counting."""
    require(impl, "cuda")
    from torch import nn

    from fastgan.nn import BatchNormAct2d

    reference = nn.BatchNorm2d(6, momentum=momentum).cuda()
    ours = BatchNormAct2d(6, momentum=momentum, act="linear", impl=impl).cuda()  # nn.BatchNorm2d has no activation
    gen = torch.Generator(device="cuda").manual_seed(0)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2  # the output in float16: a few of its ulps
    for _ in range(3):
        x = (torch.randn(4, 6, 5, 7, generator=gen, device="cuda") * 2 + 1).to(dtype)
        torch.testing.assert_close(ours(x).float(), reference(x).float(), rtol=tolerance, atol=tolerance)
    _assert_buffers_match(ours, reference)
    x = torch.randn(4, 6, 5, 7, generator=gen, device="cuda").to(dtype)
    ours(x)  # warm-up outside the capture
    reference(x)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ours(x)
    for _ in range(2):  # the capture ran nothing: each replay is one step
        graph.replay()
        reference(x)
    _assert_buffers_match(ours, reference)


def _assert_buffers_match(ours, reference):
    for name, buffer in reference.named_buffers():
        torch.testing.assert_close(getattr(ours, name), buffer, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("buffers", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_training_op_on_cuda_is_the_forward_then_the_update(impl, buffers):
    """On the GPU, where native updates the buffers inside the statistics merge (the buffers' dtype switched at run
    time): fastgan::norm_act_train bit for bit as norm_act then norm_act_update_stats, for every buffer dtype, with a
    float16 input (float64 with float64 buffers), momentum and momentum=None."""
    require(impl, "cuda")
    ops = custom_ops("norm_act", impl)
    dtype = torch.float64 if buffers == torch.float64 else torch.float16
    math = torch.float64 if dtype == torch.float64 else torch.float32
    x = (_rand((3, 5, 9, 7), torch.float32, "cuda", 11) * 2 + 1).to(dtype).contiguous(memory_format=torch.channels_last)
    w, b = _rand((5,), math, "cuda", 12) + 1, _rand((5,), math, "cuda", 13)
    for momentum in (0.1, None):
        start = _rand((2, 5), torch.float32, "cuda", 14).to(buffers)
        running, steps = start.clone(), torch.tensor(4, device="cuda")
        y, mean, var = ops.norm_act_train(x, w, b, running[0], running[1], steps, momentum, 1e-5, 3, 0.2)
        y_ref, mean_ref, var_ref = ops.norm_act(x, w, b, None, None, True, False, 1e-5, 3, 0.2)
        expected, expected_steps = start.clone(), torch.tensor(4, device="cuda")
        ops.norm_act_update_stats(expected[0], expected[1], expected_steps, mean_ref, var_ref, momentum, 189, 1)
        for ours, theirs in [(y, y_ref), (mean, mean_ref), (var, var_ref), (running, expected)]:
            assert torch.equal(ours, theirs), momentum
        assert steps.item() == expected_steps.item() == 5
