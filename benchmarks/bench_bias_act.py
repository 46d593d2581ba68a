"""bias_act (bias + leaky ReLU, the discriminator's activation) on every provider and mode.

Goal on a GPU (measured, not asserted): forward+backward on 64M bfloat16 elements at >= 85% of the measured
device-copy bandwidth, >= 1.5x eager PyTorch and >= 1.0x torch.compile.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmarks.harness import (
    DEVICE,
    DTYPES,
    MODES,
    PROVIDERS,
    activation_shapes,
    compiled,
    measure,
    require_provider,
    shape_id,
    step,
)
from fastgan.ops import bias_act


def eager_bias_lrelu(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x + b.view(1, -1, 1, 1), 0.2)


def _fn(provider: str):
    if provider == "eager":
        return eager_bias_lrelu
    if provider == "compile":
        return compiled(eager_bias_lrelu)
    return lambda x, b: bias_act(x, b, act="lrelu", alpha=0.2, impl=provider)


# Fewest bytes each mode must move, in tensor-sized passes: fwd reads x, writes y; the backward reads dy and x and
# writes dx; a gradient penalty's double backward adds the backward again plus its own gradient pass.
PASSES = {"fwd": 2, "fwd_bwd": 5, "double_bwd": 8}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", activation_shapes(), ids=shape_id)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_bias_lrelu(benchmark, provider, mode, shape, dtype):
    require_provider(provider)
    x = torch.randn(shape, device=DEVICE, dtype=dtype)
    b = torch.randn(shape[1], device=DEVICE, dtype=dtype)
    run = step(mode, _fn(provider), [x, b])
    benchmark.group = f"bias_lrelu-{mode}-{shape_id(shape)}-{dtype}"
    measure(benchmark, run, bytes_moved=PASSES[mode] * x.numel() * x.element_size(),
            op="bias_lrelu", provider=provider, mode=mode, shape=shape_id(shape), dtype=str(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_copy_bandwidth(benchmark, dtype):
    """The device's copy bandwidth at the largest shape, the yardstick for the elementwise goals."""
    shape = activation_shapes()[-1]
    x = torch.randn(shape, device=DEVICE, dtype=dtype)
    y = torch.empty_like(x)
    benchmark.group = f"copy-{shape_id(shape)}-{dtype}"
    measure(benchmark, lambda: y.copy_(x), bytes_moved=2 * x.numel() * x.element_size(),
            op="copy", provider="copy", mode="fwd", shape=shape_id(shape), dtype=str(dtype))
