"""Ahead-of-time compile check: every Triton kernel specialization fastgan's ops launch, compiled for GPU targets on a
machine with no GPU.

    python -m fastgan.kernels.triton.aot [--arch 80,90] [--jobs N]

Each Triton op runs on meta tensors (no memory, any size) with ``TRITON_INTERPRET`` unset, so its launcher picks the
GPU tile sizes; ``launch.recording()`` records the launches instead of running them. Each distinct (kernel, argument
types, constexpr values, warps, stages) is then compiled with ``triton.compile(ASTSource(...),
target=GPUTarget("cuda", arch, 32))`` (ptxas ships in Triton's wheel), and one line per specialization and target
reports registers, shared memory and local memory (spills), read from the cubin by the wheel's ``cuobjdump``.

Coverage: every op over every dtype and every option that selects a constexpr (gradient order, bias, clamp,
statistics, layout, training, instance, loss pair), at sizes that reach every tile size and 64-bit-offset branch the
launchers choose on a GPU. One reduction, by construction of the kernels: an activation (or loss term) is applied to
values already converted to the math type (float32; float64 for float64 tensors), so the storage dtype changes only
the loads and stores around it. Every activation and loss term is therefore compiled in each kernel per math type,
and the full product over dtypes and the other options runs with one activation (leaky ReLU) and one loss pair.
Runtime specializations Triton adds by value (integers equal to 1, 16-byte divisibility) are not enumerated: the
generic kernel compiled here is the one those variants refine.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
NUM_ACTS = 9  # fastgan.ops.bias_act.ACTIVATIONS
LRELU = 2
NUM_LOSS_TERMS = 9  # csrc/losses.h::LossTerm
_TYPE_CODES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
               torch.int32: "i32", torch.int64: "i64"}
_INT64_NUMEL = 2**31 + 7  # past int32 offsets: the launchers switch to their INT64 branch


def _meta(*shape: int, dtype: torch.dtype = torch.float32, channels_last: bool = False) -> torch.Tensor:
    t = torch.empty(shape, dtype=dtype, device="meta")
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


# --- the op calls whose launches are recorded -------------------------------------------------------------------------

MATH_DTYPES = (torch.float32, torch.float64)  # the math types every activation / loss term is compiled in


def _bias_act_calls() -> Iterator[Callable[[], Any]]:
    from . import bias_act as k

    def calls(dtype, act, has_bias, clamp, numel=32):
        x = _meta(numel // 8, 8, dtype=dtype) if numel == 32 else _meta(numel, dtype=dtype)
        b = _meta(x.shape[-1], dtype=dtype) if has_bias else None
        dim = x.dim() - 1
        yield lambda: k.bias_act_triton(x, b, dim, act, 0.2, 1.0, clamp)
        yield lambda: k.bias_act_backward_triton(x, x, b, dim, act, 0.2, 1.0, clamp)
        yield lambda: k.bias_act_backward2_triton(x, x, x, b, dim, act, 0.2, 1.0, clamp)

    for dtype, act in itertools.product(MATH_DTYPES, range(NUM_ACTS)):
        yield from calls(dtype, act, True, 1.0)
    for dtype, has_bias, clamp in itertools.product(DTYPES, (False, True), (None, 1.0)):
        yield from calls(dtype, LRELU, has_bias, clamp)
    for dtype in DTYPES:
        yield from calls(dtype, LRELU, True, None, numel=_INT64_NUMEL)


def _conv_calls() -> Iterator[Callable[[], Any]]:
    from . import conv as k

    def fwd(dtype, transposed, act, has_bias, stats=False, c_in=16, c_out=64):
        x = _meta(2, c_in, 8, 8, dtype=dtype, channels_last=True)
        w = _meta(c_in, c_out, 4, 4, dtype=dtype) if transposed else _meta(c_out, c_in, 3, 3, dtype=dtype)
        b = _meta(c_out, dtype=dtype) if has_bias else None
        if transposed:
            args = (x, w, b, [2, 2], [1, 1], [0, 0])
            return (lambda: k.conv_transpose2d_bn_stats_triton(*args)) if stats else (
                lambda: k.conv_transpose2d_act_triton(*args, act, 0.2))
        args = (x, w, b, [1, 1], [1, 1])
        return (lambda: k.conv2d_bn_stats_triton(*args)) if stats else (lambda: k.conv2d_act_triton(*args, act, 0.2))

    for dtype, act in itertools.product(MATH_DTYPES, range(NUM_ACTS)):
        yield fwd(dtype, False, act, True)
    # Tile sizes: BLOCK_N follows the output channels (16..128), BLOCK_K the input channels (16, 32). Each (dtype,
    # transposed) pair runs its four (bias, stats) rows at the four channel shapes, so it meets every tile size.
    tiles = ((16, 64), (1, 3), (64, 32), (128, 256))
    for dtype, transposed in itertools.product(DTYPES, (False, True)):
        for (has_bias, stats), (c_in, c_out) in zip(itertools.product((False, True), (False, True)), tiles):
            yield fwd(dtype, transposed, LRELU, has_bias, stats, c_in, c_out)
    for dtype, transposed in itertools.product(DTYPES, (False, True)):
        x = _meta(4, 32, 8, 8, dtype=dtype)
        if transposed:
            dz = _meta(4, 16, 16, 16, dtype=dtype)
            yield lambda dz=dz, x=x: k.conv_transpose2d_weight_grad_triton(dz, x, [4, 4], [2, 2], [1, 1])
        else:
            dz = _meta(4, 16, 8, 8, dtype=dtype)
            yield lambda dz=dz, x=x: k.conv2d_weight_grad_triton(dz, x, [3, 3], [1, 1], [1, 1])


def _norm_act_calls() -> Iterator[Callable[[], Any]]:
    from . import norm_act as k

    def calls(dtype, act, instance, training, channels_last=False, shape=(4, 8, 6, 6)):
        x = _meta(*shape, dtype=dtype, channels_last=channels_last)
        w, b = _meta(shape[1]), _meta(shape[1])
        running = (None, None) if training else (_meta(shape[1]), _meta(shape[1]))
        groups = shape[0] * shape[1] if instance and training else shape[1]
        mean, var = _meta(groups), _meta(groups)
        yield lambda: k.norm_act_triton(x, w, b, *running, training, instance, 1e-5, act, 0.2)
        yield lambda: k.norm_act_backward_triton(x, x, w, b, mean, var, training, instance, 1e-5, act, 0.2)

    def conditional(dtype, act, training, channels_last=False, shape=(4, 8, 6, 6)):
        # Per-sample scale and shift [N, C] (conditional batch norm): the norm kernels' PER_SAMPLE branch.
        x = _meta(*shape, dtype=dtype, channels_last=channels_last)
        scale, shift = _meta(*shape[:2]), _meta(*shape[:2])
        running = (None, None) if training else (_meta(shape[1]), _meta(shape[1]))
        mean, var = _meta(shape[1]), _meta(shape[1])
        yield lambda: k.conditional_norm_act_triton(x, scale, shift, *running, training, 1e-5, act, 0.2)
        yield lambda: k.conditional_norm_act_backward_triton(x, x, scale, shift, mean, var, training, 1e-5, act, 0.2)

    for dtype, act, channels_last in itertools.product(MATH_DTYPES, range(NUM_ACTS), (False, True)):
        yield from calls(dtype, act, False, True, channels_last)
        yield from conditional(dtype, act, True, channels_last)
    for dtype, training, channels_last in itertools.product(DTYPES, (False, True), (False, True)):
        yield from conditional(dtype, LRELU, training, channels_last)
    for dtype, instance, training, channels_last in itertools.product(DTYPES, *[(False, True)] * 3):
        yield from calls(dtype, LRELU, instance, training, channels_last)
    for dtype, instance, training in itertools.product(DTYPES, (False, True), (False, True)):
        yield from calls(dtype, LRELU, instance, training, shape=(_INT64_NUMEL // 64, 8, 2, 4))  # 64-bit offsets
    for dtype, stats_dtype in itertools.product(DTYPES, MATH_DTYPES):
        rm, rv = _meta(8, dtype=dtype), _meta(8, dtype=dtype)
        mean, var = _meta(16, dtype=stats_dtype), _meta(16, dtype=stats_dtype)
        steps = _meta(dtype=torch.int64)  # no counter (instance norm), one advanced, one read by momentum=None
        for counter, momentum in ((None, 0.1), (steps, 0.1), (steps, None)):
            yield lambda rm=rm, rv=rv, s=counter, m=mean, v=var, mo=momentum: k.norm_act_update_stats_triton(
                rm, rv, s, m, v, mo, 10, 2)


def _loss_calls() -> Iterator[Callable[[], Any]]:
    from ...losses.adversarial import LOSS_KINDS, TERMS
    from . import losses as k

    def calls(dtype, kind, n):
        a, go = _meta(n, dtype=dtype), _meta(dtype=dtype)
        grad = _meta(n, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
        terms = LOSS_KINDS[kind]
        d_real, d_fake, g_fake = (TERMS[t].index for t in (terms.d_real, terms.d_fake, terms.g_fake))
        yield lambda: k.gan_loss_triton(a, a, d_real, d_fake)
        yield lambda: k.gan_loss_triton(a, None, g_fake, 0)
        yield lambda: k.gan_loss_backward_triton(go, grad, grad)
        yield lambda: k.gan_loss_backward_triton(go, grad, grad[:0])

    for dtype, kind in itertools.product(MATH_DTYPES, LOSS_KINDS):
        yield from calls(dtype, kind, 3000)
    # One program with a small and a full block; several programs plus the kernel that adds their partial sums.
    for dtype, n in itertools.product(DTYPES, (8, 3000, 200_000)):
        yield from calls(dtype, "nonsaturating", n)
    for dtype, per_sample in itertools.product(DTYPES, (12, 3 * 64 * 64)):
        real, eps = _meta(4, per_sample, dtype=dtype), _meta(4)
        go = _meta(dtype=dtype)
        norms = _meta(4, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
        yield lambda r=real, e=eps: k.penalty_interpolate_triton(r, r, e)
        yield lambda r=real: k.grad_norm_penalty_triton(r, 10.0, 1.0, 1.0)
        yield lambda go=go, r=real, n=norms: k.grad_norm_penalty_backward_triton(go, r, n, 10.0, 1.0, 1.0)


CALLS = (_bias_act_calls, _conv_calls, _norm_act_calls, _loss_calls)


# --- recording and compiling ------------------------------------------------------------------------------------------


def _arg_type(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return "*" + _TYPE_CODES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton argument type for {type(value).__name__}")


def recorded_launches() -> list[tuple[tuple[Any, dict[str, str], dict[str, Any], dict[str, int]], Any]]:
    """Every distinct (kernel, signature, constexprs, options) the ops launch, in first-launch order, each with its
    first recorded ``Launch`` (whose argument values torch's own TTIR generation needs)."""
    from .launch import recording

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("aot: unset TRITON_INTERPRET: the launchers must pick GPU tile sizes, not the interpreter's")
    seen: dict[tuple, tuple] = {}
    with recording() as launches:
        for calls in CALLS:
            for call in calls():
                call()
    for rec in launches:
        options = {"num_warps": rec.meta.get("num_warps", 4), "num_stages": rec.meta.get("num_stages", 3)}
        constexprs = {k: v for k, v in rec.meta.items() if k not in options}
        values = iter(rec.args)
        signature = {name: "constexpr" if name in constexprs else _arg_type(next(values))
                     for name in rec.kernel.arg_names}
        key = (rec.kernel.__name__, tuple(signature.items()), tuple((k, str(v)) for k, v in constexprs.items()),
               tuple(options.items()))
        seen.setdefault(key, ((rec.kernel, signature, constexprs, options), rec))
    return list(seen.values())


def specializations() -> list[tuple[Any, dict[str, str], dict[str, Any], dict[str, int]]]:
    """Every distinct (kernel, signature, constexprs, options) the ops launch, in first-launch order."""
    return [spec for spec, _ in recorded_launches()]


def _describe(signature: dict[str, str], constexprs: dict[str, Any], options: dict[str, int]) -> str:
    pointers = sorted({t[1:] for t in signature.values() if t.startswith("*")})
    consts = ",".join(f"{k}={getattr(v, 'name', v)}" for k, v in constexprs.items())
    return f"[{'/'.join(pointers)}; {consts}; warps={options['num_warps']},stages={options['num_stages']}]"


def _resources(cubin: bytes) -> dict[str, str]:
    """REG/SHARED/LOCAL of the cubin's one function, from ``cuobjdump -res-usage`` (shipped in Triton's wheel)."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    fields = dict(item.split(":", 1) for line in text.splitlines() if "REG:" in line for item in line.split())
    return fields


def _root_cause(error: BaseException) -> str:
    """The innermost exception's message: Triton wraps the real error (a NameError, a type mismatch) in
    CompilationErrors that print the kernel's source."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = [line for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}"[:400]


def _compile(index: int, arch: int) -> str:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel, signature, constexprs, options = _SPECS[index]
    start = time.perf_counter()
    compiled = triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", arch, 32),
                              options=options)
    seconds = time.perf_counter() - start
    res = _resources(compiled.asm["cubin"])
    what = kernel.__name__ + _describe(signature, constexprs, options)
    return (f"sm_{arch}  regs={res.get('REG', '?'):<4} shared={compiled.metadata.shared:<6} "
            f"local={res.get('LOCAL', '?'):<5} {seconds:5.1f}s  {what}")


_SPECS: list = []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastgan.kernels.triton.aot", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="80,90", help="compute capabilities, comma-separated (default: 80,90)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiles (default: cores)")
    args = parser.parse_args(argv)
    import triton

    archs = [int(a) for a in args.arch.split(",")]
    _SPECS[:] = specializations()
    kernels = sorted({spec[0].__name__ for spec in _SPECS})
    print(f"Triton {triton.__version__}: {len(_SPECS)} specializations of {len(kernels)} kernels x sm_"
          f"{',sm_'.join(map(str, archs))}", flush=True)
    failures = 0
    start = time.perf_counter()
    # fork: workers inherit the recorded specializations (kernels are not picklable) and no CUDA state exists.
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        jobs = {pool.submit(_compile, i, arch): (i, arch) for i in range(len(_SPECS)) for arch in archs}
        for job in concurrent.futures.as_completed(jobs):
            i, arch = jobs[job]
            try:
                print(job.result(), flush=True)
            except Exception as error:  # a compile error is the finding: report it and go on
                failures += 1
                kernel, signature, constexprs, options = _SPECS[i]
                print(f"sm_{arch}  FAILED {kernel.__name__}{_describe(signature, constexprs, options)}: "
                      f"{_root_cause(error)}", flush=True)
    print(f"{len(jobs) - failures} compiled, {failures} failed in {time.perf_counter() - start:.0f} s "
          f"(Triton {triton.__version__})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
