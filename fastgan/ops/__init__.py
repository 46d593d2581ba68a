"""Functional fused ops. Each op takes ``impl=`` ("auto", "ref", "triton", "native"); ``*_ref`` is its specification."""

from .bias_act import ACTIVATIONS, bias_act, bias_act_ref
from .conv_act import conv2d_act, conv2d_act_ref, conv_transpose2d_act, conv_transpose2d_act_ref
from .conv_bn_act import conv2d_batch_norm_act, conv_transpose2d_batch_norm_act
from .norm_act import batch_norm_act, batch_norm_act_ref, instance_norm_act, instance_norm_act_ref

__all__ = [
    "ACTIVATIONS",
    "batch_norm_act",
    "batch_norm_act_ref",
    "bias_act",
    "bias_act_ref",
    "conv2d_act",
    "conv2d_act_ref",
    "conv2d_batch_norm_act",
    "conv_transpose2d_act",
    "conv_transpose2d_act_ref",
    "conv_transpose2d_batch_norm_act",
    "instance_norm_act",
    "instance_norm_act_ref",
]
