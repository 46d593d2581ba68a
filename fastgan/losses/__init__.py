"""Adversarial losses and gradient penalties as fused ops (each takes ``impl=``; ``*_ref`` is its specification).

- ``d_loss`` / ``g_loss`` / ``GANLoss``: minimax, nonsaturating, hinge, wasserstein and least-squares losses.
- ``gradient_penalty`` (WGAN-GP), ``r1_penalty`` (R1/R2), ``LazyRegularizer``; the fused penalty head
  ``interpolate`` + ``grad_norm_penalty`` they are built from.
"""

from .adversarial import LOSS_KINDS, GANLoss, d_loss, d_loss_ref, g_loss, g_loss_ref
from .penalties import (
    GradientPenalty,
    LazyRegularizer,
    R1Penalty,
    grad_norm_penalty,
    grad_norm_penalty_ref,
    gradient_penalty,
    gradient_penalty_ref,
    interpolate,
    interpolate_ref,
    r1_penalty,
    r1_penalty_ref,
)

__all__ = [
    "LOSS_KINDS",
    "GANLoss",
    "GradientPenalty",
    "LazyRegularizer",
    "R1Penalty",
    "d_loss",
    "d_loss_ref",
    "g_loss",
    "g_loss_ref",
    "grad_norm_penalty",
    "grad_norm_penalty_ref",
    "gradient_penalty",
    "gradient_penalty_ref",
    "interpolate",
    "interpolate_ref",
    "r1_penalty",
    "r1_penalty_ref",
]
