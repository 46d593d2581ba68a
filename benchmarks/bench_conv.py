"""Conv blocks with fused epilogues on every provider: the DCGAN-64 discriminator's conv + bias + leaky ReLU, the
generator's conv-transpose + batch norm + ReLU (training mode), CycleGAN-256's 3x3 conv + instance norm + ReLU, and
the raw phase-decomposed transposed convolution and the raw Triton weight gradient (conv and conv-transpose) against
cuDNN. bfloat16/float32, channels_last on a GPU.

Goals on a GPU (measured, not asserted): conv + bias + lrelu >= 1.3x eager and >= 1.15x torch.compile; conv-transpose
+ BN + ReLU forward+backward >= 1.4x eager and >= 1.15x torch.compile(mode="max-autotune"); the raw
phase-decomposed conv-transpose (Triton) >= 0.85x cuDNN.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmarks.harness import DEVICE, DTYPES, ON_GPU, PROVIDERS, compiled, measure, require_provider, step
from fastgan._backend import custom_ops
from fastgan.ops import conv2d_act, conv_transpose2d_act, conv_transpose2d_batch_norm_act, instance_norm_act

# (batch, C_in, H, W, C_out, k, stride, padding): DCGAN-64 layers at batch 64 and 128; shrunk on CPU.
if ON_GPU:
    D_LAYERS = [(n, c, h, h, o, 4, 2, 1) for n in (64, 128)
                for c, h, o in ((3, 64, 64), (64, 32, 128), (128, 16, 256), (256, 8, 512))]
    G_LAYERS = [(n, c, h, h, o, 4, 2, 1) for n in (64, 128)
                for c, h, o in ((512, 4, 256), (256, 8, 128), (128, 16, 64))]
    CYCLEGAN = [(n, c, h, h, c, 3, 1, 1) for n in (1, 4) for c, h in ((128, 128), (256, 64))]
else:
    D_LAYERS = [(2, 16, 16, 16, 32, 4, 2, 1)]
    G_LAYERS = [(2, 32, 8, 8, 16, 4, 2, 1)]
    CYCLEGAN = [(1, 16, 16, 16, 16, 3, 1, 1)]


def layer_id(layer) -> str:
    n, c, h, w, o, k, s, p = layer
    return f"{n}x{c}x{h}x{w}-{o}k{k}s{s}p{p}"


def _flops(layer, transposed: bool) -> int:
    n, c, h, w, o, k, s, p = layer
    pixels = n * h * w if transposed else n * ((h + 2 * p - k) // s + 1) * ((w + 2 * p - k) // s + 1)
    return 2 * pixels * c * o * k * k


def _input(layer, dtype, transposed: bool):
    n, c, h, w, o, k, _, _ = layer
    x = torch.randn(n, c, h, w, device=DEVICE, dtype=dtype)
    if ON_GPU:
        x = x.contiguous(memory_format=torch.channels_last)
    w_shape = (c, o, k, k) if transposed else (o, c, k, k)
    weight = torch.randn(w_shape, device=DEVICE, dtype=dtype) / (c * k * k) ** 0.5
    return x, weight, torch.randn(o, device=DEVICE, dtype=dtype)


def eager_conv_lrelu(x, w, b, stride, padding):
    return F.leaky_relu(F.conv2d(x, w, b, stride, padding), 0.2)


def eager_convt_bn_relu(x, w, gamma, beta, running_mean, running_var, stride, padding):
    y = F.conv_transpose2d(x, w, None, stride, padding)
    return F.relu(F.batch_norm(y, running_mean, running_var, gamma, beta, True, 0.1, 1e-5))


def eager_conv_in_relu(x, w, stride, padding):
    return F.relu(F.instance_norm(F.conv2d(x, w, None, stride, padding)))


def _provider_fn(provider, eager, fused, compile_mode="default"):
    if provider == "eager":
        return eager
    if provider == "compile":
        return compiled(eager, mode=None if compile_mode == "default" else compile_mode)
    return fused


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layer", D_LAYERS, ids=layer_id)
@pytest.mark.parametrize("mode", ("fwd", "fwd_bwd", "double_bwd"))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_conv_bias_lrelu(benchmark, provider, mode, layer, dtype):
    require_provider(provider)
    s, p = layer[6], layer[7]
    fn = _provider_fn(provider, lambda x, w, b: eager_conv_lrelu(x, w, b, s, p),
                      lambda x, w, b: conv2d_act(x, w, b, s, p, "lrelu", 0.2, impl=provider))
    run = step(mode, fn, _input(layer, dtype, False))
    benchmark.group = f"conv_bias_lrelu-{mode}-{layer_id(layer)}-{dtype}"
    measure(benchmark, run, flops=_flops(layer, False), op="conv_bias_lrelu", provider=provider, mode=mode,
            shape=layer_id(layer), dtype=str(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layer", G_LAYERS, ids=layer_id)
@pytest.mark.parametrize("mode", ("fwd", "fwd_bwd"))
@pytest.mark.parametrize("provider", (*PROVIDERS, "compile-max-autotune"))
def test_convt_bn_relu(benchmark, provider, mode, layer, dtype):
    base = "compile" if provider.startswith("compile") else provider
    require_provider(base)
    s, p, o = layer[6], layer[7], layer[4]
    buffers = (torch.zeros(o, device=DEVICE), torch.ones(o, device=DEVICE))

    def fused(x, w, gamma, beta):  # on Triton the batch statistics come from the conv epilogue
        return conv_transpose2d_batch_norm_act(x, w, None, s, p, norm_weight=gamma, norm_bias=beta,
                                               running_mean=buffers[0], running_var=buffers[1], training=True,
                                               act="relu", impl=base)

    eager = lambda x, w, gamma, beta: eager_convt_bn_relu(x, w, gamma, beta, *buffers, s, p)  # noqa: E731
    fn = _provider_fn(base, eager, fused, "max-autotune" if provider.endswith("autotune") else "default")
    x, w, _ = _input(layer, dtype, True)
    gamma, beta = torch.rand(o, device=DEVICE) + 0.5, torch.randn(o, device=DEVICE)
    run = step(mode, fn, [x, w, gamma, beta])
    benchmark.group = f"convt_bn_relu-{mode}-{layer_id(layer)}-{dtype}"
    measure(benchmark, run, flops=_flops(layer, True), op="convt_bn_relu", provider=provider, mode=mode,
            shape=layer_id(layer), dtype=str(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layer", G_LAYERS, ids=layer_id)
@pytest.mark.parametrize("provider", ("eager", "triton"))
def test_raw_conv_transpose(benchmark, provider, layer, dtype):
    """The phase-decomposed transposed convolution alone (``eager`` is cuDNN)."""
    require_provider(provider)
    s, p = layer[6], layer[7]
    fn = (lambda x, w: F.conv_transpose2d(x, w, None, s, p)) if provider == "eager" else (
        lambda x, w: conv_transpose2d_act(x, w, None, s, p, impl="triton"))
    x, w, _ = _input(layer, dtype, True)
    run = step("fwd", fn, [x, w])
    benchmark.group = f"raw_conv_transpose-fwd-{layer_id(layer)}-{dtype}"
    measure(benchmark, run, flops=_flops(layer, True), op="raw_conv_transpose", provider=provider, mode="fwd",
            shape=layer_id(layer), dtype=str(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layer,transposed", [(layer, False) for layer in D_LAYERS] + [(lay, True) for lay in G_LAYERS],
                         ids=lambda v: layer_id(v) if isinstance(v, tuple) else ("convt" if v else "conv"))
@pytest.mark.parametrize("provider", ("eager", "triton"))
def test_raw_weight_grad(benchmark, provider, layer, transposed, dtype):
    """The weight gradient alone, from a given output gradient (``eager`` is cuDNN's, via aten.convolution_backward)."""
    require_provider(provider)
    k, s, p = layer[5], layer[6], layer[7]
    x, w, _ = _input(layer, dtype, transposed)
    dz = torch.randn_like((F.conv_transpose2d if transposed else F.conv2d)(x, w, None, s, p))
    if provider == "eager":
        def run():
            torch.ops.aten.convolution_backward(dz, x, w, None, [s, s], [p, p], [1, 1], transposed, [0, 0], 1,
                                                [False, True, False])
    else:
        op = custom_ops("conv_act", "triton")[3 if transposed else 2]

        def run():
            op(dz, x, [k, k], [s, s], [p, p])
    benchmark.group = f"raw_weight_grad-{'convt' if transposed else 'conv'}-{layer_id(layer)}-{dtype}"
    measure(benchmark, run, flops=_flops(layer, transposed), op="raw_weight_grad", provider=provider, mode="bwd",
            shape=layer_id(layer), dtype=str(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layer", CYCLEGAN, ids=layer_id)
@pytest.mark.parametrize("mode", ("fwd", "fwd_bwd"))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_conv_instance_norm_relu(benchmark, provider, mode, layer, dtype):
    """CycleGAN-256's residual-block conv + InstanceNorm2d + ReLU at batch 1 and 4."""
    require_provider(provider)
    s, p = layer[6], layer[7]

    def fused(x, w):
        return instance_norm_act(conv2d_act(x, w, None, s, p, impl=provider), None, None, act="relu", impl=provider)

    fn = _provider_fn(provider, lambda x, w: eager_conv_in_relu(x, w, s, p), fused)
    x, w, _ = _input(layer, dtype, False)
    run = step(mode, fn, [x, w])
    benchmark.group = f"conv_in_relu-{mode}-{layer_id(layer)}-{dtype}"
    measure(benchmark, run, flops=_flops(layer, False), op="conv_in_relu", provider=provider, mode=mode,
            shape=layer_id(layer), dtype=str(dtype))
