"""Functional fused ops. Each op takes ``impl=`` ("auto", "ref", "triton", "native"); ``*_ref`` is its specification."""

from .bias_act import ACTIVATIONS, bias_act, bias_act_ref

__all__ = ["ACTIVATIONS", "bias_act", "bias_act_ref"]
