"""The goals as benchmarks: eager PyTorch, torch.compile and fastgan side by side in one process.

    python benchmarks/goals.py --out results.jsonl [--deadline EPOCH_SECONDS] [--quick] [--only G1,G7] [--list]

Each workload runs every provider in turn on the same inputs:

- ``eager``: the computation in plain PyTorch (what a user writes today);
- ``compile`` / ``compile-max-autotune``: that code under ``torch.compile``, compiled afresh for this shape
  (``harness.compiled``); the first call's time (compilation) is reported apart as ``first_call_s``, and the timed
  calls run where a recompile raises instead of silently running eager;
- ``triton`` / ``native``: fastgan with that implementation; ``auto``: fastgan as shipped (``impl="auto"``, which
  measures on its first call, counted in ``first_call_s``): the goals are judged on it;
- ``copy`` (a device copy of the same tensor: the bandwidth yardstick), ``cudnn`` (the raw vendor convolution).

Timing on a GPU: after the first call and 3 warm-up calls, each timed call is preceded by an L2 flush (a 256 MiB
memset) and bracketed by CUDA events; the median (and 10th/90th percentiles) of enough calls to fill ~0.25 s (at
least 10). Each provider's forward output is compared with eager's first (``max_rel_err``). G7 counts the CUDA
kernels one forward+backward launches (torch.profiler). Every result is one JSON line, appended as it is measured;
each workload ends with a ``goal`` line judging its targets, so a run stopped at any point keeps what it measured.
Workloads run in the order listed (the goals' main shapes first); once the deadline is near the rest are recorded as
skipped. ``--tiny`` shrinks every shape (CPU tests of this runner).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

LOSS_KINDS = ("nonsaturating", "minimax", "hinge", "wasserstein", "least_squares")
# DCGAN-64 layers (C_in, H, C_out), 4x4 kernels, stride 2, padding 1.
D_LAYERS = ((3, 64, 64), (64, 32, 128), (128, 16, 256), (256, 8, 512))
G_LAYERS = ((512, 4, 256), (256, 8, 128), (128, 16, 64))
FLUSH_BYTES = 256 * 2**20  # > 4x the largest L2 fastgan targets (H100 50 MB, H200 60 MB)


@dataclass(frozen=True)
class Check:
    """One target: ``ratio`` (time of ``b`` / time of ``a`` >= target: a is that much faster), ``bandwidth`` (a's
    GB/s / copy's GB/s >= target) or ``kernels`` (a launches <= target kernels)."""

    label: str
    kind: str
    a: str
    b: str = ""
    target: float = 1.0


@dataclass
class Workload:
    goal: str
    name: str
    mode: str  # "fwd" or "fwd_bwd"
    providers: tuple[str, ...]
    build: Callable[[Any], tuple[list, dict[str, Callable]]]  # device -> (inputs, fns: eager, fastgan(impl), extras)
    grad_inputs: tuple[int, ...] = (0,)
    bytes_moved: int = 0
    flops: int = 0
    checks: tuple[Check, ...] = ()
    count_kernels: bool = False
    tier: int = 1  # 1: each goal's main shape (--quick runs these); 2: G3's max-autotune baseline; 3: more shapes
    est_s: float = 10.0  # on an H100/H200, compile included
    info: dict = field(default_factory=dict)

    @property
    def essential(self) -> bool:
        return self.tier == 1


# --- the workloads ----------------------------------------------------------------------------------------------------


def workloads(tiny: bool = False) -> list[Workload]:
    """Every workload, in the order they run: one main shape of every goal first (tier 1), then G3's max-autotune
    baseline (tier 2), then the other shapes (tier 3), so a short window still measures every goal."""
    dtype = "float32" if tiny else "bfloat16"
    elt = 4 if tiny else 2
    fast = ("triton", "native", "auto")
    batch = 2 if tiny else 128
    out: list[Workload] = []

    # G1: bias + leaky ReLU forward+backward on 64M elements.
    shape = (2, 8, 8, 8) if tiny else (64, 256, 64, 64)
    numel = math.prod(shape)
    out.append(Workload(
        "G1", f"bias_lrelu fwd_bwd {_sid(shape)} {dtype}", "fwd_bwd", ("copy", "eager", "compile", *fast),
        lambda dev, s=shape: _bias_act(dev, s, dtype), grad_inputs=(0, 1),
        # Fewest bytes: forward reads x and writes y; backward reads dy and x and writes dx (db is reduced from dx
        # in the same kernel): 5 tensor passes.
        bytes_moved=5 * numel * elt,
        checks=(Check(">= 85% of copy bandwidth", "bandwidth", "auto", target=0.85),
                Check(">= 1.5x eager", "ratio", "auto", "eager", 1.5),
                Check(">= 1.0x compile", "ratio", "auto", "compile", 1.0)),
        est_s=15))

    # G7: each adversarial loss, forward+backward, on a DCGAN discriminator's [B] logits (launch-bound: the kernel
    # count decides); PatchGAN logits (past 65,536: the multi-program reduction) among the other shapes.
    for kind in LOSS_KINDS:
        out.append(_loss_workload(kind, (batch,), 1, tiny))

    # G2: conv + bias + leaky ReLU, DCGAN-64 discriminator layers at batch 128.
    for i, (c, h, o) in enumerate(_shrink(D_LAYERS, tiny)):
        out.append(_conv_workload(batch, c, h, o, dtype, elt, tier=1 if i == 1 else 3))

    # G3: conv-transpose + batch norm + ReLU forward+backward, DCGAN-64 generator layers; the raw conv-transpose.
    for i, (c, h, o) in enumerate(_shrink(G_LAYERS, tiny)):
        out.append(_convt_workload(batch, c, h, o, dtype, tier=1 if i == 0 else 3, max_autotune=False))
        out.append(_convt_workload(batch, c, h, o, dtype, tier=2 if i == 0 else 3, max_autotune=True))
        out.append(_raw_convt_workload(batch, c, h, o, dtype, tier=1 if i == 0 else 3))

    # G4: batch norm + ReLU alone (training), forward+backward.
    for i, shape in enumerate([(2, 8, 8, 8), (2, 16, 4, 4)] if tiny else [(64, 256, 64, 64), (128, 128, 16, 16)]):
        numel = math.prod(shape)
        out.append(Workload(
            "G4", f"batch_norm_relu fwd_bwd {_sid(shape)} {dtype} channels_last", "fwd_bwd",
            ("copy", "eager", "compile", *fast), lambda dev, s=shape: _batch_norm(dev, s, dtype),
            grad_inputs=(0, 1, 2),
            # Two-pass statistics each way: forward reads x twice and writes y; backward reads x and dy twice and
            # writes dx: 8 tensor passes.
            bytes_moved=8 * numel * elt,
            checks=(Check(">= 70% of copy bandwidth", "bandwidth", "auto", target=0.70),
                    Check(">= 1.5x eager", "ratio", "auto", "eager", 1.5)),
            tier=1 if i == 0 else 3, est_s=15))

    for kind in LOSS_KINDS:
        out.append(_loss_workload(kind, (2, 1, 4, 4) if tiny else (batch, 1, 30, 30), 3, tiny))

    # M1: FID's InceptionV3 feature throughput (fastgan.metrics, plain PyTorch: reported, no target), 28x28 digits
    # as `fastgan eval --features inception` feeds them (quantise, TF1 bilinear resize to 299).
    images = 2 if tiny else 250
    out.append(Workload(
        "M1", f"FID InceptionV3 features {images}x1x28x28 float32", "fwd", ("eager",),
        lambda dev, n=images: _inception(dev, n), grad_inputs=(), tier=3, est_s=10, info={"images": images}))
    return sorted(out, key=lambda w: w.tier)  # stable: goal order within a tier


def _sid(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


def _shrink(layers, tiny: bool):
    return [(max(1, c // 32) if c > 3 else c, max(2, h // 8), max(2, o // 32)) for c, h, o in layers[:2]] \
        if tiny else layers


def _loss_workload(kind: str, shape, tier: int, tiny: bool) -> Workload:
    numel = math.prod(shape)
    return Workload(
        "G7", f"d_loss[{kind}] fwd_bwd {_sid(shape)} float32", "fwd_bwd",
        ("eager", "compile", "triton", "native", "auto"), lambda dev: _losses(dev, shape, kind), grad_inputs=(0, 1),
        bytes_moved=4 * numel * 4,  # read both logits, write both gradients
        checks=(Check("<= 2 kernels", "kernels", "auto", target=2),
                Check(">= 3x eager", "ratio", "auto", "eager", 3.0),
                Check(">= 1.0x compile", "ratio", "auto", "compile", 1.0)),
        count_kernels=not tiny, tier=tier, est_s=8)


def _conv_workload(batch, c, h, o, dtype, elt, tier: int) -> Workload:
    flops = 2 * batch * (h // 2) ** 2 * c * o * 16
    return Workload(
        "G2", f"conv_bias_lrelu fwd_bwd {batch}x{c}x{h}x{h}->{o} k4s2p1 {dtype} channels_last", "fwd_bwd",
        ("eager", "compile", "triton", "native", "auto"), lambda dev: _conv(dev, batch, c, h, o, dtype),
        grad_inputs=(0, 1, 2), flops=3 * flops,  # forward, input gradient, weight gradient
        checks=(Check(">= 1.3x eager", "ratio", "auto", "eager", 1.3),
                Check(">= 1.15x compile", "ratio", "auto", "compile", 1.15)),
        tier=tier, est_s=15)


def _convt_workload(batch, c, h, o, dtype, tier: int, max_autotune: bool) -> Workload:
    flops = 2 * batch * h * h * c * o * 16
    if max_autotune:
        providers = ("compile-max-autotune", "auto")
        checks = (Check(">= 1.15x max-autotune", "ratio", "auto", "compile-max-autotune", 1.15),)
    else:
        providers = ("eager", "compile", "triton", "native", "auto")
        checks = (Check(">= 1.4x eager", "ratio", "auto", "eager", 1.4),
                  Check(">= 1.15x compile (max-autotune: its own row)", "ratio", "auto", "compile", 1.15))
    return Workload(
        "G3", f"convt_bn_relu fwd_bwd {batch}x{c}x{h}x{h}->{o} k4s2p1 {dtype} channels_last", "fwd_bwd",
        providers, lambda dev: _convt_bn(dev, batch, c, h, o, dtype), grad_inputs=(0, 1, 2, 3), flops=3 * flops,
        checks=checks, tier=tier, est_s=90 if max_autotune else 15,
        info={"compile_mode": "max-autotune"} if max_autotune else {})


def _raw_convt_workload(batch, c, h, o, dtype, tier: int) -> Workload:
    return Workload(
        "G3", f"raw conv_transpose2d fwd {batch}x{c}x{h}x{h}->{o} k4s2p1 {dtype} channels_last", "fwd",
        ("cudnn", "triton"), lambda dev: _raw_convt(dev, batch, c, h, o, dtype), grad_inputs=(),
        flops=2 * batch * h * h * c * o * 16,
        checks=(Check("raw Triton conv-transpose >= 0.85x cuDNN", "ratio", "triton", "cudnn", 0.85),),
        tier=tier, est_s=5)


def _torch():
    import torch

    return torch


def _dtype(name: str):
    return getattr(_torch(), name)


def _bias_act(dev, shape, dtype):
    torch = _torch()
    import torch.nn.functional as F

    from fastgan.ops import bias_act

    x = torch.randn(shape, device=dev, dtype=_dtype(dtype))
    b = torch.randn(shape[1], device=dev, dtype=_dtype(dtype))
    return [x, b], {
        "eager": lambda x, b: F.leaky_relu(x + b.view(1, -1, 1, 1), 0.2),
        "fastgan": lambda impl: lambda x, b: bias_act(x, b, act="lrelu", alpha=0.2, impl=impl),
    }


def _losses(dev, shape, kind):
    torch = _torch()
    from fastgan.losses import d_loss, d_loss_ref

    real, fake = torch.randn(shape, device=dev), torch.randn(shape, device=dev)
    return [real, fake], {
        "eager": lambda r, f: d_loss_ref(r, f, kind),
        "fastgan": lambda impl: lambda r, f: d_loss(r, f, kind, impl=impl),
    }


def _inception(dev, images):
    torch = _torch()
    from fastgan.metrics import FIDInceptionV3

    net = FIDInceptionV3().to(dev).eval()  # random weights: the same work as the published ones
    x = torch.rand(images, 1, 28, 28, device=dev) * 2 - 1
    return [x], {"eager": lambda x: net.features(x)[0]}


def _channels_last(t):
    return t.contiguous(memory_format=_torch().channels_last)


def _conv(dev, batch, c, h, o, dtype):
    torch = _torch()
    import torch.nn.functional as F

    from fastgan.ops import conv2d_act

    dt = _dtype(dtype)
    x = _channels_last(torch.randn(batch, c, h, h, device=dev, dtype=dt))
    w = torch.randn(o, c, 4, 4, device=dev, dtype=dt) / (16 * c) ** 0.5
    b = torch.randn(o, device=dev, dtype=dt)
    return [x, w, b], {
        "eager": lambda x, w, b: F.leaky_relu(F.conv2d(x, w, b, 2, 1), 0.2),
        "fastgan": lambda impl: lambda x, w, b: conv2d_act(x, w, b, 2, 1, "lrelu", 0.2, impl=impl),
    }


def _convt_bn(dev, batch, c, h, o, dtype):
    torch = _torch()
    import torch.nn.functional as F

    from fastgan.ops import conv_transpose2d_batch_norm_act

    dt = _dtype(dtype)
    x = _channels_last(torch.randn(batch, c, h, h, device=dev, dtype=dt))
    w = torch.randn(c, o, 4, 4, device=dev, dtype=dt) / (4 * c) ** 0.5
    gamma, beta = torch.rand(o, device=dev) + 0.5, torch.randn(o, device=dev)
    stats = (torch.zeros(o, device=dev), torch.ones(o, device=dev))

    def eager(x, w, gamma, beta):
        y = F.conv_transpose2d(x, w, None, 2, 1)
        return F.relu(F.batch_norm(y, *stats, gamma, beta, True, 0.1, 1e-5))

    def fastgan(impl):
        return lambda x, w, gamma, beta: conv_transpose2d_batch_norm_act(
            x, w, None, 2, 1, norm_weight=gamma, norm_bias=beta, running_mean=stats[0], running_var=stats[1],
            training=True, act="relu", impl=impl)

    return [x, w, gamma, beta], {"eager": eager, "fastgan": fastgan}


def _raw_convt(dev, batch, c, h, o, dtype):
    torch = _torch()
    import torch.nn.functional as F

    from fastgan.ops import conv_transpose2d_act

    dt = _dtype(dtype)
    x = _channels_last(torch.randn(batch, c, h, h, device=dev, dtype=dt))
    w = torch.randn(c, o, 4, 4, device=dev, dtype=dt) / (4 * c) ** 0.5
    cudnn = lambda x, w: F.conv_transpose2d(x, w, None, 2, 1)  # noqa: E731
    return [x, w], {"eager": cudnn, "cudnn": cudnn,
                    "triton": lambda x, w: conv_transpose2d_act(x, w, None, 2, 1, impl="triton")}


def _batch_norm(dev, shape, dtype):
    torch = _torch()
    import torch.nn.functional as F

    from fastgan.ops import batch_norm_act

    x = _channels_last(torch.randn(shape, device=dev, dtype=_dtype(dtype)))
    c = shape[1]
    w, b = torch.rand(c, device=dev) + 0.5, torch.randn(c, device=dev)
    stats = (torch.zeros(c, device=dev), torch.ones(c, device=dev))
    return [x, w, b], {
        "eager": lambda x, w, b: F.relu(F.batch_norm(x, *stats, w, b, True, 0.1, 1e-5)),
        "fastgan": lambda impl: lambda x, w, b: batch_norm_act(x, w, b, *stats, True, act="relu", impl=impl),
    }


# --- running and timing -----------------------------------------------------------------------------------------------


class Runner:
    """Runs workloads on ``device``, appending each result to ``out`` (JSON lines) as it is measured."""

    def __init__(self, out: Path, device: str, deadline: float, compile_backend: str = "inductor",
                 target_s: float = 0.25) -> None:
        self.out, self.deadline, self.compile_backend, self.target_s = out, deadline, compile_backend, target_s
        torch = _torch()
        self.torch = torch
        self.device = torch.device(device)
        self.on_gpu = self.device.type == "cuda"
        self.flush = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device=self.device) if self.on_gpu else None
        self.copy_gbs: dict[int, float] = {}  # bytes per tensor -> measured copy bandwidth

    def emit(self, record: dict) -> None:
        with open(self.out, "a") as f:
            f.write(json.dumps(record, default=str) + "\n")

    def sync(self) -> None:
        if self.on_gpu:
            self.torch.cuda.synchronize(self.device)

    def timings(self, run: Callable[[], Any]) -> list[float]:
        """Milliseconds of each timed call (see the module docstring)."""
        torch = self.torch
        for _ in range(3):
            run()
        self.sync()
        start = time.perf_counter()
        for _ in range(3):
            run()
        self.sync()
        per_call = max((time.perf_counter() - start) / 3, 1e-6)
        repeats = int(min(200, max(10, self.target_s / per_call)))
        if not self.on_gpu:
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                run()
                times.append((time.perf_counter() - t0) * 1e3)
            return times
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
        for begin, end in events:
            self.flush.zero_()  # evict the inputs from L2: every call reads them from memory, as in training
            begin.record()
            run()
            end.record()
        self.sync()
        return [b.elapsed_time(e) for b, e in events]

    def kernels(self, run: Callable[[], Any]) -> int | None:
        """CUDA kernels one call launches (memcpy/memset excluded)."""
        if not self.on_gpu:
            return None
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        self.sync()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            run()
            self.sync()
        return sum(1 for e in prof.events() if e.device_type == DeviceType.CUDA
                   and not e.name.lower().startswith(("memcpy", "memset")))

    def provider_fn(self, provider: str, fns: dict[str, Callable], workload: Workload):
        from benchmarks.harness import compiled

        if provider.startswith("compile"):
            mode = "max-autotune" if provider == "compile-max-autotune" else None
            return compiled(fns["eager"], mode=mode, backend=self.compile_backend)
        if provider in ("triton", "native", "auto") and "fastgan" in fns:
            return fns["fastgan"](provider)
        return fns[provider]

    def step(self, fn: Callable, inputs: list, workload: Workload) -> Callable[[], Any]:
        """One call: the forward (no grad), or forward+backward of ``grad_inputs`` for a fixed output gradient."""
        torch = self.torch
        if workload.mode == "fwd":
            leaves = [t.detach() for t in inputs]

            def forward():
                with torch.no_grad():
                    return fn(*leaves)

            return forward
        leaves = [t.detach().requires_grad_(i in workload.grad_inputs) for i, t in enumerate(inputs)]
        needs = [leaves[i] for i in workload.grad_inputs]
        seed: list = []

        def forward_backward():
            out = fn(*leaves)
            if not seed:
                gen = torch.Generator(device=out.device).manual_seed(1)
                seed.append(torch.randn(out.shape, generator=gen, device=out.device, dtype=out.dtype))
            torch.autograd.grad(out, needs, seed[0])
            return out

        return forward_backward

    def run(self, workload: Workload) -> None:
        """Every provider of ``workload`` in turn on the same inputs, then the workload's goal record."""
        torch = self.torch
        inputs, fns = workload.build(self.device)
        numel_bytes = inputs[0].numel() * inputs[0].element_size()
        rows: dict[str, dict] = {}
        reference: list = []  # the first provider's forward output, which the others are compared with
        for provider in workload.providers:
            row = {"type": "bench", "goal": workload.goal, "workload": workload.name, "provider": provider,
                   "mode": workload.mode, **workload.info}
            try:
                self._measure(row, provider, inputs, fns, workload, numel_bytes, reference)
            except Exception as error:  # a provider that fails is a result: record it, go on with the others
                row["error"] = f"{type(error).__name__}: {str(error).strip()[:600]}"
                row["traceback"] = traceback.format_exc()[-1500:]
            rows[provider] = row
            self.emit(row)
            if provider.startswith("compile"):
                torch._dynamo.reset()
        self.emit(judge(workload, rows, self.copy_gbs.get(numel_bytes)))
        del inputs, fns, rows, reference
        gc.collect()
        if self.on_gpu:
            torch.cuda.empty_cache()

    def _measure(self, row: dict, provider: str, inputs: list, fns: dict, workload: Workload, numel_bytes: int,
                 reference: list) -> None:
        from benchmarks.harness import compile_first_call, no_recompile

        first = None
        if provider == "triton" and not self.on_gpu:
            raise RuntimeError("not timed: on CPU Triton runs only in its interpreter, a correctness tool")
        if provider == "copy":
            src, dst = inputs[0], self.torch.empty_like(inputs[0])

            def run():
                return dst.copy_(src)

            row["bytes"] = 2 * numel_bytes
        else:
            run = self.step(self.provider_fn(provider, fns, workload), inputs, workload)
            outputs: list = []
            start = time.perf_counter()
            if provider.startswith("compile"):
                first = compile_first_call(lambda: outputs.append(run()), self.sync)
            else:
                outputs.append(run())
                self.sync()
                first = time.perf_counter() - start
            value = outputs[0].detach().float()
            if not reference:
                reference.append(value)
            else:
                scale = reference[0].abs().max().item() or 1.0
                row["max_rel_err"] = float(f"{(value - reference[0]).abs().max().item() / scale:.3g}")
            row["bytes"] = workload.bytes_moved
        with no_recompile() if provider.startswith("compile") else contextlib.nullcontext():
            times = self.timings(run)
            if workload.count_kernels:
                row["kernels"] = self.kernels(run)
        median = statistics.median(times)
        row.update(median_ms=round(median, 5), p10_ms=round(_percentile(times, 10), 5),
                   p90_ms=round(_percentile(times, 90), 5), repeats=len(times))
        if first is not None:
            row["first_call_s"] = round(first, 3)
        if row.get("bytes"):
            row["GB/s"] = round(row["bytes"] / (median * 1e-3) / 1e9, 1)
        if provider == "copy":
            self.copy_gbs[numel_bytes] = row["GB/s"]
        elif workload.flops:
            row["TFLOP/s"] = round(workload.flops / (median * 1e-3) / 1e12, 2)
        if "images" in workload.info:
            row["images/s"] = round(workload.info["images"] / (median * 1e-3))


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def judge(workload: Workload, rows: dict[str, dict], copy_gbs: float | None) -> dict:
    """The ``goal`` record of a workload: each check's value and whether it meets its target (None: not measured)."""
    results = []
    for check in workload.checks:
        a = rows.get(check.a, {})
        value = None
        if check.kind == "ratio":
            b = rows.get(check.b, {})
            if "median_ms" in a and "median_ms" in b:
                value = b["median_ms"] / a["median_ms"]
        elif check.kind == "bandwidth" and "GB/s" in a and copy_gbs:
            value = a["GB/s"] / copy_gbs
        elif check.kind == "kernels" and a.get("kernels") is not None:
            value = a["kernels"]
        ok = None if value is None else (value <= check.target if check.kind == "kernels" else value >= check.target)
        results.append({"check": check.label, "value": None if value is None else round(value, 3), "ok": ok})
    return {"type": "goal", "goal": workload.goal, "workload": workload.name, "checks": results}


def autotune_record(seen: set[tuple[str, str]]) -> dict:
    """The impl="auto" choices not reported yet (``seen`` holds the (scope, key) pairs already reported)."""
    from fastgan import _autotune

    new: dict[str, dict] = {}
    for scope, entries in _autotune.entries().items():
        for key, entry in entries.items():
            if (scope, key) not in seen:
                seen.add((scope, key))
                new.setdefault(scope, {})[key] = entry
    return {"type": "autotune", "entries": new}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="JSON-lines file the results are appended to")
    parser.add_argument("--deadline", type=float, default=None, help="stop starting workloads after this epoch time")
    parser.add_argument("--quick", action="store_true", help="each goal's main shapes only")
    parser.add_argument("--only", default="", help="comma-separated goals (G1,G2,...) to run")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (CPU tests of the runner)")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--list", action="store_true", help="print the workloads with their estimated times")
    args = parser.parse_args(argv)
    selected = [w for w in workloads(args.tiny) if (w.essential or not args.quick)
                and (not args.only or w.goal in args.only.split(","))]
    if args.list or args.out is None:
        for w in selected:
            print(f"{w.goal}  ~{w.est_s:>4.0f} s  {w.name}  [{', '.join(w.providers)}]")
        print(f"{len(selected)} workloads, ~{sum(w.est_s for w in selected):.0f} s estimated")
        return 0
    torch = _torch()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    deadline = args.deadline if args.deadline is not None else math.inf
    runner = Runner(args.out, device, deadline, args.compile_backend, target_s=0.25 if device == "cuda" else 0.02)
    seen: set[tuple[str, str]] = set()
    for w in selected:
        if time.time() + w.est_s / 2 > deadline:  # would most likely be killed half-way: leave the time to others
            runner.emit({"type": "bench", "goal": w.goal, "workload": w.name, "skipped": "budget: deadline reached"})
            continue
        print(f"{w.goal} {w.name}", flush=True)
        try:
            runner.run(w)
        except Exception as error:  # building the inputs failed (out of memory, say): a result too
            runner.emit({"type": "bench", "goal": w.goal, "workload": w.name, "provider": "-",
                         "error": f"{type(error).__name__}: {str(error).strip()[:600]}",
                         "traceback": traceback.format_exc()[-1500:]})
        runner.emit(autotune_record(seen))  # the choices made so far, kept even if the stage is killed later
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
