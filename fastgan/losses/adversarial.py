"""``GANLoss``: the module form of the adversarial losses of :mod:`fastgan.ops.gan_loss`."""

from __future__ import annotations

import torch

from ..ops.gan_loss import LOSS_KINDS, TERMS, d_loss, g_loss, loss_kind  # noqa: F401 (the tables: see below)

# The loss tables live in the op unit fastgan/ops/gan_loss.py; they are re-exported here because
# fastgan/kernels/triton/aot.py still imports them from this module.

__all__ = ["GANLoss"]


class GANLoss(torch.nn.Module):
    """Module form of ``d_loss``/``g_loss``: ``GANLoss(kind)(fake_logits)`` is the generator loss and
    ``GANLoss(kind)(fake_logits, real_logits)`` the discriminator loss (also ``.d_loss(real, fake)``, ``.g_loss``).
    """

    def __init__(self, kind: str = "nonsaturating", impl: str = "auto") -> None:
        super().__init__()
        loss_kind("GANLoss", kind)
        self.kind = kind
        self.impl = impl

    def d_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return d_loss(real_logits, fake_logits, self.kind, self.impl)

    def g_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return g_loss(fake_logits, self.kind, self.impl)

    def forward(self, fake_logits: torch.Tensor, real_logits: torch.Tensor | None = None) -> torch.Tensor:
        if real_logits is None:
            return self.g_loss(fake_logits)
        return self.d_loss(real_logits, fake_logits)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"
