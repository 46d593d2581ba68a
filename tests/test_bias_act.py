"""bias_act beyond the parity matrix: gradcheck/gradgradcheck, opcheck, torch.compile, an R1 penalty end to end,
second-derivative pruning (counted dispatches), third order, bad input, and the BiasAct module."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import fastgan
from fastgan._backend import custom_ops
from fastgan.nn import BiasAct
from fastgan.ops import ACTIVATIONS, bias_act, bias_act_ref

from .conftest import require

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
        torch.library.opcheck(forward, args, test_utils=full)
        torch.library.opcheck(backward, (dy, *args), test_utils=full)
        torch.library.opcheck(backward2, (g, dy, *args), test_utils=basic if args[3] == tanh else full)


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
        BiasAct(3, act="swish")


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
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from fastgan.ops import bias_act\n"
        "f = torch.compile(lambda x, b: bias_act(x, b, act='lrelu', alpha=0.2, impl='native').sum(), fullgraph=True)\n"
        "x = torch.ones(2, 3, 4, 4, requires_grad=True); b = torch.full((3,), -2.0, requires_grad=True)\n"
        "out = f(x, b); out.backward()\n"
        "import json; print(json.dumps([out.item(), b.grad.tolist()]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    # x + b = -1 everywhere: lrelu gives -0.2 on 96 elements; d/db = 0.2 per element, 32 elements per channel.
    total, grad_b = json.loads(out.stdout.strip().splitlines()[-1])
    assert abs(total + 19.2) < 1e-4
    assert all(abs(g - 6.4) < 1e-4 for g in grad_b)
