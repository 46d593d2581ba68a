"""Adversarial losses and gradient penalties (each takes ``impl=``; ``*_ref`` is its specification).

- ``d_loss`` / ``g_loss`` (the op unit :mod:`fastgan.ops.gan_loss`) and the module ``GANLoss``: minimax,
  nonsaturating, hinge, wasserstein and least-squares losses.
- ``gradient_penalty`` (WGAN-GP), ``r1_penalty`` (R1/R2), ``LazyRegularizer`` and their modules, built on the fused
  penalty head ``interpolate`` + ``grad_norm_penalty`` (the op unit :mod:`fastgan.ops.penalty`).
"""

from ..ops.gan_loss import LOSS_KINDS, d_loss, d_loss_ref, g_loss, g_loss_ref
from ..ops.penalty import grad_norm_penalty, grad_norm_penalty_ref, interpolate, interpolate_ref
from .adversarial import GANLoss
from .penalties import (
    GradientPenalty,
    LazyRegularizer,
    R1Penalty,
    gradient_penalty,
    gradient_penalty_ref,
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
