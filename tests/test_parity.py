"""The parity matrix: every registered op x implementation x dtype x layout x shape x device, against float64.

For each configuration: the forward, the first-order gradients, and (where the op claims it) the second-order
gradients of a gradient-penalty-like objective are compared with the op's specification (``ref``) evaluated in
float64. The tolerance is twice PyTorch's own error when it runs the same specification in the low dtype.
"""

from __future__ import annotations

import pytest
import torch

from .conftest import DEVICES, assert_close_to_truth, require
from .registry import all_cases

DTYPE_IDS = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.float64: "f64"}
NATIVE_NVRTC = "native-nvrtc"  # impl="native" with FASTGAN_NATIVE=nvrtc: the CUDA kernels compiled by NVRTC


def _params():
    for case in all_cases():
        for impl in case.impls:
            for device in DEVICES:
                for dtype in case.dtypes:
                    for layout in case.layouts:
                        # impl="ref" is the specification itself: its rows prove only that it keeps the dtype and
                        # the layout, which its first shape shows.
                        for shape in case.shapes[:1] if impl == "ref" else case.shapes:
                            if layout == "channels_last" and len(shape) != 4:
                                continue
                            size = "x".join(map(str, shape))
                            # Native CUDA rows run twice: the kernels the build has (nvcc's, else NVRTC's), and
                            # NVRTC's by FASTGAN_NATIVE=nvrtc, which skips where CuPy is missing.
                            native_cuda = impl == "native" and device == "cuda"
                            for variant in (impl, NATIVE_NVRTC) if native_cuda else (impl,):
                                name = f"{case.name}-{variant}-{device}-{DTYPE_IDS[dtype]}-{layout}-{size}"
                                yield pytest.param(case, variant, device, dtype, layout, shape, id=name)


def _apply_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "noncontiguous":
        # Every other element of a tensor twice as wide along the last dim: strided, not dense.
        wide = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
        wide[..., ::2] = t
        return wide[..., ::2]
    return t.contiguous()


def _grads(outputs, inputs, grad_outputs, create_graph=False):
    grads = torch.autograd.grad(outputs, inputs, grad_outputs, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]


def _evaluate(fn, inputs, num_grad, order, gen_seed):
    """Forward output, first-order grads, and grads of a penalty sum_i <w_i, dL/dx_i> (as in R1/WGAN-GP)."""
    grad_inputs = [t.requires_grad_(True) for t in inputs[:num_grad]]
    out = fn(*inputs)
    gen = torch.Generator().manual_seed(gen_seed)
    go = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype).to(out.device)
    results = {"forward": out}
    if order >= 1 and out.numel():
        first = _grads(out, grad_inputs, go, create_graph=order >= 2)
        results.update({f"grad[{i}]": g for i, g in enumerate(first)})
        if order >= 2:
            weights = [torch.randn(g.shape, generator=gen, dtype=torch.float64).to(g) for g in first]
            penalty = sum((g * w).sum() for g, w in zip(first, weights))
            # A first gradient independent of the inputs (linear op) has an all-zero second gradient.
            second = _grads(penalty, grad_inputs, None) if penalty.requires_grad else map(torch.zeros_like, first)
            results.update({f"grad2[{i}]": g for i, g in enumerate(second)})
    return results


@pytest.mark.parametrize("case,impl,device,dtype,layout,shape", list(_params()))
def test_parity(case, impl, device, dtype, layout, shape, monkeypatch):
    if impl == NATIVE_NVRTC:
        monkeypatch.setenv("FASTGAN_NATIVE", "nvrtc")
        impl = "native"
    require(impl, device)
    gen = torch.Generator().manual_seed(0)
    inputs64 = case.make_inputs(shape, gen)

    def prepared(dtype):
        tensors = [t.to(device=device, dtype=dtype) for t in inputs64]
        tensors[0] = _apply_layout(tensors[0], layout)
        return tensors

    # The truth is the specification in float64 on the very values the low-precision run sees (inputs rounded to
    # dtype first), so rounding of the inputs cannot flip a kink or a clamp between the two.
    truth = _evaluate(case.ref, [t.double() for t in prepared(dtype)], case.num_grad_inputs, case.grad_order, 1)
    torch_low = _evaluate(case.ref, prepared(dtype), case.num_grad_inputs, case.grad_order, 1)
    x = prepared(dtype)
    ours = _evaluate(lambda *t: case.fn(*t, impl=impl), x, case.num_grad_inputs, case.grad_order, 1)

    assert ours.keys() == truth.keys()
    for key in truth:
        assert_close_to_truth(ours[key], truth[key].cpu(), torch_low[key], dtype, f"{case.name} {key}")
    if layout == "channels_last" and x[0].numel() and ours["forward"].dim() == 4:
        assert ours["forward"].is_contiguous(memory_format=torch.channels_last), "channels_last input not kept"


def _isa_params():
    for case in all_cases():
        if "native" not in case.impls:
            continue
        for dtype in case.dtypes:
            for layout in case.layouts:
                for shape in case.shapes:
                    if layout == "channels_last" and len(shape) != 4:
                        continue
                    size = "x".join(map(str, shape))
                    yield pytest.param(case, dtype, layout, shape, id=f"{case.name}-{DTYPE_IDS[dtype]}-{layout}-{size}")


@pytest.mark.parametrize("case,dtype,layout,shape", list(_isa_params()))
def test_native_cpu_isa_copies_agree(case, dtype, layout, shape):
    """The C++ kernels' AVX-512, AVX2 and baseline copies (csrc/cpu_vec.h) compute the same bits: forward and every
    gradient the op claims, on each row of the parity matrix's native CPU configurations (the copies this CPU can
    run)."""
    require("native", "cpu")
    from fastgan import _C

    if len(_C._cpu_isa_copies()) == 1 or _C.cpu_isa() == "baseline":
        pytest.skip(f"one copy to run here (built: {_C._cpu_isa_copies()}, this CPU/PyTorch: {_C.cpu_isa()})")

    gen = torch.Generator().manual_seed(0)
    inputs64 = case.make_inputs(shape, gen)
    best = _C.cpu_isa()
    runs = {}
    try:
        for isa in ("avx512", "avx2", "baseline"):
            _C._limit_cpu_isa(isa)
            runs[_C.cpu_isa()] = _evaluate(lambda *t: case.fn(*t, impl="native"),
                                           [_apply_layout(t.to(dtype), layout) if i == 0 else t.to(dtype)
                                            for i, t in enumerate(inputs64)],
                                           case.num_grad_inputs, case.grad_order, 1)
    finally:
        _C._limit_cpu_isa("avx512")
    assert "baseline" in runs and len(runs) > 1 and _C.cpu_isa() == best
    reference = runs.pop("baseline")
    for isa, results in runs.items():
        for key in reference:
            torch.testing.assert_close(results[key], reference[key], rtol=0, atol=0, equal_nan=True,
                                       msg=lambda m, isa=isa, key=key: f"{case.name} {key}: {isa} vs baseline: {m}")
