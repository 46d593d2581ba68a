"""batch_norm_act / instance_norm_act and their modules beyond the parity matrix: running statistics against torch.nn
over several steps, gradcheck/gradgradcheck, numerics far from zero, determinism, state_dict round trips, from_modules,
bad input."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from fastgan._backend import custom_ops
from fastgan.nn import BatchNormAct2d, InstanceNormAct2d, activation_of
from fastgan.ops import ACTIVATIONS, batch_norm_act, batch_norm_act_ref, instance_norm_act, instance_norm_act_ref

from .conftest import DEVICES, assert_close_to_truth, opcheck, require

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
    """(x, w, b) -> y for gradcheck, with running statistics as constants in evaluation mode; "tracked" batch norm
    updates running statistics and a step counter (fresh ones each call) in training (fastgan::norm_act_train)."""
    def fn(x, w, b):
        c = x.shape[1]
        rm = torch.linspace(-0.5, 0.5, c, dtype=x.dtype)
        rv = torch.linspace(0.5, 2.0, c, dtype=x.dtype)
        if kind == "tracked":
            return batch_norm_act(x, w, b, rm, rv, training, None, 1e-5, act, impl=impl,
                                  num_batches_tracked=torch.tensor(2))
        stats = (None, None) if training else (rm, rv)
        if kind == "batch":
            return batch_norm_act(x, w, b, *stats, training, 0.1, 1e-5, act, impl=impl)
        return instance_norm_act(x, w, b, *stats, training, 0.1, 1e-5, act, impl=impl)

    return fn


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "kind,training,act", [("batch", True, "tanh"), ("batch", False, "lrelu"), ("instance", True, "lrelu"),
                          ("instance", False, "tanh"), ("tracked", True, "tanh")]
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


def _third_order(fn, x):
    xi = x.clone().requires_grad_()
    y = fn(xi)
    (g,) = torch.autograd.grad((y * y.detach().sin()).sum(), xi, create_graph=True)
    (g2,) = torch.autograd.grad((g * g).sum(), xi, create_graph=True)
    (g3,) = torch.autograd.grad(g2.sin().sum(), xi)
    return g3


def _batch_norm_tanh_from_primitives(x):
    """Training-mode batch norm + tanh from ops PyTorch differentiates to any order (the third-order truth)."""
    mean = x.mean((0, 2, 3), keepdim=True)
    var = (x - mean).square().mean((0, 2, 3), keepdim=True)
    return torch.tanh((x - mean) / torch.sqrt(var + 1e-5))


def _pytorch_third_order_of_batch_norm(x):
    """PyTorch's own third derivative of F.batch_norm, or None where it refuses one (2.14 on)."""
    try:
        return _third_order(lambda t: torch.tanh(F.batch_norm(t, None, None, training=True)), x)
    except RuntimeError as error:
        assert "3rd+ order" in str(error)
        return None


@pytest.mark.parametrize("impl", IMPLS)
def test_third_order_is_right(impl):
    """The compiled and Triton second order is built from elementary ops, so every higher order is right on any
    PyTorch. ``ref`` is F.batch_norm: its third derivative is wrong up to PyTorch 2.13 (this test shows it differs
    from the truth) and refused from 2.14; the reference keeps PyTorch's behaviour either way."""
    require(impl, "cpu")
    x = torch.randn(2, 3, 4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    truth = _third_order(_batch_norm_tanh_from_primitives, x)
    run = _functional("batch", True, "tanh", impl)
    pytorch = _pytorch_third_order_of_batch_norm(x)
    if impl != "ref":
        torch.testing.assert_close(_third_order(lambda t: run(t, None, None), x), truth)
    elif pytorch is None:
        with pytest.raises(RuntimeError, match="does not support 3rd\\+ order"):
            _third_order(lambda t: run(t, None, None), x)
    else:
        assert not torch.allclose(pytorch, truth), "PyTorch's batch_norm third derivative is right here: say so above"
        torch.testing.assert_close(_third_order(lambda t: run(t, None, None), x), pytorch)


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


@pytest.mark.parametrize("instance", [False, True], ids=["batch", "instance"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["contiguous", "channels_last"])
def test_native_cpu_deterministic_across_layouts(layout, instance):
    """The C++ kernels split reductions into tasks of a fixed geometry (an NCHW group's planes; up to 64 channels_last
    rows of one sample) merged in task order: equal bits with 1 and 2 threads in both layouts, for both norms, with more
    channels than one vector and rows than one task."""
    require("native", "cpu")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 70, 20, 9, generator=gen).contiguous(memory_format=layout).requires_grad_()
    go = torch.randn(x.shape, generator=gen)
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            if instance:
                y = instance_norm_act(x, act="lrelu", impl="native")
            else:
                y = batch_norm_act(x, None, None, None, None, True, act="lrelu", impl="native")
            (dx,) = torch.autograd.grad(y, x, go)
            runs.append((y, dx))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


# N, C, H, W: tasks of 2 samples (13 = 6 x 2 + 1), one sample, planes of 255 values (the longest so walked) and a
# sample's row over several chunks of 1024 values
@pytest.mark.parametrize("shape", [(13, 37, 7, 7), (1, 3, 2, 2), (17, 6, 15, 17)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_native_short_planes_backward(shape, dtype):
    """Issue 17: batch norm's training backward on NCHW planes shorter than 256 values walks whole samples in memory
    order (its own code path): within the parity tolerance of the float64 reference for dx, dw and db, and the same
    bits with 1 and 2 threads."""
    require("native", "cpu")
    gen = torch.Generator().manual_seed(0)
    x64, go = torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 2, torch.randn(shape, generator=gen)
    w64, b64 = torch.rand(shape[1], generator=gen, dtype=torch.float64) + 0.5, torch.randn(shape[1], generator=gen,
                                                                                          dtype=torch.float64)

    def grads(x, w, b, impl, threads=None):
        x, w, b = (t.detach().requires_grad_() for t in (x, w, b))
        before = torch.get_num_threads()
        try:
            torch.set_num_threads(threads or before)
            y = (batch_norm_act(x, w, b, None, None, True, act="lrelu", alpha=0.2, impl=impl) if impl else
                 batch_norm_act_ref(x, w, b, None, None, True, act="lrelu", alpha=0.2))
            return torch.autograd.grad(y, (x, w, b), go.to(x.dtype))
        finally:
            torch.set_num_threads(before)

    low = (x64.to(dtype), w64.float(), b64.float())
    ours, truth, torch_out = grads(*low, "native", 2), grads(x64, w64, b64, None), grads(*low, None)
    for name, o, t, r in zip(("dx", "dw", "db"), ours, truth, torch_out):
        assert_close_to_truth(o, t, r, o.dtype, name)
    assert all(torch.equal(a, c) for a, c in zip(ours, grads(*low, "native", 1)))


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
    ops = custom_ops("norm_act", impl)
    forward, backward = ops.norm_act, ops.norm_act_backward
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 5, generator=gen).requires_grad_()
    cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    w, b = (torch.rand(3) + 0.5).requires_grad_(), torch.randn(3, requires_grad=True)
    rm, rv = torch.randn(3), torch.rand(3) + 0.5
    lrelu, tanh = ACTIVATIONS["lrelu"].index, ACTIVATIONS["tanh"].index
    # The Triton interpreter runs eagerly only (AOT dispatch hands it fake tensors): that check runs on a GPU.
    basic = ("test_schema", "test_autograd_registration", "test_faketensor")
    full = basic if impl == "triton" else (*basic, "test_aot_dispatch_dynamic")
    for args in [(x, w, b, None, None, True, False, 1e-5, lrelu, 0.2), (cl, None, None, None, None, True, True, 1e-3,
                 tanh, 0.0), (cl, w, None, rm, rv, False, False, 1e-5, tanh, 0.0)]:
        opcheck(forward, args, test_utils=full)
        y, mean, var = forward(*args)
        opcheck(backward, (torch.randn_like(y), args[0], w, b, mean, var, *args[5:]), test_utils=basic)


@pytest.mark.parametrize("impl", ["native", "triton"])
def test_conditional_opcheck(impl):
    """conditional_norm_act with the per-sample map inside: batch statistics, statistics given (a conv epilogue's),
    running statistics; both layouts."""
    require(impl, "cpu")
    forward, backward = custom_ops("conditional_norm_act", impl)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, 2, generator=gen).requires_grad_()
    cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    scale = (1 + torch.randn(3, 4, generator=gen) * 0.3).requires_grad_()
    shift = (torch.randn(3, 4, generator=gen) * 0.3).requires_grad_()
    mean, var = x.detach().mean((0, 2, 3)), x.detach().var((0, 2, 3), unbiased=False)
    relu, tanh = ACTIVATIONS["relu"].index, ACTIVATIONS["tanh"].index
    basic = ("test_schema", "test_autograd_registration", "test_faketensor")
    full = basic if impl == "triton" else (*basic, "test_aot_dispatch_dynamic")
    for args in [(x, scale, shift, None, None, True, 1e-5, relu, 0.0), (cl, scale, shift, mean, var, True, 1e-5, relu,
                 0.0), (cl, scale, shift, mean, var + 1, False, 1e-3, tanh, 0.0)]:
        opcheck(forward, args, test_utils=full)
        y, m, v = forward(*args)
        opcheck(backward, (torch.randn_like(y), args[0], scale, shift, m, v, *args[5:]),
                              test_utils=basic)


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
    assert [op.split(".")[-1] for op in counts["ours"]] == [f"norm_act_train{suffix}", f"norm_act_backward{suffix}"]
    assert len(counts["eager"]) >= 4, counts["eager"]


# --- running statistics: one fastgan::norm_act_update_stats kernel -------------------------------------------------


def _former_update(running_mean, running_var, mean, var, factor, count, batch):
    """The update in PyTorch ops (the bit-level specification): the lerp in the buffer's math type, rounded once to
    the buffer dtype, as PyTorch's batch norm does (the statistic is not rounded to a half buffer first)."""
    unbiased = var * (count / (count - 1))
    if batch > 1:
        mean, unbiased = mean.view(batch, -1).mean(0), unbiased.view(batch, -1).mean(0)
    math = _math(running_mean.dtype)
    running_mean.copy_(running_mean.to(math).lerp_(mean.to(math), factor))
    running_var.copy_(running_var.to(math).lerp_(unbiased.to(math), factor))


@pytest.mark.parametrize("impl", KERNELS)
@pytest.mark.parametrize("buffers", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("stats", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [1, 3])
def test_update_stats_matches_former_ops(impl, buffers, stats, batch):
    """Up to one rounding of the buffer dtype (PyTorch's lerp fuses its multiply-add on vector lanes only) and, for
    a batch of instance statistics, one of the statistics dtype (our variance sum takes one fma per sample), for
    momentum-like factors and the exact first step of a cumulative average (factor 1)."""
    require(impl, "cpu")
    update = custom_ops("norm_act", impl).norm_act_update_stats
    gen = torch.Generator().manual_seed(batch)
    channels = 37  # odd: vector lanes and a scalar tail in PyTorch's kernel, a partial block in Triton's
    for factor in (0.1, 1.0, 1 / 3, 0.75):
        mean = (torch.randn(batch * channels, generator=gen, dtype=torch.float64) * 3).to(stats)
        var = (torch.rand(batch * channels, generator=gen, dtype=torch.float64) * 2).to(stats)
        running = torch.randn(2, channels, generator=gen, dtype=torch.float64).to(buffers)
        expected = running.clone()
        _former_update(expected[0], expected[1], mean, var, factor, 25, batch)
        start = running.clone()
        update(running[0], running[1], None, mean, var, factor, 25, batch)
        ulp = torch.finfo(buffers).eps + (2 * torch.finfo(stats).eps if batch > 1 else 0)
        if impl == "triton" and not _interpreter_fma_fused():
            _assert_within_unfused_fma(running, expected, start, ulp * expected.double().abs() + ulp * 1e-3, stats)
        else:
            torch.testing.assert_close(running, expected, rtol=ulp, atol=ulp * 1e-3, msg=lambda m, f=factor: f"{f} {m}")
        if factor == 1.0 and batch == 1:
            assert torch.equal(running, expected)


def _math(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@functools.cache
def _interpreter_fma_fused() -> bool:
    """Whether this Triton's ``tl.fma`` rounds once, as on a GPU: the interpreter before Triton 3.9 rounds the product
    and the sum separately (an emulation limit, not the kernel's)."""
    import triton
    import triton.language as tl

    @triton.jit
    def fma_kernel(a_ptr, out_ptr):
        a = tl.load(a_ptr)
        tl.store(out_ptr, tl.fma(a, a, -tl.load(a_ptr + 1)))

    a = torch.tensor([1 + 2**-12, 1 + 2**-11])  # a*a - b = 2^-24 exactly; rounding a*a first gives 0
    out = torch.empty(1)
    fma_kernel[(1,)](a, out)
    return out.item() == 2**-24


def _assert_within_unfused_fma(actual, expected, start, tolerance, stats):
    """|actual - expected| <= tolerance plus what unfused fmas can add: the lerp's product term (at most
    3 (|out| + |start|) in magnitude) rounded once more in the math type, the variance's fma (a term of at most
    |out| + |start| once weighted) once more in the statistics dtype, and the result rounded to the buffer dtype."""
    eps = 3 * torch.finfo(_math(expected.dtype)).eps + 2 * torch.finfo(stats).eps
    bound = tolerance + eps * (expected.double().abs() + start.double().abs())
    bound = bound + torch.finfo(expected.dtype).eps * expected.double().abs()
    err = (actual.double() - expected.double()).abs()
    assert (err <= bound).all(), f"error {err.max():.3g} past the unfused-fma bound by {(err - bound).max():.3g}"


@pytest.mark.parametrize("buffers", [torch.float32, torch.bfloat16, torch.float64])
def test_update_stats_identical_across_implementations(buffers):
    """Native and Triton round the same operations the same way (explicit fma, no contraction), bit for bit: on a
    GPU and under an interpreter whose fma is fused. Where the interpreter rounds fma twice (Triton < 3.9), they
    differ by at most that one extra rounding of the math type."""
    for impl in KERNELS:
        require(impl, "cpu")
    gen = torch.Generator().manual_seed(0)
    for stats, batch, factor in [(torch.float32, 1, 0.1), (torch.float32, 4, 1 / 7), (torch.float64, 3, 0.9)]:
        mean = torch.randn(batch * 19, generator=gen, dtype=torch.float64).to(stats)
        var = torch.rand(batch * 19, generator=gen, dtype=torch.float64).to(stats)
        start = torch.randn(2, 19, generator=gen, dtype=torch.float64).to(buffers)
        results = []
        for impl in KERNELS:
            running = start.clone()
            custom_ops("norm_act", impl).norm_act_update_stats(running[0], running[1], None, mean, var, factor, 11,
                                                                 batch)
            results.append(running)
        if _interpreter_fma_fused():
            assert torch.equal(results[0], results[1]), (stats, batch, factor)
        else:
            _assert_within_unfused_fma(results[1], results[0], start, 0.0, stats)


@pytest.mark.parametrize("impl", KERNELS)
def test_update_stats_strided_buffers_and_empty(impl):
    """Buffers may be strided views (updated in place, neighbours untouched); zero channels is a no-op."""
    require(impl, "cpu")
    update = custom_ops("norm_act", impl).norm_act_update_stats
    storage = torch.zeros(2, 10)
    mean, var = torch.arange(5.0), torch.full((5,), 2.0)
    update(storage[0, ::2], storage[1, ::2], None, mean, var, 0.5, 3, 1)
    torch.testing.assert_close(storage[0, ::2], mean * 0.5)
    torch.testing.assert_close(storage[1, ::2], var * 1.5 * 0.5)
    assert not storage[:, 1::2].any()
    empty = torch.empty(0)
    update(empty, empty.clone(), None, empty, empty, 0.1, 3, 2)


@pytest.mark.parametrize("impl", KERNELS)
def test_update_stats_advances_the_step_counter(impl):
    """The step counter advances by one per update, the update weighs by the momentum or, for momentum=None, by
    1 / the steps counting this one (nn.BatchNorm2d's cumulative average), all in the kernel: buffers and counter
    as PyTorch's over several steps, with and without statistics (an empty channel list still counts the step)."""
    require(impl, "cpu")
    update = custom_ops("norm_act", impl).norm_act_update_stats
    gen = torch.Generator().manual_seed(5)
    for momentum in (None, 0.3):
        reference = nn.BatchNorm2d(6, momentum=momentum)
        running, steps = torch.stack([reference.running_mean, reference.running_var]), torch.tensor(0)
        for _ in range(4):
            x = torch.randn(3, 6, 2, 5, generator=gen) * 2 + 1
            reference(x)
            update(running[0], running[1], steps, x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False), momentum,
                   30, 1)
        assert steps.item() == reference.num_batches_tracked.item() == 4
        torch.testing.assert_close(running[0], reference.running_mean, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(running[1], reference.running_var, rtol=1e-6, atol=1e-6)
    empty = torch.empty(0)
    update(empty, empty.clone(), steps, empty, empty, None, 3, 1)
    assert steps.item() == 5


@pytest.mark.parametrize("impl", KERNELS)
def test_update_stats_bad_input_names_the_op(impl):
    require(impl, "cpu")
    update = custom_ops("norm_act", impl).norm_act_update_stats
    rm, rv, mean, var = torch.zeros(3), torch.ones(3), torch.zeros(3), torch.ones(3)
    for args, message in [
        ((rm, rv, None, mean, var, 0.1, 1, 1), "more than 1 value per statistic group"),
        ((rm, rv, None, mean, var, 0.1, 4, 0), "batch must be >= 1"),
        ((rm, rv, None, torch.zeros(6), var, 0.1, 4, 1), "length batch \\* C = 3"),
        ((rm, rv, None, mean.half(), var.half(), 0.1, 4, 1), "float32 or both float64"),
        ((rm, torch.ones(4), None, mean, var, 0.1, 4, 1), "same length"),
        ((rm, rv.double(), None, mean, var, 0.1, 4, 1), "of one dtype"),
        ((rm, rv, None, mean, var, None, 4, 1), "momentum=None .* needs num_batches_tracked"),
        ((rm, rv, torch.zeros(1, dtype=torch.long), mean, var, 0.1, 4, 1), "0-dim int64"),
        ((rm, rv, torch.zeros(()), mean, var, 0.1, 4, 1), "0-dim int64"),
    ]:
        with pytest.raises((RuntimeError, ValueError, TypeError), match=f"norm_act_update_stats: .*{message}"):
            update(*args)
    assert torch.equal(rm, torch.zeros(3)) and torch.equal(rv, torch.ones(3))  # rejected before any write


def _train_buffers(module, shapes, dtype, layout, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for shape in shapes:
        x = (torch.randn(shape, generator=gen) * 2 + 0.5).to(dtype)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        module(x.requires_grad_()).float().sum().backward()
    return dict(module.named_buffers())


def _assert_buffers_close(ours, theirs, dtype):
    for name, buf in theirs.items():
        assert ours[name].dtype == buf.dtype, name
        # Half-precision buffers: both round the update once (the fma and the order of the statistics' sums differ).
        tol = dict(atol=0, rtol=0) if buf.dtype == torch.long else dict(rtol=2e-6, atol=2e-6)
        if buf.dtype in (torch.float16, torch.bfloat16):
            tol = dict(rtol=2 * torch.finfo(buf.dtype).eps, atol=2 * torch.finfo(buf.dtype).eps)
        elif dtype != torch.float32:  # float32 buffers, statistics of half-precision inputs: summation order
            tol = dict(rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours[name], buf, **tol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("impl", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("buffers", ["float32", "input"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_batch_norm_running_stats_match_torch(impl, dtype, buffers, layout):
    """Several training steps of odd-sized batches: running_mean/var and num_batches_tracked as nn.BatchNorm2d's,
    with float32 buffers or buffers in the input dtype (a ``.half()`` model), momentum 0.1 and None."""
    require(impl, "cpu")
    shapes = [(3, 5, 4, 3), (2, 5, 3, 3), (5, 5, 2, 1)]
    for momentum in (0.1, None):
        torch.manual_seed(0)
        reference = nn.BatchNorm2d(5, momentum=momentum)
        ours = BatchNormAct2d(5, momentum=momentum, act="linear", impl=impl)
        if buffers == "input":
            reference, ours = reference.to(dtype), ours.to(dtype)
        expected = _train_buffers(reference, shapes, dtype, layout)
        _assert_buffers_close(_train_buffers(ours, shapes, dtype, layout), expected, dtype)


@pytest.mark.parametrize("impl", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_instance_norm_running_stats_match_torch(impl, dtype, batch, layout):
    """nn.InstanceNorm2d(track_running_stats=True): the batch average of the per-sample statistics."""
    require(impl, "cpu")
    shapes = [(batch, 4, 5, 3), (batch, 4, 3, 3)]
    reference = nn.InstanceNorm2d(4, track_running_stats=True).to(dtype)
    ours = InstanceNormAct2d(4, track_running_stats=True, act="linear", impl=impl).to(dtype)
    _assert_buffers_close(_train_buffers(ours, shapes, dtype, layout), _train_buffers(reference, shapes, dtype,
                                                                                       layout), dtype)


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_batch_leaves_running_stats(impl):
    """N = 0: batch norm leaves the running statistics as nn.BatchNorm2d does (and counts the step, as it does).
    Instance norm leaves them too, on every implementation, where nn.InstanceNorm2d writes NaN, the mean of no
    samples (or fails with an IndexError for float16 buffers)."""
    require(impl, "cpu")
    bn, reference = BatchNormAct2d(3, impl=impl), nn.BatchNorm2d(3)
    x = torch.randn(0, 3, 4, 4)
    assert bn(x).shape == x.shape
    reference(x)
    _assert_buffers_close(dict(bn.named_buffers()), dict(reference.named_buffers()), torch.float32)
    inorm = InstanceNormAct2d(3, track_running_stats=True, impl=impl)
    assert inorm(x).shape == x.shape
    assert torch.equal(inorm.running_mean, torch.zeros(3)) and torch.equal(inorm.running_var, torch.ones(3))
    half = InstanceNormAct2d(3, track_running_stats=True, impl=impl).half()
    assert half(x.half()).shape == x.shape and torch.equal(half.running_var, torch.ones(3, dtype=torch.half))


class _Ops(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket).split(".")[-1])
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("impl", KERNELS)
def test_training_forward_is_one_op_plus_one_update(impl):
    """Batch norm's training forward dispatches one op, which also updates the running statistics and advances the
    step counter (nn.BatchNorm2d dispatches its batch norm and an add_); instance norm, its norm op and one
    statistics update."""
    require(impl, "cpu")
    suffix = _SUFFIX[impl]
    x = torch.randn(2, 3, 4, 4)
    for module, expected in [
        (BatchNormAct2d(3, impl=impl), [f"norm_act_train{suffix}"]),
        (BatchNormAct2d(3, momentum=None, impl=impl), [f"norm_act_train{suffix}"]),
        (InstanceNormAct2d(3, track_running_stats=True, impl=impl), [f"norm_act{suffix}",
                                                                       f"norm_act_update_stats{suffix}"]),
    ]:
        with _Ops() as mode:
            module(x)
        assert mode.ops == expected


def test_torch_compile_training_step_native():
    """torch.compile(fullgraph=True) captures the mutating update (through its fake) and gives eager's buffers."""
    require("native", "cpu")
    torch._dynamo.reset()
    torch.manual_seed(0)
    reference = nn.Sequential(nn.BatchNorm2d(4), nn.ReLU())
    ours = BatchNormAct2d.from_modules(reference[0], reference[1], impl="native")
    compiled = torch.compile(ours, backend="aot_eager", fullgraph=True)
    for step in range(3):
        x = torch.randn(3, 4, 5, 5)
        torch.testing.assert_close(compiled(x), reference(x), msg=lambda m, s=step: f"step {s}: {m}")
    _assert_buffers_close(dict(ours.named_buffers()), dict(reference[0].named_buffers()), torch.float32)


@pytest.mark.parametrize("impl", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("buffers", ["float32", "input"])
def test_training_op_is_the_forward_then_the_update(impl, dtype, layout, buffers):
    """fastgan::norm_act_train gives norm_act's output and statistics bit for bit, and the buffers and step counter
    norm_act_update_stats gives them, for momentum and momentum=None (on CUDA the update runs in the forward's
    statistics merge, the same formula)."""
    require(impl, "cpu")
    ops = custom_ops("norm_act", impl)
    gen = torch.Generator().manual_seed(7)
    x = (torch.randn(3, 5, 4, 3, generator=gen) * 2 + 1).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w, b = torch.rand(5, generator=gen, dtype=_math(dtype)) + 0.5, torch.randn(5, generator=gen, dtype=_math(dtype))
    buffer_dtype = torch.float32 if buffers == "float32" else dtype
    for momentum in (0.1, None):
        start = torch.randn(2, 5, generator=gen).to(buffer_dtype)
        running, steps = start.clone(), torch.tensor(4)
        y, mean, var = ops.norm_act_train(x, w, b, running[0], running[1], steps, momentum, 1e-5, 3, 0.2)
        y_ref, mean_ref, var_ref = ops.norm_act(x, w, b, None, None, True, False, 1e-5, 3, 0.2)
        expected, expected_steps = start.clone(), torch.tensor(4)
        ops.norm_act_update_stats(expected[0], expected[1], expected_steps, mean_ref, var_ref, momentum, 36, 1)
        for ours, theirs in [(y, y_ref), (mean, mean_ref), (var, var_ref), (running, expected)]:
            assert torch.equal(ours, theirs)
        assert y.stride() == y_ref.stride() and steps.item() == expected_steps.item() == 5


@pytest.mark.parametrize("impl", ["native", "triton"])
def test_training_op_opcheck(impl):
    """Schema (its mutations declared), fake and, on native, the compiled path; its gradient is
    _TrainingBatchNormAct's (gradcheck / gradgradcheck above, kind "tracked")."""
    require(impl, "cpu")
    train = custom_ops("norm_act", impl).norm_act_train
    checks = ("test_schema", "test_faketensor") + (("test_aot_dispatch_dynamic",) if impl == "native" else ())
    x = torch.randn(3, 4, 2, 5, generator=torch.Generator().manual_seed(0))
    for steps, momentum in [(None, 0.1), (torch.tensor(3), None)]:
        args = (x, torch.ones(4), torch.zeros(4), torch.zeros(4), torch.ones(4), steps, momentum, 1e-5, 3, 0.2)
        opcheck(train, args, test_utils=checks)
    running_mean, running_var = torch.zeros(5), torch.ones(5)
    with pytest.raises((RuntimeError, ValueError), match="norm_act_train: running_mean must be 1-D with one value per "
                                                         "channel \\(4\\)"):
        train(x, None, None, running_mean, running_var, None, 0.1, 1e-5, 3, 0.2)
    assert torch.equal(running_mean, torch.zeros(5))  # rejected before any write


@pytest.mark.parametrize("impl", ["native", "triton"])
def test_update_stats_opcheck(impl):
    require(impl, "cpu")
    update = custom_ops("norm_act", impl).norm_act_update_stats
    checks = ("test_schema", "test_autograd_registration", "test_faketensor")
    checks = checks if impl == "triton" else (*checks, "test_aot_dispatch_dynamic")
    gen = torch.Generator().manual_seed(0)
    for buffers, batch in [(torch.float32, 1), (torch.float16, 3)]:
        mean, var = torch.randn(batch * 4, generator=gen), torch.rand(batch * 4, generator=gen)
        for steps, momentum in [(None, 0.1), (torch.tensor(3), 0.1), (torch.tensor(3), None)]:
            args = (torch.zeros(4, dtype=buffers), torch.ones(4, dtype=buffers), steps, mean, var, momentum, 7, batch)
            opcheck(update, args, test_utils=checks)


@pytest.mark.parametrize("impl", ["native", "triton"])
def test_precomputed_batch_statistics(impl):
    """The forward op given x's own batch statistics (as a conv epilogue reduces them) skips its statistics pass but
    returns the same output and statistics and, being in training mode, the same batch-statistics gradients."""
    require(impl, "cpu")
    forward = custom_ops("norm_act", impl).norm_act
    x = (torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 3)
    x = x.contiguous(memory_format=torch.channels_last)
    w = torch.rand(4, dtype=torch.float64) + 0.5
    args = (True, False, 1e-5, ACTIVATIONS["lrelu"].index, 0.2)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, mean, var = forward(xa, w, None, None, None, *args)
    yb, mean_b, var_b = forward(xb, w, None, mean.clone(), var.clone(), *args)
    assert torch.equal(ya, yb) and torch.equal(mean, mean_b) and torch.equal(var, var_b)
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (ga,), (gb,) = torch.autograd.grad(ya, xa, dy), torch.autograd.grad(yb, xb, dy)
    torch.testing.assert_close(gb, ga, rtol=0, atol=0)
    # the witness: evaluation-mode gradients (statistics as constants) differ
    (ge,) = torch.autograd.grad(forward(xb, w, None, mean, var, False, *args[1:])[0], xb, dy)
    assert (ge - ga).abs().max() > 1e-3


# --- issue 18: one dtype contract, no channels, odd eps, non-finite data ------------------------------------------

_HALF = (torch.float16, torch.bfloat16)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("p_dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_parameter_dtypes_follow_batch_norm_contract(impl, x_dtype, p_dtype):
    """Issue 18: the reference (F.batch_norm) refused mixed dtypes, some with an internal assert, while the kernels
    took any. The contract, kept by every implementation: weight, bias and running statistics share one dtype, x's
    or float32 for a float16/bfloat16 x; anything else raises a TypeError naming the op."""
    require(impl, "cpu")
    x = torch.randn(2, 3, 4, 4).to(x_dtype)
    params = [torch.ones(3, dtype=p_dtype), torch.zeros(3, dtype=p_dtype)]
    stats = [torch.zeros(3, dtype=p_dtype), torch.ones(3, dtype=p_dtype)]
    allowed = p_dtype == x_dtype or (p_dtype == torch.float32 and x_dtype in _HALF)
    for call in (lambda: batch_norm_act(x, *params, *stats, True, impl=impl),
                 lambda: batch_norm_act(x, *params, *stats, False, impl=impl),
                 lambda: instance_norm_act(x, *params, *stats, True, impl=impl)):
        if allowed:
            assert call().dtype == x_dtype
        else:
            with pytest.raises(TypeError, match=r"(batch|instance)_norm_act: weight, bias, running_mean and "):
                call()
    # One odd one out among otherwise valid parameters is refused too (PyTorch: "expected scalar type").
    if allowed:
        odd = torch.float64 if p_dtype != torch.float64 else torch.float32
        with pytest.raises(TypeError, match="batch_norm_act: .*share one dtype"):
            batch_norm_act(x, params[0], params[1].to(odd), *stats, True, impl=impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_no_channels_gives_an_empty_result(impl):
    """C = 0: every implementation returns the empty result (F.batch_norm's on CPU; on meta tensors PyTorch's own
    batch norm fails, so the reference no longer calls it for no channels)."""
    require(impl, "cpu")
    for training in (True, False):
        x = torch.randn(2, 0, 3, 3, requires_grad=True)
        empty = torch.zeros(0)
        y = batch_norm_act(x, empty, empty, empty, empty.clone(), training, impl=impl)
        assert y.shape == x.shape
        (g,) = torch.autograd.grad(y.sum(), x)
        assert g.shape == x.shape
        assert instance_norm_act(x, impl=impl).shape == x.shape
    meta = batch_norm_act(torch.empty(2, 0, 3, device="meta"), None, None, torch.empty(0, device="meta"),
                          torch.empty(0, device="meta"), False, impl="ref")
    assert meta.shape == (2, 0, 3)


def test_reference_second_order_with_a_bias_and_no_weight():
    """PyTorch's batch norm cannot differentiate twice with a bias but no weight ("Expected a proper Tensor but got
    None"); the reference passes a weight of ones there (the same function), as the kernels' second order does."""
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    for op in (lambda: batch_norm_act_ref(x, None, b, None, None, True, act="tanh"),
               lambda: instance_norm_act_ref(x, None, b, act="tanh")):
        assert torch.autograd.gradgradcheck(lambda x, b, op=op: op(), (x, b))


@pytest.mark.parametrize("impl", KERNELS)
def test_infinite_eps_and_non_finite_data_match_torch(impl):
    """Issue 18 (odd parameters): eps=inf, and data holding inf or NaN. PyTorch's statistics are then sum(x) / n
    (+-inf or NaN) and a NaN variance, so the whole channel is NaN and so are its running statistics; the kernels
    clamped the NaN variance to 0 (a finite output, a running variance untouched by the NaN)."""
    require(impl, "cpu")
    inf, nan = float("inf"), float("nan")
    x = torch.randn(3, 4, 5, 2)
    x[0, 1, 2, 1] = inf  # channel 1: +inf (mean inf)
    x[1, 2, 0, 0], x[2, 2, 4, 1] = inf, -inf  # channel 2: inf - inf (mean NaN)
    x[0, 3, 0, 0] = nan  # channel 3: NaN
    for layout in (torch.contiguous_format, torch.channels_last):
        xl = x.contiguous(memory_format=layout)
        for eps in (1e-5, inf):
            outs = []
            for which in (impl, "ref"):
                rm, rv = torch.zeros(4), torch.ones(4)
                y = batch_norm_act(xl, None, None, rm, rv, True, eps=eps, act="softplus", impl=which)
                outs.append((y, rm, rv))
            for ours, ref in zip(outs[0], outs[1]):
                assert torch.equal(ours.isnan(), ref.isnan()), (eps, layout, ours, ref)
                torch.testing.assert_close(ours, ref, equal_nan=True, atol=1e-5, rtol=1e-5)
