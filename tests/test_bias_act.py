"""bias_act beyond the parity matrix: gradcheck/gradgradcheck, opcheck, torch.compile, an R1 penalty end to end,
second-derivative pruning (counted dispatches), third order, bad input, and the BiasAct module."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import fastgan
from fastgan._backend import custom_ops
from fastgan.nn import BiasAct
from fastgan.ops import ACTIVATIONS, bias_act, bias_act_ref

from .conftest import fresh_python, opcheck, require

IMPLS = ["ref", "native", "triton"]


def _inputs(shape=(2, 3, 4, 5), dim=1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2).requires_grad_()
    b = torch.randn(shape[dim], generator=gen, dtype=torch.float64).requires_grad_()
    return x, b


# Triton's second order is checked against the float64 reference in the parity matrix (gradgradcheck's thousands
# of interpreted launches would dominate CI); on a GPU it runs here too.
@pytest.mark.parametrize("impl", ["ref", "native", pytest.param("triton", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_gradcheck_gradgradcheck(impl, act):
    device = "cuda" if impl == "triton" else "cpu"
    require(impl, device)
    x, b = (t.detach().to(device).requires_grad_() for t in _inputs())
    # clamp at 2.5 cuts some outputs, so the masked gradient is exercised too.
    def fn(x, b):
        return bias_act(x, b, act=act, gain=1.3, clamp=2.5, impl=impl)

    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


@pytest.mark.parametrize("impl", ["native", "triton"])
def test_opcheck(impl):
    require(impl, "cpu")
    forward, backward, backward2 = custom_ops("bias_act", impl)
    x, b = _inputs((2, 3, 4, 4))
    dy = torch.randn_like(x)
    g = torch.randn_like(x)
    lrelu, tanh = ACTIVATIONS["lrelu"].index, ACTIVATIONS["tanh"].index
    cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    for args in [(x, b, 1, lrelu, 0.2, 1.0, None), (cl, b, 1, tanh, 0.0, 2.0, 1.5), (x, None, 1, tanh, 0.0, 1.0, None)]:
        # backward2 of a smooth activation refuses its own backward (third order), and the Triton interpreter runs
        # eagerly only (AOT dispatch hands it fake tensors): those skip the AOT-dispatch check, run on a GPU.
        basic = ("test_schema", "test_autograd_registration", "test_faketensor")
        interpreted = impl == "triton" and fastgan._backend.triton_interpreting()
        full = basic if interpreted else (*basic, "test_aot_dispatch_dynamic")
        opcheck(forward, args, test_utils=full)
        opcheck(backward, (dy, *args), test_utils=full)
        opcheck(backward2, (g, dy, *args), test_utils=basic if args[3] == tanh else full)


@pytest.mark.parametrize("impl", ["ref", "native"])
def test_torch_compile_cpu(impl):
    require(impl, "cpu")
    torch._dynamo.reset()

    def step(x, b):
        return bias_act(x, b, act="lrelu", alpha=0.2, gain=2.0, impl=impl).square().sum()

    x, b = _inputs((2, 4, 5, 5))
    compiled = torch.compile(step, fullgraph=True)
    expected = step(x, b)
    got = compiled(x, b)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(torch.autograd.grad(got, (x, b)), torch.autograd.grad(step(x, b), (x, b)))


def test_torch_compile_triton_needs_gpu():
    """torch.compile over Triton ops needs a GPU (the interpreter runs eagerly only); checked in the GPU suite."""
    require("triton", "cuda")
    torch._dynamo.reset()
    x = torch.randn(4, 8, 6, 6, device="cuda")
    b = torch.randn(8, device="cuda")

    def fn(x, b):
        return bias_act(x, b, act="silu", impl="triton")

    torch.testing.assert_close(torch.compile(fn, fullgraph=True)(x, b), bias_act_ref(x, b, act="silu"))


class TinyD(torch.nn.Module):
    """conv -> bias_act(lrelu) -> conv -> bias_act(linear) -> mean: the discriminator of the R1 test."""

    def __init__(self, impl: str):
        super().__init__()
        self.impl = impl
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.conv2 = torch.nn.Conv2d(8, 1, 3, stride=2, padding=1, bias=False)
        self.act1 = BiasAct(8, act="lrelu", alpha=0.2, impl=impl)
        self.act2 = BiasAct(1, impl=impl)

    def forward(self, x):
        return self.act2(self.conv2(self.act1(self.conv1(x)))).mean(dim=(1, 2, 3))


def _torch_twin(d: TinyD) -> torch.nn.Module:
    conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
    conv2 = torch.nn.Conv2d(8, 1, 3, stride=2, padding=1)
    with torch.no_grad():
        conv1.weight.copy_(d.conv1.weight), conv1.bias.copy_(d.act1.bias)
        conv2.weight.copy_(d.conv2.weight), conv2.bias.copy_(d.act2.bias)
    net = torch.nn.Sequential(conv1, torch.nn.LeakyReLU(0.2), conv2)
    return torch.nn.Sequential(net).double(), lambda x: net(x).mean(dim=(1, 2, 3))


def _loss_plus_r1(d, x, gamma=10.0):
    x = x.detach().requires_grad_()
    logits = d(x)
    loss = F.softplus(-logits).mean()
    (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    return loss + gamma / 2 * grad.square().sum(dim=(1, 2, 3)).mean()


@pytest.mark.parametrize("path", ["backward", "autograd.grad"])
@pytest.mark.parametrize("impl", IMPLS)
def test_r1_penalty_matches_torch_nn(impl, path):
    require(impl, "cpu")
    torch.manual_seed(0)
    d = TinyD(impl).double()
    with torch.no_grad():
        for p in (d.act1.bias, d.act2.bias):
            p.normal_()
    twin, twin_fn = _torch_twin(d)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    ours_params = [d.conv1.weight, d.act1.bias, d.conv2.weight, d.act2.bias]
    twin_params = [twin[0][0].weight, twin[0][0].bias, twin[0][2].weight, twin[0][2].bias]
    ours_loss, twin_loss = _loss_plus_r1(d, x), _loss_plus_r1(twin_fn, x)
    torch.testing.assert_close(ours_loss, twin_loss)
    if path == "backward":
        ours_loss.backward()
        twin_loss.backward()
        ours, theirs = [p.grad for p in ours_params], [p.grad for p in twin_params]
    else:
        ours, theirs = torch.autograd.grad(ours_loss, ours_params), torch.autograd.grad(twin_loss, twin_params)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


class ZeroGradConvBackwards(TorchDispatchMode):
    """Counts convolution backwards and how many of them ran on an all-zero incoming gradient."""

    def __init__(self):
        super().__init__()
        self.total = self.on_zeros = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution_backward.default:
            self.total += 1
            self.on_zeros += int(not args[0].any())
        return func(*args, **(kwargs or {}))


def test_zero_grad_counter_sees_waste():
    """The counter used below does catch a convolution backward on an all-zero gradient."""
    conv = torch.nn.Conv2d(3, 4, 3)
    out = conv(torch.randn(1, 3, 5, 5))
    with ZeroGradConvBackwards() as counter:
        out.backward(torch.zeros_like(out))
    assert (counter.total, counter.on_zeros) == (1, 1)


@pytest.mark.parametrize("impl", IMPLS)
def test_second_derivative_pruning(impl):
    """A gradient penalty through conv -> lrelu: PyTorch materialises lrelu's all-zero second derivative and runs
    the convolution backward on it; fastgan's backward op returns no x-gradient there, so nothing runs."""
    require(impl, "cpu")
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, bias=False)
    b = torch.randn(4, requires_grad=True)
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    (grad,) = torch.autograd.grad(bias_act(conv(x), b, act="lrelu", impl=impl).sum(), x, create_graph=True)
    with ZeroGradConvBackwards() as counter:
        grad.square().sum().backward()
    assert conv.weight.grad.abs().sum() > 0
    if impl == "ref":
        assert counter.on_zeros >= 1, "the witness: plain PyTorch runs a convolution backward on zeros"
    else:
        assert counter.on_zeros == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_no_zero_work_in_r1_through_tiny_discriminator(impl):
    require(impl, "cpu")
    torch.manual_seed(0)
    d = TinyD(impl)
    x = torch.randn(2, 3, 8, 8)
    with ZeroGradConvBackwards() as counter:
        _loss_plus_r1(d, x).backward()
    assert counter.total >= 2
    assert counter.on_zeros == 0


@pytest.mark.parametrize("impl", ["native", "triton"])
def test_third_order_refused_for_smooth_activations(impl):
    require(impl, "cpu")
    x, b = _inputs()
    y = bias_act(x, b, act="tanh", impl=impl)
    (g1,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    (g2,) = torch.autograd.grad(g1.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="bias_act: third-order"):
        torch.autograd.grad(g2.sum(), x)
    with pytest.raises(RuntimeError, match="bias_act: third-order"):
        g2.sum().backward()


@pytest.mark.parametrize("impl", ["native", "triton"])
def test_third_order_correct_for_piecewise_linear(impl):
    """lrelu has f'' == 0, yet third-order terms through products of gradients (8 f'(z)^4 here) are not zero."""
    require(impl, "cpu")

    def third(fn):
        x, b = _inputs(seed=3)
        y = fn(x, b)
        (g1,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        (g2,) = torch.autograd.grad(g1.square().sum(), x, create_graph=True)
        return torch.autograd.grad(g2.sum(), (x, b), allow_unused=True, materialize_grads=True)

    ours = third(lambda x, b: bias_act(x, b, act="lrelu", alpha=0.3, impl=impl))
    ref = third(lambda x, b: bias_act_ref(x, b, act="lrelu", alpha=0.3))
    assert ref[0].abs().min() > 0
    torch.testing.assert_close(ours, ref)


BAD_INPUTS = [
    (lambda: (torch.randn(2, 3, 4), torch.randn(4)), {}, ValueError, "length"),
    (lambda: (torch.randn(2, 3, 4), torch.randn(3, 1)), {}, ValueError, "1-D"),
    (lambda: (torch.randn(2, 3, 4), torch.randn(3, device="meta")), {}, ValueError, "device"),
    (lambda: (torch.randn(2, 3, 4), torch.randn(3)), {"act": "gelu"}, ValueError, "unknown activation"),
    (lambda: (torch.randint(0, 5, (2, 3, 4)), None), {}, TypeError, "floating-point"),
    (lambda: (torch.randn(2, 3, 4), torch.randint(0, 5, (3,))), {}, TypeError, "floating-point"),
    (lambda: (torch.randn(2, 3, 4), None), {"dim": 3}, IndexError, "out of range"),
    (lambda: (torch.randn(2, 3, 4), None), {"act": "tanh", "alpha": 0.2}, ValueError, "takes no alpha"),
    (lambda: (torch.randn(2, 3, 4), None), {"clamp": -1.0}, ValueError, "clamp"),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("make,kwargs,error,message", BAD_INPUTS)
def test_bad_input(impl, make, kwargs, error, message):
    require(impl, "cpu")
    x, b = make()
    with pytest.raises(error, match=rf"bias_act: .*{message}"):
        bias_act(x, b, impl=impl, **kwargs)


def test_native_glue_checks_arguments_itself():
    """C++ callers skip the Python checks: the glue reports bad input naming the op too."""
    require("native", "cpu")
    with pytest.raises(RuntimeError, match="bias_act: b must be 1-D of length"):
        torch.ops.fastgan.bias_act(torch.randn(2, 3), torch.randn(4), 1, 0, 0.0, 1.0, None)
    with pytest.raises(RuntimeError, match="bias_act: x must be a floating-point"):
        torch.ops.fastgan.bias_act(torch.ones(2, 3, dtype=torch.int32), None, 1, 0, 0.0, 1.0, None)


def test_module_holds_bias_and_matches_reference():
    layer = BiasAct(5, act="elu", alpha=0.5, gain=2.0, dim=-1, impl="ref")
    assert list(dict(layer.named_parameters())) == ["bias"] and layer.bias.shape == (5,)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(3, 5)
    torch.testing.assert_close(layer(x), 2.0 * F.elu(x + layer.bias, 0.5))
    assert "act='elu'" in repr(layer)
    with pytest.raises(ValueError, match="BiasAct: unknown activation"):
        BiasAct(3, act="gelu")


def test_defaults_follow_torch_nn():
    x = torch.randn(4, 6)
    torch.testing.assert_close(bias_act(x, act="lrelu", impl="ref"), F.leaky_relu(x))  # alpha 0.01
    torch.testing.assert_close(bias_act(x, act="elu", impl="ref"), F.elu(x))  # alpha 1
    if fastgan.available_impls()["native"]["cpu"][0]:
        torch.testing.assert_close(bias_act(x, act="lrelu", impl="native"), F.leaky_relu(x))


def test_first_call_inside_torch_compile():
    """Registration on first use must also work when that first use is being traced (a fresh interpreter)."""
    require("native", "cpu")
    import json

    code = (
        "import torch\n"
        "from fastgan.ops import bias_act\n"
        "f = torch.compile(lambda x, b: bias_act(x, b, act='lrelu', alpha=0.2, impl='native').sum(), fullgraph=True)\n"
        "x = torch.ones(2, 3, 4, 4, requires_grad=True); b = torch.full((3,), -2.0, requires_grad=True)\n"
        "out = f(x, b); out.backward()\n"
        "import json; print(json.dumps([out.item(), b.grad.tolist()]))\n"
    )
    # x + b = -1 everywhere: lrelu gives -0.2 on 96 elements; d/db = 0.2 per element, 32 elements per channel.
    total, grad_b = json.loads(fresh_python(code)[-1])
    assert abs(total + 19.2) < 1e-4
    assert all(abs(g - 6.4) < 1e-4 for g in grad_b)


# --- NaN, inf and odd parameters behave as in PyTorch (issue 18) ---------------------------------------------------

SPECIAL = [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 25.0, -25.0, 1.0, -1.0, 1e30, -1e30, 0.5]


def _same_kinds(ours: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    """NaN, +inf and -inf exactly where the reference has them; finite values close."""
    assert ours.dtype == ref.dtype and ours.shape == ref.shape, what
    o, r = ours.double(), ref.double()
    assert torch.equal(o.isnan(), r.isnan()), f"{what}: NaN at {o.isnan().nonzero().tolist()[:8]}, reference at " \
        f"{r.isnan().nonzero().tolist()[:8]}"
    assert torch.equal(o == float("inf"), r == float("inf")), f"{what}: +inf differs: {o.tolist()} vs {r.tolist()}"
    assert torch.equal(o == -float("inf"), r == -float("inf")), f"{what}: -inf differs: {o.tolist()} vs {r.tolist()}"
    finite = r.isfinite()
    eps = torch.finfo(ref.dtype).eps
    assert ((o - r).abs()[finite] <= 8 * eps * (1 + r.abs()[finite])).all(), f"{what}: {o.tolist()} vs {r.tolist()}"


def _special_outcomes(impl, act, dtype, **kw):
    """Forward, dx, db and the second-order x-gradient of bias_act on SPECIAL values (a [12, 64] input, one value per
    row, b = 0). 64 columns: PyTorch's CPU kernels run whole vectors there (its scalar tail can differ at NaN)."""
    x = torch.tensor(SPECIAL, dtype=torch.float64).repeat(64, 1).t().contiguous().to(dtype).requires_grad_()
    b = torch.zeros(64, dtype=dtype, requires_grad=True)
    y = bias_act(x, b, act=act, impl=impl, **kw)
    dy = torch.linspace(-1, 2, y.numel(), dtype=torch.float64).reshape(y.shape).to(dtype)
    dx, db = torch.autograd.grad(y, (x, b), dy, create_graph=True)
    penalty = (dx * dy).sum()
    if penalty.requires_grad:
        (d2x,) = torch.autograd.grad(penalty, x, allow_unused=True, materialize_grads=True)
    else:  # a linear activation: dx does not depend on x
        d2x = torch.zeros_like(x)
    return {"forward": y.detach(), "dx": dx.detach(), "db": db.detach(), "d2x": d2x}


@pytest.mark.parametrize("impl", ["native", "triton"])
@pytest.mark.parametrize("act", list(ACTIVATIONS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("params", [{}, {"gain": 2.0, "clamp": 1.0}, {"gain": float("inf")}, {"gain": float("nan")}],
                         ids=["plain", "gain2-clamp1", "gain-inf", "gain-nan"])
def test_nan_and_inf_propagate_as_in_torch(impl, act, dtype, params):
    """Every activation at NaN, +-inf, +-0, huge and ordinary values, forward, first and second order, plain and with
    gain/clamp (an infinite or NaN gain included): NaN and inf exactly where PyTorch's functions put them."""
    require(impl, "cpu")
    ours, ref = _special_outcomes(impl, act, dtype, **params), _special_outcomes("ref", act, dtype, **params)
    for key in ref:
        if key == "d2x" and act == "silu" and not math.isfinite(params.get("gain", 1.0)):
            # Unspecified (README): silu's second derivative times an infinite incoming gradient is NaN or inf
            # depending on how the formula's terms are grouped, which PyTorch's and ours do differently.
            continue
        _same_kinds(ours[key], ref[key], f"{act} {params} {key}")


@pytest.mark.parametrize("act", ["relu", "elu", "selu", "softplus", "lrelu", "silu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("clamp", [None, 1.0])
def test_triton_bias_act_keeps_nan(act, dtype, clamp):
    """Issue 18: the Triton kernel turned NaN into numbers (elu/selu 0, softplus 20, relu 0; clamp=1.0 gave -1, or
    -inf in float16 and +-256 in bfloat16): tl.minimum/tl.maximum drop NaN, where PyTorch's relu and clamp keep it."""
    require("triton", "cpu")
    x = torch.tensor([[float("nan"), 1.0, -1.0], [2.0, float("nan"), -3.0]], dtype=dtype)
    y = bias_act(x, torch.zeros(3, dtype=dtype), act=act, clamp=clamp, impl="triton")
    assert torch.equal(y.isnan(), x.isnan()), y
    torch.testing.assert_close(y, bias_act_ref(x, torch.zeros(3, dtype=dtype), act=act, clamp=clamp),
                               equal_nan=True)


def test_native_relu_keeps_nan():
    """Issue 18: native relu mapped NaN to 0 (z > 0 ? z : 0); torch.relu keeps it, and its backward passes the
    gradient at NaN (threshold_backward tests relu(z) <= 0)."""
    require("native", "cpu")
    x = torch.tensor([float("nan"), -1.0, 2.0], requires_grad=True)
    y = bias_act(x, act="relu", dim=0, impl="native")
    assert y[0].isnan() and y[1] == 0 and y[2] == 2
    (dx,) = torch.autograd.grad(y, x, torch.ones(3))
    assert dx.tolist() == [1.0, 0.0, 1.0]


def test_infinite_gain_matches_torch():
    """Issue 18 (odd parameters): with gain=inf, a zero derivative times inf is NaN in PyTorch's chain only where the
    chain multiplies (tanh's saturated slope), not where a select drops the branch (relu below zero, a clamped-out
    value); dx = act_backward(z, dy * gain), in PyTorch's order, on every implementation, to second order."""
    x = torch.tensor([[-2.0, 0.0, 3.0, float("nan")]], dtype=torch.float64, requires_grad=True)
    for impl in IMPLS:
        if not fastgan.available_impls()[impl]["cpu"][0]:
            continue
        for act, kw in (("relu", {}), ("tanh", {}), ("relu", {"clamp": 1.0}), ("elu", {"clamp": 5.0})):
            outs = []
            for which in (impl, "ref"):
                xx = x.detach().clone().requires_grad_()
                y = bias_act(xx, act=act, gain=float("inf"), impl=which, **kw)
                (dx,) = torch.autograd.grad(y, xx, torch.ones_like(y), create_graph=True)
                g = torch.tensor([[1.0, -2.0, 3.0, 0.5]], dtype=torch.float64)
                if dx.requires_grad:
                    (ddy,) = torch.autograd.grad(dx, xx, g, allow_unused=True, materialize_grads=True)
                else:
                    ddy = torch.zeros_like(xx)
                outs.append((y.detach(), dx.detach(), ddy))
            for a, b, what in zip(outs[0], outs[1], ("forward", "dx", "d2x")):
                _same_kinds(a, b, f"{impl} {act} {kw} {what}")


def test_swish_is_silu():
    """StyleGAN calls silu "swish": the alias is accepted wherever an activation name is."""
    x = torch.randn(3, 4)
    torch.testing.assert_close(bias_act(x, act="swish", impl="ref"), F.silu(x))
    assert "swish" in repr(BiasAct(4, act="swish"))


def _stylegan_formula(x, b, act, alpha, gain, clamp):
    """StyleGAN2's bias_act, written from its published description: x + b broadcast on dim 1, then the activation
    (lrelu slope alpha, default 0.2; elu with PyTorch's alpha 1; swish x * sigmoid(x)), then * gain (default sqrt(2)
    after relu, lrelu and swish, 1 otherwise), then clamped to [-clamp, clamp] when clamp is given."""
    sqrt2 = 2**0.5
    z = x + b.reshape(1, -1, *[1] * (x.dim() - 2))
    table = {
        "linear": (lambda v, a: v, 1.0),
        "relu": (lambda v, a: torch.clamp(v, min=0), sqrt2),
        "lrelu": (lambda v, a: torch.where(v > 0, v, v * a), sqrt2),
        "tanh": (lambda v, a: torch.tanh(v), 1.0),
        "sigmoid": (lambda v, a: 1 / (1 + torch.exp(-v)), 1.0),
        "elu": (lambda v, a: torch.where(v > 0, v, torch.exp(v) - 1), 1.0),
        "selu": (lambda v, a: 1.0507009873554805 * torch.where(v > 0, v, 1.6732632423543772 * (torch.exp(v) - 1)),
                 1.0),
        "softplus": (lambda v, a: torch.where(v > 20, v, torch.log1p(torch.exp(v))), 1.0),
        "swish": (lambda v, a: v / (1 + torch.exp(-v)), sqrt2),
    }
    fn, default_gain = table[act]
    y = fn(z, 0.2 if alpha is None else alpha) * (default_gain if gain is None else gain)
    return y if clamp is None else y.clamp(-clamp, clamp)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("act", ["linear", "relu", "lrelu", "tanh", "sigmoid", "elu", "selu", "softplus", "swish"])
@pytest.mark.parametrize("kw", [{}, {"alpha": 0.3, "gain": 1.7, "clamp": 2.0}, {"clamp": 256.0}],
                         ids=["defaults", "alpha-gain-clamp", "clamp256"])
def test_stylegan_defaults_match_the_published_formulas(impl, act, kw):
    """defaults="stylegan": StyleGAN's bias_act in float64, outputs and first-order gradients to 1e-12 on every
    implementation (Triton included: its float64 path computes with float64 alpha and gain)."""
    require(impl, "cpu")
    if "alpha" in kw and act not in ("lrelu",):
        kw = {k: v for k, v in kw.items() if k != "alpha"}
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(2, 5, 3, 4, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    b = torch.randn(5, generator=gen, dtype=torch.float64).requires_grad_()
    expected = _stylegan_formula(x, b, act, kw.get("alpha"), kw.get("gain"), kw.get("clamp"))
    got = bias_act(x, b, act=act, impl=impl, defaults="stylegan", **kw)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    dy = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    for ours, theirs in zip(torch.autograd.grad(got, (x, b), dy), torch.autograd.grad(expected, (x, b), dy)):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_triton_float64_is_float64_accurate(act):
    """Issue 18: Triton passed alpha, gain and clamp as float32 (lrelu in float64 was 6e-8 off StyleGAN's). Now the
    float64 kernel agrees with the float64 reference to float64 rounding, at parameters float32 cannot hold."""
    require("triton", "cpu")
    gen = torch.Generator().manual_seed(2)
    x = (torch.randn(3, 4, 5, generator=gen, dtype=torch.float64) * 4).requires_grad_()
    b = torch.randn(4, generator=gen, dtype=torch.float64)
    alpha = 0.2 if act in ("lrelu", "elu") else None
    kw = dict(act=act, alpha=alpha, gain=2**0.5, clamp=3.0000000001)
    ours, ref = bias_act(x, b, impl="triton", **kw), bias_act_ref(x, b, **kw)
    torch.testing.assert_close(ours, ref, rtol=0, atol=4e-15 * 4)
    dy = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(torch.autograd.grad(ours, x, dy)[0], torch.autograd.grad(ref, x, dy)[0], rtol=0,
                               atol=4e-15 * 4)


def test_defaults_must_be_known():
    with pytest.raises(ValueError, match="bias_act: defaults must be one of"):
        bias_act(torch.randn(2, 3), defaults="tf")


def _ulps(ours: torch.Tensor, exact: torch.Tensor) -> float:
    """The largest error of float32 ``ours`` in units in the last place of the float64 ``exact`` values, over those
    whose float32 rounding is normal."""
    rounded = exact.float()
    normal = rounded.isfinite() & (rounded.abs() >= torch.finfo(torch.float32).tiny)
    ulp = torch.finfo(torch.float32).eps * torch.exp2(torch.floor(torch.log2(exact.abs())))
    return ((ours.double() - exact).abs() / ulp)[normal].max().item()


def test_native_float_math_is_accurate():
    """The C++ kernels' own float exp, tanh and log1p (csrc/common.h: branch-free, so the CPU loops vectorise) on a
    dense sweep of float32 values, from the subnormal results to the overflowing ones: tanh and exp within 2 ulp of
    the exact values, sigmoid and softplus (formulas over exp and log1p) within 3, as PyTorch's own are (2.3 and 1.5
    ulp on the same sweep)."""
    require("native", "cpu")
    f64 = torch.float64
    sweep = [torch.linspace(-110, 110, 400_001, dtype=f64), torch.linspace(-1, 1, 200_001, dtype=f64)]
    sweep += [sign * torch.logspace(-30, 1.5, 20_000, dtype=f64) for sign in (1, -1)]
    z = torch.cat(sweep).float()
    exact = z.double()
    x = z.clone().requires_grad_()
    elu = bias_act(x, None, 0, "elu", alpha=1.0, impl="native")
    (exp,) = torch.autograd.grad(elu, x, torch.ones_like(elu))  # d * alpha * exp(z) below 0: exp itself
    below = exact <= 0
    errors = {
        "tanh": _ulps(bias_act(z, None, 0, "tanh", impl="native"), torch.tanh(exact)),
        "exp": _ulps(exp[below], torch.exp(exact[below])),
        "sigmoid": _ulps(bias_act(z, None, 0, "sigmoid", impl="native"), torch.sigmoid(exact)),
        "softplus": _ulps(bias_act(z, None, 0, "softplus", impl="native"), F.softplus(exact)),
    }
    bounds = {"tanh": 2, "exp": 2, "sigmoid": 3, "softplus": 3}
    assert all(errors[name] <= bounds[name] for name in bounds), f"ulp errors {errors}, bounds {bounds}"
