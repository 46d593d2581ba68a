"""Shared pytest-benchmark harness: providers, modes, device-aware shapes and effective-bandwidth bookkeeping.

A benchmark file parametrizes over ``PROVIDERS`` x ``MODES`` x shapes and calls :func:`measure`. Providers:

- ``eager``: the same computation written in plain PyTorch (what a user has today);
- ``compile``: that PyTorch code under ``torch.compile``, compiled afresh for each shape (``compiled``), its compile
  time recorded apart (``compile_s``), timed where a recompile raises rather than silently running eager;
- ``triton`` / ``native``: fastgan with ``impl=`` set.

Modes follow a GAN step: ``fwd``; ``fwd_bwd`` (loss.backward()); ``double_bwd`` (a gradient penalty: the input
gradient with ``create_graph=True``, then the backward of a function of it).

On CPU everything runs with small shapes so the harness is exercised in CI; the real shapes (DCGAN-64 layers at
batch 64 and 128, a 64M-element tensor) run on a GPU (``benchmarks/gpu_suite.py``). Timings are medians recorded by
pytest-benchmark; each call synchronises the device so asynchronous kernels are timed whole.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence

import pytest
import torch

import fastgan

PROVIDERS = ("eager", "compile", "triton", "native")
MODES = ("fwd", "fwd_bwd", "double_bwd")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda"
# Timed rounds per benchmark; a noisy shared CPU needs more than the default (FASTGAN_BENCH_ROUNDS=25).
ROUNDS = int(os.environ.get("FASTGAN_BENCH_ROUNDS", 20 if ON_GPU else 5))
DTYPES = (torch.bfloat16, torch.float32) if ON_GPU else (torch.float32,)

# DCGAN-64 activations (generator then discriminator), per batch size.
DCGAN64_G = [(512, 4, 4), (256, 8, 8), (128, 16, 16), (64, 32, 32)]
DCGAN64_D = [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]


class SyntheticImages(torch.utils.data.Dataset):
    """``count`` random images in [-1, 1] (pairs of them for cyclegan, labels 0 otherwise), fixed: training steps
    timed or counted without reading data from disk."""

    def __init__(self, count: int, channels: int, size: int, paired: bool) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(count, channels, size, size, generator=g) * 2 - 1
        self.paired = paired

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int):
        if self.paired:
            return self.images[i], self.images[(i + 1) % len(self)]
        return self.images[i], 0


def activation_shapes() -> list[tuple[int, ...]]:
    """Real layer shapes on a GPU; a representative handful, shrunk, on CPU."""
    if ON_GPU:
        shapes = [(batch, *chw) for batch in (64, 128) for chw in DCGAN64_G + DCGAN64_D]
        return list(dict.fromkeys(shapes)) + [(64, 256, 64, 64)]  # the last: 64M elements
    return [(2, 64, 32, 32), (2, 512, 4, 4), (4, 64, 64, 64)]


def shape_id(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


def require_provider(provider: str) -> None:
    """Skip (with the reason) providers that cannot run on this device."""
    if provider in fastgan.IMPLS:
        usable, reason = fastgan.available_impls()[provider][DEVICE]
        if not usable:
            pytest.skip(f"{provider} unavailable on {DEVICE}: {reason}")
        if provider == "triton" and not ON_GPU:
            pytest.skip("the Triton interpreter is a correctness tool; timing it means nothing")


class CompileFellBack(RuntimeError):
    """torch.compile produced no graph for a call (Dynamo fell back to eager): its timing would not be compile's."""


def compiled(fn: Callable, mode: str | None = None, backend: str = "inductor") -> Callable:
    """A fresh ``torch.compile(fn)`` for one shape: Dynamo's caches are reset first, so no other shape's graph is
    reused and its recompile limit is never reached (past it, Dynamo silently runs eager: every "vs compile" ratio
    would then be eager's). Hitting the limit anyway raises instead of falling back."""
    torch._dynamo.reset()
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    return torch.compile(fn, dynamic=False, mode=mode, backend=backend)


def compile_first_call(run: Callable[[], None], sync: Callable[[], None] = lambda: None) -> float:
    """Run a compiled ``run`` once (Dynamo traces, Inductor compiles) and return the seconds it took; raise
    ``CompileFellBack`` when Dynamo compiled no graph."""
    from torch._dynamo.utils import counters

    before = counters["stats"]["unique_graphs"]
    start = time.perf_counter()
    run()
    sync()
    seconds = time.perf_counter() - start
    if counters["stats"]["unique_graphs"] == before:
        raise CompileFellBack("torch.compile compiled no graph for this call (Dynamo ran it eagerly)")
    return seconds


def no_recompile():
    """Within the block a compiled function that would recompile raises (the timed calls must run the graph
    compiled for this shape)."""
    return torch.compiler.set_stance("fail_on_recompile")


def step(mode: str, fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor]) -> Callable[[], None]:
    """A closure running one ``mode`` step of ``fn`` on ``inputs`` (float tensors; all get gradients). The output
    gradient is drawn on the first run, so a compiled ``fn`` compiles in that first run, not here."""
    leaves = [t.detach().requires_grad_(mode != "fwd") for t in inputs]
    grad_out: list[torch.Tensor] = []

    def seed(out: torch.Tensor) -> torch.Tensor:
        if not grad_out:
            grad_out.append(torch.randn_like(out))
        return grad_out[0]

    def fwd():
        with torch.no_grad():
            fn(*leaves)

    def fwd_bwd():
        out = fn(*leaves)
        out.backward(seed(out))

    def double_bwd():
        out = fn(*leaves)
        (grad,) = torch.autograd.grad(out, leaves[0], seed(out), create_graph=True)
        grad.square().sum().backward()

    return {"fwd": fwd, "fwd_bwd": fwd_bwd, "double_bwd": double_bwd}[mode]


def measure(benchmark, run: Callable[[], None], *, bytes_moved: int = 0, flops: int = 0, **info) -> None:
    """Time ``run`` with pytest-benchmark (synchronising the device) and record metadata and GB/s / TFLOP/s."""
    sync = torch.cuda.synchronize if ON_GPU else (lambda: None)

    def timed():
        run()
        sync()

    is_compiled = str(info.get("provider", "")).startswith("compile")
    try:
        # The first call compiles (reported apart as compile_s for torch.compile), autotunes, fills the allocator.
        first = compile_first_call(timed) if is_compiled else None
        if not is_compiled:
            timed()
    except RuntimeError as error:
        if "create_graph" not in str(error):
            raise
        # torch.compile's AOT autograd refuses double backward: recorded as a skip, not a failure.
        pytest.skip(f"unsupported: {str(error).splitlines()[0][:200]}")
    benchmark.extra_info.update(device=DEVICE, bytes=bytes_moved, flops=flops, **info)
    if first is not None:
        benchmark.extra_info["compile_s"] = round(first, 3)
    if ON_GPU:
        benchmark.extra_info["gpu"] = torch.cuda.get_device_name()
    with no_recompile() if is_compiled else contextlib.nullcontext():
        for _ in range(2):
            timed()
        benchmark.pedantic(timed, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    if benchmark.stats is None:  # --benchmark-disable: ran once as a smoke test, nothing timed
        return
    median = benchmark.stats.stats.median
    if bytes_moved:
        benchmark.extra_info["GB/s"] = round(bytes_moved / median / 1e9, 2)
    if flops:
        benchmark.extra_info["TFLOP/s"] = round(flops / median / 1e12, 3)
