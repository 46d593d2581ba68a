"""Exponential moving average of a generator's weights, the network samples are drawn from."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """A frozen copy of ``model`` whose parameters follow ``p_ema += (1 - d) * (p - p_ema)`` after each step.

    ``d = min(decay, (1 + step) / (10 + step))`` ramps the decay up so short runs are not dominated by the random
    initialisation. Buffers (batch-norm running statistics) are copied as they are. Two ops per update (a
    ``_foreach_lerp_`` and a ``_foreach_copy_``): no host synchronisation, few launches.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1.0 + step) / (10.0 + step))
        ema_params = list(self.module.parameters())
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        ema_buffers = list(self.module.buffers())
        if ema_buffers:
            torch._foreach_copy_(ema_buffers, list(model.buffers()))

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)
