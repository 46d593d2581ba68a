"""A seeded property-based fuzzer of every public op: each implementation against ``impl="ref"``.

A case is drawn from ``random.Random(f"{seed}:{op}:{index}")``: shapes with zero-size and size-1 dims, layouts
(contiguous, channels_last, strided, expanded, ``as_strided``, permuted), every kernel dtype and mixes of them,
NaN/inf/huge/tiny/signed-zero values, odd parameters (alpha, gain, clamp, eps, momentum, penalty weights), aliasing
inputs, meta tensors, ``no_grad``/``inference_mode`` and gradient orders 0-2. Each implementation's outcome must match
the reference's:

- both raise errors of one type, each naming the op (a meta tensor may also be refused by name where the reference
  runs), or
- both return: same shapes, dtypes and devices, PyTorch's memory format for 4-D outputs (what ``is_contiguous`` says
  for both formats), NaN, +inf and -inf exactly where the reference (or the float64 truth: the reference evaluated
  in float64 on the same inputs) has them, finite values within 4x the reference's own error plus 128 ulps (512 for
  the second order: precision is the parity matrix's job, this is about kinds of values, layouts and errors), and
  the same in-place updates of running statistics.

The only allowances are where PyTorch disagrees with itself or the README documents a difference: elu/selu
gradients may be NaN where a small reference tensor's scalar tail is not; NaN versus a number is not compared in
the convolutions' weight gradient and second order (PyTorch's backend decides where its convolution backward
multiplies an infinite gradient by padding), in the normalizations' second order (composed from elementary ops) and
in silu's second order times an infinite gain. Convolution weights stay finite (a Triton transposed convolution
multiplies padding by them, PyTorch's does not).

The cases run in a worker subprocess (``python -m tests.fuzz --worker``), so a crash or an abort in a native kernel is
caught and named: the worker announces each case before running it; if it dies or stalls, the parent records that
case as a crash (or hang) and starts a new worker after it.

Run from the repository root (``TRITON_INTERPRET=1`` lets the Triton kernels run on CPU)::

    TRITON_INTERPRET=1 python -m tests.fuzz                            # the CI case counts, every op
    TRITON_INTERPRET=1 FASTGAN_FUZZ_CASES=5000 python -m tests.fuzz    # 5000 cases per op
    FASTGAN_FUZZ_OPS=bias_act,d_loss FASTGAN_FUZZ_SEED=7 python -m tests.fuzz
    python -m tests.fuzz --case bias_act:123                           # one case, in this process, verbose
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import select
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
IMPLS = ("native", "triton")
NAN, INF = float("nan"), float("inf")

# Cases per op in a default (CI) run: a few hundred where a case is cheap, fewer for the convolutions, so that the
# whole run stays well under two minutes on the 2-core CI machine (about 60 s of CPU time). The Triton interpreter is
# the cost (about 10 ms a launch, and a convolution case launches dozens): in a default run the Triton convolutions
# are checked on one case in TRITON_EVERY; FASTGAN_FUZZ_CASES runs Triton on every case.
CI_CASES = {
    "bias_act": 200,
    "d_loss": 250,
    "g_loss": 200,
    "interpolate": 200,
    "grad_norm_penalty": 200,
    "gradient_penalty": 100,
    "r1_penalty": 100,
    "batch_norm_act": 120,
    "instance_norm_act": 80,
    "conv2d_act": 120,
    "conv_transpose2d_act": 120,
    "conv2d_batch_norm_act": 80,
    "conv_transpose2d_batch_norm_act": 80,
}
TRITON_EVERY = {"conv2d_act": 4, "conv_transpose2d_act": 4, "conv2d_batch_norm_act": 4,
                "conv_transpose2d_batch_norm_act": 4}
OPS = tuple(CI_CASES)
CRASH = "__crash__"  # a pseudo-op whose case aborts its worker


# --- building inputs -------------------------------------------------------------------------------------------------


class Inputs:
    """Builds a case's tensors the same way for every run: values drawn from one seeded generator in float64, rounded
    to each tensor's dtype; ``truth`` runs keep the rounded values in float64. Leaves that require grad are the
    tensors gradients are taken of (an input may be a view of its leaf: strided, expanded, permuted)."""

    def __init__(self, seed: int, device: str, truth: bool, grad: bool, huge: float = 1.0):
        self.gen = torch.Generator().manual_seed(seed)
        self.device, self.truth, self.grad = device, truth, grad
        self.huge = huge  # huge values are finfo.max ** huge (1: near the top of the range)
        self.leaves: list[torch.Tensor] = []

    def dtype(self, dtype: torch.dtype) -> torch.dtype:
        return torch.float64 if self.truth and dtype.is_floating_point else dtype

    def values(self, shape, dtype, scale=1.0, special=0.0, positive=False, shift=0.0) -> torch.Tensor:
        v = torch.randn(shape, generator=self.gen, dtype=torch.float64) * scale
        if positive:
            v = v.abs()
        v += shift
        n = v.numel()
        if n and special:
            picks = torch.rand(n, generator=self.gen, dtype=torch.float64) < special
            kinds = torch.randint(0, 9, (n,), generator=self.gen)
            info = torch.finfo(dtype)
            big = info.max / 3 if self.huge == 1.0 else info.max**self.huge
            table = torch.tensor([NAN, INF, -INF, big, -big, info.tiny / 8, 0.0, -0.0, 1e4], dtype=torch.float64)
            flat = v.reshape(-1)
            flat[picks] = table[kinds[picks]]
        return v.to(dtype).to(self.dtype(dtype))

    def tensor(self, shape, dtype, layout="contiguous", requires_grad=False, **kw) -> torch.Tensor:
        """A tensor of ``shape`` in ``layout``; with ``requires_grad`` (and gradients on) its leaf is recorded."""
        shape = tuple(shape)
        dt = self.dtype(dtype)
        if layout == "expanded" and any(s > 1 for s in shape):
            d = max(range(len(shape)), key=lambda i: shape[i])
            small = list(shape)
            small[d] = 1
            leaf = self.values(small, dtype, **kw)
            make = lambda t: t.expand(shape)  # noqa: E731
        elif layout == "strided" and shape:
            wide = list(shape)
            wide[-1] *= 2
            leaf = self.values(wide, dtype, **kw)
            make = lambda t: t[..., ::2]  # noqa: E731
        elif layout == "as_strided" and shape:
            # A gapped, offset view of a 1-D storage, innermost dim outermost in memory.
            strides, step = [0] * len(shape), 3
            for d in range(len(shape)):
                strides[d] = step
                step *= max(shape[d], 1) + 1
            leaf = self.values((step + 2,), dtype, **kw)
            make = lambda t: t.as_strided(shape, strides, 1)  # noqa: E731
        elif layout == "permuted" and len(shape) >= 2:
            # Dense, but in reversed dimension order (as after a transpose): neither contiguous nor channels_last.
            perm = tuple(range(len(shape) - 1, -1, -1))
            leaf = self.values(shape, dtype, **kw).permute(perm).contiguous()
            make = lambda t: t.permute(perm)  # noqa: E731
        elif layout == "channels_last" and len(shape) == 4:
            leaf = self.values(shape, dtype, **kw).contiguous(memory_format=torch.channels_last)
            make = lambda t: t  # noqa: E731
        else:
            leaf = self.values(shape, dtype, **kw)
            make = lambda t: t  # noqa: E731
        leaf = leaf.to(dt).to(self.device)
        if requires_grad and self.grad and dt.is_floating_point:
            leaf.requires_grad_(True)
            self.leaves.append(leaf)
        return make(leaf)


LAYOUTS = ("contiguous", "contiguous", "contiguous", "channels_last", "strided", "expanded", "as_strided", "permuted")


@dataclass
class Case:
    """One fuzz case: ``run(impl, inputs)`` calls the op and returns its output(s); ``state`` lists tensors the op
    updates in place (compared after the call)."""

    op: str
    index: int
    desc: str
    run: Callable[[str, Inputs, dict], Any]
    order: int = 1  # gradient order checked (0: forward only)
    mode: str = "grad"  # "grad", "no_grad" or "inference"
    device: str = "cpu"
    seed: int = 0
    max_order: int = 2
    extra: dict = field(default_factory=dict)


def _dtype(rng: random.Random) -> torch.dtype:
    return rng.choice(DTYPES)


def _dim(rng: random.Random, zero=0.08, one=0.2, choices=(2, 3, 5, 7)) -> int:
    u = rng.random()
    return 0 if u < zero else 1 if u < zero + one else rng.choice(choices)


def _odd(rng: random.Random, usual, odd, p=0.25):
    return rng.choice(odd) if rng.random() < p else usual


# --- op generators ---------------------------------------------------------------------------------------------------


def _gen_bias_act(rng: random.Random) -> tuple[str, Callable, dict]:
    from fastgan.ops import ACTIVATIONS

    ndim = rng.choice((1, 2, 3, 4, 4, 4))
    shape = [_dim(rng) for _ in range(ndim)]
    dim = rng.randrange(-ndim, ndim)
    dtype = _dtype(rng)
    b_dtype = dtype if rng.random() < 0.7 else _dtype(rng)
    has_b = rng.random() < 0.8
    acts = [*ACTIVATIONS, "swish"]
    act = rng.choice(acts)
    alpha = None
    if act in ("lrelu", "elu") and rng.random() < 0.6:
        alpha = rng.choice((0.2, 0.0, -0.5, 1.7, 1e-30, 1e30, INF, -INF, NAN, 0.1 + 1e-12))
    elif rng.random() < 0.03:
        alpha = 0.3  # refused: the activation takes no alpha
    gain = _odd(rng, rng.choice((None, 1.0, 2**0.5)), (0.0, -1.5, 1e-30, 1e30, INF, -INF, NAN, 3.0000001))
    clamp = _odd(rng, rng.choice((None, None, 256.0, 1.0)), (0.0, 1e-30, INF, NAN, -1.0, 0.5))
    defaults = rng.choice((None, None, None, "stylegan", "torch"))
    x_layout, b_layout = rng.choice(LAYOUTS), rng.choice(("contiguous", "strided", "expanded"))
    special = rng.choice((0.0, 0.0, 0.05, 0.3))
    scale = rng.choice((1.0, 1.0, 3.0, 30.0, 1e-3))
    alias = rng.random() < 0.08
    kw = {k: v for k, v in dict(alpha=alpha, gain=gain, clamp=clamp).items() if v is not None}
    if defaults:
        kw["defaults"] = defaults
    desc = (f"x{shape} {dtype} {x_layout} dim={dim} b={'none' if not has_b else f'{b_dtype} {b_layout}'}"
            f"{' aliasing x' if alias else ''} act={act} {kw} special={special} scale={scale}")

    def run(impl, inp, _):
        from fastgan.ops import bias_act

        x = inp.tensor(shape, dtype, x_layout, requires_grad=True, special=special, scale=scale)
        b = None
        if has_b:
            c = shape[dim] if shape else 1
            if alias and x.numel() >= c and b_dtype == dtype:
                b = x.reshape(-1)[:c]
            else:
                b = inp.tensor([c], b_dtype, b_layout, requires_grad=True, special=special / 2)
        return bias_act(x, b, dim=dim, act=act, impl=impl, **kw)

    # silu's second derivative times an infinite gain is NaN or inf depending on how its terms are grouped (README).
    loose = ("grad2[",) if act in ("silu", "swish") and gain is not None and not math.isfinite(gain) else ()
    return desc, run, {"act": act, "loose_nan": loose}


def _logit_shapes(rng):
    tail = rng.choice(((), (1,), (1, 3, 2), (2,), (1, 1, 1)))
    b_real, b_fake = rng.choice((1, 2, 5, 0)), rng.choice((1, 3, 4))
    if rng.random() < 0.05:
        tail = ()
        return (), (b_fake,)  # a scalar: refused
    return (b_real, *tail), (b_fake, *tail)


def _gen_d_loss(rng: random.Random, generator=False):
    from fastgan.losses import LOSS_KINDS

    kind = rng.choice(list(LOSS_KINDS))
    real_shape, fake_shape = _logit_shapes(rng)
    dtype = _dtype(rng)
    fake_dtype = dtype if rng.random() < 0.9 else _dtype(rng)
    layouts = (rng.choice(LAYOUTS), rng.choice(LAYOUTS))
    special = rng.choice((0.0, 0.0, 0.1, 0.4))
    scale = rng.choice((1.0, 3.0, 50.0, 1e4))
    alias = rng.random() < 0.1 and not generator
    if generator:
        desc = f"g_loss[{kind}] fake{list(fake_shape)} {dtype} {layouts[1]} special={special} scale={scale}"
    else:
        desc = (f"d_loss[{kind}] real{list(real_shape)} {dtype} {layouts[0]} fake{list(fake_shape)} {fake_dtype} "
                f"{layouts[1]}{' (real is fake)' if alias else ''} special={special} scale={scale}")

    def run(impl, inp, _):
        from fastgan.losses import d_loss, g_loss

        if generator:
            fake = inp.tensor(fake_shape, dtype, layouts[1], requires_grad=True, special=special, scale=scale)
            return g_loss(fake, kind, impl=impl)
        real = inp.tensor(real_shape, dtype, layouts[0], requires_grad=True, special=special, scale=scale)
        fake = real if alias else inp.tensor(fake_shape, fake_dtype, layouts[1], requires_grad=True,
                                             special=special, scale=scale)
        return d_loss(real, fake, kind, impl=impl)

    return desc, run, {}


def _gen_g_loss(rng):
    return _gen_d_loss(rng, generator=True)


def _sample_shape(rng):
    return [rng.choice((1, 2, 3, 4, 0) if rng.random() < 0.1 else (1, 2, 3, 4))] + [
        _dim(rng, zero=0.03) for _ in range(rng.choice((0, 1, 3)))]


def _gen_interpolate(rng):
    shape = _sample_shape(rng)
    dtype = _dtype(rng)
    fake_dtype = dtype if rng.random() < 0.85 else _dtype(rng)
    eps_dtype = rng.choice((torch.float32, dtype, torch.float64))
    layouts = (rng.choice(LAYOUTS), rng.choice(LAYOUTS))
    special = rng.choice((0.0, 0.0, 0.1))
    alias = rng.random() < 0.1
    bad_eps = rng.random() < 0.03
    desc = (f"real{shape} {dtype} {layouts[0]} fake {fake_dtype} {layouts[1]}{' (real is fake)' if alias else ''} "
            f"eps {eps_dtype}{' wrong shape' if bad_eps else ''} special={special}")

    def run(impl, inp, _):
        from fastgan.losses import interpolate

        real = inp.tensor(shape, dtype, layouts[0], requires_grad=True, special=special)
        fake = real if alias else inp.tensor(shape, fake_dtype, layouts[1], requires_grad=True, special=special)
        eps = inp.tensor([shape[0] + int(bad_eps)], eps_dtype, requires_grad=True, positive=True, special=special / 3)
        return interpolate(real, fake, eps, impl=impl)

    return desc, run, {}


def _gen_grad_norm_penalty(rng):
    shape = _sample_shape(rng)
    dtype = _dtype(rng)
    layout = rng.choice(LAYOUTS)
    weight = _odd(rng, rng.choice((10.0, 5.0, 0.1)), (0.0, -1.0, 1e-30, 1e30, INF, NAN))
    center = _odd(rng, rng.choice((1.0, 0.0)), (0.5, -1.0, 1e30, INF, NAN))
    scale = _odd(rng, rng.choice((1.0, 1.0, 2.0**-16, 1.0 / 3.0)), (0.0, 1e30, INF, NAN, -1.0))
    special = rng.choice((0.0, 0.0, 0.1, 0.3))
    # Up to 1e15: the sums of squares of larger float32 gradients overflow float32 accumulators (fastgan's Triton
    # kernel, PyTorch's CUDA kernels) but not PyTorch's CPU (double) ones.
    magnitude = rng.choice((1.0, 1e-3, 1e3, 1e15))
    desc = f"grad{shape} {dtype} {layout} weight={weight} center={center} scale={scale} special={special} x{magnitude}"

    def run(impl, inp, _):
        from fastgan.losses import grad_norm_penalty

        g = inp.tensor(shape, dtype, layout, requires_grad=True, special=special, scale=magnitude)
        return grad_norm_penalty(g, weight, center, scale, impl=impl)

    return desc, run, {}


def _critic(inp: Inputs, shape, dtype):
    """A small smooth critic: tanh(x * w).sum over a sample, w a parameter (so the penalty has gradients)."""
    w = inp.tensor(shape[1:], dtype, requires_grad=True, scale=0.5)

    def critic(x):
        y = torch.tanh(x * w.to(x.dtype))
        return y.sum(tuple(range(1, y.dim()))) if y.dim() > 1 else y

    return critic


def _gen_gradient_penalty(rng):
    shape = _sample_shape(rng)
    dtype = rng.choice((torch.float32, torch.float64, torch.float64, torch.bfloat16, torch.float16))
    layouts = (rng.choice(LAYOUTS), rng.choice(LAYOUTS))
    weight = _odd(rng, 10.0, (0.0, 1e30, INF, NAN))
    center = _odd(rng, rng.choice((1.0, 0.0)), (INF, NAN, 1e30))
    special = rng.choice((0.0, 0.0, 0.1))
    desc = f"real/fake{shape} {dtype} {layouts} weight={weight} center={center} special={special}"

    def run(impl, inp, _):
        from fastgan.losses import gradient_penalty

        real = inp.tensor(shape, dtype, layouts[0], special=special)
        fake = inp.tensor(shape, dtype, layouts[1], special=special)
        eps = inp.tensor([shape[0]], torch.float32, positive=True) if shape[0] else None
        if eps is not None:
            eps = torch.remainder(eps, 1.0)
        critic = _critic(inp, shape, dtype)
        return gradient_penalty(critic, real, fake, weight, center, eps=eps, impl=impl)

    return desc, run, {"max_order": 1, "grad_only": True}


def _gen_r1_penalty(rng):
    shape = _sample_shape(rng)
    dtype = rng.choice((torch.float32, torch.float64, torch.float64, torch.bfloat16, torch.float16))
    layout = rng.choice(LAYOUTS)
    gamma = _odd(rng, 10.0, (0.0, 1e30, INF, NAN, -1.0))
    special = rng.choice((0.0, 0.0, 0.1))
    desc = f"real{shape} {dtype} {layout} gamma={gamma} special={special}"

    def run(impl, inp, _):
        from fastgan.losses import r1_penalty

        real = inp.tensor(shape, dtype, layout, special=special)
        if real.is_leaf:
            real.requires_grad_(True)
        else:
            real = real.detach().requires_grad_(True)
        critic = _critic(inp, shape, dtype)
        return r1_penalty(critic(real), real, gamma, impl=impl)

    return desc, run, {"max_order": 1, "grad_only": True}


def _norm_params(rng, x_dtype, c):
    """(weight, bias, running stats) dtypes, per F.batch_norm's contract (one dtype: x's, or float32 for half x);
    now and then one that breaks it, which every implementation must refuse by name."""
    p = x_dtype if x_dtype not in (torch.float16, torch.bfloat16) or rng.random() < 0.5 else torch.float32
    dtypes = [p, p, p]
    if rng.random() < 0.08:
        dtypes[rng.randrange(3)] = _dtype(rng)
    return dtypes


def _gen_norm(rng, instance: bool):
    ndim = rng.choice((3, 4, 4) if instance else (2, 3, 4, 4))
    n = rng.choice((0, 1, 2, 3) if rng.random() < 0.15 else (2, 3))
    c = rng.choice((1, 2, 3, 0) if rng.random() < 0.1 else (1, 2, 3))
    shape = [n, c] + [_dim(rng, zero=0.03) for _ in range(ndim - 2)]
    dtype = _dtype(rng)
    w_dtype, b_dtype, r_dtype = _norm_params(rng, dtype, c)
    has_w, has_b, has_r = rng.random() < 0.7, rng.random() < 0.7, rng.random() < 0.6
    training = rng.random() < 0.7
    if not training and not has_r:
        has_r = rng.random() < 0.9
    momentum = _odd(rng, 0.1, (None, 0.0, 1.0, 0.5, NAN))
    nbt = has_r and rng.random() < 0.5
    eps = _odd(rng, 1e-5, (1e-3, 1.0, INF, 0.0, 1e-30, 1e30))
    from fastgan.ops import ACTIVATIONS

    act = rng.choice(list(ACTIVATIONS))
    alpha = rng.choice((None, 0.2, -0.3)) if act in ("lrelu", "elu") else None
    layout = rng.choice(LAYOUTS)
    special = rng.choice((0.0, 0.0, 0.02, 0.2))
    # Data far from zero (README: x = 1000 + randn), but not 1000 + 1e-3 * randn: float32 holds that to 6e-5, 6% of its
    # spread, where PyTorch's float32 batch norm (double accumulators on CPU) and fastgan's round differently.
    scale, shift = rng.choice(((1.0, 0.0), (1e-3, 0.0), (1e3, 0.0), (1.0, 1000.0), (1e3, 1000.0)))
    if instance and momentum is None:
        momentum = 0.1
    desc = (f"x{shape} {dtype} {layout} w={w_dtype if has_w else None} b={b_dtype if has_b else None} "
            f"running={r_dtype if has_r else None}{' +nbt' if nbt else ''} {'train' if training else 'eval'} "
            f"momentum={momentum} eps={eps} act={act} alpha={alpha} special={special} x*{scale}+{shift}")

    def run(impl, inp, state):
        from fastgan.ops import batch_norm_act, instance_norm_act

        x = inp.tensor(shape, dtype, layout, requires_grad=True, special=special, scale=scale, shift=shift)
        w = inp.tensor([c], w_dtype, requires_grad=True, scale=0.5, shift=1.0) if has_w else None
        b = inp.tensor([c], b_dtype, requires_grad=True) if has_b else None
        rm = rv = counter = None
        if has_r:
            rm = inp.tensor([c], r_dtype)
            rv = inp.tensor([c], r_dtype, positive=True, shift=0.5)
            state.update(running_mean=rm, running_var=rv)
        if nbt:
            counter = torch.tensor(3, device=inp.device)
            state["num_batches_tracked"] = counter
        if instance:
            return instance_norm_act(x, w, b, rm, rv, training, momentum, eps, act, alpha, impl=impl)
        return batch_norm_act(x, w, b, rm, rv, training, momentum, eps, act, alpha, impl=impl,
                              num_batches_tracked=counter)

    # Huge values well inside the range (max ** 0.75): a value next to the overflow threshold makes results depend on
    # whether an intermediate is kept in float32 or double, where PyTorch's CPU kernels (double) and CUDA kernels
    # (float) differ themselves.
    # Data at 1000 + randn: normalizing subtracts a mean known to ulp(1000), so errors scale with 1000 / spread. The
    # second order is composed from elementary ops (README), the same function as PyTorch's fused batch-norm double
    # backward but not the same intermediates: where one overflows (a variance beyond the float range), NaN versus a
    # number in the second order is not compared.
    return desc, run, {"act": act, "huge": 0.75, "condition": 1.0 + shift / scale, "loose_nan": ("grad2[",)}


def _gen_batch_norm_act(rng):
    return _gen_norm(rng, False)


def _gen_instance_norm_act(rng):
    return _gen_norm(rng, True)


def _conv_geometry(rng, transposed):
    n = rng.choice((0, 1, 2) if rng.random() < 0.15 else (1, 2))
    c_in, c_out = rng.choice((1, 2, 3)), rng.choice((1, 2, 3))
    k = rng.choice((1, 2, 3))
    stride, padding = rng.choice((1, 2)), rng.choice((0, 1))
    out_pad = rng.randrange(stride) if transposed else None
    hw = [rng.choice((1, 2, 3, 4, 5)) for _ in range(2)]
    return n, c_in, c_out, k, stride, padding, out_pad, hw


def _gen_conv(rng, transposed: bool, norm: bool):
    from fastgan.ops import ACTIVATIONS

    n, c_in, c_out, k, stride, padding, out_pad, hw = _conv_geometry(rng, transposed)
    dtype = _dtype(rng)
    w_dtype = dtype if rng.random() < 0.95 else _dtype(rng)
    bias_dtype = dtype if rng.random() < 0.8 else _dtype(rng)
    has_bias = rng.random() < 0.7
    act = rng.choice(list(ACTIVATIONS))
    alpha = rng.choice((None, 0.2, -0.5)) if act in ("lrelu", "elu") else None
    x_layout = rng.choice(LAYOUTS)
    w_layout = rng.choice(("contiguous", "contiguous", "channels_last", "strided", "permuted"))
    special = rng.choice((0.0, 0.0, 0.02, 0.1))
    training = rng.random() < 0.7
    eps = _odd(rng, 1e-5, (INF, 1.0))
    rng_bits = rng.randrange(8)  # norm weight, norm bias, running statistics in training
    x_shape = [n, c_in, *hw]
    w_shape = [c_in, c_out, k, k] if transposed else [c_out, c_in, k, k]
    desc = (f"x{x_shape} {dtype} {x_layout} w{w_shape} {w_dtype} {w_layout} bias={bias_dtype if has_bias else None} "
            f"stride={stride} padding={padding}{f' output_padding={out_pad}' if transposed else ''} act={act} "
            f"alpha={alpha}{f' {training=} {eps=}' if norm else ''} special={special}")

    def run(impl, inp, state):
        from fastgan.ops import conv2d_act, conv2d_batch_norm_act, conv_transpose2d_act, conv_transpose2d_batch_norm_act

        x = inp.tensor(x_shape, dtype, x_layout, requires_grad=True, special=special)
        # Finite weights: an implicit GEMM multiplies the zero padding by every weight, so an infinite or NaN weight
        # makes border pixels NaN, as PyTorch's conv2d but not its transposed convolution, which skips the padded
        # taps (documented, pinned in tests/test_conv_act.py).
        w = inp.tensor(w_shape, w_dtype, w_layout, requires_grad=True, scale=0.5)
        # In training the batch norm subtracts the conv bias again: its gradient is zero in exact arithmetic and any
        # float result is summation noise (as in the parity matrix), so it is differentiated in evaluation only.
        b_grad = not (norm and training)
        b = inp.tensor([c_out], bias_dtype, requires_grad=b_grad, special=special / 2) if has_bias else None
        geometry = (stride, padding, out_pad) if transposed else (stride, padding)
        if not norm:
            conv = conv_transpose2d_act if transposed else conv2d_act
            return conv(x, w, b, *geometry, act=act, alpha=alpha, impl=impl)
        nw = inp.tensor([c_out], dtype, requires_grad=True) if rng_bits & 1 else None
        nb = inp.tensor([c_out], dtype, requires_grad=True) if rng_bits & 2 else None
        rm = rv = None
        if not training or rng_bits & 4:
            rm = inp.tensor([c_out], dtype)
            rv = inp.tensor([c_out], dtype, positive=True, shift=0.5)
            state.update(running_mean=rm, running_var=rv)
        conv = conv_transpose2d_batch_norm_act if transposed else conv2d_batch_norm_act
        return conv(x, w, b, *geometry, norm_weight=nw, norm_bias=nb, running_mean=rm, running_var=rv,
                    training=training, eps=eps, act=act, alpha=alpha, impl=impl)

    # Where PyTorch's own convolution backward puts NaN depends on its backend (im2col multiplies the padding's zeros
    # by an infinite gradient, oneDNN skips them), and fastgan's second order skips the all-zero term of
    # piecewise-linear activations that PyTorch multiplies by inf: NaN-versus-number in the weight gradient and the
    # second order is not compared (the forward, the input gradient and every finite value are).
    return desc, run, {"act": act, "loose_nan": ("grad[1]", "grad2["), "huge": 0.75}


def _gen_conv2d_act(rng):
    return _gen_conv(rng, False, False)


def _gen_conv_transpose2d_act(rng):
    return _gen_conv(rng, True, False)


def _gen_conv2d_batch_norm_act(rng):
    return _gen_conv(rng, False, True)


def _gen_conv_transpose2d_batch_norm_act(rng):
    return _gen_conv(rng, True, True)


GENERATORS = {op: globals()[f"_gen_{op}"] for op in OPS}


def make_case(op: str, index: int, seed: int) -> Case:
    rng = random.Random(f"{seed}:{op}:{index}")
    desc, run, extra = GENERATORS[op](rng)
    max_order = extra.get("max_order", 2)
    u = rng.random()
    mode = "no_grad" if u < 0.06 else "inference" if u < 0.1 else "grad"
    if extra.get("grad_only"):  # a penalty differentiates the critic inside: it needs autograd on
        mode = "grad"
    device = "meta" if rng.random() < 0.04 else "cpu"
    order = 0 if mode != "grad" or device == "meta" else rng.choice((0, 1, 1, 2, 2))
    order = min(order, max_order)
    return Case(op, index, desc, run, order, mode, device, rng.getrandbits(48), max_order, extra)


# --- running and comparing -------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    error: BaseException | None = None
    results: dict[str, Any] = field(default_factory=dict)


def _grads(outputs, inputs, grad_outputs, create_graph=False):
    return torch.autograd.grad(outputs, inputs, grad_outputs, create_graph=create_graph, allow_unused=True,
                               materialize_grads=True)


def evaluate(case: Case, impl: str, truth: bool = False) -> Outcome:
    """Run the case on ``impl``: forward, in-place updates, and gradients up to ``case.order``."""
    inp = Inputs(case.seed, case.device, truth, grad=case.mode == "grad", huge=case.extra.get("huge", 1.0))
    state: dict[str, torch.Tensor] = {}
    mode = {"no_grad": torch.no_grad, "inference": torch.inference_mode}.get(case.mode, contextlib.nullcontext)
    torch.manual_seed(case.seed)
    try:
        with mode():
            out = case.run(impl, inp, state)
        results: dict[str, Any] = {"forward": out}
        results.update({f"state.{k}": v.detach().clone() for k, v in state.items()})
        leaves = inp.leaves
        if case.order >= 1 and leaves and out.requires_grad and out.numel():
            gen = torch.Generator().manual_seed(case.seed + 1)
            go = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)
            first = _grads(out, leaves, go, create_graph=case.order >= 2)
            results.update({f"grad[{i}]": g for i, g in enumerate(first)})
            if case.order >= 2:
                weights = [torch.randn(g.shape, generator=gen, dtype=torch.float64).to(g.dtype) for g in first]
                penalty = sum((g * w).sum() for g, w in zip(first, weights) if g.requires_grad)
                if isinstance(penalty, torch.Tensor) and penalty.requires_grad:
                    second = _grads(penalty, leaves, None)
                else:  # first-order gradients that do not depend on the inputs (a linear op): zero second order
                    second = [torch.zeros_like(leaf) for leaf in leaves]
                results.update({f"grad2[{i}]": g for i, g in enumerate(second)})
        return Outcome(None, {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in results.items()})
    except Exception as error:  # the outcome under test: compared with the reference's
        return Outcome(error)


def _memory_format(t: torch.Tensor) -> str:
    """What ``is_contiguous`` says for both formats (a 1x1 map is both: its strides do not matter)."""
    if t.dim() != 4:
        return "-"
    both = (t.is_contiguous(), t.is_contiguous(memory_format=torch.channels_last))
    return {(True, True): "both", (True, False): "contiguous", (False, True): "channels_last"}.get(both, "other")


def _classes(t: torch.Tensor) -> torch.Tensor:
    """0 finite, 1 NaN, 2 +inf, 3 -inf."""
    t = t.double()
    return torch.where(t.isnan(), 1, torch.where(t == INF, 2, torch.where(t == -INF, 3, 0)))


def _close_to_reference(ours: torch.Tensor, ref: torch.Tensor) -> bool:
    """The quick test that settles most comparisons without the float64 truth: the same kinds of value and finite
    values within a few ulps of the reference's."""
    if not ours.numel() or ours.device.type == "meta" or not ref.dtype.is_floating_point:
        return False
    if not torch.equal(_classes(ours), _classes(ref)):
        return False
    o, r = ours.double(), ref.double()
    finite = r.isfinite()
    eps = torch.finfo(ref.dtype).eps
    return bool(((o - r).abs()[finite] <= 4 * eps * (r.abs()[finite] + 1)).all())


def compare(name: str, ours: torch.Tensor, ref: torch.Tensor, truth: Callable[[], torch.Tensor | None],
            work_eps: float = 0.0, nan_ok: bool = False, loose_nan: tuple[str, ...] = (),
            condition: float = 1.0) -> str | None:
    """'' if ``ours`` agrees with the reference (see the module docstring), else what differs; ``truth()`` gives the
    float64 truth (computed only when needed) or None; ``work_eps``: the machine epsilon of the lowest precision the
    case computes in (a float64 gradient of float32 data carries float32 errors)."""
    if ours.shape != ref.shape:
        return f"{name}: shape {tuple(ours.shape)} != reference {tuple(ref.shape)}"
    if ours.dtype != ref.dtype:
        return f"{name}: dtype {ours.dtype} != reference {ref.dtype}"
    if ours.device != ref.device:
        return f"{name}: device {ours.device} != reference {ref.device}"
    if name == "forward" and ref.numel() and _memory_format(ours) != _memory_format(ref):
        return (f"{name}: memory format {_memory_format(ours)} (strides {ours.stride()}) != reference "
                f"{_memory_format(ref)} (strides {ref.stride()})")
    if ours.device.type == "meta" or not ours.numel():
        return None
    if not ref.dtype.is_floating_point:
        return None if torch.equal(ours, ref) else f"{name}: {ours.tolist()} != reference {ref.tolist()}"
    if _close_to_reference(ours, ref):
        return None
    ours_c, ref_c = _classes(ours), _classes(ref)
    truth = truth()
    truth64 = truth.double().cpu() if truth is not None else ref.double()
    truth_c = _classes(truth64.to(ref.dtype))
    bad = (ours_c != ref_c) & (ours_c != truth_c)
    if nan_ok and name.startswith("grad"):
        bad &= ours_c != 1
    if loose_nan and name.startswith(loose_nan):
        bad &= ~((ours_c == 1) | (ref_c == 1))
    if bad.any():
        i = int(bad.reshape(-1).nonzero()[0])
        labels = ("finite", "NaN", "+inf", "-inf")
        return (f"{name}: {int(bad.sum())} of {ours.numel()} elements differ in kind, e.g. flat index {i}: "
                f"{ours.reshape(-1)[i].item()!r} ({labels[ours_c.reshape(-1)[i]]}) where the reference has "
                f"{ref.reshape(-1)[i].item()!r} and float64 {truth64.reshape(-1)[i].item()!r}")
    o, r, t = ours.double().reshape(-1), ref.double().reshape(-1), truth64.reshape(-1)
    finite = (ours_c.reshape(-1) == 0) & t.isfinite()
    if not finite.any():
        return None
    o, r, t = o[finite], r[finite], t[finite]
    ref_err = torch.where(r.isfinite(), (r - t).abs(), torch.zeros_like(t))
    # Loose on purpose: precision is the parity matrix's job, the fuzzer's is kinds of values, layouts and errors. The
    # second order composes more reductions (and formulas differing from PyTorch's), hence its wider margin.
    eps = max(torch.finfo(ref.dtype).eps, work_eps) * condition * (512 if name.startswith("grad2") else 128)
    tol = 4 * ref_err + eps * (t.abs() + max(1.0, float(t.abs().max())))
    err = (o - t).abs()
    if (err > tol).any():
        i = int((err - tol).argmax())
        return (f"{name}: value {o[i].item()!r} vs float64 {t[i].item()!r} (reference {r[i].item()!r}), "
                f"error {err[i].item():.3g} > tolerance {tol[i].item():.3g}")
    return None


def _names_op(error: BaseException, op: str) -> bool:
    text = str(error)
    words = {"conv2d_batch_norm_act": ("conv2d_batch_norm_act",),
             "conv_transpose2d_batch_norm_act": ("conv_transpose2d_batch_norm_act",)}.get(op, (op,))
    return any(w in text for w in words)


def check_case(case: Case, impls=IMPLS) -> list[str]:
    """Every implementation's outcome against the reference's; a list of what differs (empty: the case passes)."""
    from fastgan import available_impls
    from fastgan.ops.bias_act import ACTIVATION_ALIASES

    failures = []
    ref = evaluate(case, "ref")
    cache: list[Outcome] = []

    def truth(key: str) -> torch.Tensor | None:
        if case.device == "meta":
            return None
        if not cache:
            cache.append(evaluate(case, "ref", truth=True))
        return cache[0].results.get(key) if cache[0].error is None else None
    if ref.error is not None and not _names_op(ref.error, case.op):
        failures.append(f"ref raised an error that does not name {case.op}: {type(ref.error).__name__}: "
                        f"{str(ref.error)[:300]}")
    usable = available_impls()
    # PyTorch's CPU elu_backward gives NaN at a NaN input in its vectorized body and the gradient in its scalar tail
    # (and on CUDA); fastgan gives NaN everywhere, so a small reference tensor may show a number where ours is NaN.
    nan_ok = ACTIVATION_ALIASES.get(case.extra.get("act"), case.extra.get("act")) in ("elu", "selu")
    for impl in impls:
        if not usable[impl]["cpu"][0]:
            continue
        ours = evaluate(case, impl)
        where = f"impl={impl}"
        if ours.error is not None:
            if not _names_op(ours.error, case.op):
                failures.append(f"{where} raised an error that does not name {case.op}: "
                                f"{type(ours.error).__name__}: {str(ours.error)[:300]}")
            elif ref.error is None and case.device != "meta":
                failures.append(f"{where} raised where the reference returns: {type(ours.error).__name__}: "
                                f"{str(ours.error)[:300]}")
            elif ref.error is not None and type(ours.error) is not type(ref.error):
                failures.append(f"{where} raised {type(ours.error).__name__} where the reference raises "
                                f"{type(ref.error).__name__}: {str(ours.error)[:200]} / {str(ref.error)[:200]}")
            continue
        if ref.error is not None:
            failures.append(f"{where} returned where the reference raises {type(ref.error).__name__}: "
                            f"{str(ref.error)[:200]}")
            continue
        work_eps = max(torch.finfo(v.dtype).eps for v in ref.results.values() if v.dtype.is_floating_point)
        if ours.results.keys() != ref.results.keys():
            failures.append(f"{where}: results {sorted(ours.results)} != reference {sorted(ref.results)}")
            continue
        for key, value in ref.results.items():
            problem = compare(key, ours.results[key], value, lambda key=key: truth(key), work_eps, nan_ok,
                              case.extra.get("loose_nan", ()), case.extra.get("condition", 1.0))
            if problem:
                failures.append(f"{where} {problem}")
    return failures


def case_line(case: Case) -> str:
    return (f"{case.op}:{case.index} [{case.device}, {case.mode}, order {case.order}] {case.desc}")


# --- worker and driver -----------------------------------------------------------------------------------------------


def _setup_process() -> None:
    """One thread (the parent idles meanwhile), no warnings, and PyTorch's own CPU convolution: PyTorch 2.13's oneDNN
    convolution can return uninitialised memory for a bfloat16 weight gradient after calls with other strides (found
    by this fuzzer: the reference itself differed from run to run), which the reference and the native path share."""
    import warnings

    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = False
    warnings.filterwarnings("ignore")


def worker(ids: list[tuple[str, int]], seed: int) -> None:
    """Run cases in order, announcing each before it runs (so a crash can be pinned on it), one JSON line each."""
    _setup_process()
    for op, index in ids:
        print(f"START {op} {index}", flush=True)
        if op == CRASH:  # the self-test of crash handling (tests/test_fuzz.py)
            os.abort()
        start = time.perf_counter()
        try:
            case = make_case(op, index, seed)
            every = 1 if os.environ.get("FASTGAN_FUZZ_CASES") else TRITON_EVERY.get(op, 1)
            failures = check_case(case, IMPLS if index % every == 0 else ("native",))
            line = case_line(case)
        except Exception:  # a bug in the fuzzer itself: report it as a failure of the case
            failures, line = [f"fuzzer error: {traceback.format_exc()[-1500:]}"], f"{op}:{index}"
        print("RESULT " + json.dumps({"op": op, "index": index, "case": line, "failures": failures,
                                      "seconds": time.perf_counter() - start}), flush=True)


def run_cases(ids: list[tuple[str, int]], seed: int, stall_s: float = 120.0) -> list[dict]:
    """Run ``ids`` in worker subprocesses: a case that kills its worker (crash, abort) or stalls is recorded as such
    and a new worker resumes after it."""
    results: list[dict] = []
    pending = list(ids)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    while pending:
        cmd = [sys.executable, "-m", "tests.fuzz", "--worker", "--seed", str(seed), "--ids",
               ",".join(f"{op}:{i}" for op, i in pending)]
        proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        current, done = None, 0
        last = time.monotonic()
        stalled = False
        assert proc.stdout is not None
        while True:
            ready, _, _ = select.select([proc.stdout], [], [], 5.0)
            if not ready:
                if time.monotonic() - last > stall_s:
                    stalled = True
                    proc.kill()
                    break
                continue
            line = proc.stdout.readline()
            if not line:
                break
            last = time.monotonic()
            if line.startswith("START "):
                _, op, index = line.split()
                current = (op, int(index))
            elif line.startswith("RESULT "):
                results.append(json.loads(line[7:]))
                current, done = None, done + 1
        proc.wait()
        stderr = proc.stderr.read() if proc.stderr else ""
        pending = pending[done:]
        if current is None:
            if pending:  # died between cases: a fuzzer problem, not a case's
                results.append({"op": pending[0][0], "index": pending[0][1], "case": "worker",
                                "failures": [f"worker exited with {proc.returncode}: {stderr[-1500:]}"],
                                "seconds": 0.0})
                pending = pending[1:]
            continue
        what = f"hung (no progress for {stall_s:.0f} s)" if stalled else f"crashed (exit status {proc.returncode})"
        line = f"{current[0]}:{current[1]}" if current[0] == CRASH else case_line(make_case(*current, seed))
        results.append({"op": current[0], "index": current[1], "case": line,
                        "failures": [f"the worker {what}: {stderr[-1500:]}"], "seconds": 0.0})
        pending = pending[1:]
    return results


def settings() -> tuple[int, dict[str, int]]:
    """(seed, cases per op) from FASTGAN_FUZZ_SEED, FASTGAN_FUZZ_CASES and FASTGAN_FUZZ_OPS."""
    seed = int(os.environ.get("FASTGAN_FUZZ_SEED", "0"))
    count = os.environ.get("FASTGAN_FUZZ_CASES")
    ops = [op for op in os.environ.get("FASTGAN_FUZZ_OPS", ",".join(OPS)).split(",") if op]
    unknown = set(ops) - set(OPS)
    if unknown:
        raise ValueError(f"FASTGAN_FUZZ_OPS: unknown ops {sorted(unknown)}; expected some of {', '.join(OPS)}")
    return seed, {op: int(count) if count else CI_CASES[op] for op in ops}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ids", default="", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--case", help="run one case OP:INDEX here and print its outcome")
    args = parser.parse_args(argv)
    seed, counts = settings()
    seed = args.seed if args.seed is not None else seed
    if args.worker:
        worker([(op, int(i)) for op, i in (item.split(":") for item in args.ids.split(",") if item)], seed)
        return 0
    if args.case:
        _setup_process()
        op, index = args.case.split(":")
        case = make_case(op, int(index), seed)
        print(case_line(case))
        failures = check_case(case)
        print("\n".join(failures) or "pass")
        return 1 if failures else 0
    start = time.perf_counter()
    results = run_cases([(op, i) for op, n in counts.items() for i in range(n)], seed)
    failed = [r for r in results if r["failures"]]
    for r in failed:
        print(f"FAIL {r['case']}")
        for f in r["failures"]:
            print(f"    {f}")
    per_op: dict[str, float] = {}
    for r in results:
        per_op[r["op"]] = per_op.get(r["op"], 0.0) + r["seconds"]
    print(" ".join(f"{op}={s:.1f}s" for op, s in per_op.items()))
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed in {time.perf_counter() - start:.1f} s "
          f"(seed {seed})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
