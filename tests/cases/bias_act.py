"""bias_act in the parity matrix: every activation, with bias, gain and clamp, on NCHW and Linear-shaped inputs."""

from __future__ import annotations

import torch

from fastgan.ops import ACTIVATIONS, bias_act, bias_act_ref

from ..registry import OpCase


def _case(act: str, dim: int, shapes, **kw) -> OpCase:
    def make_inputs(shape, gen):
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2
        b = torch.randn(shape[dim], generator=gen, dtype=torch.float64)
        return x, b

    suffix = "".join(f",{k}={v}" for k, v in kw.items())
    return OpCase(
        name=f"bias_act[{act},dim={dim}{suffix}]",
        fn=lambda x, b, impl: bias_act(x, b, dim=dim, act=act, impl=impl, **kw),
        ref=lambda x, b: bias_act_ref(x, b, dim=dim, act=act, **kw),
        make_inputs=make_inputs,
        shapes=shapes,
        num_grad_inputs=2,
    )


# Real layer shapes shrunk to CPU size, odd sizes included; the empty batch checks that nothing launches on it.
NCHW = [(2, 8, 5, 7), (3, 4, 8, 8), (0, 4, 3, 3)]

CASES = [_case(act, 1, NCHW) for act in ACTIVATIONS]
CASES += [
    _case("lrelu", 1, NCHW, alpha=0.2, gain=2**0.5),
    _case("relu", 1, NCHW, gain=1.5, clamp=1.0),
    _case("tanh", 1, NCHW, clamp=0.5),
    _case("lrelu", -1, [(6, 33), (2, 3, 17)], alpha=0.2),
    _case("elu", 0, [(5, 9), (3, 2, 4, 4)], alpha=0.7),
]
# A size-1 channel dimension (its stride is arbitrary) and a Linear-shaped input with the bias on the last dim.
CASES += [_case("lrelu", 1, [(3, 1, 4, 5)]), _case("silu", 1, [(7, 5)])]
