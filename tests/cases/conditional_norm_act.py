"""conditional_batch_norm_act in the parity matrix: per-sample scale and shift ``[N, C]`` (a conditional
generator's batch norm), training (batch statistics) and evaluation (running statistics), on DCGAN generator shapes
shrunk to CPU size, an odd spatial size, a BatchNorm1d-shaped input and an empty batch.

The gradients differentiated are those of x, scale and shift (the running statistics are buffers); for the
generator's block ``conv_transpose2d_conditional_batch_norm_act`` (on Triton in training, statistics from the
convolution's epilogue) also the convolution weight."""

from __future__ import annotations

import torch

from fastgan.ops import (
    conditional_batch_norm_act,
    conditional_batch_norm_act_ref,
    conv_transpose2d_act_ref,
    conv_transpose2d_conditional_batch_norm_act,
)

from ..registry import OpCase


def _case(act: str, shapes, alpha=None, training=True, impls=("ref", "native"), **kw) -> OpCase:
    def make_inputs(shape, gen):
        n, c = shape[0], shape[1]
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 0.5
        scale = 1 + 0.5 * torch.randn(n, c, generator=gen, dtype=torch.float64)
        shift = 0.5 * torch.randn(n, c, generator=gen, dtype=torch.float64)
        running_mean = torch.randn(c, generator=gen, dtype=torch.float64) * 0.5
        running_var = 0.5 + torch.rand(c, generator=gen, dtype=torch.float64)
        return x, scale, shift, running_mean, running_var

    def stats(rm, rv):
        return (None, None) if training else (rm, rv)

    def fn(x, scale, shift, rm, rv, impl):
        return conditional_batch_norm_act(x, scale, shift, *stats(rm, rv), training, 0.1, 1e-5, act, alpha, impl=impl)

    def ref(x, scale, shift, rm, rv):
        return conditional_batch_norm_act_ref(x, scale, shift, *stats(rm, rv), training, 0.1, 1e-5, act, alpha)

    return OpCase(
        name=f"conditional_batch_norm_act[{act},{'train' if training else 'eval'}]",
        fn=fn, ref=ref, make_inputs=make_inputs, shapes=shapes, num_grad_inputs=3, impls=impls, **kw,
    )


def _block(training: bool, impls, **kw) -> OpCase:
    """DCGAN's generator block, conditional: ConvTranspose2d(4, 2, 1) -> conditional batch norm -> ReLU."""
    out_channels = 3

    def make_inputs(shape, gen):
        n, c = shape[0], shape[1]
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        w = torch.randn(c, out_channels, 4, 4, generator=gen, dtype=torch.float64) / (c * 16) ** 0.5
        scale = 1 + 0.5 * torch.randn(n, out_channels, generator=gen, dtype=torch.float64)
        shift = 0.5 * torch.randn(n, out_channels, generator=gen, dtype=torch.float64)
        running_mean = torch.randn(out_channels, generator=gen, dtype=torch.float64) * 0.5
        running_var = 0.5 + torch.rand(out_channels, generator=gen, dtype=torch.float64)
        return x, w, scale, shift, running_mean, running_var

    def stats(rm, rv):
        return (None, None) if training else (rm, rv)

    def fn(x, w, scale, shift, rm, rv, impl):
        rm, rv = stats(rm, rv)
        return conv_transpose2d_conditional_batch_norm_act(x, w, None, 2, 1, scale=scale, shift=shift, running_mean=rm,
                                                           running_var=rv, training=training, act="relu", impl=impl)

    def ref(x, w, scale, shift, rm, rv):
        z = conv_transpose2d_act_ref(x, w, None, 2, 1)
        return conditional_batch_norm_act_ref(z, scale, shift, *stats(rm, rv), training, act="relu")

    return OpCase(name=f"conv_transpose2d_conditional_batch_norm_act[relu,{'train' if training else 'eval'}]", fn=fn,
                  ref=ref, make_inputs=make_inputs, shapes=[(2, 4, 3, 3)], num_grad_inputs=4, impls=impls, **kw)


CASES = [
    _case("relu", [(4, 8, 5, 7), (2, 16, 8, 8), (0, 4, 3, 3)]),
    _case("lrelu", [(4, 8, 5, 7), (6, 5)], alpha=0.2),
    _case("tanh", [(2, 16, 8, 8)], training=False),
    # The Triton interpreter costs ~1 s a launch: one training and one evaluation case, two layouts.
    _case("relu", [(4, 8, 5, 7)], impls=("triton",), layouts=("contiguous", "channels_last")),
    _case("elu", [(2, 16, 8, 8)], alpha=0.7, training=False, impls=("triton",),
          layouts=("contiguous", "channels_last")),
    _block(True, ("ref", "native")),
    _block(False, ("ref", "native")),
    _block(True, ("triton",), dtypes=(torch.float32, torch.bfloat16), layouts=("contiguous", "channels_last")),
]
