"""conv2d_act / conv_transpose2d_act beyond the parity matrix: gradgradcheck, bad input, and the fused modules."""

from __future__ import annotations

import collections

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import fastgan._backend
from fastgan._backend import triton_interpreting
from fastgan.nn import (
    BatchNormAct2d,
    FusedConv2d,
    FusedConvTranspose2d,
    FusedLinear,
    FusedSequential,
    InstanceNormAct2d,
)
from fastgan.ops import conv2d_act, conv2d_batch_norm_act, conv_transpose2d_act, conv_transpose2d_batch_norm_act
from fastgan.ops.conv_act import output_read_only

from .conftest import assert_close_to_truth, opcheck, require


def _rand(*shape, seed=0, grad=True):
    t = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return t.requires_grad_(grad)


# --- second order -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("act", ["lrelu", "tanh", "silu"])
@pytest.mark.parametrize("impl", ["ref", "native"])
def test_gradgradcheck(impl, act):
    """Tiny shapes, one random direction (fast_mode): the full Jacobians took minutes on 2 shared cores."""
    require(impl, "cpu")
    x, b = _rand(1, 2, 4, 3), _rand(2, seed=1)
    w, wt = _rand(2, 2, 3, 3, seed=2), _rand(2, 2, 4, 4, seed=3)
    alpha = 0.2 if act == "lrelu" else None
    for fn, weight in (
        (lambda x, w, b: conv2d_act(x, w, b, 2, 1, act, alpha, impl=impl), w),
        (lambda x, w, b: conv_transpose2d_act(x, w, b, 2, 1, 1, act, alpha, impl=impl), wt),
    ):
        assert torch.autograd.gradcheck(fn, (x, weight, b), fast_mode=True)
        assert torch.autograd.gradgradcheck(fn, (x, weight, b), fast_mode=True)


@pytest.mark.parametrize("act", ["tanh"])
def test_gradgradcheck_triton(act):
    """The Triton path (under the interpreter: tiny shapes, one random direction; ~50 s). The parity matrix compares
    the second order of every Triton case with float64 too."""
    require("triton", "cpu")
    x, b = _rand(1, 2, 4, 3), _rand(2, seed=1)
    w, wt = _rand(2, 2, 3, 3, seed=2), _rand(2, 2, 4, 4, seed=3)
    alpha = 0.2 if act == "lrelu" else None
    for fn, weight in (
        (lambda x, w, b: conv2d_act(x, w, b, 2, 1, act, alpha, impl="triton"), w),
        (lambda x, w, b: conv_transpose2d_act(x, w, b, 2, 1, 1, act, alpha, impl="triton"), wt),
    ):
        assert torch.autograd.gradcheck(fn, (x, weight, b), fast_mode=True)
        assert torch.autograd.gradgradcheck(fn, (x, weight, b), fast_mode=True)


@pytest.mark.parametrize("impl", ["ref", "native", "triton"])
def test_empty_batch_backward(impl):
    require(impl, "cpu")
    x, w, b = _rand(0, 3, 5, 5), _rand(3, 2, 4, 4, seed=1), _rand(2, seed=2)
    y = conv_transpose2d_act(x, w, b, 2, 1, 0, "relu", impl=impl)
    assert y.shape == (0, 2, 10, 10)
    y.sum().backward()
    assert x.grad.shape == x.shape and torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, 0 * b)


# --- conv -> batch norm -> activation ------------------------------------------------------------------------------


# Triton in evaluation mode composes the conv and norm ops gradgradchecked on their own (~75 s under the interpreter).
@pytest.mark.parametrize("impl,training", [("ref", True), ("ref", False), ("native", True), ("native", False),
                                           ("triton", True)])
def test_conv_batch_norm_gradgradcheck(impl, training):
    """Second order through the block (a gradient penalty through a DCGAN discriminator); tiny shapes, one random
    direction. On Triton in training the statistics come from the conv epilogue (~90 s under the interpreter)."""
    require(impl, "cpu")
    x, nw, nb = _rand(2, 2, 3, 3), _rand(2, seed=1) + 2, _rand(2, seed=2)
    w, wt, b = _rand(2, 2, 3, 3, seed=3), _rand(2, 2, 4, 4, seed=4), _rand(2, seed=5)
    stats = {"running_mean": _rand(2, seed=6, grad=False), "running_var": _rand(2, seed=7, grad=False).exp()}
    kw = dict(stats, training=training, act="lrelu", alpha=0.2, impl=impl)
    for fn, weight in (
        (lambda x, w, b, nw, nb: conv2d_batch_norm_act(x, w, b, 2, 1, norm_weight=nw, norm_bias=nb, **kw), w),
        (lambda x, w, b, nw, nb: conv_transpose2d_batch_norm_act(x, w, b, 2, 1, 1, norm_weight=nw, norm_bias=nb,
                                                                 **kw), wt),
    ):
        assert torch.autograd.gradcheck(fn, (x, weight, b, nw, nb), fast_mode=True)
        assert torch.autograd.gradgradcheck(fn, (x, weight, b, nw, nb), fast_mode=True)


def test_conv_batch_norm_reports_as_itself():
    conv, w = _x(2, 3, 6, 6), _x(4, 3, 3, 3)
    with pytest.raises(ValueError, match=r"^conv2d_batch_norm_act: .*1-D of length x.shape\[1\] = 4"):
        conv2d_batch_norm_act(conv, w, norm_weight=_x(3), norm_bias=None, running_mean=None, running_var=None,
                              training=True)
    with pytest.raises(ValueError, match=r"^conv_transpose2d_batch_norm_act: training=False .* running_mean/var"):
        conv_transpose2d_batch_norm_act(conv, _x(3, 4, 3, 3), norm_weight=None, norm_bias=None, running_mean=None,
                                        running_var=None, training=False)
    with pytest.raises(ValueError, match=r"^conv2d_batch_norm_act: x has 3 channels"):
        conv2d_batch_norm_act(conv, _x(4, 5, 3, 3), norm_weight=None, norm_bias=None, running_mean=None,
                              running_var=None, training=True)


# --- bad input ------------------------------------------------------------------------------------------------------


def _x(*shape, dtype=torch.float32):
    return torch.zeros(shape, dtype=dtype)


BAD = [
    ("conv2d_act", lambda: conv2d_act(_x(1, 3, 8, 8), _x(4, 5, 3, 3)), ValueError, "3 channels"),
    ("conv2d_act", lambda: conv2d_act(_x(1, 4, 8, 8), _x(4, 2, 3, 3)), ValueError, "groups=1"),
    ("conv2d_act", lambda: conv2d_act(_x(1, 3, 8, 8), _x(4, 3, 3)), ValueError, "4-D"),
    ("conv2d_act", lambda: conv2d_act(_x(3, 8, 8), _x(4, 3, 3, 3)), ValueError, "4-D"),
    ("conv2d_act", lambda: conv2d_act(_x(1, 3, 8, 8), _x(4, 3, 3, 3), padding=-1), ValueError, "padding"),
    ("conv2d_act", lambda: conv2d_act(_x(1, 3, 8, 8), _x(4, 3, 3, 3), stride=0), ValueError, "stride"),
    ("conv2d_act", lambda: conv2d_act(_x(1, 3, 8, 8), _x(4, 3, 3, 3), stride=(1, 2, 3)), TypeError, "pair"),
    ("conv2d_act", lambda: conv2d_act(_x(1, 3, 2, 2), _x(4, 3, 3, 3)), ValueError, "not positive"),
    ("conv2d_act", lambda: conv2d_act(_x(1, 3, 8, 8, dtype=torch.int32), _x(4, 3, 3, 3)), TypeError, "floating"),
    ("conv2d_act", lambda: conv2d_act(_x(1, 3, 8, 8), _x(4, 3, 3, 3, dtype=torch.float16)), TypeError, "dtype"),
    ("conv2d_act", lambda: conv2d_act(_x(1, 3, 8, 8), _x(4, 3, 3, 3, dtype=torch.float64)), TypeError, "cast"),
    ("conv2d_act", lambda: conv2d_act(_x(1, 3, 8, 8), _x(4, 3, 3, 3).to("meta")), ValueError, "device"),
    ("conv2d_act", lambda: conv2d_act(_x(1, 3, 8, 8), _x(4, 3, 3, 3), _x(4).to("meta")), ValueError, "device"),
    ("conv2d_act", lambda: conv2d_act(_x(1, 3, 8, 8), _x(4, 3, 3, 3), _x(3)), ValueError, "bias"),
    ("conv2d_act", lambda: conv2d_act(_x(1, 3, 8, 8), _x(4, 3, 3, 3), act="gelu"), ValueError, "activation"),
    ("conv2d_act", lambda: conv2d_act(_x(1, 3, 8, 8), _x(4, 3, 3, 3), act="relu", alpha=0.1), ValueError, "alpha"),
    ("conv_transpose2d_act", lambda: conv_transpose2d_act(_x(1, 3, 4, 4), _x(4, 3, 4, 4)), ValueError, "channels"),
    ("conv_transpose2d_act", lambda: conv_transpose2d_act(_x(1, 3, 4, 4), _x(3, 2, 4, 4), stride=2,
                                                          output_padding=2), ValueError, "output_padding"),
    ("conv_transpose2d_act", lambda: conv_transpose2d_act(_x(1, 3, 4, 4), _x(3, 2, 4, 4), padding=(0, -1)),
     ValueError, "padding"),
    ("conv_transpose2d_act", lambda: conv_transpose2d_act(_x(1, 3, 4, 4), _x(3, 2, 4, 4, dtype=torch.int64)),
     TypeError, "floating"),
]


@pytest.mark.parametrize("op,call,error,words", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_names_the_op(op, call, error, words):
    with pytest.raises(error, match=rf"^{op}: .*{words}"):
        call()


def test_modules_reject_what_they_cannot_compute():
    with pytest.raises(ValueError, match="FusedConv2d.from_modules: only groups=1"):
        FusedConv2d.from_modules(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match="FusedConvTranspose2d.from_modules: only groups=1"):
        FusedConvTranspose2d.from_modules(nn.ConvTranspose2d(4, 4, 3, dilation=2))
    with pytest.raises(ValueError, match="padding='same'"):
        FusedConv2d.from_modules(nn.Conv2d(4, 4, 3, padding="same"))
    with pytest.raises(TypeError, match="nn.BatchNorm2d or nn.InstanceNorm2d"):
        FusedConv2d.from_modules(nn.Conv2d(4, 4, 3), nn.LayerNorm(4))
    with pytest.raises(ValueError, match="norm must be None, 'batch' or 'instance'"):
        FusedConv2d(3, 4, 3, norm="group")
    with pytest.raises(ValueError, match="FusedConvTranspose2d: unknown activation"):
        FusedConvTranspose2d(3, 4, 3, act="gelu")


# --- modules ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["ref", "native", "triton"])
@pytest.mark.parametrize("norm", [None, "batch", "instance"])
@pytest.mark.parametrize("transposed", [False, True])
def test_module_matches_torch_sequence(transposed, norm, impl):
    """from_modules(conv, norm, act) computes the torch.nn sequence (train and eval), gradients and statistics,
    keeps channels_last, and a standalone module's state_dict is conv's keys plus ``norm.*``."""
    require(impl, "cpu")
    torch.manual_seed(0)
    conv = nn.ConvTranspose2d(4, 3, 4, 2, 1) if transposed else nn.Conv2d(4, 3, 4, 2, 1)
    norm_module = {None: None, "batch": nn.BatchNorm2d(3), "instance": nn.InstanceNorm2d(3, affine=True)}[norm]
    act = nn.LeakyReLU(0.2)
    seq = nn.Sequential(*[m for m in (conv, norm_module, act) if m is not None]).double()
    kind = FusedConvTranspose2d if transposed else FusedConv2d
    fused = kind.from_modules(seq[0], norm_module, act, impl=impl)
    expected_norm = {None: type(None), "batch": BatchNormAct2d, "instance": InstanceNormAct2d}[norm]
    assert isinstance(fused.norm, expected_norm)
    keys = ["weight", "bias"] + [f"norm.{k}" for k in (norm_module.state_dict() if norm_module else {})]
    assert list(fused.state_dict()) == keys
    for mode in (True, False, True):
        seq.train(mode)
        fused.train(mode)
        x = _rand(2, 4, 5, 5, seed=int(mode)).detach().contiguous(memory_format=torch.channels_last)
        y_ref, y = seq(x), fused(x)
        assert y.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(y, y_ref, rtol=1e-6, atol=1e-6)
        y_ref.square().sum().backward()
        y.square().sum().backward()
        torch.testing.assert_close(fused.weight.grad, seq[0].weight.grad, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(fused.bias.grad, seq[0].bias.grad, rtol=1e-6, atol=1e-6)
    if norm == "batch":
        torch.testing.assert_close(fused.norm.running_var, norm_module.running_var, rtol=1e-6, atol=1e-7)
        assert fused.norm.num_batches_tracked.item() == norm_module.num_batches_tracked.item() == 2


def test_module_constructors_mirror_torch():
    torch.manual_seed(0)
    fused = FusedConvTranspose2d(4, 3, 4, 2, 1, output_padding=1, bias=False, norm="batch", act="relu")
    torch.manual_seed(0)
    plain = nn.ConvTranspose2d(4, 3, 4, 2, 1, output_padding=1, bias=False)
    assert torch.equal(fused.weight, plain.weight) and fused.bias is None
    assert list(fused.state_dict()) == ["weight", *[f"norm.{k}" for k in nn.BatchNorm2d(3).state_dict()]]
    x = torch.randn(2, 4, 3, 3)
    assert fused(x).shape == plain(x).shape == (2, 3, 7, 7)
    # output_size picks output_padding per call, as torch.nn does.
    up = FusedConvTranspose2d(4, 3, 3, 2, 1, act="tanh")
    assert up(x, output_size=[6, 6]).shape == (2, 3, 6, 6)
    assert up(x, output_size=[5, 5]).shape == (2, 3, 5, 5)
    assert "act='tanh'" in repr(up)


def test_fused_linear_matches_torch():
    torch.manual_seed(0)
    linear = nn.Linear(5, 7).double()
    fused = FusedLinear.from_modules(linear, nn.LeakyReLU(0.1))
    x = _rand(3, 5)
    torch.testing.assert_close(fused(x), nn.functional.leaky_relu(linear(x), 0.1))
    assert list(fused.state_dict()) == ["weight", "bias"] and fused.act == "lrelu"


@pytest.mark.parametrize("impl", ["ref", "native", "triton"])
def test_autocast_casts_like_torch(impl):
    """Under torch.autocast the conv runs in the autocast dtype (float32 weight, bfloat16 input), as F.conv2d."""
    require(impl, "cpu")
    x = _rand(1, 3, 6, 6, grad=False).float()
    w, b, wt = (_rand(*s, seed=i + 1, grad=False).float().requires_grad_() for i, s in enumerate([(4, 3, 3, 3), (4,),
                                                                                                  (3, 4, 4, 4)]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv2d_act(x, w, b, 1, 1, "relu", impl=impl)
        expected = torch.relu(nn.functional.conv2d(x, w, b, 1, 1))
        yt = conv_transpose2d_act(x.bfloat16(), wt, b, 2, 1, 0, "tanh", impl=impl)
        expected_t = torch.tanh(nn.functional.conv_transpose2d(x.bfloat16(), wt, b, 2, 1))
    assert y.dtype == yt.dtype == torch.bfloat16
    # Truth: the same math in float64 on the bfloat16-rounded operands autocast hands the conv.
    x16, w16, b16, wt16 = (t.detach().bfloat16().double() for t in (x, w, b, wt))
    truth = torch.relu(nn.functional.conv2d(x16, w16, b16, 1, 1))
    truth_t = torch.tanh(nn.functional.conv_transpose2d(x16, wt16, b16, 2, 1))
    assert_close_to_truth(y.detach(), truth, expected, torch.bfloat16, "conv2d_act under autocast")
    assert_close_to_truth(yt.detach(), truth_t, expected_t, torch.bfloat16, "conv_transpose2d_act under autocast")
    y.float().sum().backward()
    assert w.grad.dtype == torch.float32 and b.grad.dtype == torch.float32


def test_triton_custom_ops_pass_opcheck():
    """Schemas, fake (meta) implementations and autograd registration of the Triton ops, as torch.compile sees them."""
    require("triton", "cpu")
    from fastgan._backend import custom_ops

    conv, conv_t, *_ = custom_ops("conv_act", "triton")
    x = torch.randn(1, 2, 5, 4).contiguous(memory_format=torch.channels_last).requires_grad_()
    w, wt, b = torch.randn(3, 2, 3, 3), torch.randn(2, 3, 4, 4), torch.randn(3)
    # The interpreter runs eagerly only (AOT dispatch hands it fake tensors): that check runs on a GPU.
    basic = ("test_schema", "test_autograd_registration", "test_faketensor")
    checks = basic if triton_interpreting() else (*basic, "test_aot_dispatch_dynamic")
    opcheck(conv, (x, w.requires_grad_(), b.requires_grad_(), [2, 2], [1, 1], 2, 0.2), test_utils=checks)
    opcheck(conv_t, (x, wt.requires_grad_(), b, [2, 2], [1, 1], [1, 0], 3, 0.0), test_utils=checks)


@pytest.mark.parametrize("impl", ["ref", "native"])
def test_torch_compile_captures_the_ops(impl, one_channel_routes):
    """torch.compile (aot_eager: graph capture and AOT autograd, no code generation) gives eager's results (the CPU's
    matrix-product and col2im routes in eager, PyTorch's convolutions in the graph)."""
    require(impl, "cpu")
    torch._dynamo.reset()
    torch.manual_seed(0)
    # on the CPU natively: from one channel (input gradient by col2im), PyTorch's, to one channel, a matrix product
    model = nn.Sequential(FusedConv2d(1, 4, 4, 2, 1, act="lrelu", alpha=0.2, impl=impl),
                          FusedConvTranspose2d(4, 2, 4, 2, 1, act="tanh", impl=impl),
                          FusedConvTranspose2d(2, 1, 4, 2, 1, act="tanh", impl=impl),
                          FusedConv2d(1, 2, 16, 1, 0, impl=impl))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    y, y_compiled = model(x), compiled(x)
    torch.testing.assert_close(y_compiled, y)
    grads = torch.autograd.grad(y.square().sum(), [x, *model.parameters()])
    grads_compiled = torch.autograd.grad(y_compiled.square().sum(), [x, *model.parameters()])
    for g, gc in zip(grads, grads_compiled):
        torch.testing.assert_close(gc, g)


ODD = [  # (x shape, kernel, stride, padding, output_padding): empty phases, tap-less phases, rectangular everything
    ((1, 2, 1, 1), 1, 2, 0, 0),
    ((1, 2, 1, 1), 1, 2, 0, 1),
    ((2, 3, 2, 3), 1, 3, 0, 2),
    ((1, 2, 3, 2), (2, 3), (2, 1), (0, 1), (1, 0)),
]


@pytest.mark.parametrize("impl", ["native", "triton"])
@pytest.mark.parametrize("config", ODD, ids=str)
def test_odd_configurations_match_the_reference(config, impl):
    """Forward and first-order gradients in float64 against the reference, for both ops."""
    require(impl, "cpu")
    shape, k, s, p, op = config
    kh, kw = (k, k) if isinstance(k, int) else k
    x, b = _rand(*shape), _rand(3, seed=1)
    for transposed in (False, True):
        w = _rand(*((shape[1], 3) if transposed else (3, shape[1])), kh, kw, seed=2)
        if transposed:
            def run(impl_, x=x, w=w):
                return conv_transpose2d_act(x, w, b, s, p, op, "lrelu", 0.1, impl=impl_)
        else:
            def run(impl_, x=x, w=w):
                return conv2d_act(x, w, b, s, p, "lrelu", 0.1, impl=impl_)
        if not transposed and min(shape[2:]) + 2 * min((p,) if isinstance(p, int) else p) < max(kh, kw):
            continue  # no valid output for the convolution
        ours, ref = run(impl), run("ref")
        torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)  # native lrelu keeps alpha in float32
        go = torch.randn_like(ref)
        for g_ours, g_ref in zip(torch.autograd.grad(ours, (x, w, b), go), torch.autograd.grad(ref, (x, w, b), go)):
            torch.testing.assert_close(g_ours, g_ref, rtol=1e-6, atol=1e-6)


# --- the Triton weight gradient -------------------------------------------------------------------------------------

# (N, C_in, H, W, C_out, kernel, stride, padding, output_padding): odd sizes, rectangular kernels/strides, channel
# counts that are not multiples of the block sizes (70 spans two 64-wide tiles), 1x1 maps with empty output phases.
WGRAD = [
    (2, 3, 5, 7, 5, 3, 1, 1, 0),
    (2, 3, 5, 7, 5, 4, 2, 1, 1),
    (1, 70, 3, 4, 3, (2, 3), (2, 1), (0, 1), (1, 0)),
    (1, 2, 1, 1, 70, (1, 3), 2, (0, 1), (0, 1)),
]


def _wgrad_problem(config, transposed, dtype, layout, seed=0):
    """(dz, x, kernel, stride, padding, output_padding, the weight's shape), dz and x in ``dtype`` and ``layout``."""
    n, c, h, w, o, k, s, p, op = config
    k, s, p, op = ((v, v) if isinstance(v, int) else v for v in (k, s, p, op))
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    w_shape = (c, o, *k) if transposed else (o, c, *k)
    zero = torch.zeros(w_shape, dtype=torch.float64)
    y = (nn.functional.conv_transpose2d(x, zero, None, s, p, op) if transposed
         else nn.functional.conv2d(x, zero, None, s, p))
    dz = torch.randn(y.shape, generator=gen, dtype=torch.float64)

    def lay(t):
        t = t.to(dtype)
        if layout == "channels_last":
            return t.contiguous(memory_format=torch.channels_last)
        if layout == "noncontiguous":  # every other column of a twice-as-wide buffer
            wide = torch.zeros(*t.shape[:3], 2 * t.shape[3], dtype=dtype)
            wide[..., ::2] = t
            return wide[..., ::2]
        return t

    return lay(dz), lay(x), k, s, p, op if transposed else (0, 0), w_shape


def _aten_weight_grad(dz, x, w_shape, s, p, op, transposed):
    w = torch.zeros(w_shape, dtype=dz.dtype)
    return torch.ops.aten.convolution_backward(dz, x, w, None, s, p, [1, 1], transposed, op, 1,
                                               [False, True, False])[1]


def _wgrad_op(transposed):
    from fastgan._backend import custom_ops

    ops = custom_ops("conv_act", "triton")
    return ops.conv_transpose2d_weight_grad if transposed else ops.conv2d_weight_grad


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "noncontiguous"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "conv_t"])
@pytest.mark.parametrize("config", WGRAD, ids=str)
def test_triton_weight_grad_matches_float64(config, transposed, dtype, layout):
    """The Triton weight gradient against float64, within 2x PyTorch's own error at ``dtype`` (+ ulps)."""
    require("triton", "cpu")
    dz, x, k, s, p, op, w_shape = _wgrad_problem(config, transposed, dtype, layout)
    assert layout != "noncontiguous" or not (dz.is_contiguous() or x.is_contiguous())
    dw = _wgrad_op(transposed)(dz, x, list(k), list(s), list(p))
    assert dw.is_contiguous()
    truth = _aten_weight_grad(dz.double(), x.double(), w_shape, s, p, op, transposed)
    torch_out = _aten_weight_grad(dz, x, w_shape, s, p, op, transposed)
    assert_close_to_truth(dw, truth, torch_out, dtype, f"dW {config} {dtype} {layout}")


@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "conv_t"])
def test_triton_weight_grad_split_reduction(transposed):
    """A reduction split over programs gives the unsplit float64 result; repeated calls are bitwise equal."""
    require("triton", "cpu")
    from fastgan.kernels.triton.conv import _launch_weight_grad

    dz, x, k, s, p, op, w_shape = _wgrad_problem(WGRAD[1], transposed, torch.float64, "contiguous")
    truth = _aten_weight_grad(dz, x, w_shape, s, p, op, transposed)
    parts = [_launch_weight_grad(dz, x, k, s, p, transposed, split) for split in (1, 3, 3)]
    for dw in parts:
        torch.testing.assert_close(dw, truth, rtol=1e-12, atol=1e-12)
    assert torch.equal(parts[1], parts[2])
    dz32, x32 = dz.float(), x.float()
    assert torch.equal(_launch_weight_grad(dz32, x32, k, s, p, transposed, 3),
                       _launch_weight_grad(dz32, x32, k, s, p, transposed, 3))


@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "conv_t"])
def test_triton_weight_grad_empty_batch_is_zero(transposed):
    require("triton", "cpu")
    dz, x, k, s, p, _, w_shape = _wgrad_problem((0, *WGRAD[1][1:]), transposed, torch.float32, "contiguous")
    dw = _wgrad_op(transposed)(dz, x, list(k), list(s), list(p))
    assert dw.shape == w_shape and dw.dtype == torch.float32 and torch.equal(dw, torch.zeros(w_shape))


@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "conv_t"])
def test_triton_weight_grad_gradgradcheck(transposed):
    """The weight-gradient op's own backward (Triton forward ops) and the order after it, in float64."""
    require("triton", "cpu")
    dz, x, k, s, p, _, _ = _wgrad_problem((1, 2, 3, 4, 2, 3, 2, 1, 1), transposed, torch.float64, "contiguous")
    op = _wgrad_op(transposed)

    def fn(dz, x):
        return op(dz, x, list(k), list(s), list(p))

    inputs = (dz.requires_grad_(), x.requires_grad_())
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=True)


def test_triton_weight_grad_ops_pass_opcheck():
    require("triton", "cpu")
    basic = ("test_schema", "test_autograd_registration", "test_faketensor")
    checks = basic if triton_interpreting() else (*basic, "test_aot_dispatch_dynamic")
    for transposed in (False, True):
        dz, x, k, s, p, _, _ = _wgrad_problem(WGRAD[1], transposed, torch.float32, "channels_last")
        args = (dz.requires_grad_(), x.requires_grad_(), list(k), list(s), list(p))
        opcheck(_wgrad_op(transposed), args, test_utils=checks)


def test_triton_backward_dispatches_no_aten_convolution():
    """Forward, first and second order (a penalty on both the input and the weight gradients) of the Triton path
    run only our kernels: no aten convolution (nor its backward) is dispatched, and both weight-gradient ops are."""
    require("triton", "cpu")
    from torch.utils._python_dispatch import TorchDispatchMode

    class Recorder(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.add(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    x, w, wt = _rand(1, 2, 5, 4).float(), _rand(3, 2, 3, 3, seed=1).float(), _rand(3, 2, 4, 4, seed=2).float()
    for t in (x, w, wt):
        t.retain_grad()
    with Recorder() as recorder:
        h = conv2d_act(x, w, None, 2, 1, "lrelu", 0.2, impl="triton")
        y = conv_transpose2d_act(h, wt, None, 2, 1, 1, "tanh", impl="triton")
        grads = torch.autograd.grad(y.square().sum(), (x, w, wt), create_graph=True)
        sum(g.square().sum() for g in grads).backward()
    assert not {op for op in recorder.ops if "convolution" in op}, sorted(recorder.ops)
    assert {"fastgan.conv2d_weight_grad_triton", "fastgan.conv_transpose2d_weight_grad_triton"} <= recorder.ops
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (x, w, wt))


# --- issue 18: NaN through the epilogue, PyTorch's output layout, meta tensors ---------------------------------------


@pytest.mark.parametrize("act", ["elu", "relu", "selu", "softplus", "lrelu", "sigmoid"])
@pytest.mark.parametrize("transposed", [False, True])
def test_triton_conv_epilogue_keeps_nan(act, transposed):
    """Issue 18: conv2d_act(x_with_nan, w, act="elu", impl="triton") gave 0 where PyTorch gives NaN (the epilogue used
    bias_act's NaN-dropping activation); forward and gradients now have NaN exactly where the reference does."""
    require("triton", "cpu")
    outs = []
    for impl in ("triton", "ref"):
        x = _rand(1, 2, 4, 4, seed=1, grad=False).float()
        x[0, 0, 1, 2] = float("nan")
        x.requires_grad_()
        w = _rand(2, 3, 3, 3, seed=2).float() if transposed else _rand(3, 2, 3, 3, seed=2).float()
        b = _rand(3, seed=3).float()
        conv = conv_transpose2d_act if transposed else conv2d_act
        y = conv(x, w, b, 1, 1, act=act, impl=impl) if not transposed else conv(x, w, b, 1, 1, 0, act, impl=impl)
        outs.append((y.detach(), *torch.autograd.grad(y, (x, w, b), torch.ones_like(y))))
    for i, (ours, ref) in enumerate(zip(*outs)):
        if i and act in ("elu", "selu"):
            # elu's gradient at a NaN input: NaN here everywhere, NaN in PyTorch's vectorized CPU kernel but not in
            # its scalar tail (README), so the reference's NaN are a subset of ours.
            assert (ours.isnan() | ~ref.isnan()).all(), (ours, ref)
            ref = torch.where(ours.isnan(), ours, ref)
        assert torch.equal(ours.isnan(), ref.isnan()), (ours, ref)
        torch.testing.assert_close(ours, ref, equal_nan=True, atol=1e-5, rtol=1e-5)


def _layouts(t: torch.Tensor) -> dict[str, torch.Tensor]:
    wide = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
    wide[..., ::2] = t
    return {"contiguous": t.contiguous(), "channels_last": t.contiguous(memory_format=torch.channels_last),
            "strided": wide[..., ::2], "strided_channels_last": wide.contiguous(memory_format=torch.channels_last)[
                ..., ::2]}


def _format(t: torch.Tensor) -> tuple[bool, bool]:
    return t.is_contiguous(), t.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("impl", ["native", "triton"])
@pytest.mark.parametrize("op", ["conv2d_act", "conv_transpose2d_act", "conv2d_batch_norm_act"])
def test_output_layout_is_torchs_for_every_input_and_weight_layout(impl, op):
    """Issue 18: the Triton convolutions returned NCHW where PyTorch returns channels_last (a channels_last weight
    with a contiguous input). PyTorch's rule: channels_last when the input or the weight suggests it."""
    require(impl, "cpu")
    x = _rand(2, 3, 5, 4, grad=False).float()
    w = _rand(3, 4, 3, 3, seed=1, grad=False).float() if op == "conv_transpose2d_act" else _rand(
        4, 3, 3, 3, seed=1, grad=False).float()
    for (xl, xt), (wl, wt) in [(a, b) for a in _layouts(x).items() for b in _layouts(w).items()]:
        if op == "conv2d_act":
            ours, ref = (conv2d_act(xt, wt, None, 1, 1, act="relu", impl=i) for i in (impl, "ref"))
        elif op == "conv_transpose2d_act":
            ours, ref = (conv_transpose2d_act(xt, wt, None, 2, 1, 1, act="relu", impl=i) for i in (impl, "ref"))
        else:
            ours, ref = (conv2d_batch_norm_act(xt, wt, None, 1, 1, norm_weight=None, norm_bias=None,
                                               running_mean=None, running_var=None, training=True, impl=i)
                         for i in (impl, "ref"))
        assert _format(ours) == _format(ref), f"x {xl}, weight {wl}: {ours.stride()} vs PyTorch's {ref.stride()}"
        torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_suggests_channels_last_is_torchs():
    """The layout rule above reads c10's is_channels_last_strides_2d; checked against PyTorch's Python port."""
    import random

    from torch._prims_common import suggest_memory_format

    from fastgan._layout import suggests_channels_last

    rng = random.Random(0)
    seen = set()
    for _ in range(3000):
        shape = [rng.choice((0, 1, 2, 3)) for _ in range(4)]
        strides = [rng.choice((0, 1, 2, 3, 4, 6, 8, 12, 24, 36)) for _ in range(4)]
        t = torch.empty(4000).as_strided(shape, strides)
        want = suggest_memory_format(t) == torch.channels_last
        seen.add(want)
        assert suggests_channels_last(t) == want, (shape, strides)
    assert seen == {True, False}


def _meta_calls(impl):
    """One call of every public op on meta tensors."""
    from fastgan.losses import d_loss, g_loss, grad_norm_penalty, interpolate
    from fastgan.ops import batch_norm_act, bias_act, instance_norm_act

    def m(*shape):
        return torch.empty(shape, device="meta")

    x, w, wt = m(2, 3, 6, 6), m(4, 3, 3, 3), m(3, 4, 3, 3)
    norm = dict(norm_weight=m(4), norm_bias=m(4), running_mean=None, running_var=None, training=True)
    return {
        "bias_act": lambda: bias_act(x, m(3), act="lrelu", impl=impl),
        "conv2d_act": lambda: conv2d_act(x, w, m(4), 1, 1, act="relu", impl=impl),
        "conv_transpose2d_act": lambda: conv_transpose2d_act(x, wt, m(4), 2, 1, 1, act="relu", impl=impl),
        "conv2d_batch_norm_act": lambda: conv2d_batch_norm_act(x, w, None, 1, 1, **norm, impl=impl),
        "conv_transpose2d_batch_norm_act": lambda: conv_transpose2d_batch_norm_act(x, wt, None, 2, 1, 1, **norm,
                                                                                   impl=impl),
        "batch_norm_act": lambda: batch_norm_act(x, m(3), m(3), m(3), m(3), True, impl=impl),
        "instance_norm_act": lambda: instance_norm_act(x, impl=impl),
        "d_loss": lambda: d_loss(m(4), m(5), "hinge", impl=impl),
        "g_loss": lambda: g_loss(m(4), "hinge", impl=impl),
        "interpolate": lambda: interpolate(x, x, m(2), impl=impl),
        "grad_norm_penalty": lambda: grad_norm_penalty(x, impl=impl),
    }


@pytest.mark.parametrize("impl", ["auto", "ref", "native", "triton"])
def test_meta_tensors_run_or_are_refused_by_name(impl):
    """Issue 18: meta tensors into the conv ops failed in PyTorch's autocast lookup ("unknown device type for
    autocast"), naming no op. Now every op either computes shapes on meta tensors (the reference, which "auto"
    picks) or refuses them with an error naming the op."""
    from fastgan import ImplUnavailableError

    for name, call in _meta_calls(impl).items():
        if impl in ("auto", "ref"):
            out = call()
            assert out.device.type == "meta", name
        else:
            with pytest.raises(ImplUnavailableError, match=rf"^{name}: impl='{impl}' is unavailable for meta"):
                call()


def test_triton_conv_nonfinite_weight_at_the_border():
    """The documented behaviour (README): the implicit GEMM multiplies zero padding by every weight, so an infinite
    weight makes the pixels whose taps read padding NaN (0 * inf). PyTorch's conv2d does the same (its im2col and
    oneDNN paths multiply the padding too); its transposed convolution never multiplies padding (a GEMM, then col2im
    drops what falls outside), so there fastgan's Triton border pixels are NaN where PyTorch's are finite. The fuzzer
    keeps weights finite for that reason; the interior and the other channels agree."""
    require("triton", "cpu")
    import torch.nn.functional as F

    x = torch.randn(1, 2, 5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w = torch.randn(3, 2, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    w[1, 0, 0, 0] = float("inf")  # tap (0, 0)
    ours, ref = conv2d_act(x, w, None, 1, 1, impl="triton"), F.conv2d(x, w, None, 1, 1)
    assert torch.equal(ours.isnan(), ref.isnan()) and torch.equal(ours.isinf(), ref.isinf())
    torch.testing.assert_close(ours, ref, equal_nan=True)

    wt = torch.randn(2, 3, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    wt[0, 1, 2, 2] = float("inf")  # channel 1's tap (2, 2): reads x above/left of output row/column 0 (padding)
    ours = conv_transpose2d_act(x, wt, None, 1, 1, 0, impl="triton")
    ref = F.conv_transpose2d(x, wt, None, 1, 1, 0)
    border = torch.zeros(5, 5, dtype=torch.bool)
    border[0, :] = border[:, 0] = True
    assert ours[0, 1][border].isnan().all() and ref[0, 1][border].isfinite().all()
    for a, b in ((ours[0, 1][~border], ref[0, 1][~border]), (ours[:, [0, 2]], ref[:, [0, 2]])):
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.isinf(), b.isinf())
        torch.testing.assert_close(a, b, equal_nan=True)


# --- issue 17: convolutions that are matrix products run as one on the CPU -------------------------------------------


class _OpRecorder:
    """The aten ops dispatched inside the ``with`` block (by overload packet name), and how often each ran."""

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        calls = self.calls = collections.Counter()
        self.ops = calls.keys()

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                calls[func.overloadpacket.__name__] += 1
                return func(*args, **(kwargs or {}))

        self.mode = Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)


# (transposed, x shape, weight shape, stride, padding, output_padding): the DCGAN discriminator's last layer (the
# kernel covers the input) and the generator's first (a 1x1 input, no padding), square and not.
_MATRIX_CONVS = [(False, (3, 8, 4, 4), (2, 8, 4, 4), 1, 0, None), (False, (2, 5, 4, 3), (3, 5, 4, 3), 2, 0, None),
                 (True, (3, 6, 1, 1), (6, 4, 4, 4), 1, 0, 0), (True, (2, 5, 1, 1), (5, 3, 3, 2), 2, 0, 1)]


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("config", _MATRIX_CONVS, ids=str)
def test_matrix_product_convolutions_run_as_one(config, bias):
    """Issue 17: oneDNN took 4-15x longer than a matrix product for these convolutions on the CPU, so the native path
    runs them as one (mm / addmm): no aten convolution is dispatched forward, backward or double backward; the result
    has PyTorch's values and output layout for every input and weight layout. (The parity matrix compares these
    shapes with float64 across dtypes; an output_padding, which pads the output, keeps the convolution.)"""
    require("native", "cpu")
    transposed, x_shape, w_shape, stride, padding, output_padding = config
    x, w = _rand(*x_shape, grad=False).float(), _rand(*w_shape, seed=1, grad=False).float()
    b = _rand(w_shape[1] if transposed else w_shape[0], seed=2, grad=False).float() if bias else None

    def run(x, w, impl):
        if transposed:
            return conv_transpose2d_act(x, w, b, stride, padding, output_padding, act="linear", impl=impl)
        return conv2d_act(x, w, b, stride, padding, act="linear", impl=impl)

    matrix = not output_padding
    for (xl, xt), (wl, wt) in [(a, c) for a in _layouts(x).items() for c in _layouts(w).items()]:
        xt, wt = xt.detach().requires_grad_(), wt.detach().requires_grad_()
        with _OpRecorder() as rec:
            ours = run(xt, wt, "native")
            gx, gw = torch.autograd.grad(ours.square().sum(), (xt, wt), create_graph=True)
            (gx.square().sum() + gw.square().sum()).backward()
        assert any("convolution" in op for op in rec.ops) != matrix, (xl, wl, sorted(rec.ops))
        assert ("mm" in rec.ops or "addmm" in rec.ops) == matrix, (xl, wl, sorted(rec.ops))
        ref = run(xt.detach(), wt.detach(), "ref")
        assert _format(ours) == _format(ref), f"x {xl}, weight {wl}: {ours.stride()} vs PyTorch's {ref.stride()}"
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_matrix_product_convolution_gradgradcheck():
    """Second order of both matrix-product routes in float64 (with a bias; the parity matrix covers the rest)."""
    require("native", "cpu")
    x, w, b = _rand(2, 3, 4, 4), _rand(2, 3, 4, 4, seed=1), _rand(2, seed=2)
    z, wt = _rand(2, 3, 1, 1, seed=3), _rand(3, 2, 4, 4, seed=4)
    for fn, args in ((lambda x, w, b: conv2d_act(x, w, b, 1, 0, "lrelu", 0.2, impl="native"), (x, w, b)),
                     (lambda z, w, b: conv_transpose2d_act(z, w, b, 1, 0, 0, "tanh", impl="native"), (z, wt, b))):
        assert torch.autograd.gradcheck(fn, args)
        assert torch.autograd.gradgradcheck(fn, args)


@pytest.mark.parametrize("transposed", [False, True], ids=["from_one_channel", "to_one_channel"])
def test_one_channel_routes_run_from_their_size(transposed):
    """The one-channel routes run where the side with many channels has at least CPU_ONE_CHANNEL_MIN_NUMEL values
    (2^18: 4 samples of 64 channels of 32x32), oneDNN's convolution below it, where it made the DCGAN-28 step faster
    (README)."""
    require("native", "cpu")
    import torch.nn.functional as F

    assert fastgan._backend.CPU_ONE_CHANNEL_MIN_NUMEL == 4 * 64 * 32 * 32
    w = _rand(64, 1, 4, 4, seed=1).float()
    for side, routed in ((32, True), (31, False)):  # the many-channel side: 4 x 64 x side x side values
        if transposed:
            x = _rand(4, 64, side, side).float()
            run = lambda x=x: conv_transpose2d_act(x, w, None, 2, 1, 0, "lrelu", 0.2, impl="auto")  # noqa: E731
        else:
            x = _rand(4, 1, 2 * side, 2 * side).float()
            run = lambda x=x: conv2d_act(x, w, None, 2, 1, "lrelu", 0.2, impl="auto")  # noqa: E731
        with _OpRecorder() as rec:
            y = run()
        assert ("bmm" in rec.ops) == routed and ("convolution" in rec.ops) != routed, (side, sorted(rec.ops))
        conv = F.conv_transpose2d if transposed else F.conv2d
        truth, torch_out = (F.leaky_relu(conv(a, b, None, 2, 1), 0.2) for a, b in ((x.double(), w.double()), (x, w)))
        assert_close_to_truth(y.detach(), truth.detach(), torch_out.detach(), torch.float32, f"side {side}")


@pytest.mark.parametrize("transposed", [False, True], ids=["from_one_channel", "to_one_channel"])
def test_forward_only_routes_follow_a_measurement(transposed, one_channel_routes, monkeypatch, tmp_path):
    """Where no gradient will be taken, a one-channel route runs only if its forward measured faster than oneDNN's
    (on an AMD AVX2 VM it was 1.4-1.9x slower, on an Intel AVX-512 one faster: README), measured once per arguments
    and kept in the autotune cache on disk, which a new process reads (the same choice, the same bits); with a
    gradient to take, deterministic algorithms, FASTGAN_AUTOTUNE=0, forward-mode AD or a dispatch mode, the route
    runs unmeasured. Either way the values are PyTorch's convolution's."""
    require("native", "cpu")
    import torch.nn.functional as F

    import fastgan._autotune as autotune
    import fastgan.ops.conv_act as conv_act

    monkeypatch.setenv("FASTGAN_AUTOTUNE_CACHE", str(tmp_path / "autotune.json"))
    monkeypatch.delenv("FASTGAN_AUTOTUNE", raising=False)
    route_wins, measured, ran = [False], [], []
    monkeypatch.setattr(conv_act, "_forward_times", lambda route, onednn: measured.append(1) or {
        "route": 1.0 if route_wins[0] else 2.0, "onednn": 1.5})
    forward = "_fold_conv_transpose2d" if transposed else "_from_one_channel_conv2d"  # the route's forward
    real_forward = getattr(conv_act, forward)
    monkeypatch.setattr(conv_act, forward, lambda *a: ran.append(1) or real_forward(*a))
    w = _rand(4, 1, 4, 4, seed=1).float().detach()
    x = (_rand(2, 4, 5, 6) if transposed else _rand(2, 1, 9, 8)).float().detach()
    conv = F.conv_transpose2d if transposed else F.conv2d

    def routed(x=x, w=w) -> bool:
        ran.clear()
        y = (conv_transpose2d_act(x, w, None, 2, 1, 0, impl="native") if transposed
             else conv2d_act(x, w, None, 2, 1, impl="native"))
        torch.testing.assert_close(y.detach(), conv(x.detach(), w.detach(), None, 2, 1))
        return bool(ran)

    try:
        for verdict in (False, True):
            autotune.clear(disk=True)
            measured.clear()
            route_wins[0] = verdict
            assert routed() == verdict and len(measured) == 1
            route_wins[0] = not verdict
            assert routed() == verdict and len(measured) == 1  # measured once
            autotune.clear()  # memory only, as in a new process: the disk has the choice
            assert routed() == verdict and len(measured) == 1
            with torch.no_grad():  # a layer's weight is a Parameter
                assert routed(x.detach().requires_grad_(), nn.Parameter(w.clone())) == verdict
        autotune.clear(disk=True)
        measured.clear()
        route_wins[0] = False
        assert routed(x.detach().requires_grad_(), w) and routed(x, w.detach().requires_grad_())  # a gradient
        monkeypatch.setenv("FASTGAN_AUTOTUNE", "0")
        assert routed()
        monkeypatch.delenv("FASTGAN_AUTOTUNE")
        deterministic = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)
        try:
            assert routed()
        finally:
            torch.use_deterministic_algorithms(deterministic)
        with torch.autograd.forward_ad.dual_level():  # as under torch.func transforms
            assert routed()
        with _OpRecorder():  # a dispatch mode would see (and a fake-tensor one fake) the measuring calls
            assert routed()
        assert not measured and not routed() and len(measured) == 1
    finally:
        autotune.clear()


def test_forward_measurement_times_each_candidate():
    """``_forward_times`` (the one-channel routes' forward-only choice) times each of two callables."""
    import time

    from fastgan.ops.conv_act import _forward_times

    for slow in ("route", "onednn"):
        ms = _forward_times(*(((lambda: time.sleep(0.005)) if name == slow else (lambda: None))
                              for name in ("route", "onednn")))
        assert ms[slow] >= 4.5 and min(ms.values()) < 4.5, ms


def test_one_channel_routes_gradgradcheck(one_channel_routes):
    """Both one-channel routes to second order in float64 (gradcheck, gradgradcheck), with a bias."""
    require("native", "cpu")
    x, w, b = _rand(2, 1, 7, 6), _rand(3, 1, 4, 4, seed=1), _rand(3, seed=2)
    z, wt, bt = _rand(2, 3, 3, 4, seed=3), _rand(3, 1, 4, 4, seed=4), _rand(1, seed=5)
    for fn, args in ((lambda x, w, b: conv2d_act(x, w, b, 2, 1, "lrelu", 0.2, impl="native"), (x, w, b)),
                     (lambda z, w, b: conv_transpose2d_act(z, w, b, 2, 1, 1, "sigmoid", impl="native"), (z, wt, bt))):
        with _OpRecorder() as rec:
            fn(*args)
        assert "bmm" in rec.ops and "convolution" not in rec.ops, sorted(rec.ops)
        assert torch.autograd.gradcheck(fn, args)
        assert torch.autograd.gradgradcheck(fn, args)


@pytest.mark.parametrize("op", ["conv_transpose2d_act", "conv2d_act"])
def test_one_channel_side_skips_onednns_slow_kernel(op, one_channel_routes):
    """Issue 17: oneDNN's transposed convolution to one channel (MNIST's generator output, and the input gradient of the
    discriminator's first layer) took 4-5x longer than a per-sample matrix product and col2im, and its NCHW
    convolution from one channel (the discriminator's first layer, the generator output's input gradient) 1.2-5x
    longer than a matrix product with the input's columns, so the native CPU path (which "auto" runs on the CPU)
    runs those instead at large sizes (here at every size). A backward that builds no graph (a training step's)
    keeps oneDNN's weight gradient, one convolution_backward (the columns' product made the step slower); under
    create_graph (a gradient penalty's) the routes run, so the derivatives stay off oneDNN's slow kernels. The
    results to second order are within the parity tolerance of the float64 reference. (Sigmoid, not tanh: at tanh's
    second order here PyTorch's own convolution with oneDNN off is 7x further from float64 than with it on, the
    tolerance's basis, and so is this route.)"""
    require("native", "cpu")
    transposed = op == "conv_transpose2d_act"
    x64 = _rand(2, 3, 5, 4) if transposed else _rand(2, 1, 9, 8)
    w64, b64 = _rand(3, 1, 4, 4, seed=1), _rand(1 if transposed else 3, seed=2)

    def grads(x, w, b, impl):
        y = (conv_transpose2d_act(x, w, b, 2, 1, 1, "sigmoid", impl=impl) if transposed
             else conv2d_act(x, w, b, 2, 1, "lrelu", 0.2, impl=impl))
        gx, gw, gb = torch.autograd.grad(y.square().sum(), (x, w, b), create_graph=True)
        return (y, gx, gw, gb, *torch.autograd.grad((gx.square().sum() + gw.square().sum()), (x, w, b)))

    x, w, b = (t.detach().float().requires_grad_() for t in (x64, w64, b64))
    with _OpRecorder() as rec:
        ours = grads(x, w, b, "auto")
    # oneDNN's only call: the weight gradient in the last backward, which builds no graph
    assert {"col2im", "bmm"} <= rec.ops and "convolution" not in rec.ops, sorted(rec.ops)
    assert rec.calls["convolution_backward"] == 1, rec.calls
    truth, torch_out = grads(x64, w64, b64, "ref"), grads(x, w, b, "ref")
    for name, o, t, r in zip(("y", "dx", "dw", "db", "d2x", "d2w", "d2b"), ours, truth, torch_out):
        assert_close_to_truth(o.detach(), t.detach(), r.detach(), torch.float32, f"{op} {name}")


@pytest.mark.parametrize("transposed", [False, True], ids=["from_one_channel", "to_one_channel"])
def test_one_channel_routes_under_vmap_jvp_and_layouts(transposed, one_channel_routes):
    """The col2im routes are autograd.Functions: per-sample gradients (vmap of grad) and forward-mode AD (jvp) give
    PyTorch's convolution's results, and the output and input gradient suggest PyTorch's memory format (a
    one-channel tensor is contiguous both ways, so the strides themselves are compared through
    suggests_channels_last) for every input and weight layout, with the weight gradient's values."""
    require("native", "cpu")
    from fastgan._layout import suggests_channels_last

    if transposed:
        x, w = _rand(3, 2, 6, 7, 7), _rand(6, 1, 4, 4, seed=1)

        def ours(x, w):
            return conv_transpose2d_act(x, w, None, 2, 1, 0, impl="native")

        def torchs(x, w):
            return torch.nn.functional.conv_transpose2d(x, w, None, 2, 1)
    else:
        x, w = _rand(3, 2, 1, 14, 13), _rand(5, 1, 4, 4, seed=1)

        def ours(x, w):
            return conv2d_act(x, w, None, 2, 1, impl="native")

        def torchs(x, w):
            return torch.nn.functional.conv2d(x, w, None, 2, 1)

    x, w = x.detach(), w.detach()
    per_sample = [torch.func.vmap(torch.func.grad(lambda xi, f=f: f(xi, w).square().sum()))(x) for f in (ours, torchs)]
    torch.testing.assert_close(*per_sample)
    tangents = (torch.randn_like(x[0]), torch.randn_like(w))
    jvps = [torch.func.jvp(f, (x[0], w), tangents)[1] for f in (ours, torchs)]
    torch.testing.assert_close(*jvps)
    for (xl, xt), (wl, wt) in [(a, c) for a in _layouts(x[0]).items() for c in _layouts(w).items()]:
        xt, wt = xt.detach().requires_grad_(), wt.detach().requires_grad_()
        outs = []
        for f in (ours, torchs):
            y = f(xt, wt)
            gx, gw = torch.autograd.grad(y.square().sum(), (xt, wt))
            outs.append((y, gx, gw))
        for a, b in zip(*outs):
            torch.testing.assert_close(a, b)
        for a, b in zip(*(o[:2] for o in outs)):
            assert suggests_channels_last(a) == suggests_channels_last(b), (xl, wl, a.stride(), b.stride())


def test_transposed_one_channel_route_keeps_onednn_on_nhwc(one_channel_routes):
    """A channels_last transposed convolution to one channel (x channels_last, the weight contiguous) whose output
    gradient has NCHW strides (that of ``torch.tanh`` of the output, which "auto" leaves to PyTorch): both oneDNN
    convolutions of its backward (the input gradient, a convolution from one channel, and the weight gradient) are
    handed NHWC strides, which oneDNN picks its kernel by (given NCHW ones, it ran the NCHW kernel and copied x to
    it: a grayscale generator's last layer forward+backward took 2x eager's time, README); the results are
    PyTorch's."""
    require("native", "cpu")
    from fastgan._layout import conv_channels_last

    seen = []

    class Convolutions(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            # convolution(input, weight, ...), convolution_backward(grad_output, input, weight, ...)
            first = {"convolution": 0, "convolution_backward": 1}.get(func.overloadpacket.__name__)
            if first is not None:
                seen.append((func.overloadpacket.__name__, conv_channels_last(*args[first:first + 2])))
            return func(*args, **(kwargs or {}))

    def step(impl):
        x = _rand(2, 6, 7, 7).float().detach().contiguous(memory_format=torch.channels_last).requires_grad_()
        w = _rand(6, 1, 4, 4, seed=1).float().detach().requires_grad_()
        y = torch.tanh(conv_transpose2d_act(x, w, None, 2, 1, 0, impl=impl))
        return (y, *torch.autograd.grad(y.square().sum(), (x, w)))

    with Convolutions():
        ours = step("native")
    assert sorted(name for name, _ in seen) == ["convolution", "convolution_backward"], seen
    assert all(nhwc for _, nhwc in seen), seen
    for a, b in zip(ours, step("ref")):
        torch.testing.assert_close(a, b)


# --- issue 17: on the CPU "auto" writes relu/lrelu over the convolution's own output where the caller only reads it ---

_IN_PLACE = {"relu": "relu_", "lrelu": "leaky_relu_"}  # the activations written over the output: op run for each


def _layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    return t[..., ::2] if layout == "noncontiguous" else t


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "noncontiguous"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("act", list(_IN_PLACE))
@pytest.mark.parametrize("conv", ["conv2d", "conv_transpose2d", "from_one_channel", "to_one_channel"])
def test_cpu_activation_written_over_the_convolution(conv, act, dtype, layout, one_channel_routes):
    """Issue 17: under "auto" on the CPU, where the caller only reads the output (``output_read_only``), relu and
    lrelu are written over the convolution's result (oneDNN's, or a one-channel route's), where bias_act's fresh
    output cost about 4% of a DCGAN-28 step (README): the in-place op runs and bias_act does not, and the output, the
    gradients and a penalty's second-order gradients are bitwise those of bias_act's (impl="native", in the parity
    matrix) and, in float32, the float64 reference's within the parity tolerance, for every dtype and layout (the
    routes run float32 only; half types keep oneDNN). The route to one channel hands a channels_last result out as a
    view (its permuted strides), which bias_act then activates; without ``output_read_only`` bias_act always does."""
    require("native", "cpu")
    transposed = conv in ("conv_transpose2d", "to_one_channel")
    channels = (4, 1) if conv == "to_one_channel" else (1, 3) if conv == "from_one_channel" else (3, 4)
    x_shape = (2, channels[0], 5, 12 if layout == "noncontiguous" else 6)
    w_shape = (channels[0], channels[1], 4, 4) if transposed else (channels[1], channels[0], 4, 4)
    x64, w64, b64 = _rand(*x_shape), _rand(*w_shape, seed=1) / 4, _rand(channels[1], seed=2)
    alpha = 0.2 if act == "lrelu" else None

    def grads(x, w, b, impl):
        x_ = _layout(x, layout)
        y = (conv_transpose2d_act(x_, w, b, 2, 1, 1, act, alpha, impl=impl) if transposed
             else conv2d_act(x_, w, b, 2, 1, act, alpha, impl=impl))
        gen = torch.Generator().manual_seed(3)
        go = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y.dtype)
        first = torch.autograd.grad(y, (x, w, b), go, create_graph=True)
        penalty = sum((g * torch.randn(g.shape, generator=gen, dtype=torch.float64).to(g.dtype)).sum() for g in first)
        second = torch.autograd.grad(penalty, (x, w, b), allow_unused=True)  # f'' = 0: none reaches the bias
        return (y, *first, *(torch.zeros_like(t) if g is None else g for g, t in zip(second, (x, w, b))))

    x, w, b = (t.detach().to(dtype).requires_grad_() for t in (x64, w64, b64))
    with _OpRecorder() as rec, output_read_only():
        ours = grads(x, w, b, "auto")
    routed = "one_channel" in conv and dtype == torch.float32
    view = routed and conv == "to_one_channel" and layout == "channels_last"
    assert (_IN_PLACE[act] in rec.ops, "bias_act" in rec.ops) == (not view, view), sorted(rec.ops)
    assert ("bmm" in rec.ops) == routed, sorted(rec.ops)
    with _OpRecorder() as rec:
        grads(x, w, b, "auto")
    assert _IN_PLACE[act] not in rec.ops, sorted(rec.ops)
    names = ("y", "dx", "dw", "db", "d2x", "d2w", "d2b")
    for name, o, n in zip(names, ours, grads(x, w, b, "native")):
        assert torch.equal(o, n), f"{conv} {act} {name}: not bitwise bias_act's (impl='native')"
    if dtype == torch.float32:  # half types: a sign flip near zero moves whole rows (the parity matrix's native rows)
        for name, o, t, r in zip(names, ours, grads(x64, w64, b64, "ref"), grads(x, w, b, "ref")):
            assert_close_to_truth(o.detach(), t.detach(), r.detach(), dtype, f"{conv} {act} {name}")


@pytest.mark.parametrize("act", list(_IN_PLACE))
def test_cpu_activation_in_place_gradgradcheck_and_forward_ad(act, one_channel_routes):
    """The in-place activation's autograd Function to second order in float64 (gradcheck, gradgradcheck; any order
    is exact) with its bias added in place (the one-channel route's product; oneDNN adds a bias itself), and its
    forward-mode derivative (dual tensors, outside functorch) against torch.func.jvp of the reference, with tangents
    for every input and for the bias alone."""
    require("native", "cpu")
    import torch.autograd.forward_ad as fwAD

    x, w, b = _rand(2, 1, 7, 6), _rand(4, 1, 3, 3, seed=1), _rand(4, seed=2)
    alpha = 0.2 if act == "lrelu" else None

    def fn(x, w, b, impl="auto"):
        with output_read_only():
            return conv2d_act(x, w, b, 2, 1, act, alpha, impl=impl)

    with _OpRecorder() as rec:
        fn(x, w, b)
    assert {_IN_PLACE[act], "bmm", "add_"} <= rec.ops, sorted(rec.ops)
    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))
    primals = tuple(t.detach() for t in (x, w, b))
    every = tuple(torch.randn_like(t) for t in primals)
    for tangents in (every, (torch.zeros_like(x), torch.zeros_like(w), every[2])):
        with fwAD.dual_level():
            duals = [p if not t.any() else fwAD.make_dual(p, t) for p, t in zip(primals, tangents)]
            ours = fwAD.unpack_dual(fn(*duals)).tangent
        _, reference = torch.func.jvp(lambda *p: fn(*p, impl="ref"), primals, tangents)
        torch.testing.assert_close(ours, reference)


class _AddOneInPlace(nn.Identity):
    def forward(self, x):
        return x.add_(1)


@pytest.mark.parametrize("routed", [False, True], ids=["onednn", "one_channel"])
def test_fused_sequential_writes_over_only_what_a_fused_layer_reads(routed, one_channel_routes, monkeypatch):
    """FusedSequential writes a layer's activation over its convolution's output only where the output goes (past
    plain Identities) to another fused layer, which only reads it, with no forward hook on the way and fastgan's
    default "auto": the Sequential's own output, one going to a module that may write over its input (here an
    Identity subclass), one a hook sees, and runs under use_impl("native") are the caller's (F.leaky_relu's
    semantics: written over, the backward still gives PyTorch's gradients), as is a negative slope's. The same values
    and gradients as the plain layers every time; torch.jit.trace records the run (the JIT refuses an in-place
    autograd.Function, so a trace takes bias_act) and torch.compile captures it whole."""
    require("native", "cpu")
    monkeypatch.setitem(fastgan._backend.CPU_REF_MAX_NUMEL, "act", 0)  # no layer small enough to run its reference
    c = 1 if routed else 3
    x = _rand(2, c, 8, 8, grad=False).float()
    first = FusedConv2d(c, 4, 4, 2, 1, bias=True, act="lrelu", alpha=0.2)
    then = FusedConv2d(4, 2, 3, 1, 1)
    steep = FusedConv2d(c, 4, 4, 2, 1, bias=True, act="lrelu", alpha=-0.1)

    def halve(module, inputs, output):
        output.mul_(0.5)

    cases = {"fused": ([first, nn.Identity(), then], True), "last": ([first], False),
             "written over": ([first, _AddOneInPlace(), then], False), "hooked": ([first, nn.Identity(), then], False),
             "global native": ([first, nn.Identity(), then], False), "negative slope": ([steep, then], False)}
    for name, (modules, in_place) in cases.items():
        fused, plain = FusedSequential(*modules), nn.Sequential(*modules)
        hook = first.register_forward_hook(halve) if name == "hooked" else None
        with _OpRecorder() as rec, fastgan.use_impl("native" if name == "global native" else "auto"):
            y = fused(x.requires_grad_())
            y += 1
            grads = torch.autograd.grad(y.square().sum(), (x, modules[0].weight, modules[0].bias))
        assert ("leaky_relu_" in rec.ops) == in_place and ("bmm" in rec.ops) == routed, (name, sorted(rec.ops))
        with fastgan.use_impl("ref"):
            reference = plain(x) + 1
            expected = torch.autograd.grad(reference.square().sum(), (x, modules[0].weight, modules[0].bias))
        for o, r in zip((y, *grads), (reference, *expected)):
            torch.testing.assert_close(o, r)
        if hook is not None:
            hook.remove()
    model = FusedSequential(*cases["fused"][0])
    traced = torch.jit.trace(model, (x,), check_trace=False)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)  # Dynamo does not set a ContextVar
    for run in (traced, compiled):
        torch.testing.assert_close(run(x), model(x))


def test_cpu_activation_in_place_runs_no_convolution_on_zeros():
    """A penalty's double backward through the in-place relu or lrelu runs as many convolutions as through bias_act
    (impl="native"), whose custom op exists to send no zero second derivative through the convolution's backward:
    the in-place Function's backward takes the output detached (PyTorch's formula in it is zero)."""
    require("native", "cpu")
    counts = {}
    for act in ("relu", "lrelu"):
        for impl in ("auto", "native"):
            x, w = _rand(2, 3, 8, 8, grad=False).float(), _rand(4, 3, 4, 4, seed=1, grad=False).float()
            x.requires_grad_(), w.requires_grad_()
            with output_read_only():
                y = conv2d_act(x, w, None, 2, 1, act, impl=impl)
            (gx,) = torch.autograd.grad(y, x, torch.ones_like(y), create_graph=True)  # dy independent of y
            with _OpRecorder() as rec:
                gx.square().sum().backward()
            counts[act, impl] = sum(n for op, n in rec.calls.items() if "convolution" in op), w.grad
        assert counts[act, "auto"][0] == counts[act, "native"][0] >= 1, {k: v[0] for k, v in counts.items()}
        torch.testing.assert_close(counts[act, "auto"][1], counts[act, "native"][1], rtol=0, atol=0)
