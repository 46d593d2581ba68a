"""batch_norm_act / instance_norm_act and their modules beyond the parity matrix: running statistics against torch.nn
over several steps, gradcheck/gradgradcheck, numerics far from zero, determinism, state_dict round trips, from_modules,
bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from fastgan._backend import custom_ops
from fastgan.nn import BatchNormAct2d, InstanceNormAct2d, activation_of
from fastgan.ops import ACTIVATIONS, batch_norm_act, batch_norm_act_ref, instance_norm_act, instance_norm_act_ref

from .conftest import DEVICES, require

IMPLS = ("ref", "native", "triton")
# Our kernels (the reference is PyTorch itself, whose channels_last CPU kernel loses ~7e-3 on the far-from-zero test).
_SUFFIX = {"native": "", "triton": "_triton"}
KERNELS = tuple(i for i in IMPLS if i != "ref")


def _steps(fused, reference, device, shape, steps=3, seed=0):
    """Train both modules on the same batches; compare outputs, parameter grads and buffers after each step."""
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        x = (torch.randn(shape, generator=gen) * 3 + 1).to(device)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = fused(xa), reference(xb)
        torch.testing.assert_close(ya, yb, atol=2e-5, rtol=1e-5, msg=lambda m, s=step: f"step {s} forward: {m}")
        go = torch.randn(shape, generator=gen).to(device)
        ya.backward(go)
        yb.backward(go)
        torch.testing.assert_close(xa.grad, xb.grad, atol=5e-5, rtol=1e-4)
        for (name, pa), pb in zip(fused.named_parameters(), reference.parameters()):
            torch.testing.assert_close(pa.grad, pb.grad, atol=2e-4, rtol=1e-4, msg=lambda m, n=name: f"{n}.grad: {m}")
        norm = reference[0] if isinstance(reference, nn.Sequential) else reference
        for name, buf in norm.named_buffers():
            torch.testing.assert_close(getattr(fused, name), buf, atol=1e-6, rtol=1e-6, msg=lambda m, n=name: n + m)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("track", [True, False])
def test_batch_norm_module_matches_torch_over_steps(impl, device, momentum, track):
    require(impl, device)
    torch.manual_seed(0)
    reference = nn.Sequential(nn.BatchNorm2d(6, momentum=momentum, track_running_stats=track), nn.LeakyReLU(0.2))
    with torch.no_grad():
        reference[0].weight.uniform_(0.5, 1.5)
        reference[0].bias.uniform_(-0.5, 0.5)
    reference = reference.to(device)
    fused = BatchNormAct2d.from_modules(reference[0], reference[1], impl=impl)
    assert fused.act == "lrelu" and fused.alpha == 0.2
    _steps(fused, reference, device, (4, 6, 5, 3))
    if track:
        assert int(fused.num_batches_tracked) == 3
    fused.eval()
    reference.eval()
    _steps(fused, reference, device, (2, 6, 4, 4), steps=2, seed=1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("affine,track", [(False, False), (True, True), (False, True)])
def test_instance_norm_module_matches_torch_over_steps(impl, device, affine, track):
    require(impl, device)
    torch.manual_seed(0)
    reference = nn.Sequential(nn.InstanceNorm2d(5, affine=affine, track_running_stats=track), nn.ReLU())
    if affine:
        with torch.no_grad():
            reference[0].weight.uniform_(0.5, 1.5)
            reference[0].bias.uniform_(-0.5, 0.5)
    reference = reference.to(device)
    fused = InstanceNormAct2d.from_modules(reference[0], reference[1], impl=impl)
    _steps(fused, reference, device, (3, 5, 4, 6))
    fused.eval()
    reference.eval()
    _steps(fused, reference, device, (1, 5, 7, 3), steps=2, seed=1)
    x = torch.randn(5, 4, 4, device=device)  # unbatched input, as nn.InstanceNorm2d accepts
    torch.testing.assert_close(fused(x), reference(x), atol=2e-5, rtol=1e-5)


def _functional(kind: str, training: bool, act: str, impl: str):
    """(x, w, b) -> y for gradcheck, with running statistics as constants in evaluation mode."""
    def fn(x, w, b):
        c = x.shape[1]
        rm = torch.linspace(-0.5, 0.5, c, dtype=x.dtype)
        rv = torch.linspace(0.5, 2.0, c, dtype=x.dtype)
        stats = (None, None) if training else (rm, rv)
        if kind == "batch":
            return batch_norm_act(x, w, b, *stats, training, 0.1, 1e-5, act, impl=impl)
        return instance_norm_act(x, w, b, *stats, training, 0.1, 1e-5, act, impl=impl)

    return fn


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "kind,training,act", [("batch", True, "tanh"), ("batch", False, "lrelu"), ("instance", True, "lrelu"),
                          ("instance", False, "tanh")]
)
def test_gradcheck_and_gradgradcheck(impl, kind, training, act):
    require(impl, "cpu")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 3, 2, generator=gen, dtype=torch.float64).requires_grad_()
    w = (1 + 0.3 * torch.randn(3, generator=gen, dtype=torch.float64)).requires_grad_()
    b = (0.3 * torch.randn(3, generator=gen, dtype=torch.float64)).requires_grad_()
    fn = _functional(kind, training, act, impl)
    assert torch.autograd.gradcheck(fn, (x, w, b), fast_mode=impl == "triton")
    if impl != "triton":  # the interpreter takes minutes here; Triton's 2nd order is checked by the parity matrix
        assert torch.autograd.gradgradcheck(fn, (x, w, b))


@pytest.mark.parametrize("impl", IMPLS)
def test_third_order_matches_reference(impl):
    """The second order is built from PyTorch ops, so higher orders come out right too."""
    require(impl, "cpu")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 3, generator=gen, dtype=torch.float64)
    results = []
    for run_impl in ("ref", impl):
        xi = x.clone().requires_grad_()
        y = _functional("batch", True, "tanh", run_impl)(xi, None, None)
        (g,) = torch.autograd.grad((y * y.detach().sin()).sum(), xi, create_graph=True)
        (g2,) = torch.autograd.grad((g * g).sum(), xi, create_graph=True)
        (g3,) = torch.autograd.grad(g2.sin().sum(), xi)
        results.append(g3)
    torch.testing.assert_close(results[1], results[0])


@pytest.mark.parametrize("impl", KERNELS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_statistics_far_from_zero(impl, layout):
    """x = 1000 + randn over 24576 values per channel: float32 E[x^2] - E[x]^2 would lose about 6% of the variance."""
    require(impl, "cpu")
    gen = torch.Generator().manual_seed(0)
    x64 = 1000 + torch.randn(6, 3, 64, 64, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 0.1, 3.0]).view(
        1, 3, 1, 1
    ).double()
    x = x64.float()
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    rm, rv = torch.zeros(3), torch.ones(3)
    y = batch_norm_act(x, None, None, rm, rv, True, 1.0, 1e-5, impl=impl)
    truth = F.batch_norm(x.double(), None, None, None, None, True, 0.0, 1e-5)
    assert (y.double() - truth).abs().max().item() < 2e-3
    var = x.double().var(dim=(0, 2, 3))
    assert ((rv.double() - var).abs() / var).max().item() < 1e-4, "running_var lost precision"
    yi = instance_norm_act(x, impl=impl)
    truth_i = F.instance_norm(x.double(), eps=1e-5)
    assert (yi.double() - truth_i).abs().max().item() < 2e-3


@pytest.mark.parametrize("impl", IMPLS)
def test_deterministic_regardless_of_threads(impl):
    """The reduction order is fixed by construction: equal bits with 1 thread and with several."""
    require(impl, "cpu")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 5, 33, 17, generator=gen).requires_grad_()
    go = torch.randn(x.shape, generator=gen)
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (1, max(threads, 2)):
            torch.set_num_threads(n)
            y = batch_norm_act(x, None, None, None, None, True, act="relu", impl=impl)
            (dx,) = torch.autograd.grad(y, x, go)
            runs.append((y, dx))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_state_dict_round_trips_with_torch_nn():
    torch.manual_seed(0)
    reference = nn.BatchNorm2d(4, momentum=None)
    reference.train()
    for _ in range(3):
        reference(torch.randn(2, 4, 3, 3) * 2 + 1)
    fused = BatchNormAct2d(4, momentum=None, impl="ref")
    assert fused.state_dict().keys() == reference.state_dict().keys()
    fused.load_state_dict(reference.state_dict())  # strict: same keys
    for key, value in reference.state_dict().items():
        assert torch.equal(fused.state_dict()[key], value), key
    fused(torch.randn(2, 4, 3, 3))
    back = nn.BatchNorm2d(4)
    back.load_state_dict(fused.state_dict())
    assert int(back.num_batches_tracked) == 4
    # A checkpoint saved before num_batches_tracked existed (no version metadata) loads as in torch.nn.
    old = {k: v for k, v in reference.state_dict().items() if k != "num_batches_tracked"}
    fresh = BatchNormAct2d(4, impl="ref")
    fresh.load_state_dict(old)
    assert int(fresh.num_batches_tracked) == 0
    inst = nn.InstanceNorm2d(4, affine=True, track_running_stats=True)
    fused_inst = InstanceNormAct2d(4, affine=True, track_running_stats=True, impl="ref")
    assert fused_inst.state_dict().keys() == inst.state_dict().keys()
    inst.load_state_dict(fused_inst.state_dict())


@pytest.mark.parametrize(
    "module",
    [None, nn.Identity(), nn.ReLU(), nn.LeakyReLU(0.3), nn.Tanh(), nn.Sigmoid(), nn.SiLU(), nn.ELU(0.6), nn.SELU()],
    ids=lambda m: type(m).__name__,
)
def test_from_modules_maps_activations(module):
    torch.manual_seed(0)
    norm = nn.BatchNorm2d(3).eval()
    with torch.no_grad():
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
    fused = BatchNormAct2d.from_modules(norm, module, impl="ref")
    assert not fused.training
    x = torch.randn(2, 3, 4, 4)
    expected = norm(x) if module is None else module(norm(x))
    torch.testing.assert_close(fused(x), expected)
    with pytest.raises(ValueError, match="no fastgan activation"):
        activation_of(nn.Hardswish())
    with pytest.raises(TypeError, match="BatchNormAct2d.from_modules"):
        BatchNormAct2d.from_modules(nn.InstanceNorm2d(3))


def test_reference_is_torch():
    """The specification is literally torch.nn.functional's norm followed by the activation."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, 5, generator=gen)
    rm, rv = torch.zeros(4), torch.ones(4)
    rm2, rv2 = rm.clone(), rv.clone()
    y = batch_norm_act_ref(x, None, None, rm, rv, True, 0.3, 1e-5, "elu", 0.5)
    torch.testing.assert_close(y, F.elu(F.batch_norm(x, rm2, rv2, None, None, True, 0.3), 0.5), rtol=0, atol=0)
    torch.testing.assert_close(rm, rm2, rtol=0, atol=0)
    yi = instance_norm_act_ref(x, act="silu")
    torch.testing.assert_close(yi, F.silu(F.instance_norm(x)), rtol=0, atol=0)


def test_reference_avoids_instance_norm_bug():
    """PyTorch's own F.instance_norm gets the input gradient wrong for a batch of 1 with a channels_last incoming
    gradient (CPU, 2.13); the reference must not inherit that (it is the truth of the parity matrix)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 8, 8, generator=gen, dtype=torch.float64)
    grads = []
    for fn in (F.instance_norm, instance_norm_act_ref):
        for channels_last in (False, True):
            xi = x.clone().requires_grad_()
            y = fn(xi)
            if channels_last:
                y = y.contiguous(memory_format=torch.channels_last)
            grads.append(torch.autograd.grad((y * y.detach().sin()).sum(), xi)[0])
    torch.testing.assert_close(grads[2], grads[0])
    torch.testing.assert_close(grads[3], grads[0])


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_input_names_the_op(impl):
    x = torch.randn(2, 3, 4, 4)
    c3 = torch.ones(3)
    cases = [
        (lambda: batch_norm_act(x.long(), None, None, None, None, True, impl=impl), TypeError, "batch_norm_act"),
        (lambda: batch_norm_act(x, torch.ones(4), None, None, None, True, impl=impl), ValueError, "weight"),
        (lambda: batch_norm_act(x, None, None, None, None, False, impl=impl), ValueError, "running_mean"),
        (lambda: batch_norm_act(x, None, None, c3, None, True, impl=impl), ValueError, "both"),
        (lambda: batch_norm_act(x, None, None, None, None, True, act="gelu", impl=impl), ValueError, "activation"),
        (lambda: batch_norm_act(x, None, None, None, None, True, act="relu", alpha=0.1, impl=impl), ValueError,
         "alpha"),
        (lambda: batch_norm_act(x[:1, :, :1, :1], None, None, None, None, True, impl=impl), ValueError,
         "more than 1 value"),
        (lambda: batch_norm_act(x, None, None, c3, c3.clone(), True, momentum=None, impl=impl), ValueError,
         "num_batches_tracked"),
        (lambda: batch_norm_act(torch.randn(3), None, None, None, None, True, impl=impl), ValueError, "at least 2"),
        (lambda: instance_norm_act(x[:, :, :1, :1], impl=impl), ValueError, "instance_norm_act: expected more"),
        (lambda: instance_norm_act(torch.randn(2, 3), impl=impl), ValueError, "instance_norm_act"),
        (lambda: instance_norm_act(x, use_input_stats=False, impl=impl), ValueError, "use_input_stats"),
        (lambda: instance_norm_act(x, None, None, None, None, True, eps=0.0, impl=impl), ValueError, "eps"),
        (lambda: batch_norm_act(x, None, None, None, None, True, impl="cuda"), ValueError, "unknown implementation"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
    with pytest.raises(ValueError, match="BatchNormAct2d"):
        BatchNormAct2d(3, act="nope")
    with pytest.raises(ValueError, match="BatchNormAct2d: expected a 4-D"):
        BatchNormAct2d(3)(torch.randn(2, 3, 4))


@pytest.mark.parametrize("impl", ["native", "triton"])
def test_opcheck(impl):
    require(impl, "cpu")
    forward, backward = custom_ops("norm_act", impl)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 5, generator=gen)
    cl = x.contiguous(memory_format=torch.channels_last)
    w, b, rm, rv = torch.rand(3) + 0.5, torch.randn(3), torch.randn(3), torch.rand(3) + 0.5
    lrelu, tanh = ACTIVATIONS["lrelu"].index, ACTIVATIONS["tanh"].index
    # The Triton interpreter runs eagerly only (AOT dispatch hands it fake tensors): that check runs on a GPU.
    basic = ("test_schema", "test_autograd_registration", "test_faketensor")
    full = basic if impl == "triton" else (*basic, "test_aot_dispatch_dynamic")
    for args in [(x, w, b, None, None, True, False, 1e-5, lrelu, 0.2), (cl, None, None, None, None, True, True, 1e-3,
                 tanh, 0.0), (cl, w, None, rm, rv, False, False, 1e-5, tanh, 0.0)]:
        torch.library.opcheck(forward, args, test_utils=full)
        y, mean, var = forward(*args)
        torch.library.opcheck(backward, (torch.randn_like(y), args[0], w, b, mean, var, *args[5:]), test_utils=basic)


class FullSizeWrites(TorchDispatchMode):
    """Counts dispatched ops that write a tensor the size of the activation (a pass over memory each)."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.ops = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else [out]
        if not func.is_view and any(isinstance(t, torch.Tensor) and t.numel() == self.numel for t in outs):
            self.ops.append(str(func.overloadpacket))
        return out


@pytest.mark.parametrize("impl", ["native", "triton"])
def test_one_full_size_write_each_way(impl):
    """Forward + backward of BatchNormAct2d writes two activation-sized tensors (y, dx); eager writes four or more."""
    require(impl, "cpu")
    x = torch.randn(4, 6, 5, 5, requires_grad=True)
    counts = {}
    modules = {"ours": BatchNormAct2d(6, impl=impl), "eager": nn.Sequential(nn.BatchNorm2d(6), nn.ReLU())}
    for name, module in modules.items():
        with FullSizeWrites(x.numel()) as mode:
            module(x).sum().backward()
        counts[name] = mode.ops
    suffix = _SUFFIX[impl]
    assert [op.split(".")[-1] for op in counts["ours"]] == [f"norm_act{suffix}", f"norm_act_backward{suffix}"]
    assert len(counts["eager"]) >= 4, counts["eager"]
