"""Forward-mode AD and ``torch.func`` transforms through every registered op (``tests/registry.py``).

The custom ops' derivatives are reverse-mode autograd formulas: forward-mode AD would pass them by with no tangent
and ``torch.func.grad`` refuses them. So ``impl="auto"`` runs the reference there and must give the reference's
derivatives exactly (float64); ``"native"`` and ``"triton"``, asked for by name, give them too or raise, naming the
fix, never a wrong tangent (under ``torch.func.vmap`` alone they run sample by sample and must not raise).
"""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn

import fastgan

from .conftest import DEVICES, require
from .registry import all_cases

MODES = ("dual", "jvp", "grad", "vmap")


def _params():
    for case in all_cases():
        shape = next(s for s in case.shapes if all(s))
        for device in DEVICES:
            for impl in ("auto", *case.impls) if "ref" in case.impls else case.impls:
                if impl == "ref":
                    continue
                for mode in MODES:
                    yield pytest.param(case, shape, device, impl, mode, id=f"{case.name}-{impl}-{device}-{mode}")


def _derivative(case, shape, device, impl, mode):
    """What ``mode`` computes through the op on ``impl``: a tangent, a gradient or a batch of outputs."""
    gen = torch.Generator().manual_seed(0)
    inputs = [t.to(device) for t in case.make_inputs(shape, gen)]
    n = case.num_grad_inputs
    primals, rest = tuple(inputs[:n]), inputs[n:]
    tangents = tuple(torch.randn(p.shape, generator=gen, dtype=p.dtype).to(device) for p in primals)

    def f(*p):
        return case.fn(*p, *rest, impl=impl)

    if mode == "dual":
        with fwAD.dual_level():
            out = f(*(fwAD.make_dual(p, t) for p, t in zip(primals, tangents)))
            return fwAD.unpack_dual(out).tangent
    if mode == "jvp":
        return torch.func.jvp(f, primals, tangents)[1]
    if mode == "grad":
        weight = torch.randn(case.ref(*inputs).shape, generator=gen, dtype=torch.float64).to(device)
        return torch.func.grad(lambda *p: (f(*p) * weight).sum(), argnums=tuple(range(n)))(*primals)
    batched = tuple(torch.stack([p, p + t]) for p, t in zip(primals, tangents))  # two samples
    return torch.func.vmap(f)(*batched)


@pytest.mark.parametrize("case,shape,device,impl,mode", list(_params()))
def test_transform_follows_the_reference_or_refuses(case, shape, device, impl, mode):
    require("ref" if impl == "auto" else impl, device)
    try:
        expected = _derivative(case, shape, device, "ref", mode)
    except RuntimeError as refused:  # e.g. a batch norm updating its buffers under torch.func, as nn.BatchNorm2d
        with pytest.raises(RuntimeError):
            _derivative(case, shape, device, impl, mode)
        pytest.skip(f"the reference itself refuses {mode}: {str(refused)[:120]}")
    try:
        got = _derivative(case, shape, device, impl, mode)
    except RuntimeError as refused:
        # A kernel asked for by name may refuse (where it has one: a linear convolution runs PyTorch's alone).
        assert impl != "auto" and mode != "vmap", f"impl={impl!r} refused {mode}: {refused}"
        message = str(refused)
        assert "cannot differentiate this fastgan kernel" in message and "impl='auto'" in message, message
        return
    assert got is not None, f"{mode} through impl={impl!r} lost the tangent"
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


@pytest.fixture
def fused_at_every_size(monkeypatch, one_channel_routes):
    """Every fused layer on its fused path (small ones would run their reference on the CPU anyway), the convolutions
    from and to one channel on their own routes (conftest's ``one_channel_routes``)."""
    monkeypatch.setattr(fastgan._backend, "CPU_REF_MAX_NUMEL", dict.fromkeys(fastgan._backend.CPU_REF_MAX_NUMEL, 0))


def _models():
    torch.manual_seed(0)
    d = nn.Sequential(nn.Conv2d(1, 8, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(8, 16, 4, 2, 1),
                      nn.InstanceNorm2d(16, affine=True), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(16 * 7 * 7, 1))
    g = nn.Sequential(nn.ConvTranspose2d(16, 8, 4, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.ConvTranspose2d(8, 8, 3, 1, 1), nn.ReLU(), nn.ConvTranspose2d(8, 1, 4, 2, 1), nn.Tanh())
    return d.double(), g.double().eval()


def test_optimized_model_under_torch_func(fused_at_every_size):
    """Per-sample gradients (vmap of grad over ``functional_call``), jvp and dual tensors through an optimized
    discriminator and generator (every fused layer, the one-channel routes and the in-place activations of
    FusedSequential: a batch norm in training refuses torch.func, as in plain PyTorch), against the plain ones."""
    d, g = _models()
    fast_d, fast_g = fastgan.optimize(d), fastgan.optimize(g)
    x, z = torch.randn(6, 1, 28, 28, dtype=torch.float64), torch.randn(6, 16, 7, 7, dtype=torch.float64)

    def per_sample(model):
        params = {k: v.detach() for k, v in model.named_parameters()}

        def loss(p, xi):
            return torch.func.functional_call(model, p, (xi[None],)).squeeze()

        return torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, x)

    ours, plain = per_sample(fast_d), per_sample(d)
    assert ours.keys() == plain.keys()
    for name in plain:
        torch.testing.assert_close(ours[name], plain[name], msg=name)
    tangent = torch.randn_like(z)
    expected = torch.func.jvp(g, (z,), (tangent,))[1]
    torch.testing.assert_close(torch.func.jvp(fast_g, (z,), (tangent,))[1], expected)
    torch.testing.assert_close(_dual_tangent(fast_g, z, tangent), expected)


def _dual_tangent(model, z, tangent):
    with fwAD.dual_level():
        return fwAD.unpack_dual(model(fwAD.make_dual(z, tangent))).tangent


def test_compiled_optimized_model_under_forward_ad(fused_at_every_size):
    """A compiled optimized generator (Dynamo's eager backend: AOTAutograd graphs are run eagerly by torch.func.jvp
    from outside, and refuse dual tensors for plain PyTorch too) under torch.func.jvp and dual tensors, after a plain
    call traced the kernels: Dynamo's guards on the dual level and the transforms make it trace the reference."""
    _, g = _models()
    torch._dynamo.reset()
    fast_g = torch.compile(fastgan.optimize(g), backend="eager")
    z = torch.randn(6, 16, 7, 7, dtype=torch.float64)
    torch.testing.assert_close(fast_g(z), g(z))
    tangent = torch.randn_like(z)
    expected = torch.func.jvp(g, (z,), (tangent,))[1]
    torch.testing.assert_close(torch.func.jvp(fast_g, (z,), (tangent,))[1], expected)
    torch.testing.assert_close(_dual_tangent(fast_g, z, tangent), expected)
    torch.testing.assert_close(fast_g(z), g(z))


@pytest.mark.parametrize("impl", ["auto", "native"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_transforms_inside_a_compiled_function(backend, mode, impl):
    """Forward-mode AD and torch.func inside a compiled function (fullgraph): ``auto`` traces the reference and gives
    its derivatives; the C++ kernel named explicitly refuses, since a trace shows neither tangents nor which
    transform is active (vmap too)."""
    require(impl if impl != "auto" else "ref", "cpu")
    gen = torch.Generator().manual_seed(0)
    x, t = (torch.randn(8, 4, 6, 6, generator=gen, dtype=torch.float64) for _ in range(2))
    b = torch.randn(4, generator=gen, dtype=torch.float64)

    def run(impl, compiled):
        def f(x):
            return fastgan.ops.bias_act(x, b, act="lrelu", alpha=0.2, impl=impl)

        def derivative(x, t):
            if mode == "dual":
                with fwAD.dual_level():
                    return fwAD.unpack_dual(f(fwAD.make_dual(x, t))).tangent
            if mode == "jvp":
                return torch.func.jvp(f, (x,), (t,))[1]
            if mode == "grad":
                return torch.func.grad(lambda x: (f(x) * t).sum())(x)
            return torch.func.vmap(f)(x[:, None])[:, 0]

        torch._dynamo.reset()
        return torch.compile(derivative, backend=backend, fullgraph=True)(x, t) if compiled else derivative(x, t)

    expected = run("ref", compiled=False)
    if impl == "auto":
        torch.testing.assert_close(run(impl, compiled=True), expected, rtol=1e-9, atol=1e-12)
    else:
        with pytest.raises(RuntimeError, match="cannot differentiate this fastgan kernel"):
            run(impl, compiled=True)
