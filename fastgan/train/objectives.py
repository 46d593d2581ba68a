"""The adversarial objectives the trainer uses, from ``fastgan.losses`` (each with ``impl=``).

While ``fastgan.losses`` is not installed (it is built in parallel), the textbook formulas in plain PyTorch stand
in, with the same conventions (means over every logit; least squares without the 1/2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:
    from .. import losses as _losses
except ImportError:  # fastgan.losses not available in this checkout
    _losses = None


def _fastgan(name: str):
    """``fastgan.losses.<name>`` when it exists, else None."""
    return getattr(_losses, name, None)


def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str, impl: str) -> torch.Tensor:
    """Discriminator/critic loss of ``kind`` (nonsaturating, minimax, wasserstein, least_squares, hinge)."""
    if _fastgan("d_loss") is not None:
        return _losses.d_loss(real_logits, fake_logits, kind, impl=impl)
    real, fake = real_logits.float(), fake_logits.float()
    if kind in ("minimax", "nonsaturating"):
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if kind == "wasserstein":
        return fake.mean() - real.mean()
    if kind == "least_squares":
        return (real - 1).square().mean() + fake.square().mean()
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    raise ValueError(f"d_loss: unknown kind {kind!r}")


def g_loss(fake_logits: torch.Tensor, kind: str, impl: str) -> torch.Tensor:
    """Generator loss of ``kind`` on the discriminator's logits for generated images."""
    if _fastgan("g_loss") is not None:
        return _losses.g_loss(fake_logits, kind, impl=impl)
    fake = fake_logits.float()
    if kind == "minimax":
        return -F.softplus(fake).mean()
    if kind == "nonsaturating":
        return F.softplus(-fake).mean()
    if kind in ("wasserstein", "hinge"):
        return -fake.mean()
    if kind == "least_squares":
        return (fake - 1).square().mean()
    raise ValueError(f"g_loss: unknown kind {kind!r}")


def gradient_penalty(
    critic: torch.nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    weight: float,
    eps: torch.Tensor,
    impl: str,
    scaler: torch.amp.GradScaler | None = None,
) -> torch.Tensor:
    """WGAN-GP: ``weight * E[(||grad critic(x_hat)||_2 - 1)^2]`` at ``x_hat = eps * real + (1 - eps) * fake``.

    ``eps`` is [N] uniform in [0, 1), drawn by the caller from the trainer's generator (so runs are reproducible).
    With a float16 ``scaler`` the input gradient is taken of the scaled critic output and unscaled before the norm
    (PyTorch's AMP gradient-penalty recipe), so it does not underflow.
    """
    if _fastgan("gradient_penalty") is not None:
        return _losses.gradient_penalty(critic, real, fake, weight=weight, eps=eps, impl=impl, scaler=scaler)
    shape = (-1,) + (1,) * (real.dim() - 1)
    mixed = (eps.view(shape) * real + (1 - eps.view(shape)) * fake).detach().requires_grad_(True)
    out = critic(mixed).sum()
    (grad,) = torch.autograd.grad(scaler.scale(out) if scaler is not None else out, mixed, create_graph=True)
    if scaler is not None:
        grad = grad / scaler.get_scale()
    return weight * (grad.float().flatten(1).norm(dim=1) - 1).square().mean()
