"""Shared fixtures: devices, implementation availability, tolerances scaled to PyTorch's own error."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import pytest
import torch

import fastgan
import fastgan._backend

DEVICES = ["cpu", "cuda"]


@pytest.fixture(autouse=True, scope="session")
def private_autotune_cache(tmp_path_factory):
    """The suite's autotune choices (CUDA's, and the CPU's one-channel convolutions' forward) go to a cache of its own,
    not the user's (subprocesses inherit it)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FASTGAN_AUTOTUNE_CACHE", str(tmp_path_factory.mktemp("autotune") / "autotune.json"))
        yield


@contextlib.contextmanager
def one_channel_routes_at_every_size():
    """The native CPU path's convolutions from and to one channel at every size, inside the block (by default they
    run from ``CPU_ONE_CHANNEL_MIN_NUMEL`` values on: tests/test_conv_act.py). The route is chosen in the forward, so
    gradients taken after the block follow it."""
    saved = fastgan._backend.CPU_ONE_CHANNEL_MIN_NUMEL
    fastgan._backend.CPU_ONE_CHANNEL_MIN_NUMEL = 0
    try:
        yield
    finally:
        fastgan._backend.CPU_ONE_CHANNEL_MIN_NUMEL = saved


@pytest.fixture
def one_channel_routes():
    """``one_channel_routes_at_every_size`` around a test."""
    with one_channel_routes_at_every_size():
        yield


def fresh_python(code: str, timeout: int = 300) -> list[str]:
    """The stdout lines of ``code`` run in a fresh interpreter (nothing of fastgan loaded or registered yet); a
    failure shows its stderr."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()


def require(impl: str, device: str) -> None:
    """Skip, with the reason fastgan gives, when ``impl`` cannot run on ``device`` here."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (runs in the GPU suite: benchmarks/gpu_suite.py)")
    usable, reason = fastgan.available_impls()[impl][device]
    if not usable:
        pytest.skip(f"impl={impl!r} unavailable on {device}: {reason}")


def tolerance(truth: torch.Tensor, torch_out: torch.Tensor, dtype: torch.dtype) -> float:
    """Allowed max abs error: twice PyTorch's own error at ``dtype`` plus a few ulps of the result's scale.

    ``torch_out`` is the reference op run by PyTorch in ``dtype``; ``truth`` is the same computed in float64.
    """
    # PyTorch's own error over the entries it got finite: its bfloat16 channels_last CPU weight gradient sometimes
    # returns NaN where the float64 truth is finite (seen in CI), which would make the tolerance NaN.
    diff = (torch_out.double() - truth).abs()
    diff = diff[diff.isfinite()]
    torch_err = diff.max().item() if diff.numel() else 0.0
    scale = max(1.0, truth.abs().max().item()) if truth.numel() else 1.0
    return 2.0 * torch_err + 4.0 * torch.finfo(dtype).eps * scale


def assert_close_to_truth(out, truth, torch_out, dtype, what: str) -> None:
    assert out.shape == truth.shape, f"{what}: shape {tuple(out.shape)} != {tuple(truth.shape)}"
    assert out.dtype == dtype, f"{what}: dtype {out.dtype} != {dtype}"
    if not truth.numel():
        return
    assert torch.isfinite(out).all() == torch.isfinite(truth).all(), f"{what}: non-finite values differ"
    err = (out.double().cpu() - truth).abs().max().item()
    tol = tolerance(truth, torch_out.cpu(), dtype)
    assert err <= tol, f"{what}: max error {err:.3g} > tolerance {tol:.3g} (2x PyTorch's own {dtype} error + ulps)"


def opcheck(op, args, test_utils) -> None:
    """``torch.library.opcheck`` of a declared custom op (``fastgan._backend.CustomOp``: the registration that
    torch.compile uses), and where an argument requires grad, the op's eager autograd Function against that
    registration: the same outputs and, through a random cotangent, the same gradients, bit for bit (one set of
    formulas, two ways in)."""
    torch.library.opcheck(op.op, args, test_utils=test_utils)
    inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    if op.function is None or not inputs:
        return
    eager = op(*args)
    registered = op.op(*args)
    eager, registered = (eager, registered) if isinstance(eager, tuple) else ((eager,), (registered,))
    gen = torch.Generator().manual_seed(0)
    pairs = [(e, r, torch.randn(e.shape, generator=gen, dtype=torch.float64).to(e.dtype))
             for e, r in zip(eager, registered) if e.requires_grad]
    for e, r in zip(eager, registered):
        assert torch.equal(e, r), f"{op.op}: eager and registered outputs differ"
    assert pairs, f"{op.op}: no differentiable output from {len(inputs)} inputs that require grad"
    def gradients(outputs):
        try:
            return torch.autograd.grad(outputs, inputs, [c for _, _, c in pairs], allow_unused=True)
        except RuntimeError as error:  # refused (a third order of a smooth activation): refused the same way
            return str(error)

    eager_grads, registered_grads = gradients([e for e, _, _ in pairs]), gradients([r for _, r, _ in pairs])
    if isinstance(eager_grads, str) or isinstance(registered_grads, str):
        assert eager_grads == registered_grads, f"{op.op}: {eager_grads!r} != {registered_grads!r}"
        return
    for a, b in zip(eager_grads, registered_grads):
        assert (a is None) == (b is None) and (a is None or torch.equal(a, b)), f"{op.op}: gradients differ"
