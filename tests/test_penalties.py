"""Gradient penalties end to end: WGAN-GP and R1 against the textbook implementation over a torch.nn critic
(penalty value and critic parameter gradients, through .backward() and torch.autograd.grad), the zero-norm
convention, autocast, gradcheck/gradgradcheck of the penalty head, bad input and dispatched-op counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastgan.losses import (
    GradientPenalty,
    LazyRegularizer,
    R1Penalty,
    d_loss,
    grad_norm_penalty,
    grad_norm_penalty_ref,
    gradient_penalty,
    interpolate,
    interpolate_ref,
    r1_penalty,
)

from .conftest import DEVICES, require
from .test_losses import count_kernel_ops

IMPLS = ("ref", "triton", "native")
FAST_IMPLS = ("triton", "native")


def _critic(dtype=torch.float64, device="cpu", seed=0) -> nn.Module:
    """A tiny DCGAN-style critic without batch norm (smooth and piecewise-linear activations)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(4, 6, 3, 2, 1), nn.Softplus(), nn.Flatten(),
        nn.Linear(6 * 2 * 2, 1),
    ).to(device=device, dtype=dtype)


def _images(batch=3, dtype=torch.float64, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    real = torch.randn(batch, 3, 8, 8, generator=gen, dtype=torch.float64)
    fake = torch.randn(batch, 3, 8, 8, generator=gen, dtype=torch.float64)
    eps = torch.rand(batch, generator=gen, dtype=torch.float64)
    return real.to(device, dtype), fake.to(device, dtype), eps.to(device, dtype)


def textbook_gradient_penalty(critic, real, fake, eps, weight=10.0, center=1.0):
    """Gulrajani et al. (2017), as written in eager PyTorch."""
    alpha = eps.view(-1, 1, 1, 1)
    x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return weight * ((grad.reshape(grad.shape[0], -1).norm(2, dim=1) - center) ** 2).mean()


def textbook_r1(critic, real, gamma=10.0):
    """Mescheder et al. (2018) / StyleGAN2: returns (logits, penalty) from one forward."""
    real = real.detach().requires_grad_(True)
    logits = critic(real)
    (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    return logits, gamma / 2 * grad.square().reshape(grad.shape[0], -1).sum(1).mean()


def _param_grads(critic, loss, via: str):
    params = list(critic.parameters())
    if via == "backward":
        critic.zero_grad(set_to_none=True)
        loss.backward()
        # The last layer's bias does not affect the input gradient: no .grad, compared as zeros.
        return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]
    return list(torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True))


@pytest.mark.parametrize("via", ["backward", "autograd.grad"])
@pytest.mark.parametrize("center", [1.0, 0.0])
@pytest.mark.parametrize("impl", IMPLS)
def test_gradient_penalty_matches_textbook(impl, center, via):
    require(impl, "cpu")
    critic = _critic()
    real, fake, eps = _images()
    truth = textbook_gradient_penalty(critic, real, fake, eps, 10.0, center)
    truth_grads = _param_grads(critic, truth, via)
    ours = gradient_penalty(critic, real, fake, weight=10.0, center=center, eps=eps, impl=impl)
    ours_grads = _param_grads(critic, ours, via)
    torch.testing.assert_close(ours, truth, rtol=1e-10, atol=1e-12)
    for a, b in zip(ours_grads, truth_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert any(g.abs().max() > 0 for g in ours_grads)


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_gradient_penalty_float32_channels_last(impl):
    require(impl, "cpu")
    critic = _critic(torch.float32).to(memory_format=torch.channels_last)
    real, fake, eps = (t.float() for t in _images(4))
    real = real.contiguous(memory_format=torch.channels_last)
    truth = textbook_gradient_penalty(critic, real, fake, eps)
    truth_grads = _param_grads(critic, truth, "backward")
    ours = GradientPenalty(10.0, impl=impl)(critic, real, fake, eps)
    ours_grads = _param_grads(critic, ours, "backward")
    torch.testing.assert_close(ours, truth, rtol=1e-5, atol=1e-5)
    for a, b in zip(ours_grads, truth_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("via", ["backward", "autograd.grad"])
@pytest.mark.parametrize("impl", IMPLS)
def test_r1_matches_textbook_with_one_forward(impl, via):
    require(impl, "cpu")
    critic = _critic()
    real, fake, _ = _images()
    logits, penalty = textbook_r1(critic, real)
    truth = d_loss(logits, critic(fake), impl="ref") + penalty
    truth_grads = _param_grads(critic, truth, via)
    real_in = real.detach().requires_grad_(True)
    logits = critic(real_in)
    ours = d_loss(logits, critic(fake), impl=impl) + R1Penalty(10.0, impl=impl)(logits, real_in)
    ours_grads = _param_grads(critic, ours, via)
    torch.testing.assert_close(ours, truth, rtol=1e-10, atol=1e-12)
    for a, b in zip(ours_grads, truth_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_zero_gradient_sample_gets_zero_gradient(impl):
    # A sample whose input gradient is all zero: the norm's derivative is taken as 0 there, as PyTorch does.
    require(impl, "cpu")
    grad = torch.randn(3, 2, 4, dtype=torch.float64)
    grad[1] = 0
    ref_in, ours_in = grad.clone().requires_grad_(), grad.clone().requires_grad_()
    grad_norm_penalty_ref(ref_in, 10.0, 1.0).backward()
    grad_norm_penalty(ours_in, 10.0, 1.0, impl=impl).backward()
    torch.testing.assert_close(ours_in.grad, ref_in.grad)
    assert (ours_in.grad[1] == 0).all()


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_penalty_head_gradcheck_and_gradgradcheck(impl):
    require(impl, "cpu")
    real, fake, eps = _images(2)
    inputs = [t.requires_grad_() for t in (real[:, :1, :1, :2].clone(), fake[:, :1, :1, :2].clone(), eps)]
    assert torch.autograd.gradcheck(lambda r, f, e: interpolate(r, f, e, impl=impl), inputs)
    assert torch.autograd.gradgradcheck(lambda r, f, e: interpolate(r, f, e, impl=impl), inputs)
    # The zero-centred penalty's orders are covered by the parity matrix; the Triton interpreter is slow per launch.
    g = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda g: grad_norm_penalty(g, 3.0, 1.0, 0.5, impl=impl), (g,))
    assert torch.autograd.gradgradcheck(lambda g: grad_norm_penalty(g, 3.0, 1.0, 0.5, impl=impl), (g,))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_penalty_is_float32_and_finite(impl, dtype):
    require(impl, "cpu")
    critic = _critic(torch.float32)
    real, fake, eps = (t.float() for t in _images(4))
    truth = textbook_gradient_penalty(critic, real, fake, eps)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12) if dtype == torch.float16 else None
    with torch.autocast("cpu", dtype=dtype):
        ours = gradient_penalty(critic, real, fake, eps=eps, impl=impl, scaler=scaler)
    assert ours.dtype == torch.float32 and torch.isfinite(ours)
    with torch.autocast("cpu", dtype=dtype):  # PyTorch's own error with the critic in this dtype
        torch_low = textbook_gradient_penalty(critic, real, fake, eps).float()
    tol = 2 * (torch_low - truth).abs().item() + 4 * torch.finfo(dtype).eps * max(1.0, truth.abs().item())
    assert (ours - truth).abs().item() <= tol, (ours.item(), truth.item(), torch_low.item())
    critic.zero_grad(set_to_none=True)
    (scaler.scale(ours) if scaler else ours).backward()
    assert all(torch.isfinite(p.grad).all() for p in critic.parameters() if p.grad is not None)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_gradient_penalty_on_device_in_float32(impl, device):
    require(impl, device)
    critic = _critic(torch.float32, device)
    real, fake, eps = _images(4, torch.float32, device)
    truth = textbook_gradient_penalty(critic, real, fake, eps)
    ours = gradient_penalty(critic, real, fake, eps=eps, impl=impl)
    torch.testing.assert_close(ours, truth, rtol=1e-5, atol=1e-5)


def test_random_eps_is_per_sample_uniform():
    critic = _critic(torch.float32)
    real, fake, _ = (t.float() for t in _images(4))
    torch.manual_seed(3)
    ours = gradient_penalty(critic, real, fake, impl="ref")
    torch.manual_seed(3)
    eps = torch.rand(4)
    torch.testing.assert_close(ours, textbook_gradient_penalty(critic, real, fake, eps))


BAD_INPUTS = [
    ("shape mismatch", lambda c, r, f, e, impl: gradient_penalty(c, r, f[:, :2], eps=e, impl=impl), "same shape"),
    ("empty batch", lambda c, r, f, e, impl: gradient_penalty(c, r[:0], f[:0], impl=impl), "non-empty batch"),
    ("integer", lambda c, r, f, e, impl: gradient_penalty(c, r.long(), f.long(), impl=impl), "floating-point"),
    ("eps shape", lambda c, r, f, e, impl: gradient_penalty(c, r, f, eps=e[:2], impl=impl), r"eps must have shape"),
    ("eps 2-D", lambda c, r, f, e, impl: gradient_penalty(c, r, f, eps=e[:, None], impl=impl), "eps must have"),
    ("r1 no grad", lambda c, r, f, e, impl: r1_penalty(c(r), r, impl=impl), "does not require grad"),
    ("penalty empty", lambda c, r, f, e, impl: grad_norm_penalty(r[:0], impl=impl), "non-empty batch"),
    ("penalty int", lambda c, r, f, e, impl: grad_norm_penalty(r.int(), impl=impl), "floating-point"),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("call,match", [pytest.param(c, m, id=i) for i, c, m in BAD_INPUTS])
def test_bad_input_names_the_penalty(call, match, impl):
    require(impl, "cpu")
    critic = _critic(torch.float32)
    real, fake, eps = (t.float() for t in _images())
    with pytest.raises((ValueError, TypeError), match=match) as error:
        call(critic, real, fake, eps, impl)
    assert "penalty" in str(error.value) or "interpolate" in str(error.value)


def test_lazy_regularizer():
    reg = LazyRegularizer(4)
    assert [step for step in range(10) if reg.due(step)] == [0, 4, 8]
    assert reg.scale(torch.tensor(2.0)).item() == 8.0
    with pytest.raises(ValueError, match="LazyRegularizer"):
        LazyRegularizer(0)


def _head(interp, penalty, real, fake, eps):
    """The penalty head without a critic: x_hat -> (stand-in input gradient) -> penalty, forward and backward.

    ``g = x_hat * w`` stands in for the critic's input gradient (built outside the count), so only the head's own
    work is counted: the interpolation, the norm + penalty forward and the penalty's backward into ``g``.
    """
    w = torch.randn_like(real).requires_grad_()

    def run():
        x_hat = interp(real, fake, eps)
        g = x_hat * w
        (grad_g,) = torch.autograd.grad(penalty(g), g, torch.tensor(1.0))
        return grad_g

    return run


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_penalty_head_kernel_op_counts_vs_eager(impl):
    require(impl, "cpu")
    real, fake, eps = (t.float() for t in _images(4))
    ours = count_kernel_ops(_head(
        lambda r, f, e: interpolate(r, f, e, impl=impl), lambda g: grad_norm_penalty(g, impl=impl), real, fake, eps
    ))
    eager = count_kernel_ops(_head(interpolate_ref, grad_norm_penalty_ref, real, fake, eps))
    # interpolate (1) + stand-in multiply (1) + fused norm/penalty (1) + fused backward (1).
    assert len(ours) <= 4, ours
    assert len(eager) - 1 >= 3 * (len(ours) - 1), eager


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_gradient_penalty_through_fastgan_layers_matches_textbook(impl):
    """The critic rewritten by fastgan.optimize (fused conv + leaky ReLU, whose double backward skips the zero
    second derivative) trains like the textbook torch.nn critic."""
    require(impl, "cpu")
    import fastgan

    torch.manual_seed(0)
    critic = nn.Sequential(
        nn.Conv2d(3, 4, 3, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(4, 6, 3, 2, 1), nn.LeakyReLU(0.2), nn.Flatten(),
        nn.Linear(24, 1),
    ).double()
    real, fake, eps = _images()
    truth = textbook_gradient_penalty(critic, real, fake, eps)
    truth_grads = _param_grads(critic, truth, "backward")
    fused = fastgan.optimize(critic)
    ours = gradient_penalty(fused, real, fake, eps=eps, impl=impl)
    ours_grads = _param_grads(fused, ours, "backward")
    # The fused layers carry leaky ReLU's alpha as a float32 parameter, so float64 results agree to ~1e-8.
    torch.testing.assert_close(ours, truth, rtol=1e-6, atol=1e-9)
    assert len(ours_grads) == len(truth_grads)
    for a, b in zip(ours_grads, truth_grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_zero_weight_with_infinite_norm_is_nan(impl):
    """Issue 18 (odd parameters): weight 0 with an infinite (or NaN) gradient norm is 0 * inf = NaN in PyTorch, value
    and gradient; the kernels took any norm that is not > 0 as the zero-norm case and returned 0. Only a zero norm
    has the zero gradient (PyTorch's vector_norm convention)."""
    require(impl, "cpu")
    inf, nan = float("inf"), float("nan")
    g = torch.tensor([[inf, 1.0], [3.0, 4.0], [nan, 0.0], [0.0, 0.0]], dtype=torch.float64)
    for weight, center in ((0.0, 1.0), (10.0, 0.0), (10.0, inf)):
        outs = []
        for which in (impl, "ref"):
            gg = g.clone().requires_grad_()
            penalty = grad_norm_penalty(gg, weight, center, impl=which)
            (dg,) = torch.autograd.grad(penalty, gg, create_graph=True)
            (d2g,) = torch.autograd.grad(dg, gg, torch.ones_like(dg))
            outs.append((penalty.detach(), dg.detach(), d2g))
        for ours, ref, what in zip(outs[0], outs[1], ("penalty", "grad", "grad2")):
            assert torch.equal(ours.isnan(), ref.isnan()), (weight, center, what, ours, ref)
            torch.testing.assert_close(ours, ref, equal_nan=True)
