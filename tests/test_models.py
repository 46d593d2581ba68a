"""The GAN families' networks: shapes for every supported size, clear errors otherwise, initialisation, impl."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from fastgan.models import (
    MODELS,
    DCGANDiscriminator,
    DCGANGenerator,
    PatchDiscriminator,
    ResnetGenerator,
    build_networks,
    check_image_size,
    per_sample,
)

from .conftest import require


@pytest.mark.parametrize("size", [16, 28, 32, 64, 128])
@pytest.mark.parametrize("channels", [1, 3])
def test_dcgan_makes_every_supported_size(size, channels):
    G = DCGANGenerator(size, channels, z_dim=8, ngf=4, impl="ref")
    D = DCGANDiscriminator(size, channels, ndf=4, impl="ref")
    images = G(torch.randn(3, 8))
    assert images.shape == (3, channels, size, size)
    assert images.abs().max() <= 1.0  # tanh output
    assert D(images).shape == (3,)


@pytest.mark.parametrize("size", [8, 24, 48, 100, 256])
def test_dcgan_rejects_sizes_it_cannot_make(size):
    with pytest.raises(ValueError, match=r"DCGAN: cannot make .*28 \(MNIST\) or a power of two"):
        DCGANGenerator(size, 1)
    with pytest.raises(ValueError, match="DCGAN"):
        check_image_size("wgan-gp", size)


def test_dcgan_64_has_the_canonical_parameter_count():
    # The canonical DCGAN-64 (nz=100, ngf=ndf=64, 3 channels, bias-free convs) has 3,576,704 generator and 2,765,568
    # discriminator parameters. Ours adds the output biases (3 and 1) and the first critic layer's bias (64), which
    # the canonical code drops without a norm to absorb them.
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(DCGANGenerator(64, 3, 100, 64, impl="ref")) == 3_576_704 + 3
    assert count(DCGANDiscriminator(64, 3, 64, impl="ref")) == 2_765_568 + 64 + 1


def test_dcgan_initialisation():
    torch.manual_seed(0)
    G = DCGANGenerator(64, 3, 100, 64, impl="ref")
    conv = [p for n, p in G.named_parameters() if n.endswith("weight") and p.dim() == 4]
    norm = [p for n, p in G.named_parameters() if n.endswith("weight") and p.dim() == 1]
    weights, scales = torch.cat([p.flatten() for p in conv]), torch.cat([p.flatten() for p in norm])
    assert abs(weights.mean().item()) < 1e-3 and abs(weights.std().item() - 0.02) < 1e-3
    assert abs(scales.mean().item() - 1.0) < 0.01 and abs(scales.std().item() - 0.02) < 0.01
    assert len(norm) == 4  # batch norm after every layer but the last


def test_wgan_critics_have_no_batch_norm():
    for model in ("wgan", "wgan-gp"):
        critic = build_networks(model, 32, 1, ngf=4, ndf=4, impl="ref")["D"]
        assert not any("BatchNorm" in type(m).__name__ for m in critic.modules())
        assert not any(p.dim() == 1 and n.endswith("weight") for n, p in critic.named_parameters())
    dcgan = build_networks("dcgan", 32, 1, ngf=4, ndf=4, impl="ref")["D"]
    assert any(p.dim() == 1 and n.endswith("weight") for n, p in dcgan.named_parameters())


def test_per_sample_allows_only_layers_that_mix_no_samples_and_keep_no_state():
    """What lets the trainer run a critic once on real and fake together: the WGAN critics (also optimized, also
    conditional) and the MLP and patch discriminators qualify, their outputs per sample equal to separate forwards;
    batch norm, tracked instance norm, dropout, spectral norm (a power iteration per forward) and hooks do not."""
    import fastgan

    for model in ("wgan-gp", "gan", "cyclegan"):
        for role, net in build_networks(model, 32, 1, ngf=4, ndf=4, n_blocks=1, impl="ref").items():
            if role.startswith("D"):
                assert per_sample(net) and per_sample(fastgan.optimize(net, impl="ref")), (model, role)
    critic = build_networks("wgan-gp", 16, 1, ngf=4, ndf=4, impl="ref", conditional="projection", num_classes=3)["D"]
    assert per_sample(critic)
    x, labels = torch.randn(6, 1, 16, 16), torch.tensor([0, 1, 2, 2, 1, 0])
    torch.testing.assert_close(critic(x, labels), torch.cat([critic(x[:2], labels[:2]), critic(x[2:], labels[2:])]))
    assert not per_sample(build_networks("dcgan", 16, 1, ngf=4, ndf=4, impl="ref")["D"])
    assert not per_sample(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Dropout()))
    assert not per_sample(nn.InstanceNorm2d(2, track_running_stats=True))
    assert not per_sample(torch.nn.utils.parametrizations.spectral_norm(nn.Conv2d(1, 2, 3)))
    hooked = nn.Sequential(nn.Conv2d(1, 2, 3))
    hooked.register_forward_hook(lambda *args: None)
    assert not per_sample(hooked)


def test_mlp_gan_shapes():
    nets = build_networks("gan", 28, 1, z_dim=16, impl="ref")
    images = nets["G"](torch.randn(5, 16))
    assert images.shape == (5, 1, 28, 28)
    assert nets["D"](images).shape == (5,)
    with pytest.raises(ValueError, match="GAN \\(MLP\\)"):
        check_image_size("gan", 100)


@pytest.mark.parametrize("n_blocks", [6, 9])
def test_cyclegan_generator_keeps_the_size(n_blocks):
    G = ResnetGenerator(3, 3, ngf=4, n_blocks=n_blocks, impl="ref")
    x = torch.randn(2, 3, 36, 36)
    assert G(x).shape == x.shape
    assert sum(isinstance(m, nn.ReflectionPad2d) for m in G.modules()) == 2 + 2 * n_blocks


def test_patchgan_sees_70x70_patches():
    D = PatchDiscriminator(3, ndf=4, impl="ref")
    assert D(torch.randn(1, 3, 256, 256)).shape == (1, 1, 30, 30)
    # Receptive field from the convolutions (innermost first): rf = rf * stride + (kernel - stride).
    layers = [m for m in D.modules() if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() == 4]
    rf = 1
    for m in reversed(layers):
        k, s = m.kernel_size[0], m.stride[0]
        rf = rf * s + (k - s)
    assert len(layers) == 5 and rf == 70


def test_cyclegan_rejects_bad_sizes():
    with pytest.raises(ValueError, match="CycleGAN: cannot use 30x30"):
        check_image_size("cyclegan", 30)


def test_unknown_model():
    with pytest.raises(ValueError, match="unknown model 'stylegan'"):
        build_networks("stylegan", 32, 3)
    assert MODELS == ("gan", "dcgan", "wgan", "wgan-gp", "cyclegan")


class _FastganOps(TorchDispatchMode):
    """Records the fastgan custom ops dispatched (``fastgan.<op>``)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func).startswith("fastgan."):
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _fastgan_layers(net: nn.Module) -> int:
    """Modules of fastgan.nn that run a fastgan op of their own on ``native``: not a fused conv with nothing in its
    epilogue (a norm after it, which counts itself, or a linear activation): that is cuDNN's/oneDNN's conv with its
    bias, as in eager PyTorch."""
    from fastgan.nn import FusedConv2d, FusedConvTranspose2d

    def own_op(m):
        conv = isinstance(m, FusedConv2d | FusedConvTranspose2d)
        return not (conv and (m.norm is not None or m.act == "linear"))

    return sum(type(m).__module__.startswith("fastgan.nn") and own_op(m) for m in net.modules())


@pytest.mark.parametrize("model,size", [("gan", 28), ("dcgan", 16), ("wgan-gp", 16), ("cyclegan", 32)])
def test_impl_reaches_every_fastgan_layer(model, size):
    """Built with impl="native", every fastgan layer of the forward pass runs a fastgan custom op; with "ref", none."""
    require("native", "cpu")
    x = torch.randn(2, 3, size, size) if model == "cyclegan" else torch.randn(2, 8)
    counts = {}
    for impl in ("native", "ref"):
        nets = build_networks(model, size, 3, z_dim=8, ngf=4, ndf=4, n_blocks=1, impl=impl)
        G, D = (nets[r] for r in (("G_AB", "D_A") if model == "cyclegan" else ("G", "D")))
        with torch.no_grad(), _FastganOps() as mode:
            D(G(x))
        counts[impl] = (len(mode.ops), _fastgan_layers(G) + _fastgan_layers(D))
    ops, layers = counts["native"]
    assert layers > 0 and ops >= layers
    assert counts["ref"][0] == 0
