"""fastgan.optimize: same function, same state_dict, fewer kernels, on DCGAN, CycleGAN and PatchGAN written in plain
torch.nn (float64, so "the same function" can be checked to rounding)."""

from __future__ import annotations

import copy
import json
import re
import subprocess

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import fastgan
from fastgan.nn import (
    BatchNormAct2d,
    FusedConv2d,
    FusedConvTranspose2d,
    FusedLinear,
    FusedSequential,
    InstanceNormAct2d,
)

from .conftest import fresh_python, require

IMPLS = ["ref", "native", "triton"]
# The native norm kernels keep the normalization statistics in float32 even for float64 tensors, so native matches
# a float64 eager model to ~1e-8 relative (measured), ref to rounding. Triton is float64 throughout, but sums in
# other orders (tiles, the conv epilogue's statistics), which batch norm's backward amplifies: <= 2e-8 measured.
REL = {"ref": 1e-9, "native": 1e-6, "triton": 1e-7}


# --- the models, as their authors wrote them ------------------------------------------------------------------------


class DCGANGenerator(nn.Module):  # pytorch/examples dcgan, 64x64
    def __init__(self, nz=8, ngf=4, nc=3):
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh(),
        )

    def forward(self, z):
        return self.main(z)


class DCGANDiscriminator(nn.Module):
    def __init__(self, nc=3, ndf=4):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 8), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False), nn.Sigmoid(),
        )

    def forward(self, x):
        return self.main(x).view(-1, 1).squeeze(1)


class ResnetBlock(nn.Module):  # CycleGAN (junyanz/pytorch-CycleGAN-and-pix2pix layout)
    def __init__(self, dim):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), nn.InstanceNorm2d(dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), nn.InstanceNorm2d(dim),
        )

    def forward(self, x):
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    def __init__(self, nc=3, ngf=4, n_blocks=2):
        super().__init__()
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(nc, ngf, 7), nn.InstanceNorm2d(ngf), nn.ReLU(True)]
        for i in range(2):
            mult = 2**i
            layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, 2, 1), nn.InstanceNorm2d(ngf * mult * 2), nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 4) for _ in range(n_blocks)]
        for i in range(2):
            mult = 2 ** (2 - i)
            layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, 2, 1, output_padding=1),
                       nn.InstanceNorm2d(ngf * mult // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


def patchgan(nc=3, ndf=4):  # 70x70 PatchGAN, BatchNorm variant
    layers = [nn.Conv2d(nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
    for mult_in, mult_out, stride in ((1, 2, 2), (2, 4, 2), (4, 8, 1)):
        layers += [nn.Conv2d(ndf * mult_in, ndf * mult_out, 4, stride, 1, bias=False), nn.BatchNorm2d(ndf * mult_out),
                   nn.LeakyReLU(0.2, True)]
    layers += [nn.Conv2d(ndf * 8, 1, 4, 1, 1)]
    return nn.Sequential(*layers)


MODELS = {
    "dcgan_g": (DCGANGenerator, (4, 8, 1, 1)),
    "dcgan_d": (DCGANDiscriminator, (4, 3, 64, 64)),
    "cyclegan_g": (ResnetGenerator, (2, 3, 16, 16)),
    "patchgan_d": (patchgan, (2, 3, 32, 32)),
}


def _pair(name: str, impl: str, channels_last: bool = False):
    factory, shape = MODELS[name]
    torch.manual_seed(0)
    original = factory().double()
    optimized = fastgan.optimize(original, impl=impl, channels_last=channels_last)
    return original, optimized, shape


def _input(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _close(actual, expected, what: str, rel: float) -> None:
    """Max error within ``rel`` of the expected tensor's scale (float64: BN backward amplifies rounding)."""
    err = (actual - expected).abs().max().item()
    scale = max(1.0, expected.abs().max().item())
    assert err <= rel * scale, f"{what}: max error {err:.3g} > {rel:g} x {scale:.3g}"


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].shape == sb[key].shape and sa[key].dtype == sb[key].dtype, key
        torch.testing.assert_close(sa[key], sb[key], rtol=1e-12, atol=1e-12, msg=key)


# --- equivalence ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_fuses_and_keeps_state_dict(name):
    original, optimized, _ = _pair(name, "ref")
    fused = [m for m in optimized.modules()
             if isinstance(m, FusedConv2d | FusedConvTranspose2d | BatchNormAct2d | InstanceNormAct2d)]
    assert fused, "nothing was fused"
    assert not any(isinstance(m, FusedConv2d | BatchNormAct2d) for m in original.modules()), "original modified"
    _assert_same_state(original, optimized)
    # Checkpoints load both ways, strictly.
    fresh_original, fresh_optimized = copy.deepcopy(original), copy.deepcopy(optimized)
    for p in list(fresh_original.parameters()) + list(fresh_optimized.parameters()):
        p.data.normal_()
    fresh_original.load_state_dict(optimized.state_dict(), strict=True)
    fresh_optimized.load_state_dict(original.state_dict(), strict=True)
    _assert_same_state(fresh_original, original)
    _assert_same_state(fresh_optimized, original)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", list(MODELS))
def test_same_training_trajectory(name, impl):
    """Several SGD steps in train mode, then eval, then train again: outputs, gradients, running statistics."""
    require(impl, "cpu")
    _check_trajectory(*_pair(name, impl), REL[impl])


def _check_trajectory(original, optimized, shape, rel):
    opt_a = torch.optim.SGD(original.parameters(), lr=0.01, momentum=0.9)
    opt_b = torch.optim.SGD(optimized.parameters(), lr=0.01, momentum=0.9)
    for step, mode in enumerate(["train", "train", "train", "eval", "train"]):
        original.train(mode == "train")
        optimized.train(mode == "train")
        x = _input(shape, step)
        out_a, out_b = original(x), optimized(x)
        _close(out_b, out_a, f"step {step} ({mode}) output", rel)
        assert out_b.is_contiguous(), f"step {step}: the output is not laid out as the model's ({out_b.stride()})"
        if mode == "eval":
            continue
        weights = _input(out_a.shape, 100 + step)
        for out, opt in ((out_a, opt_a), (out_b, opt_b)):
            opt.zero_grad()
            (out * weights).sum().backward()
            opt.step()
        for (key, pa), (_, pb) in zip(original.named_parameters(), optimized.named_parameters()):
            _close(pb.grad, pa.grad, f"step {step} grad {key}", rel)
        _assert_same_state_close(original, optimized, rel)


def _assert_same_state_close(a, b, rel):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        _close(sb[key].double(), sa[key].double(), key, rel)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("penalty", ["wgan_gp", "r1"])
@pytest.mark.parametrize("name", ["dcgan_d", "patchgan_d"])
def test_gradient_penalty_through_optimized_discriminator(name, penalty, impl):
    """Textbook WGAN-GP and R1 (autograd.grad with create_graph) match, including the parameters' gradients."""
    require(impl, "cpu")
    original, optimized, shape = _pair(name, impl)
    real, fake = _input(shape, 1), _input(shape, 2)
    eps = torch.rand(shape[0], 1, 1, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def loss(model):
        x = (eps * real + (1 - eps) * fake) if penalty == "wgan_gp" else real.clone()
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad(model(x).sum(), x, create_graph=True)
        norms = grad.flatten(1).norm(dim=1)
        value = ((norms - 1) ** 2).mean() if penalty == "wgan_gp" else 0.5 * (norms**2).mean()
        grads = torch.autograd.grad(value, list(model.parameters()), allow_unused=True)
        # The last layer's bias does not change dD/dx: no gradient on either model.
        return value, [torch.zeros_like(p) if g is None else g for g, p in zip(grads, model.parameters())]

    value_a, grads_a = loss(original)
    value_b, grads_b = loss(optimized)
    _close(value_b, value_a, "penalty", REL[impl])
    for i, (ga, gb) in enumerate(zip(grads_a, grads_b)):
        _close(gb, ga, f"penalty gradient {i}", REL[impl])


# --- channels_last on the CPU -----------------------------------------------------------------------------------------


def _weights_channels_last(model) -> list[bool]:
    """For each fused conv: whether its weight has channels_last strides (``clone``'s, also for one channel)."""
    return [m.weight.stride() == m.weight.clone(memory_format=torch.channels_last).stride()
            for m in model.modules() if isinstance(m, FusedConv2d | FusedConvTranspose2d)]


@pytest.mark.parametrize("name", list(MODELS))
def test_channels_last_training_trajectory(name):
    """Fused convolutions run channels_last: the same trajectory as the plain model, and every Sequential hands out
    the layout of its input."""
    require("native", "cpu")
    original, optimized, shape = _pair(name, "native", channels_last=True)
    assert all(_weights_channels_last(optimized))
    _check_trajectory(original, optimized, shape, REL["native"])


def test_channels_last_is_asked_for():
    torch.manual_seed(0)
    model = DCGANGenerator()
    assert not any(_weights_channels_last(fastgan.optimize(model))) and not fastgan.optimize(model).main.keeps_layout
    params = list(model.parameters())
    optimized = fastgan.optimize(model, inplace=True, channels_last=True)
    assert all(_weights_channels_last(optimized)) and optimized.main.keeps_layout
    assert all(a is b for a, b in zip(params, optimized.parameters()))  # the same Parameters, restrided
    with pytest.raises(TypeError, match="channels_last"):
        fastgan.optimize(DCGANGenerator(), channels_last=None)


class _Flatten(nn.Module):
    def forward(self, x):
        return x.view(x.shape[0], -1)  # only for a contiguous x


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_channels_last_run_hands_other_modules_the_input_layout(layout):
    """A module that needs its input's layout (a view) gets it back; the caller gets what the plain Sequential gives.
    Without the restoring the view fails: the witness that the test can."""
    require("native", "cpu")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1),
                          nn.LeakyReLU(0.2)).double()
    x = _input((2, 3, 8, 8), 0)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    body = fastgan.optimize(model, impl="native", channels_last=True)
    assert type(body) is FusedSequential and all(_weights_channels_last(body))
    out_plain, out_fused = model(x), body(x)
    _close(out_fused, out_plain, "output", REL["native"])
    assert out_fused.stride() == out_plain.stride()
    if layout == "channels_last":
        return  # the plain model's output is channels_last: no view after it
    body.keeps_layout = False
    assert not body(x).is_contiguous()
    plain = nn.Sequential(*model, _Flatten(), nn.Linear(8 * 4 * 4, 1)).double()
    optimized = fastgan.optimize(plain, impl="native", channels_last=True)
    _close(optimized(x), plain(x), "output through a view", REL["native"])
    optimized.keeps_layout = False
    with pytest.raises(RuntimeError, match="view"):
        optimized(x)


def _grad_layout(model, x):
    x = x.detach().requires_grad_()
    (grad,) = torch.autograd.grad(model(x).square().sum(), x, create_graph=True)
    return grad


def test_channels_last_run_lays_out_everything_outside_as_plain():
    """One-channel images (strides are all that tell a convolution their layout), the input's gradient (a penalty's
    view), unbatched input, a slice, a custom module in the middle, weights that were channels_last already: the
    strides the plain model gives; dropout drops the same elements."""
    require("native", "cpu")
    torch.manual_seed(0)
    g = DCGANGenerator(nc=1).double()
    g_opt = fastgan.optimize(g, impl="native", channels_last=True)
    z = _input((2, 8, 1, 1), 0)
    assert g_opt(z).stride() == g(z).stride()
    plain = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.LeakyReLU(0.2),
                          nn.Conv2d(8, 4, 3, padding=1)).double()
    fused = fastgan.optimize(plain, impl="native", channels_last=True)
    for layout in (torch.contiguous_format, torch.channels_last):
        x = _input((2, 3, 8, 8), 1).contiguous(memory_format=layout)
        grad, grad_plain = _grad_layout(fused, x), _grad_layout(plain, x)
        assert grad.stride() == grad_plain.stride(), layout
        _close(grad, grad_plain, "input gradient", REL["native"])
        assert fused[:3](x).stride() == plain[:3](x).stride()
    x3 = _input((3, 8, 8), 2)
    assert fused(x3).stride() == plain(x3).stride() and fused(x3).shape == plain(x3).shape

    class Contiguous(nn.Module):
        def forward(self, x):
            return x.contiguous()

    x_cl = _input((2, 3, 8, 8), 3).contiguous(memory_format=torch.channels_last)
    middle = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), Contiguous(), nn.Conv2d(8, 8, 3, padding=1)).double()
    assert fastgan.optimize(middle, impl="native", channels_last=True)(x_cl).stride() == middle(x_cl).stride()
    already = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    x = _input((2, 3, 8, 8), 4)
    assert fastgan.optimize(already, impl="native", channels_last=True)(x).stride() == already(x).stride()

    dropout = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Dropout(0.5), nn.Conv2d(8, 4, 3, padding=1)).double()
    fused_dropout = fastgan.optimize(dropout, impl="native", channels_last=True)
    torch.manual_seed(1)
    expected = dropout(x)
    torch.manual_seed(1)
    _close(fused_dropout(x), expected, "dropout", REL["native"])


def test_conv_batch_norm_statistics_come_from_the_conv_epilogue(monkeypatch):
    """conv -> BatchNorm2d -> ReLU runs as one op (a FusedSequential keeps the keys): on Triton the norm never makes
    its statistics pass over the conv output (the conv epilogue reduced them); its backward reductions still run.
    The same modules in a plain Sequential make the pass: the witness that the count can fail."""
    require("triton", "cpu")
    from fastgan.kernels.triton import norm_act as kernels

    _, optimized, shape = _pair("dcgan_g", "triton")
    assert type(optimized.main) is FusedSequential
    passes = []
    partials = kernels._View.partials
    monkeypatch.setattr(kernels._View, "partials", lambda v, grad, *a: passes.append(grad) or partials(v, grad, *a))
    with _CountKernels() as counter:
        optimized(_input(shape, 0)).sum().backward()
    stats_ops = [op for op, _ in counter.ops if op == "fastgan.conv_transpose2d_bn_stats_triton"]
    assert len(stats_ops) == 4 and passes.count(False) == 0 and passes.count(True) == 4, (stats_ops, passes)

    passes.clear()
    nn.Sequential(*optimized.main)(_input(shape, 0)).sum().backward()
    assert passes.count(False) == 4


# --- what is (not) rewritten ---------------------------------------------------------------------------------------


class Custom(nn.Module):
    """Children used in an order optimize cannot know: relu before conv."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.ReLU()
        self.head = nn.Sequential(nn.Linear(4, 5), nn.LeakyReLU(0.1), nn.Linear(5, 1))

    def forward(self, x):
        return self.head(self.conv(self.act(x)).mean((2, 3)))


def test_custom_modules_only_rewrite_child_sequentials(capsys):
    torch.manual_seed(0)
    model = Custom().double()
    optimized = fastgan.optimize(model, impl="ref", verbose=True)
    assert type(optimized.conv) is nn.Conv2d and type(optimized.act) is nn.ReLU
    assert isinstance(optimized.head[0], FusedLinear) and isinstance(optimized.head[1], nn.Identity)
    assert type(optimized.head[2]) is nn.Linear
    printed = capsys.readouterr().out
    assert "head.0..1: Linear+LeakyReLU -> FusedLinear(act='lrelu', alpha=0.1)" in printed
    x = _input((2, 3, 6, 6), 0)
    torch.testing.assert_close(optimized(x), model(x), rtol=1e-12, atol=1e-12)
    _assert_same_state(model, optimized)


def test_leaves_unsupported_blocks_alone():
    seq = nn.Sequential(
        nn.Conv2d(4, 4, 3, groups=2), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), nn.ReLU(),
        nn.utils.parametrizations.spectral_norm(nn.Conv2d(4, 4, 3)), nn.LeakyReLU(0.2),
        nn.Conv2d(4, 4, 1), nn.Hardswish(),
    )
    optimized = fastgan.optimize(seq, impl="ref")
    # the last conv is supported, its activation is not: the conv alone is fused (act="linear"), Hardswish stays
    assert [type(m) for m in optimized] == [type(m) for m in seq][:-2] + [FusedConv2d, nn.Hardswish]
    assert optimized[-2].act == "linear"


def test_inplace_shares_parameters_and_plain_run_copies():
    torch.manual_seed(0)
    model = DCGANDiscriminator().double()
    params = list(model.parameters())
    copied = fastgan.optimize(model, impl="ref")
    assert type(model.main[0]) is nn.Conv2d
    assert all(a is not b for a, b in zip(params, copied.parameters()))
    same = fastgan.optimize(model, inplace=True, impl="ref")
    assert same is model and isinstance(model.main[0], FusedConv2d) and isinstance(model.main[1], nn.Identity)
    assert isinstance(model.main[3], BatchNormAct2d) and model.main[3].act == "lrelu"
    assert all(a is b for a, b in zip(params, model.parameters()))


def test_rejects_non_modules():
    with pytest.raises(TypeError, match="fastgan.optimize"):
        fastgan.optimize(lambda x: x)


# --- CPU-counted proxy: kernels launched for one forward+backward ---------------------------------------------------

# Metadata-only ops that launch no kernel.
_FREE = {"view", "_unsafe_view", "t", "transpose", "permute", "expand", "as_strided", "detach", "alias", "reshape",
         "squeeze", "unsqueeze", "slice", "select", "empty", "empty_like", "empty_strided", "new_empty",
         "new_empty_strided", "lift_fresh", "is_same_size", "sym_size", "sym_stride", "sym_numel"}


class _CountKernels(TorchDispatchMode):
    """Records (op, largest output numel) of every kernel-producing op dispatched."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__ not in _FREE:
            outs = out if isinstance(out, tuple | list) else (out,)
            numel = max((t.numel() for t in outs if isinstance(t, torch.Tensor)), default=0)
            self.ops.append((str(func.overloadpacket), numel))
        return out


def _count(model, x) -> list[tuple[str, int]]:
    # With oneDNN off the native path runs the op sequence it runs on CUDA (the CPU's matrix-product and col2im
    # routes are tested in tests/test_conv_act.py).
    with torch.backends.mkldnn.flags(enabled=False), _CountKernels() as counter:
        model(x).sum().backward()
    return counter.ops


# Totals measured (eager: G 34, D 31 ops; fused: 26, 25), kept as upper bounds to catch regressions. Each
# BatchNormAct2d step dispatches norm_act, one running-statistics update that also advances the step counter
# (fastgan::norm_act_update_stats; nn.BatchNorm2d's kernel updates the statistics itself, then an add_ counts) and
# norm_act_backward (no zero gradients for the statistics).
_TOTAL_BOUND = {"dcgan_g": 26, "dcgan_d": 25}


@pytest.mark.parametrize("name", ["dcgan_g", "dcgan_d"])
def test_fewer_kernels_per_step(name):
    """Eager vs optimized (native) forward+backward, counted at the dispatcher: each norm + activation pair saves
    one activation-sized forward and one backward kernel (a conv + activation pair saves none yet on the native
    path: cuDNN has no activation epilogue, so bias_act replaces the separate activation kernel one for one); the
    whole step dispatches fewer ops than eager."""
    require("native", "cpu")
    original, optimized, shape = _pair(name, "native")
    x = _input(shape, 0)
    eager, fused = _count(original, x), _count(optimized, x)
    assert sum(isinstance(m, nn.Identity) for m in optimized.modules()) == 5  # every activation was fused
    n_norm_acts = sum(isinstance(m, BatchNormAct2d) for m in optimized.modules())

    def big(ops):  # passes over activation-sized tensors (larger than any per-channel vector or scalar)
        return [op for op, numel in ops if numel > 64]

    assert len(big(fused)) <= len(big(eager)) - 2 * n_norm_acts, (big(eager), big(fused))
    assert len(fused) <= _TOTAL_BOUND[name], [op for op, _ in fused]
    assert len(fused) < len(eager), ([op for op, _ in eager], [op for op, _ in fused])


def test_dcgan28_step_makes_fewer_new_tensors_than_plain():
    """Issue 17: the canonical DCGAN-28 step at batch 64 through ``optimize`` asks the allocator for at most 85% of
    plain PyTorch's bytes of new tensors (counted at the dispatcher: 112 of 136 MiB; 121 before the discriminator's
    first LeakyReLU was written over its convolution's output, README): each fresh tensor of a few MB is memory
    faulted in again on the CPU, which is what the step's remaining time went to. Same values as plain's step."""
    require("native", "cpu")
    from benchmarks.dcgan28 import make_step, new_tensor_bytes

    steps = {impl: make_step(impl) for impl in (None, "auto")}
    losses = {impl: step() for impl, step in steps.items()}  # Adam's state is created at the first step
    plain, ours = (new_tensor_bytes(steps[impl]) for impl in (None, "auto"))
    assert ours <= 0.85 * plain, (ours / 2**20, plain / 2**20)
    for a, b in zip(losses[None], losses["auto"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_dcgan28_timer_pairs_fresh_processes_and_refuses_bad_arguments(monkeypatch, capsys):
    """``python -m benchmarks.dcgan28``, the README's step figures: each configuration timed alone in a fresh process,
    the order reversed every other pair and each ratio taken within its pair, or interleaved in one process; a
    failing child and bad arguments are errors that name them."""
    require("native", "cpu")
    from benchmarks import dcgan28

    real = dcgan28.compare_in_processes(["plain"], pairs=1, batch=2, rounds=1)  # the JSON line the parent reads
    assert len(real["plain"]) == 1 and real["plain"][0]["ms"] > 0 and real["plain"][0]["faults"] >= 0
    with pytest.raises(RuntimeError, match="(?s)'no-such-configuration' process failed.*invalid choice"):
        dcgan28.compare_in_processes(["no-such-configuration"], pairs=1, batch=2, rounds=1)

    order = []

    def child(command, **kwargs):  # plain's runs take 11 and 14 ms, optimize's 11 and 12: ratios 1 and 12/14
        config = command[command.index("--child") + 1]
        order.append(config)
        ms = {"plain": 10.0, "optimize": 9.0}[config] + len(order)
        return subprocess.CompletedProcess(command, 0, json.dumps({config: {"ms": ms, "faults": 0}}), "")

    monkeypatch.setattr(subprocess, "run", child)
    dcgan28.main(["--pairs", "2"])
    assert order == ["plain", "optimize", "optimize", "plain"]
    assert re.search(r"optimize +median 0\.929x .* 1\.000x .* 0\.857x", capsys.readouterr().out)
    monkeypatch.undo()

    dcgan28.main(["--pairs", "0", "--batch", "2", "--rounds", "1", "--configs", "plain,optimize-cl"])
    out = capsys.readouterr().out
    assert re.search(r"^plain .* 1\.000x$", out, re.M) and re.search(r"^optimize-cl .*x$", out, re.M)
    for argv, message in ((["--configs", "plain,nope"], "unknown nope"), (["--configs", "plain,plain"], "twice"),
                          (["--rounds", "0"], "--rounds")):
        with pytest.raises(SystemExit):
            dcgan28.main(argv)
        assert message in capsys.readouterr().err


# --- impl="auto" on the CPU: fused layers this small run their reference ------------------------------------------


def _step_ops(model, x) -> tuple[torch.Tensor, list[str]]:
    """The model's output on ``x`` after a backward of its sum, and the ops dispatched (forward and backward)."""
    with _CountKernels() as counter:
        y = model(x)
        y.sum().backward()
    return y.detach(), [op for op, _ in counter.ops]


@pytest.mark.parametrize("name", ["dcgan_d", "patchgan_d", "cyclegan_g"])
def test_small_layers_run_their_reference_on_cpu(name, monkeypatch):
    """impl="auto" on the CPU, in eager mode: a fused layer whose tensors have at most CPU_REF_MAX_NUMEL values runs
    the PyTorch ops of its reference (its fixed cost in Python is more than its kernels save there), so the step
    dispatches no fastgan op and computes what the plain model computes, bit for bit (values, gradients, running
    statistics), except where the native path has a convolution of its own, which it keeps (the DCGAN
    discriminator's last layer, a matrix product: mm, not a convolution). Above the threshold the fused ops run."""
    require("native", "cpu")
    factory, shape = MODELS[name]
    torch.manual_seed(0)
    plain = factory()
    optimized = fastgan.optimize(plain)
    x = _input(shape, 0).float()
    assert x.numel() <= min(fastgan._backend.CPU_REF_MAX_NUMEL.values())
    y_plain, ops_plain = _step_ops(plain, x)
    y_opt, ops_opt = _step_ops(optimized, x)
    assert not [op for op in ops_opt if op.startswith("fastgan.")]
    state_plain, state_opt = plain.state_dict(), optimized.state_dict()
    grads_plain = {k: p.grad for k, p in plain.named_parameters()}
    grads_opt = {k: p.grad for k, p in optimized.named_parameters()}
    if name == "dcgan_d":  # the last convolution is a matrix product: the same to rounding
        assert ops_opt.count("aten.convolution") == ops_plain.count("aten.convolution") - 1
        assert "aten.mm" in ops_opt
        torch.testing.assert_close(y_opt, y_plain)
        for k in grads_plain:
            torch.testing.assert_close(grads_opt[k], grads_plain[k], rtol=1e-4, atol=1e-6)
        for k in state_plain:
            torch.testing.assert_close(state_opt[k], state_plain[k])
    else:
        assert torch.equal(y_opt, y_plain)
        assert all(torch.equal(grads_opt[k], grads_plain[k]) for k in grads_plain)
        assert all(torch.equal(state_opt[k], state_plain[k]) for k in state_plain)
    monkeypatch.setattr(fastgan._backend, "CPU_REF_MAX_NUMEL", dict.fromkeys(fastgan._backend.CPU_REF_MAX_NUMEL, 0))
    _, ops_fused = _step_ops(optimized, x)
    assert [op for op in ops_fused if op.startswith("fastgan.")]


def test_small_layers_keep_an_explicit_impl():
    """The rule is impl="auto"'s: impl="native" given to optimize, or as the process default, runs the fused ops at
    any size."""
    require("native", "cpu")
    factory, shape = MODELS["patchgan_d"]
    x = _input(shape, 0).float()
    _, ops = _step_ops(fastgan.optimize(factory(), impl="native"), x)
    assert "fastgan.norm_act_train" in ops
    with fastgan.use_impl("native"):
        _, ops = _step_ops(fastgan.optimize(factory()), x)
    assert "fastgan.norm_act_train" in ops


def test_a_small_convolution_leaves_an_explicit_impl_to_its_batch_norm():
    """In a FusedSequential a small convolution under "auto" runs PyTorch's convolution, and its BatchNormAct2d runs
    its reference without deciding again, unless the norm was given an implementation of its own, which it keeps."""
    require("native", "cpu")
    x = torch.randn(2, 3, 6, 6)
    for norm_impl, fused in (("auto", False), ("native", True)):
        model = FusedSequential(FusedConv2d(3, 8, 3, padding=1, bias=False), BatchNormAct2d(8, impl=norm_impl))
        _, ops = _step_ops(model, x)
        assert ("fastgan.norm_act_train" in ops) == fused, (norm_impl, ops)
        assert "aten.convolution" in ops


def test_compiled_model_hands_its_channels_last_convolutions_to_the_fused_ops():
    """Inductor lays a CPU model's convolutions out channels_last. The fused ops take any strides (their schemas'
    flexible_layout tag), so the compiled graph passes them those outputs as they are: no kernel copying their inputs
    to the traced strides and their results back (a compiled DCGAN-28 step took 1.30-1.34x plain's time with those
    copies), and the compiled step computes what eager does (outputs, gradients, running statistics)."""
    require("native", "cpu")
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.LeakyReLU(0.2),
                          nn.Conv2d(16, 32, 3, 2, 1), nn.LeakyReLU(0.2))
    eager, model = fastgan.optimize(plain), fastgan.optimize(plain)
    x = torch.randn(2, 3, 16, 16)

    def step(m):
        y = m(x)
        y.square().sum().backward()
        return y

    torch._dynamo.reset()
    compiled = torch.compile(model)
    with (torch._inductor.config.patch(force_layout_optimization=True, fx_graph_cache=False),
          torch._functorch.config.patch(enable_autograd_cache=False)):
        y, code = run_and_get_code(step, compiled)
    assert "torch.ops.fastgan.norm_act_train" in code[0] and "torch.ops.fastgan.bias_act_backward" in code[1]
    (fed_forward, kernels_forward), (fed_backward, _) = map(_ops_fed_by_kernels, code)
    assert kernels_forward, "no Inductor kernel call read: its code format changed under _ops_fed_by_kernels"
    assert fed_forward == fed_backward == []
    torch.testing.assert_close(y, step(eager))
    for (name, a), b in zip(model.named_parameters(), eager.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
    for (name, a), b in zip(model.named_buffers(), eager.buffers()):
        torch.testing.assert_close(a, b, msg=name)


def _ops_fed_by_kernels(code: str) -> tuple[list[str], int]:
    """The fastgan ops of an Inductor graph's code whose first tensor was handed to an Inductor kernel before (a copy
    to other strides, with its result passed on), and the number of kernel calls read (the forward has at least the
    one laying the input out channels_last: none read means the parser no longer reads this Inductor's code)."""
    touched, fed, kernels = set(), [], 0
    for line in code.splitlines():
        if kernel := re.search(r"\bcpp_fused_\w+\(([^)]*)\)", line):
            touched.update(re.findall(r"\w+", kernel.group(1)))
            kernels += 1
        if (op := re.search(r"torch\.ops\.fastgan\.(\w+)\.default\((\w+)", line)) and op.group(2) in touched:
            fed.append(op.group(1))
    return fed, kernels


def test_small_layers_check_their_arguments_as_the_fused_ops():
    """The reference path of a small fused layer raises the fused op's errors, naming it, from PyTorch's (it checks
    the arguments only when PyTorch refuses them: ``fastgan._backend.checked_on_failure``)."""
    require("native", "cpu")
    conv = FusedConv2d(3, 8, 3, padding=1, act="lrelu")
    with pytest.raises(ValueError, match="conv2d_act: x has 4 channels") as refused:
        conv(torch.randn(2, 4, 8, 8))
    assert isinstance(refused.value.__cause__, RuntimeError)  # PyTorch's own error, kept as the cause
    with pytest.raises(ValueError, match=r"batch_norm_act: weight must be 1-D of length x.shape\[1\] = 5"):
        BatchNormAct2d(4)(torch.randn(2, 5, 3, 3))
    with pytest.raises(ValueError, match="instance_norm_act: expected more than 1 spatial element"):
        InstanceNormAct2d(4)(torch.randn(2, 4, 1, 1))
    with pytest.raises(TypeError, match="conv2d_act: weight is torch.float32 but x is torch.float16"):
        conv(torch.randn(2, 3, 8, 8, dtype=torch.float16))
    with pytest.raises(ValueError, match="conv2d_act: output size"):
        FusedConv2d(3, 8, 5)(torch.randn(2, 3, 3, 3))
    with pytest.raises(ValueError, match="conv_transpose2d_batch_norm_act: x has 5 channels"):
        FusedConvTranspose2d(4, 8, 4, 2, 1, norm="batch")(torch.randn(2, 5, 4, 4))


def test_size_rule_adds_no_guard_when_traced():
    """The size test runs in eager mode only, and is not even evaluated while tracing: a dynamic batch exports (a
    comparison of sizes would have been a guard on it)."""
    require("native", "cpu")
    norm = BatchNormAct2d(4).eval()
    batch = torch.export.Dim("batch", max=100000)
    exported = torch.export.export(norm, (torch.randn(2, 4, 8, 8),), dynamic_shapes={"x": {0: batch}})
    x = torch.randn(3, 4, 8, 8)
    torch.testing.assert_close(exported.module()(x), norm(x))


def test_fullgraph_compile_of_a_model_whose_ops_load_inside_the_trace():
    """A fresh interpreter whose eager calls ran the small layers' references (no custom op loaded yet): a fullgraph
    compile then loads two op units inside one trace (bias_act, then norm_act). Dynamo keeps its own copy of the
    registry from its first read, so each unit must be there before it (a KeyError in the trace before)."""
    require("native", "cpu")
    import json

    code = (
        "import json, torch, fastgan\n"
        "from torch import nn\n"
        "torch.manual_seed(0)\n"
        "m = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(8, 8, 3, 1, 1), nn.BatchNorm2d(8),\n"
        "                  nn.ReLU())\n"
        "fm = fastgan.optimize(m)\n"
        "x = torch.randn(2, 3, 8, 8)\n"
        "eager = fm(x)\n"
        "from fastgan._backend import _LOADED\n"
        "assert not _LOADED, _LOADED\n"
        "compiled = torch.compile(fm, backend='aot_eager', fullgraph=True)(x)\n"
        "compiled.sum().backward()\n"
        "print(json.dumps([(compiled - m(x)).abs().max().item(), sorted(map(list, _LOADED))]))\n"
    )
    error, loaded = json.loads(fresh_python(code)[-1])
    assert error < 1e-5
    assert ["bias_act", "native"] in loaded and ["norm_act", "native"] in loaded
