"""Shared fixtures: devices, implementation availability, tolerances scaled to PyTorch's own error."""

from __future__ import annotations

import pytest
import torch

import fastgan

DEVICES = ["cpu", "cuda"]


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
