"""conv2d_batch_norm_act / conv_transpose2d_batch_norm_act in the parity matrix: DCGAN's generator block
(ConvTranspose2d -> BatchNorm2d -> ReLU) and discriminator block (Conv2d -> BatchNorm2d -> LeakyReLU) shrunk to CPU
size, in training mode (on Triton the batch statistics come from the convolution's epilogue) and evaluation mode.
Inputs: x, conv weight, norm weight, norm bias, conv bias, running statistics. The conv bias is differentiated in
evaluation mode only: in training the batch norm subtracts it again, so its gradient is zero in exact arithmetic and
any float result (PyTorch's or ours) is summation noise, not comparable across implementations.
"""

from __future__ import annotations

import torch

from fastgan.ops import batch_norm_act_ref, conv2d_act_ref, conv_transpose2d_act_ref
from fastgan.ops.conv_bn_act import conv2d_batch_norm_act, conv_transpose2d_batch_norm_act

from ..registry import OpCase


def _case(transposed: bool, out_channels: int, k: int, stride: int, padding: int, act: str, shapes,
          training: bool = True, output_padding: int = 0, alpha: float | None = None, **kw) -> list[OpCase]:
    def make_inputs(shape, gen):
        c = shape[1]
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        w_shape = (c, out_channels, k, k) if transposed else (out_channels, c, k, k)
        w = torch.randn(w_shape, generator=gen, dtype=torch.float64) / (c * k * k) ** 0.5
        b = torch.randn(out_channels, generator=gen, dtype=torch.float64) + 2  # a mean far from 0
        norm_w = 1 + 0.5 * torch.randn(out_channels, generator=gen, dtype=torch.float64)
        norm_b = 0.5 * torch.randn(out_channels, generator=gen, dtype=torch.float64)
        running_mean = torch.randn(out_channels, generator=gen, dtype=torch.float64) + 2
        running_var = torch.rand(out_channels, generator=gen, dtype=torch.float64) + 0.5
        return x, w, norm_w, norm_b, b, running_mean, running_var

    conv_args = (stride, padding, output_padding) if transposed else (stride, padding)

    def norm_kwargs(nw, nb, rm, rv):
        # Training uses no running statistics here (their update is tested in tests/test_conv_act.py); evaluation
        # normalizes with them.
        stats = (None, None) if training else (rm, rv)
        return dict(norm_weight=nw, norm_bias=nb, running_mean=stats[0], running_var=stats[1], training=training,
                    act=act, alpha=alpha)

    fused = conv_transpose2d_batch_norm_act if transposed else conv2d_batch_norm_act
    conv_ref = conv_transpose2d_act_ref if transposed else conv2d_act_ref

    def fn(x, w, nw, nb, b, rm, rv, impl="auto"):
        return fused(x, w, b, *conv_args, **norm_kwargs(nw, nb, rm, rv), impl=impl)

    def ref(x, w, nw, nb, b, rm, rv):
        kwargs = norm_kwargs(nw, nb, rm, rv)
        z = conv_ref(x, w, b, *conv_args)
        return batch_norm_act_ref(z, nw, nb, kwargs["running_mean"], kwargs["running_var"], training, 0.1, 1e-5,
                                  act, alpha)

    op = "conv_transpose2d_batch_norm_act" if transposed else "conv2d_batch_norm_act"
    name = f"{op}[k={k},s={stride},p={padding},{act},{'train' if training else 'eval'}]"
    common = dict(name=name, fn=fn, ref=ref, make_inputs=make_inputs, num_grad_inputs=4 if training else 5,
                  shapes=shapes)
    # The Triton interpreter takes seconds per configuration: Triton runs float32 and bfloat16, two layouts.
    return [
        OpCase(impls=("ref", "native"), **common, **kw),
        OpCase(impls=("triton",), dtypes=(torch.float32, torch.bfloat16), layouts=("contiguous", "channels_last"),
               **common, **kw),
    ]


CASES = [case for cases in [
    _case(True, 3, 4, 2, 1, "relu", [(2, 4, 3, 3), (0, 4, 3, 3)]),  # DCGAN G hidden block
    _case(False, 4, 4, 2, 1, "lrelu", [(2, 3, 7, 6)], alpha=0.2),  # DCGAN D hidden block, odd size
    _case(False, 3, 3, 1, 1, "relu", [(2, 2, 5, 4)], training=False),
] for case in cases]
