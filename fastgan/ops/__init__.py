"""Functional fused ops, one unit per op in ``fastgan/ops/<op>.py``. Each op takes ``impl=`` ("auto", "ref",
"triton", "native"); ``*_ref`` is its specification.

- ``bias_act``: bias + activation (+ gain, clamp); ``ACTIVATIONS`` is the activation table every op shares.
- ``conv_act``: ``conv2d_act`` / ``conv_transpose2d_act``, a convolution with bias + activation in its epilogue.
- ``norm_act``: ``batch_norm_act`` / ``instance_norm_act`` / ``conditional_batch_norm_act`` (per-sample scale and
  shift), normalization + activation with running statistics.
- ``conv_bn_act``: ``conv2d_batch_norm_act`` / ``conv_transpose2d_batch_norm_act``, conv -> batch norm -> activation
  (``conv_transpose2d_conditional_batch_norm_act``: a conditional generator's block).
- ``gan_loss``: the adversarial losses ``d_loss`` / ``g_loss`` (``LOSS_KINDS``).
- ``penalty``: the gradient-penalty head ``interpolate`` / ``grad_norm_penalty``.

``fastgan.losses`` builds the penalties (``gradient_penalty``, ``r1_penalty``) and loss modules on these.
"""

from .bias_act import ACTIVATIONS, bias_act, bias_act_ref
from .conv_act import conv2d_act, conv2d_act_ref, conv_transpose2d_act, conv_transpose2d_act_ref
from .conv_bn_act import (
    conv2d_batch_norm_act,
    conv_transpose2d_batch_norm_act,
    conv_transpose2d_conditional_batch_norm_act,
)
from .gan_loss import LOSS_KINDS, d_loss, d_loss_ref, g_loss, g_loss_ref
from .norm_act import (
    batch_norm_act,
    batch_norm_act_ref,
    conditional_batch_norm_act,
    conditional_batch_norm_act_ref,
    instance_norm_act,
    instance_norm_act_ref,
)
from .penalty import grad_norm_penalty, grad_norm_penalty_ref, interpolate, interpolate_ref

__all__ = [
    "ACTIVATIONS",
    "LOSS_KINDS",
    "batch_norm_act",
    "batch_norm_act_ref",
    "bias_act",
    "bias_act_ref",
    "conv2d_act",
    "conv2d_act_ref",
    "conditional_batch_norm_act",
    "conditional_batch_norm_act_ref",
    "conv2d_batch_norm_act",
    "conv_transpose2d_act",
    "conv_transpose2d_act_ref",
    "conv_transpose2d_batch_norm_act",
    "conv_transpose2d_conditional_batch_norm_act",
    "d_loss",
    "d_loss_ref",
    "g_loss",
    "g_loss_ref",
    "grad_norm_penalty",
    "grad_norm_penalty_ref",
    "instance_norm_act",
    "instance_norm_act_ref",
    "interpolate",
    "interpolate_ref",
]
