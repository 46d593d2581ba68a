"""Standalone normalization + activation: batch norm + ReLU in training mode (the DCGAN generator's BatchNorm2d ->
ReLU after each transposed convolution) and instance norm + ReLU (CycleGAN's generator, batch 1 and 4), on every
provider, bfloat16/float32, channels_last on a GPU.

Goal on a GPU (measured, not asserted): batch norm + ReLU forward+backward >= 1.5x eager PyTorch, at >= 70% of the
measured device-copy bandwidth (``bench_bias_act.py::test_copy_bandwidth``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmarks.harness import (
    DEVICE,
    DTYPES,
    ON_GPU,
    PROVIDERS,
    activation_shapes,
    compiled,
    measure,
    require_provider,
    shape_id,
    step,
)
from fastgan.ops import batch_norm_act, instance_norm_act

MODES = ("fwd", "fwd_bwd")  # the second order is composed from PyTorch ops by design: not a fast path

# CycleGAN-256 generator activations after its instance norms (batch 1 and 4); shrunk on CPU.
CYCLEGAN = [(b, *chw) for b in (1, 4) for chw in ((64, 256, 256), (128, 128, 128), (256, 64, 64))]
INSTANCE_SHAPES = CYCLEGAN if ON_GPU else [(1, 64, 32, 32), (4, 64, 16, 16)]

# Tensor-sized passes the fused kernels make: forward reads x twice (statistics, then y) and writes y; the backward
# reads x and dy twice (sums, then dx) and writes dx.
PASSES = {"fwd": 3, "fwd_bwd": 8}


def eager_batch_norm_relu(x, w, b, running_mean, running_var):
    return F.relu(F.batch_norm(x, running_mean, running_var, w, b, True, 0.1, 1e-5))


def eager_instance_norm_relu(x, w, b):
    return F.relu(F.instance_norm(x, None, None, w, b, True, 0.1, 1e-5))


def _fn(provider: str, kind: str, buffers):
    if kind == "batch":
        if provider in ("eager", "compile"):
            fn = eager_batch_norm_relu if provider == "eager" else compiled(eager_batch_norm_relu)
            return lambda x, w, b: fn(x, w, b, *buffers)
        return lambda x, w, b: batch_norm_act(x, w, b, *buffers, True, act="relu", impl=provider)
    if provider in ("eager", "compile"):
        return eager_instance_norm_relu if provider == "eager" else compiled(eager_instance_norm_relu)
    return lambda x, w, b: instance_norm_act(x, w, b, act="relu", impl=provider)


def _inputs(shape, dtype):
    x = torch.randn(shape, device=DEVICE, dtype=dtype)
    if ON_GPU:
        x = x.contiguous(memory_format=torch.channels_last)
    c = shape[1]
    return x, torch.rand(c, device=DEVICE) + 0.5, torch.randn(c, device=DEVICE)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", activation_shapes(), ids=shape_id)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_batch_norm_relu(benchmark, provider, mode, shape, dtype):
    require_provider(provider)
    x, w, b = _inputs(shape, dtype)
    buffers = (torch.zeros(shape[1], device=DEVICE), torch.ones(shape[1], device=DEVICE))
    run = step(mode, _fn(provider, "batch", buffers), [x, w, b])
    benchmark.group = f"batch_norm_relu-{mode}-{shape_id(shape)}-{dtype}"
    measure(benchmark, run, bytes_moved=PASSES[mode] * x.numel() * x.element_size(),
            op="batch_norm_relu", provider=provider, mode=mode, shape=shape_id(shape), dtype=str(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", INSTANCE_SHAPES, ids=shape_id)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_instance_norm_relu(benchmark, provider, mode, shape, dtype):
    require_provider(provider)
    x, w, b = _inputs(shape, dtype)
    run = step(mode, _fn(provider, "instance", None), [x, w, b])
    benchmark.group = f"instance_norm_relu-{mode}-{shape_id(shape)}-{dtype}"
    measure(benchmark, run, bytes_moved=PASSES[mode] * x.numel() * x.element_size(),
            op="instance_norm_relu", provider=provider, mode=mode, shape=shape_id(shape), dtype=str(dtype))
