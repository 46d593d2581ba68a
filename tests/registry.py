"""The op registry behind the parity matrix: each op joins by adding a module to ``tests/cases/`` that defines
``CASES``, a list of :class:`OpCase`.

An OpCase says how to call the op under test on any implementation, what its pure-PyTorch specification is, how to
build inputs, and which shapes, implementations and gradient orders to check. ``tests/test_parity.py`` runs every
case on every (implementation, dtype, layout, shape, device) and compares forward, first- and second-order
gradients against the specification evaluated in float64.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from fastgan import IMPLS

LOW_PRECISION = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class OpCase:
    """One op configuration in the parity matrix.

    ``make_inputs(shape, generator)`` returns float64 CPU tensors; the first ``num_grad_inputs`` are differentiated.
    ``layouts`` are applied to the first input. ``fn(*inputs, impl=...)`` runs the op; ``ref(*inputs)`` is the spec.
    """

    name: str
    fn: Callable[..., torch.Tensor]
    ref: Callable[..., torch.Tensor]
    make_inputs: Callable[[tuple[int, ...], torch.Generator], Sequence[torch.Tensor]]
    shapes: Sequence[tuple[int, ...]]
    num_grad_inputs: int = 1
    grad_order: int = 2
    impls: Sequence[str] = IMPLS
    dtypes: Sequence[torch.dtype] = LOW_PRECISION
    layouts: Sequence[str] = ("contiguous", "channels_last", "noncontiguous")


def all_cases() -> list[OpCase]:
    """Every OpCase from every module in tests/cases/."""
    from . import cases

    found: list[OpCase] = []
    for module in pkgutil.iter_modules(cases.__path__):
        found.extend(importlib.import_module(f"{cases.__name__}.{module.name}").CASES)
    return found
