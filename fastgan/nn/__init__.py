"""Modules mirroring ``torch.nn`` that run fastgan's fused ops."""

from .bias_act import BiasAct
from .common import activation_of
from .conv import FusedConv2d, FusedConvTranspose2d, FusedSequential
from .linear import FusedLinear
from .norm_act import BatchNormAct2d, ConditionalBatchNormAct2d, InstanceNormAct2d

__all__ = [
    "BatchNormAct2d",
    "BiasAct",
    "ConditionalBatchNormAct2d",
    "FusedConv2d",
    "FusedConvTranspose2d",
    "FusedLinear",
    "FusedSequential",
    "InstanceNormAct2d",
    "activation_of",
]
