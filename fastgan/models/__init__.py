"""The GAN families as ``torch.nn`` modules built from fastgan layers (every constructor takes ``impl=``).

- ``gan``: ``MLPGenerator`` / ``MLPDiscriminator`` (the original 2014 GAN)
- ``dcgan``: ``DCGANGenerator`` / ``DCGANDiscriminator`` (28x28 and powers of two 16..128, 1 or 3 channels)
- ``wgan``, ``wgan-gp``: the DCGAN generator and the DCGAN discriminator without batch norm as the critic
- ``cyclegan``: two ``ResnetGenerator`` and two ``PatchDiscriminator``
- ``conditional=`` (dcgan, wgan, wgan-gp): ``ConditionalDCGANGenerator`` ``G(z, labels)`` with a
  ``ProjectionDiscriminator`` (``"projection"``) or an ``ACGANDiscriminator`` (``"acgan"``)

``build_networks(model, ...)`` makes the named networks of a family; ``check_image_size`` says early whether a
family can make a size.
"""

from __future__ import annotations

from torch import nn

from .. import nn as fnn
from .conditional import CONDITIONAL, ACGANDiscriminator, ConditionalDCGANGenerator, ProjectionDiscriminator
from .cyclegan import PatchDiscriminator, ResnetBlock, ResnetGenerator, check_cyclegan_size
from .dcgan import DCGANDiscriminator, DCGANGenerator, dcgan_sizes
from .gan import MLPDiscriminator, MLPGenerator
from .layers import conv_block, dcgan_init

MODELS = ("gan", "dcgan", "wgan", "wgan-gp", "cyclegan")
_MLP_MAX_SIZE = 64  # 64x64x3 = 12288 inputs: beyond that an MLP GAN is not a sensible model


def check_model(model: str) -> str:
    """Return ``model`` if it is one of ``MODELS``; ValueError listing them otherwise."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of {', '.join(MODELS)}")
    return model


def check_image_size(model: str, image_size: int) -> None:
    """ValueError with the sizes ``model`` supports unless it can make ``image_size`` x ``image_size`` images."""
    check_model(model)
    if model == "gan":
        if not 4 <= image_size <= _MLP_MAX_SIZE:
            raise ValueError(f"GAN (MLP): image_size must be in 4..{_MLP_MAX_SIZE}, got {image_size}")
    elif model == "cyclegan":
        check_cyclegan_size(image_size)
    else:
        dcgan_sizes(image_size)


def check_conditional(model: str, conditional: str, num_classes: int | None = None) -> None:
    """ValueError naming ``--conditional`` unless ``model`` has conditional networks of that kind."""
    if conditional not in CONDITIONAL:
        raise ValueError(f"--conditional must be one of {', '.join(CONDITIONAL)}, got {conditional!r}")
    if model not in ("dcgan", "wgan", "wgan-gp"):
        raise ValueError(f"--conditional {conditional}: class-conditional networks exist for dcgan, wgan and wgan-gp, "
                         f"not {model!r}")
    if num_classes is not None and num_classes < 2:
        raise ValueError(f"--conditional {conditional}: needs at least 2 classes, got {num_classes}")


def build_networks(
    model: str,
    image_size: int,
    channels: int,
    z_dim: int = 100,
    ngf: int = 64,
    ndf: int = 64,
    n_blocks: int | None = None,
    impl: str = "auto",
    conditional: str | None = None,
    num_classes: int = 0,
) -> dict[str, nn.Module]:
    """The networks of a family by role: ``{"G", "D"}``, or ``{"G_AB", "G_BA", "D_A", "D_B"}`` for cyclegan.

    ``n_blocks`` (cyclegan) defaults to 9 for images of 256 and more, else 6, as in the paper. ``conditional``
    (``"projection"`` or ``"acgan"``, dcgan / wgan / wgan-gp only) makes class-conditional networks for
    ``num_classes`` classes.
    """
    check_image_size(model, image_size)
    if conditional is not None:
        check_conditional(model, conditional, num_classes)
        critic_norm = "batch" if model == "dcgan" else None
        D = ProjectionDiscriminator if conditional == "projection" else ACGANDiscriminator
        return {
            "G": ConditionalDCGANGenerator(image_size, channels, z_dim, ngf, num_classes, impl),
            "D": D(image_size, channels, ndf, critic_norm, num_classes, impl),
        }
    if model == "gan":
        return {
            "G": MLPGenerator(z_dim, image_size, channels, impl=impl),
            "D": MLPDiscriminator(image_size, channels, impl=impl),
        }
    if model == "cyclegan":
        blocks = n_blocks if n_blocks is not None else (9 if image_size >= 256 else 6)
        return {
            "G_AB": ResnetGenerator(channels, channels, ngf, blocks, impl),
            "G_BA": ResnetGenerator(channels, channels, ngf, blocks, impl),
            "D_A": PatchDiscriminator(channels, ndf, impl),
            "D_B": PatchDiscriminator(channels, ndf, impl),
        }
    critic_norm = "batch" if model == "dcgan" else None  # WGAN(-GP) critics: no batch norm
    return {
        "G": DCGANGenerator(image_size, channels, z_dim, ngf, "batch", impl),
        "D": DCGANDiscriminator(image_size, channels, ndf, critic_norm, impl),
    }


def per_sample(module: nn.Module) -> bool:
    """True when ``module(x)`` treats the samples of ``x`` independently and a forward changes no state, so one
    forward of a concatenated batch equals separate forwards of its parts (the trainer then runs a critic on real and
    fake images at once). Judged by an allow-list of layer types: anything else (batch norm, tracked instance norm,
    dropout, spectral norm's power iteration, a hook) answers False."""
    for layer in module.modules():
        if layer._forward_hooks or layer._forward_pre_hooks or hasattr(layer, "parametrizations"):
            return False
        if isinstance(layer, fnn.InstanceNormAct2d) and not layer.track_running_stats:
            continue
        if type(layer) not in _PER_SAMPLE:
            return False
    return True


_PER_SAMPLE = {  # layers (their own computation; children are judged apart) that mix no samples and keep no state
    nn.Sequential, nn.ModuleList, nn.Identity, nn.Flatten, nn.Conv2d, nn.Linear, nn.Embedding, nn.LeakyReLU, nn.ReLU,
    nn.Tanh, nn.Sigmoid, fnn.BiasAct, fnn.FusedConv2d, fnn.FusedLinear, fnn.FusedSequential,
    DCGANDiscriminator, ProjectionDiscriminator, ACGANDiscriminator, MLPDiscriminator, PatchDiscriminator,
}

__all__ = [
    "CONDITIONAL",
    "MODELS",
    "ACGANDiscriminator",
    "ConditionalDCGANGenerator",
    "DCGANDiscriminator",
    "DCGANGenerator",
    "MLPDiscriminator",
    "MLPGenerator",
    "PatchDiscriminator",
    "ProjectionDiscriminator",
    "ResnetBlock",
    "ResnetGenerator",
    "build_networks",
    "check_conditional",
    "check_image_size",
    "check_model",
    "conv_block",
    "dcgan_init",
    "dcgan_sizes",
    "per_sample",
]
