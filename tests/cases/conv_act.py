"""conv2d_act / conv_transpose2d_act in the parity matrix: DCGAN/PatchGAN-like layers shrunk to CPU size.

Stride 1 and 2, padding, output_padding 0 and 1, a 1x1 input growing to 4x4 (DCGAN's first generator layer), a
4x4 input shrinking to 1x1 (its last discriminator layer), odd sizes, an empty batch, and one activation (silu)
whose derivative needs the pre-activation (the Triton path then runs conv + bias_act).
"""

from __future__ import annotations

import contextlib

import torch

from fastgan.ops import conv2d_act, conv2d_act_ref, conv_transpose2d_act, conv_transpose2d_act_ref

from ..conftest import one_channel_routes_at_every_size
from ..registry import OpCase


def _case(transposed: bool, out_channels: int, k: int | tuple[int, int], stride: int, padding: int, act: str, shapes,
          output_padding: int = 0, alpha: float | None = None, bias: bool = True, full_triton: bool = False,
          routes: bool = False, **kw) -> list[OpCase]:
    """``routes``: the native CPU path's one-channel convolutions run at these (small) sizes."""
    def make_inputs(shape, gen):
        c = shape[1]
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        kh, kw = (k, k) if isinstance(k, int) else k
        w_shape = (c, out_channels, kh, kw) if transposed else (out_channels, c, kh, kw)
        w = torch.randn(w_shape, generator=gen, dtype=torch.float64) / (c * kh * kw) ** 0.5
        b = torch.randn(out_channels, generator=gen, dtype=torch.float64) * 0.5
        return (x, w, b) if bias else (x, w)

    if transposed:
        def conv(x, w, b=None, impl="auto"):
            return conv_transpose2d_act(x, w, b, stride, padding, output_padding, act, alpha, impl=impl)

        def ref(x, w, b=None):
            return conv_transpose2d_act_ref(x, w, b, stride, padding, output_padding, act, alpha)
    else:
        def conv(x, w, b=None, impl="auto"):
            return conv2d_act(x, w, b, stride, padding, act, alpha, impl=impl)

        def ref(x, w, b=None):
            return conv2d_act_ref(x, w, b, stride, padding, act, alpha)

    def fn(*inputs, impl="auto"):
        with one_channel_routes_at_every_size() if routes else contextlib.nullcontext():
            return conv(*inputs, impl=impl)

    op = "conv_transpose2d_act" if transposed else "conv2d_act"
    extra = f",op={output_padding}" if transposed else ""
    size = k if isinstance(k, int) else "x".join(map(str, k))
    name = f"{op}[k={size},s={stride},p={padding}{extra},{act}{'' if bias else ',nobias'}]"
    common = dict(name=name, fn=fn, ref=ref, make_inputs=make_inputs, num_grad_inputs=3 if bias else 2)
    # The Triton interpreter takes ~2 s per configuration: every case runs float32 and bfloat16, contiguous and
    # channels_last; the cases marked full_triton run the whole dtype x layout matrix.
    triton = {} if full_triton else {"dtypes": (torch.float32, torch.bfloat16)}
    if not full_triton:
        triton["layouts"] = tuple(layout for layout in kw.get("layouts", ("contiguous", "channels_last"))
                                  if layout != "noncontiguous") or ("contiguous",)
    return [
        OpCase(shapes=shapes, impls=("ref", "native"), **common, **kw),
        OpCase(shapes=shapes, impls=("triton",), **common, **{**kw, **triton}),
    ]


CASES = [case for cases in [
    _case(False, 4, 4, 2, 1, "lrelu", [(2, 3, 7, 7), (0, 3, 6, 6)], alpha=0.2, full_triton=True),  # DCGAN D hidden
    _case(False, 4, 3, 1, 1, "relu", [(2, 3, 5, 6)]),  # CycleGAN residual-block conv
    _case(False, 1, 4, 1, 0, "sigmoid", [(2, 4, 4, 4)], bias=False),  # DCGAN D output: 4x4 -> 1x1
    # the same with a bias added by the matrix product itself (native on the CPU: addmm), a wider non-square kernel
    _case(False, 2, (4, 3), 2, 0, "linear", [(3, 4, 4, 3), (0, 4, 4, 3)]),
    _case(False, 3, 3, 2, 0, "silu", [(1, 2, 6, 5)]),
    _case(True, 3, 4, 2, 1, "relu", [(1, 4, 4, 4), (0, 4, 3, 3)], output_padding=1, full_triton=True),
    _case(True, 3, 4, 2, 1, "tanh", [(2, 4, 3, 5)], bias=False),  # DCGAN G output layer
    # MNIST's: one output channel (native on the CPU: a matrix product and col2im), and the discriminator's first
    # layer from one channel (native on the CPU: the columns' product, its input gradient by col2im; a one-channel
    # input is contiguous and channels_last at once, and PyTorch's convolution keeps neither for it). Those routes
    # run from CPU_ONE_CHANNEL_MIN_NUMEL values on; here at these sizes (routes=True).
    _case(True, 1, 4, 2, 1, "tanh", [(2, 4, 3, 5), (0, 4, 3, 3)], bias=False, routes=True),
    _case(False, 3, 4, 2, 1, "lrelu", [(2, 1, 7, 6)], alpha=0.2, layouts=("contiguous", "noncontiguous"), routes=True),
    _case(True, 3, 3, 1, 1, "lrelu", [(1, 4, 5, 4)], alpha=0.2),  # stride 1
    # DCGAN G input: 1x1 -> 4x4 (a 1x1 map is contiguous and channels_last at once: no layout to keep)
    _case(True, 4, 4, 1, 0, "relu", [(2, 5, 1, 1), (0, 5, 1, 1)], layouts=("contiguous", "noncontiguous")),
    _case(True, 3, (3, 2), 2, 0, "linear", [(2, 4, 1, 1)], layouts=("contiguous", "noncontiguous")),  # + bias
    _case(True, 2, 3, 2, 1, "elu", [(1, 3, 3, 4)], output_padding=1),  # CycleGAN upsampling; pre-activation path
] for case in cases]
