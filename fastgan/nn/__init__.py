"""Modules mirroring ``torch.nn`` that run fastgan's fused ops."""

from .bias_act import BiasAct
from .norm_act import BatchNormAct2d, InstanceNormAct2d, activation_of

__all__ = ["BatchNormAct2d", "BiasAct", "InstanceNormAct2d", "activation_of"]
