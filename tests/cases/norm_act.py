"""batch_norm_act and instance_norm_act in the parity matrix: training (batch statistics) and evaluation (running
statistics), affine and not, piecewise-linear and smooth activations, on real layer shapes shrunk to CPU size.

The gradients differentiated are those of x, weight and bias (the running statistics are buffers)."""

from __future__ import annotations

import torch

from fastgan.ops import batch_norm_act, batch_norm_act_ref, instance_norm_act, instance_norm_act_ref

from ..registry import OpCase

IMPLS = ("ref", "native")
# The Triton interpreter costs ~1 s a launch on CI's CPUs, so Triton runs a representative subset (below): each
# feature once (train/eval, both norms, smooth 2nd order, batch 1) over every dtype and layout.
TRITON = ("triton",)


def _inputs(affine: bool, running: bool):
    def make_inputs(shape, gen):
        c = shape[1]
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 0.5
        tensors = [x]
        if affine:
            tensors += [1 + 0.5 * torch.randn(c, generator=gen, dtype=torch.float64),
                        0.5 * torch.randn(c, generator=gen, dtype=torch.float64)]
        if running:
            tensors += [torch.randn(c, generator=gen, dtype=torch.float64) * 0.5,
                        0.5 + torch.rand(c, generator=gen, dtype=torch.float64)]
        return tensors

    return make_inputs


def _split(affine: bool, running: bool, t):
    x, rest = t[0], list(t[1:])
    w, b = (rest.pop(0), rest.pop(0)) if affine else (None, None)
    rm, rv = (rest.pop(0), rest.pop(0)) if running else (None, None)
    return x, w, b, rm, rv


def _batch(act: str, shapes, alpha=None, training=True, affine=True, impls=IMPLS, buffers=False) -> OpCase:
    """``buffers``: training with running statistics, which the op updates in place (fastgan::norm_act_train)."""
    running = buffers or not training

    def fn(*t, impl):
        x, w, b, rm, rv = _split(affine, running, t)
        return batch_norm_act(x, w, b, rm, rv, training, 0.1, 1e-5, act, alpha, impl=impl)

    def ref(*t):
        x, w, b, rm, rv = _split(affine, running, t)
        return batch_norm_act_ref(x, w, b, rm, rv, training, 0.1, 1e-5, act, alpha)

    return OpCase(
        name=f"batch_norm_act[{act},{'train' if training else 'eval'}{'+buffers' if buffers and training else ''}"
             f"{',affine' if affine else ''}]",
        fn=fn, ref=ref, make_inputs=_inputs(affine, running), shapes=shapes,
        num_grad_inputs=3 if affine else 1, impls=impls,
    )


def _instance(act: str, shapes, alpha=None, use_input_stats=True, affine=False, impls=IMPLS) -> OpCase:
    running = not use_input_stats

    def fn(*t, impl):
        x, w, b, rm, rv = _split(affine, running, t)
        return instance_norm_act(x, w, b, rm, rv, use_input_stats, 0.1, 1e-5, act, alpha, impl=impl)

    def ref(*t):
        x, w, b, rm, rv = _split(affine, running, t)
        return instance_norm_act_ref(x, w, b, rm, rv, use_input_stats, 0.1, 1e-5, act, alpha)

    return OpCase(
        name=f"instance_norm_act[{act},{'batch' if use_input_stats else 'running'}{',affine' if affine else ''}]",
        fn=fn, ref=ref, make_inputs=_inputs(affine, running), shapes=shapes,
        num_grad_inputs=3 if affine else 1, impls=impls,
    )


# DCGAN-like layers shrunk to CPU size, odd spatial sizes, a BatchNorm1d-shaped input, and an empty batch.
BATCH = [(4, 8, 5, 7), (2, 16, 8, 8), (0, 4, 3, 3)]
# CycleGAN runs instance norm at batch 1.
INSTANCE = [(1, 8, 5, 7), (2, 16, 8, 8), (0, 4, 3, 3)]

CASES = [
    _batch("relu", BATCH),
    _batch("lrelu", [(4, 8, 5, 7), (6, 5)], alpha=0.2, affine=False),
    _batch("tanh", [(2, 16, 8, 8)]),
    _batch("lrelu", BATCH, alpha=0.2, buffers=True),
    _batch("relu", [(4, 8, 5, 7), (0, 4, 3, 3)], training=False),
    _batch("elu", [(2, 16, 8, 8)], alpha=0.7, training=False, affine=False),
    _instance("relu", INSTANCE),
    _instance("lrelu", [(2, 8, 5, 7)], alpha=0.2, affine=True),
    _instance("silu", [(1, 8, 5, 7)], affine=True),
    _instance("relu", [(2, 8, 5, 7)], use_input_stats=False, affine=True),
]
CASES += [
    _batch("relu", [(4, 8, 5, 7)], impls=TRITON),
    _batch("tanh", [(2, 16, 8, 8)], impls=TRITON),
    _batch("lrelu", [(4, 8, 5, 7)], alpha=0.2, buffers=True, impls=TRITON),
    _batch("elu", [(2, 16, 8, 8)], alpha=0.7, training=False, affine=False, impls=TRITON),
    _instance("silu", [(1, 8, 5, 7)], affine=True, impls=TRITON),
    _instance("relu", [(2, 8, 5, 7)], use_input_stats=False, affine=True, impls=TRITON),
]
