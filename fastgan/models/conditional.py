"""Class-conditional DCGAN networks: a generator told which class to draw, and two ways for a discriminator to use
the labels.

- ``ConditionalDCGANGenerator``: the DCGAN generator whose batch norms are conditional
  (``fastgan.nn.ConditionalBatchNormAct2d``: per-class scale and shift from an embedding, de Vries et al. 2017, as
  in Miyato & Koyama 2018): ``G(z, labels)``.
- ``ProjectionDiscriminator``: the DCGAN discriminator plus the projection term ``<embed(y), h>`` on its pooled last
  features ``h`` (Miyato & Koyama 2018): ``D(x, labels) -> logits``.
- ``ACGANDiscriminator``: the DCGAN discriminator with a second head classifying the image (Odena et al. 2017):
  ``D(x) -> (logits, class_logits)``; it never sees the labels, so its head is an image classifier
  (``fastgan classify``).

With ``norm=None`` the discriminators are the WGAN-GP critics of the same kinds.
"""

from __future__ import annotations

import torch
from torch import nn

from ..nn import ConditionalBatchNormAct2d
from .dcgan import _START, DCGANDiscriminator, _kernel, _widths, dcgan_sizes
from .layers import conv_block, dcgan_init

CONDITIONAL = ("projection", "acgan")


def _balanced_labels(n: int, num_classes: int, device: torch.device) -> torch.Tensor:
    """0, 1, ..., K-1, 0, 1, ...: every class as often as ``n`` allows."""
    return torch.arange(n, device=device) % num_classes


class ConditionalDCGANGenerator(nn.Module):
    """Noise [N, z_dim] and labels [N] (int64 in 0..num_classes-1) -> images [N, channels, S, S] in (-1, 1).

    ``DCGANGenerator``'s layers, each batch norm + ReLU a ``ConditionalBatchNormAct2d`` after a bias-free
    transposed convolution; the first one also sees the label one-hot beside the noise (Mirza & Osindero 2014). Both:
    with Adam a class's scale and shift move about one learning rate (2e-4) a step, so conditional batch norm alone
    leaves the classes mixed for the first thousands of steps; the one-hot input separates them within a few hundred
    (on the bundled digits after 300 acgan steps, 13% of the samples were recognised as their class without it and
    97% with it: tests/test_conditional.py). ``labels=None`` draws the classes in turn (0, 1, ..., K-1, 0, ...), so
    code that calls ``G(z)`` (quality scores, ``fastgan eval``) sees every class equally often. Each hidden block runs
    as one op, :func:`fastgan.ops.conv_transpose2d_conditional_batch_norm_act`.
    """

    def __init__(
        self,
        image_size: int = 64,
        channels: int = 3,
        z_dim: int = 100,
        ngf: int = 64,
        num_classes: int = 10,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        sizes = dcgan_sizes(image_size)
        self.z_dim, self.image_size, self.channels, self.num_classes = z_dim, image_size, channels, num_classes
        widths = _widths(ngf, len(sizes) - 1)[::-1] + [channels]
        convs = [conv_block(z_dim + num_classes, widths[0], _START, 1, 0, bias=False, transposed=True, impl=impl)]
        convs += [conv_block(widths[i], widths[i + 1], _kernel(sizes[i], sizes[i + 1]), 2, 1, bias=False,
                             transposed=True, impl=impl) for i in range(len(sizes) - 2)]
        self.convs = nn.ModuleList(convs)
        self.norms = nn.ModuleList(ConditionalBatchNormAct2d(w, num_classes, act="relu", impl=impl)
                                   for w in widths[:-1])
        self.out = conv_block(widths[-2], channels, _kernel(sizes[-2], sizes[-1]), 2, 1, act="tanh", transposed=True,
                              impl=impl)
        dcgan_init(self)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is None:
            labels = _balanced_labels(z.shape[0], self.num_classes, z.device)
        # Not F.one_hot: it checks the labels' range on the host, a synchronisation in every step.
        onehot = (labels[:, None] == torch.arange(self.num_classes, device=labels.device)).to(z.dtype)
        x = torch.cat([z.view(z.shape[0], self.z_dim), onehot], 1).view(z.shape[0], -1, 1, 1)
        for conv, norm in zip(self.convs, self.norms):
            x = norm.after_conv_transpose(conv, x, labels)
        return self.out(x)


class ProjectionDiscriminator(DCGANDiscriminator):
    """Images [N, C, S, S] and labels [N] -> logits [N]: ``DCGANDiscriminator``'s logit plus ``<embed(y), h>``, ``h``
    the last feature map summed over its positions (the projection discriminator, Miyato & Koyama 2018)."""

    def __init__(
        self,
        image_size: int = 64,
        channels: int = 3,
        ndf: int = 64,
        norm: str | None = "batch",
        num_classes: int = 10,
        impl: str = "auto",
    ) -> None:
        super().__init__(image_size, channels, ndf, norm, impl)
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes, self.net[-1].in_channels)
        nn.init.normal_(self.embed.weight, 0.0, 0.02)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.net[:-1](x)
        projection = (self.embed(labels) * h.float().sum((2, 3))).sum(1)
        return self.net[-1](h).view(-1) + projection.to(h.dtype)


class ACGANDiscriminator(DCGANDiscriminator):
    """Images [N, C, S, S] -> (logits [N], class logits [N, num_classes]): ``DCGANDiscriminator`` with a second
    ``start x start`` convolution on its last features that classifies (the auxiliary classifier, Odena et al.
    2017)."""

    def __init__(
        self,
        image_size: int = 64,
        channels: int = 3,
        ndf: int = 64,
        norm: str | None = "batch",
        num_classes: int = 10,
        impl: str = "auto",
    ) -> None:
        super().__init__(image_size, channels, ndf, norm, impl)
        self.num_classes = num_classes
        self.classifier = conv_block(self.net[-1].in_channels, num_classes, _START, 1, 0, impl=impl)
        dcgan_init(self.classifier)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net[:-1](x)
        return self.net[-1](h).view(-1), self.classifier(h).flatten(1)

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The predicted class of each image [N] (int64)."""
        return self.forward(x)[1].argmax(1)
