"""CPU: fastgan's C++ kernels side by side with the eager PyTorch ops they replace, and the DCGAN-28 step.

Every fused op must be at least as fast as eager PyTorch on the CPU, forward and forward+backward, and the canonical
28x28 MNIST DCGAN step (``benchmarks/dcgan28.py``) through ``fastgan.optimize`` at most 0.9x plain PyTorch's time.
Providers: ``eager`` (the ops a user writes: ``F.batch_norm`` + ``F.relu``, ``x + b`` + ``F.leaky_relu``,
``F.conv2d`` + ``F.leaky_relu``, the losses' textbook formulas), ``native`` (``impl="native"``) and ``auto`` (what
``impl="auto"`` picks on the CPU). Shapes: DCGAN-28 and DCGAN-64 activations at batch 64, a CycleGAN-256 activation
at batch 1, the DCGAN-28 convolutions that fastgan runs other than oneDNN's way; contiguous and channels_last;
float32 and bfloat16. Results and the machine are in the README (CPU benchmarks). The full matrix runs with
``FASTGAN_CPU_BENCH=full`` (CI's smoke run keeps one float32 shape per op and the plain/auto step on a batch of 8);
``FASTGAN_BENCH_ROUNDS`` sets the timed rounds (the README's table: 25, 2 threads):

    FASTGAN_CPU_BENCH=full python -m pytest benchmarks/bench_cpu.py --benchmark-group-by=group \
        --benchmark-columns=median,iqr
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from benchmarks.dcgan28 import make_step
from benchmarks.harness import measure, require_provider, shape_id, step
from fastgan.losses import d_loss, d_loss_ref
from fastgan.ops import batch_norm_act, bias_act, conv2d_act, conv_transpose2d_act, instance_norm_act
from fastgan.ops.penalty import grad_norm_penalty

if torch.cuda.is_available():  # a GPU machine runs the GPU suites; these rows are the CPU's
    pytestmark = pytest.mark.skip("CPU benchmarks: the GPU suite covers CUDA")

FULL = os.environ.get("FASTGAN_CPU_BENCH", "") == "full"
PROVIDERS = ("eager", "native", "auto")
MODES = ("fwd", "fwd_bwd")
DTYPES = (torch.float32, torch.bfloat16) if FULL else (torch.float32,)
LAYOUTS = ("contiguous", "channels_last")
# DCGAN-28 D and G activations, a DCGAN-64 G activation (batch 64), CycleGAN-256 activations (batch 1).
BN_SHAPES = [(64, 64, 14, 14), (64, 128, 7, 7), (64, 128, 16, 16)] if FULL else [(64, 128, 7, 7)]
IN_SHAPES = [(1, 64, 256, 256), (1, 256, 64, 64)] if FULL else [(1, 256, 64, 64)]
BIAS_SHAPES = [(64, 64, 14, 14), (64, 128, 16, 16)] if FULL else [(64, 64, 14, 14)]
# "-cl": plain PyTorch's model.to(memory_format=torch.channels_last), optimize's channels_last=True.
STEP_PROVIDERS = (("plain", "plain-cl", "optimize-auto", "optimize-auto-cl", "optimize-native", "optimize-ref") if FULL
                  else ("plain", "optimize-auto"))


def _tensor(shape, dtype, layout, gen):
    x = torch.randn(shape, generator=gen).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


def _run(benchmark, group: str, provider: str, mode: str, fn, inputs, **info) -> None:
    require_provider("native" if provider == "auto" else provider)
    benchmark.group = group
    measure(benchmark, step(mode, fn, inputs), provider=provider, mode=mode, **info)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", BIAS_SHAPES, ids=shape_id)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_bias_lrelu(benchmark, provider, mode, shape, dtype, layout):
    gen = torch.Generator().manual_seed(0)
    x, b = _tensor(shape, dtype, layout, gen), torch.randn(shape[1], generator=gen).to(dtype)
    if provider == "eager":
        fn = lambda x, b: F.leaky_relu(x + b.view(1, -1, 1, 1), 0.2)  # noqa: E731
    else:
        fn = lambda x, b: bias_act(x, b, 1, "lrelu", 0.2, impl=provider)  # noqa: E731
    _run(benchmark, f"cpu-bias_lrelu-{mode}-{shape_id(shape)}-{dtype}-{layout}", provider, mode, fn, [x, b],
         op="bias_act[lrelu]", shape=shape_id(shape), dtype=str(dtype), layout=layout)


# (norm, shape): batch norm at the DCGAN shapes, instance norm at the CycleGAN ones.
NORM_CASES = [("batch", s) for s in BN_SHAPES] + [("instance", s) for s in IN_SHAPES]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("norm, shape", NORM_CASES, ids=lambda c: c if isinstance(c, str) else shape_id(c))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_norm_relu(benchmark, provider, mode, norm, shape, dtype, layout):
    gen = torch.Generator().manual_seed(0)
    x = _tensor(shape, dtype, layout, gen)
    w, b = torch.rand(shape[1], generator=gen) + 0.5, torch.randn(shape[1], generator=gen)
    if norm == "batch":
        rm, rv = torch.zeros(shape[1]), torch.ones(shape[1])
        eager = lambda x, w, b: F.relu(F.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5))  # noqa: E731
        fused = lambda x, w, b: batch_norm_act(x, w, b, rm, rv, True, act="relu", impl=provider)  # noqa: E731
    else:
        eager = lambda x, w, b: F.relu(F.instance_norm(x, None, None, w, b))  # noqa: E731
        fused = lambda x, w, b: instance_norm_act(x, w, b, act="relu", impl=provider)  # noqa: E731
    _run(benchmark, f"cpu-{norm}_norm_relu-{mode}-{shape_id(shape)}-{dtype}-{layout}", provider, mode,
         eager if provider == "eager" else fused, [x, w, b], op=f"{norm}_norm_act[relu]", shape=shape_id(shape),
         dtype=str(dtype), layout=layout)


# The DCGAN-28 convolutions fastgan's CPU path runs other than oneDNN's way (fastgan/ops/conv_act.py): (name,
# transposed, x shape, weight shape, stride, padding, act); batch 64.
CONV_CASES = [
    ("D1-lrelu", False, (64, 1, 28, 28), (64, 1, 4, 4), 2, 1, "lrelu"),  # from one channel: input grad by col2im
    ("D4-linear", False, (64, 256, 4, 4), (1, 256, 4, 4), 1, 0, "linear"),  # a matrix product
    ("G1-linear", True, (64, 100, 1, 1), (100, 256, 4, 4), 1, 0, "linear"),  # a matrix product
    ("G4-tanh", True, (64, 64, 14, 14), (64, 1, 4, 4), 2, 1, "tanh"),  # to one channel: matrix product + col2im
]
if not FULL:
    CONV_CASES = CONV_CASES[:1]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: c[0])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_conv_act(benchmark, provider, mode, case, layout):
    name, transposed, x_shape, w_shape, stride, padding, act = case
    gen = torch.Generator().manual_seed(0)
    x, w = _tensor(x_shape, torch.float32, layout, gen), torch.randn(w_shape, generator=gen) * 0.05
    alpha = 0.2 if act == "lrelu" else None
    if provider == "eager":
        conv = F.conv_transpose2d if transposed else F.conv2d
        post = {"lrelu": lambda y: F.leaky_relu(y, 0.2), "tanh": torch.tanh, "linear": lambda y: y}[act]
        fn = lambda x, w: post(conv(x, w, None, stride, padding))  # noqa: E731
    elif transposed:
        fn = lambda x, w: conv_transpose2d_act(x, w, None, stride, padding, 0, act, alpha, impl=provider)  # noqa: E731
    else:
        fn = lambda x, w: conv2d_act(x, w, None, stride, padding, act, alpha, impl=provider)  # noqa: E731
    _run(benchmark, f"cpu-conv-{name}-{mode}-{layout}", provider, mode, fn, [x, w], op=f"conv[{name}]",
         shape=shape_id(x_shape), dtype="torch.float32", layout=layout)


@pytest.mark.parametrize("shape", [(64,), (1, 1, 30, 30)], ids=shape_id)
@pytest.mark.parametrize("kind", ("nonsaturating", "hinge"))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_d_loss(benchmark, provider, kind, shape):
    gen = torch.Generator().manual_seed(0)
    real, fake = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    if provider == "eager":
        fn = lambda r, f: d_loss_ref(r, f, kind)  # noqa: E731
    else:
        fn = lambda r, f: d_loss(r, f, kind, impl=provider)  # noqa: E731
    _run(benchmark, f"cpu-d_loss-{kind}-fwd_bwd-{shape_id(shape)}", provider, "fwd_bwd", fn, [real, fake],
         op=f"d_loss[{kind}]", shape=shape_id(shape), dtype="torch.float32")


@pytest.mark.parametrize("shape", [(64, 1, 28, 28), (64, 3, 64, 64)], ids=shape_id)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_penalty_head(benchmark, provider, shape):
    """The WGAN-GP head on a critic's input gradient: 10 * (||grad||_2 per sample - 1)^2, mean; and its backward."""
    gen = torch.Generator().manual_seed(0)
    grad = torch.randn(shape, generator=gen)
    if provider == "eager":
        fn = lambda g: 10.0 * ((g.flatten(1).norm(2, dim=1) - 1) ** 2).mean()  # noqa: E731
    else:
        fn = lambda g: grad_norm_penalty(g, impl=provider)  # noqa: E731
    _run(benchmark, f"cpu-penalty_head-fwd_bwd-{shape_id(shape)}", provider, "fwd_bwd", fn, [grad],
         op="grad_norm_penalty", shape=shape_id(shape), dtype="torch.float32")


# Batch 4: layers small enough that impl="auto" runs most of them as their reference (CPU_REF_MAX_NUMEL). CI's smoke
# run: the same step on batch 8.
@pytest.mark.parametrize("batch", (64, 4) if FULL else (8,))
@pytest.mark.parametrize("provider", STEP_PROVIDERS)
def test_dcgan28_step(benchmark, provider, batch):
    """One training step of the canonical MNIST DCGAN (Adam): plain PyTorch vs ``fastgan.optimize``."""
    impl = None if provider.startswith("plain") else provider.split("-")[1]
    if impl is not None:
        require_provider(impl if impl != "auto" else "ref")
    benchmark.group = f"cpu-dcgan28-step-b{batch}-f32"
    cl = provider.endswith("-cl")
    step = make_step(impl, batch, channels_last=cl and impl is None, fused_channels_last=cl and impl is not None)
    measure(benchmark, step, op="dcgan28_step", provider=provider, mode="step", shape=f"b{batch}",
            dtype="torch.float32")
