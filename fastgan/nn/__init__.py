"""Modules mirroring ``torch.nn`` that run fastgan's fused ops."""

from .bias_act import BiasAct

__all__ = ["BiasAct"]
