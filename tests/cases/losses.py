"""Losses and the gradient-penalty head in the parity matrix: every loss kind (d and g, ordinary and very large
logits), the interpolation and the per-sample-norm penalty, forward, first and second order.

Scalar-output cases skip the matrix's channels_last layout (its check that the output keeps channels_last does not
apply to a 0-dim result); tests/test_losses.py covers channels_last logits for them.
"""

from __future__ import annotations

import torch

from fastgan.losses import (
    LOSS_KINDS,
    d_loss,
    d_loss_ref,
    g_loss,
    g_loss_ref,
    grad_norm_penalty,
    grad_norm_penalty_ref,
    interpolate,
    interpolate_ref,
)

from ..registry import OpCase

# [B] and a PatchGAN map [B, 1, H, W], shrunk to CPU size with odd sizes. Every kernel reads logits as one flat run
# of elements, so [B, 1] takes [B]'s path (tests/test_losses.py runs [B, 1] through the public API).
LOGIT_SHAPES = [(7,), (3, 1, 5, 6)]
SCALAR_LAYOUTS = ("contiguous", "noncontiguous")


def _logits(shape, gen, scale):
    return torch.randn(shape, generator=gen, dtype=torch.float64) * scale


def _d_case(kind: str, scale: float = 3.0) -> OpCase:
    def make_inputs(shape, gen):
        fake_shape = (shape[0] + 1, *shape[1:])  # batch sizes may differ
        return _logits(shape, gen, scale), _logits(fake_shape, gen, scale)

    return OpCase(
        name=f"d_loss[{kind},scale={scale}]",
        fn=lambda r, f, impl: d_loss(r, f, kind, impl=impl),
        ref=lambda r, f: d_loss_ref(r, f, kind),
        make_inputs=make_inputs,
        shapes=LOGIT_SHAPES,
        num_grad_inputs=2,
        layouts=SCALAR_LAYOUTS,
    )


def _g_case(kind: str, scale: float = 3.0) -> OpCase:
    return OpCase(
        name=f"g_loss[{kind},scale={scale}]",
        fn=lambda f, impl: g_loss(f, kind, impl=impl),
        ref=lambda f: g_loss_ref(f, kind),
        make_inputs=lambda shape, gen: (_logits(shape, gen, scale),),
        shapes=LOGIT_SHAPES,
        layouts=SCALAR_LAYOUTS,
    )


def _interpolate_case() -> OpCase:
    def make_inputs(shape, gen):
        real = torch.randn(shape, generator=gen, dtype=torch.float64)
        fake = torch.randn(shape, generator=gen, dtype=torch.float64)
        return real, fake, torch.rand(shape[0], generator=gen, dtype=torch.float64)

    return OpCase(
        name="interpolate",
        fn=lambda r, f, e, impl: interpolate(r, f, e, impl=impl),
        ref=interpolate_ref,
        make_inputs=make_inputs,
        shapes=[(3, 2, 5, 7), (2, 3, 4, 4), (5, 6)],
        num_grad_inputs=3,
    )


def _penalty_case(weight: float, center: float, scale: float = 1.0) -> OpCase:
    return OpCase(
        name=f"grad_norm_penalty[weight={weight},center={center},scale={scale}]",
        fn=lambda g, impl: grad_norm_penalty(g, weight, center, scale, impl=impl),
        ref=lambda g: grad_norm_penalty_ref(g, weight, center, scale),
        make_inputs=lambda shape, gen: (torch.randn(shape, generator=gen, dtype=torch.float64) * 0.3,),
        shapes=[(3, 2, 5, 7), (4, 3, 4, 4), (5, 6)],
        layouts=SCALAR_LAYOUTS,
    )


CASES = [_d_case(kind) for kind in LOSS_KINDS] + [_g_case(kind) for kind in LOSS_KINDS]
# Large logits: softplus must neither overflow nor lose the linear tail (no log(sigmoid) underflow).
CASES += [_d_case(kind, 60.0) for kind in ("minimax", "nonsaturating")]
CASES += [_g_case(kind, 60.0) for kind in ("minimax", "nonsaturating")]
CASES += [
    _interpolate_case(),
    _penalty_case(10.0, 1.0),  # WGAN-GP
    _penalty_case(5.0, 0.0),  # R1 with gamma = 10
    _penalty_case(2.0, 1.0, scale=0.25),  # gradients of a GradScaler-scaled loss
]
