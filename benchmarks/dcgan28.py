"""The canonical 28x28 MNIST DCGAN training step, plain PyTorch or through ``fastgan.optimize``.

G: noise 100 -> 256 (4x4) -> 128 (7x7) -> 64 (14x14) transposed convs with BatchNorm + ReLU, then a stride-2
transposed conv to 1 channel (28x28) and tanh; D mirrors it (4x4 stride-2 convs, BatchNorm from the second layer,
LeakyReLU 0.2, one logit); no biases, as in PyTorch's DCGAN example. One step: a discriminator update on real and
(detached) fake images, then a generator update, BCE with logits, Adam, batch 64. The data are fixed random images
(loading is not timed). ``benchmarks/quality_mnist.py`` trains these networks as the plain recipe.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import fastgan


def generator(z_dim: int = 100) -> nn.Sequential:
    """The canonical MNIST generator: [N, z_dim, 1, 1] -> [N, 1, 28, 28]."""
    return nn.Sequential(
        nn.ConvTranspose2d(z_dim, 256, 4, 1, 0, bias=False), nn.BatchNorm2d(256), nn.ReLU(),
        nn.ConvTranspose2d(256, 128, 3, 2, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
        nn.ConvTranspose2d(128, 64, 4, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.ConvTranspose2d(64, 1, 4, 2, 1, bias=False), nn.Tanh(),
    )


def discriminator() -> nn.Sequential:
    """The mirrored discriminator: [N, 1, 28, 28] -> logits [N, 1, 1, 1]."""
    return nn.Sequential(
        nn.Conv2d(1, 64, 4, 2, 1, bias=False), nn.LeakyReLU(0.2),
        nn.Conv2d(64, 128, 4, 2, 1, bias=False), nn.BatchNorm2d(128), nn.LeakyReLU(0.2),
        nn.Conv2d(128, 256, 3, 2, 1, bias=False), nn.BatchNorm2d(256), nn.LeakyReLU(0.2),
        nn.Conv2d(256, 1, 4, 1, 0, bias=False),
    )


def make_step(impl: str | None, batch: int = 64, seed: int = 0, channels_last: bool = False,
              fused_channels_last: bool = False) -> Callable[[], tuple[float, float]]:
    """One training step as a closure: ``impl=None`` is plain PyTorch, otherwise ``fastgan.optimize(..., impl=)``
    (``fused_channels_last``: its ``channels_last=True``); ``channels_last``: the models and images converted to
    channels_last, as a user would for plain PyTorch."""
    torch.manual_seed(seed)
    g, d = generator(), discriminator()
    if impl is not None:
        g, d = (fastgan.optimize(m, impl=impl, channels_last=fused_channels_last) for m in (g, d))
    if channels_last:
        g, d = g.to(memory_format=torch.channels_last), d.to(memory_format=torch.channels_last)
    opt_g = torch.optim.Adam(g.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), 2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(seed)
    real = torch.rand(batch, 1, 28, 28, generator=gen) * 2 - 1
    z = torch.randn(batch, 100, 1, 1, generator=gen)
    if channels_last:
        real = real.contiguous(memory_format=torch.channels_last)
    ones, zeros = torch.ones(batch), torch.zeros(batch)

    def step() -> tuple[float, float]:
        fake = g(z)
        opt_d.zero_grad(set_to_none=True)
        loss_d = bce(d(real).view(-1), ones) + bce(d(fake.detach()).view(-1), zeros)
        loss_d.backward()
        opt_d.step()
        opt_g.zero_grad(set_to_none=True)
        loss_g = bce(d(fake).view(-1), ones)
        loss_g.backward()
        opt_g.step()
        return loss_d.detach(), loss_g.detach()

    return step


class _NewTensorBytes(TorchDispatchMode):
    """Bytes of the tensors the dispatched ops create (results that alias no input: not views, not in-place results,
    and not ``_unsafe_view``, a view the schema does not declare)."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket is not torch.ops.aten._unsafe_view:
            for ret, t in zip(func._schema.returns, tree_leaves(out)):
                if isinstance(t, torch.Tensor) and ret.alias_info is None:
                    self.bytes += t.untyped_storage().nbytes()
        return out


def new_tensor_bytes(step: Callable[[], object]) -> int:
    """Bytes of new tensors one call of ``step`` creates, counted at the dispatcher (what the allocator must find:
    on the CPU, a tensor of a few MB is memory glibc has handed back to the system and faults in again)."""
    with _NewTensorBytes() as counter:
        step()
    return counter.bytes


if __name__ == "__main__":
    for name, kw in (("plain", {"impl": None}), ("optimize", {"impl": "auto"}),
                     ("optimize, channels_last=True", {"impl": "auto", "fused_channels_last": True})):
        step = make_step(**kw)
        step()  # Adam's state is created at the first step
        print(f"{name}: {new_tensor_bytes(step) / 2**20:.1f} MiB of new tensors per step (batch 64)")
