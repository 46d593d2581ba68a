"""fastgan: fast GAN training for PyTorch, as a drop-in.

- ``fastgan.ops``: fused functional ops (``bias_act``, ...), each with ``impl=`` "auto" | "ref" | "triton" | "native".
- ``fastgan.nn``: modules mirroring ``torch.nn``; ``fastgan.losses``: adversarial losses and gradient penalties.
- ``fastgan.optimize(model)``: rewrites standard conv/norm/activation blocks of a model into fused ones.
- ``fastgan.models``, ``fastgan.data``, ``fastgan.train`` (imported on demand): GAN families, datasets, trainer.
- ``fastgan.set_impl`` / ``fastgan.use_impl`` / ``$FASTGAN_IMPL``: the process-wide default implementation;
  ``fastgan.available_impls()`` says which implementations run here, and why not.

Importing fastgan never compiles anything and never fails for a missing extension, Triton or GPU.
"""

from . import losses, nn, ops
from ._backend import (
    IMPLS,
    ImplUnavailableError,
    available_backends,
    available_impls,
    get_impl,
    set_impl,
    use_impl,
)
from .optimize import optimize

__version__ = "0.1.0"

__all__ = [
    "IMPLS",
    "ImplUnavailableError",
    "available_backends",
    "available_impls",
    "get_impl",
    "losses",
    "nn",
    "ops",
    "optimize",
    "set_impl",
    "use_impl",
]
