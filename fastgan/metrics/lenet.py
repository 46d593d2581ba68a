"""A LeNet-style digit classifier whose penultimate layer gives FID features for 28x28 grey images.

The usual MNIST practice ("FID (LeNet features)"): Inception, trained on photographs, sees little in 28x28 digits
upscaled to 299x299, while a small classifier trained on the digits themselves separates exactly what matters
(shape, class, stroke). ``fastgan eval --features lenet`` trains one on the dataset's labelled training split on
first use (a minute or so on 2 CPU cores), reports its held-out accuracy and caches it, keyed by the training data's
checksum, so every later evaluation uses the very same network.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .._io import atomic_writer

FEATURES = 128
_CACHE_VERSION = 1


class LeNetFeatures(nn.Module):
    """conv5-32, pool, conv5-64, pool, fc-128 (the features), fc-10. Input ``[N, 1, 28, 28]`` in [-1, 1].

    ``forward`` returns class logits ``[N, 10]``; ``features(x)`` the 128 ReLU activations of the penultimate layer.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5)
        self.conv2 = nn.Conv2d(32, 64, 5)
        self.fc1 = nn.Linear(64 * 4 * 4, FEATURES)
        self.fc2 = nn.Linear(FEATURES, 10)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError(f"LeNet features: images must be [N, 1, 28, 28], got shape {tuple(x.shape)}")
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc1(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.embed(x))

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
        """(features [N, 128], logits [N, 10]) of images in [-1, 1], float32, computed in batches."""
        device = self.fc2.weight.device
        feats, logits = [], []
        for start in range(0, images.shape[0], batch_size):
            e = self.embed(images[start : start + batch_size].to(device).float())
            feats.append(e.cpu())
            logits.append(self.fc2(e).cpu())
        return torch.cat(feats), torch.cat(logits)


def train_lenet(images: torch.Tensor, labels: torch.Tensor, epochs: int = 2, seed: int = 0,
                batch_size: int = 64) -> LeNetFeatures:
    """Train a ``LeNetFeatures`` on ``images`` [N, 1, 28, 28] in [-1, 1] with ``labels`` [N] (Adam 1e-3, seeded)."""
    if images.shape[0] != labels.shape[0] or images.shape[0] < batch_size:
        raise ValueError(f"train_lenet: need as many labels as images (>= {batch_size}), got {images.shape[0]} "
                         f"images and {labels.shape[0]} labels")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = LeNetFeatures()
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    order = torch.Generator().manual_seed(seed)
    images, labels = images.float(), labels.long()
    for _ in range(epochs):
        perm = torch.randperm(images.shape[0], generator=order)
        for start in range(0, images.shape[0] - batch_size + 1, batch_size):
            batch = perm[start : start + batch_size]
            loss = F.cross_entropy(net(images[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return net.eval().requires_grad_(False)


@torch.no_grad()
def accuracy(net: LeNetFeatures, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``images`` the network classifies as ``labels``."""
    _, logits = net.features(images)
    return float((logits.argmax(1) == labels.long()).double().mean())


def data_key(images: torch.Tensor, labels: torch.Tensor) -> str:
    """A checksum of a labelled training set: a cached network is reused only for the very same data."""
    digest = hashlib.sha256()
    digest.update(str(tuple(images.shape)).encode())
    digest.update(images.float().contiguous().numpy().tobytes())
    digest.update(labels.long().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def default_cache_dir() -> Path:
    """``$FASTGAN_CACHE/metrics`` or ``~/.cache/fastgan/metrics``."""
    root = os.environ.get("FASTGAN_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "fastgan") / "metrics"


def cached_lenet(
    train: tuple[torch.Tensor, torch.Tensor],
    held_out: tuple[torch.Tensor, torch.Tensor],
    cache_dir: str | os.PathLike[str] | None = None,
    epochs: int = 2,
) -> tuple[LeNetFeatures, float, Path, bool]:
    """(network, held-out accuracy, cache file, whether it was trained now): the network for this training set,
    from the cache when one was trained on the same data before, else trained on ``train`` and saved atomically."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    file = folder / f"lenet-{data_key(*train)}-e{epochs}-v{_CACHE_VERSION}.pt"
    if file.is_file():
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
            net = LeNetFeatures()
            net.load_state_dict(state["net"])
            return net.eval().requires_grad_(False), float(state["accuracy"]), file, False
        except (RuntimeError, KeyError, OSError, EOFError, pickle.UnpicklingError):
            pass  # a damaged cache entry is retrained and replaced
    net = train_lenet(*train, epochs=epochs)
    acc = accuracy(net, *held_out)
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"net": net.state_dict(), "accuracy": acc, "epochs": epochs}, buffer)
    with atomic_writer(file) as handle:
        handle.write(buffer.getvalue())
    return net, acc, file, True
