"""Recognising images with a trained discriminator (``fastgan classify``): the auxiliary classifier of a
``--conditional acgan`` run's discriminator, its accuracy on a labelled dataset, and the class of each image in a
folder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data import make_dataset
from .config import TrainConfig
from .sampling import load_networks


def load_classifier(
    checkpoint: str | os.PathLike[str], device: str = "auto", impl: str | None = None
) -> tuple[nn.Module, TrainConfig, torch.device, list[str]]:
    """The discriminator of an acgan checkpoint in eval mode, with the run's config, device and class names;
    ValueError when the run has no classifier."""
    nets, config, target, classes = load_networks(checkpoint, ("D",), device, impl)
    if config.conditional != "acgan":
        kind = f"--conditional {config.conditional}" if config.conditional else "an unconditional run"
        raise ValueError(f"{checkpoint} is {kind}: only a discriminator trained with --conditional acgan has a "
                         "classifier head")
    return nets["D"], config, target, classes


@torch.no_grad()
def predict(D: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """Predicted classes [N] (int64, CPU) of images [N, C, S, S] in [-1, 1]."""
    return torch.cat([D(images[i : i + batch_size].to(device))[1].argmax(1).cpu()
                      for i in range(0, len(images), batch_size)])


@torch.no_grad()
def accuracy(D: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 256) -> tuple[float, int]:
    """(fraction of ``dataset``'s (image, label) items classified right, number of items)."""
    right = total = 0
    for images, labels in DataLoader(dataset, batch_size=batch_size):
        right += int((predict(D, images, device, batch_size) == labels).sum())
        total += len(labels)
    return right / max(total, 1), total


def evaluation_dataset(config: TrainConfig, data: str | None, data_root: str | None) -> tuple[Dataset, str]:
    """The labelled images to score: ``data`` (default: the run's) at the run's size, its test split where it has
    one (digits and folder have none: all their images). Returns (dataset, split)."""
    name = data or config.data
    split = "train" if name in ("digits", "folder") else "test"
    root = data_root if data_root is not None else (config.data_root if name == config.data else None)
    return make_dataset(name, root, config.image_size, config.channels, split, cli=True), split


def classify_folder(
    D: nn.Module, config: TrainConfig, device: torch.device, folder: str | os.PathLike[str], batch_size: int = 256
) -> Iterator[tuple[Path, int]]:
    """(path, predicted class) of every image under ``folder``, read as the run's images (size, channels), in
    order; read and classified ``batch_size`` at a time, so a folder of any size takes bounded memory."""
    dataset = make_dataset("folder", folder, config.image_size, config.channels, cli=True)
    paths = iter(dataset.paths)
    for images, _ in DataLoader(dataset, batch_size=batch_size):
        for label in predict(D, images, device, batch_size).tolist():
            yield next(paths), label
