"""Generating images from a checkpoint (``fastgan sample``): a grid PNG, a folder of PNGs, or a uint8 .npy; for a
class-conditional run, of one class (``--class K``) or of every class, one grid row each (``--class all``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data import make_dataset, save_image_grid, save_images, to_uint8_hwc
from ..models import build_networks
from .checkpoint import load_checkpoint
from .config import TrainConfig, resolve_device


def load_networks(
    checkpoint: str | os.PathLike[str], roles: tuple[str, ...] | None = None, device: str = "auto",
    impl: str | None = None, ema: bool = True,
) -> tuple[dict[str, nn.Module], TrainConfig, torch.device, list[str]]:
    """Networks ``roles`` (default: the sampled generator, G or G_AB) of a checkpoint (the generator's EMA when saved
    and ``ema``), in eval mode, with the run's config, device and class names (empty for unconditional runs)."""
    state = load_checkpoint(checkpoint)
    config = TrainConfig.from_dict(state["config"])
    roles = roles or (("G_AB",) if config.model == "cyclegan" else ("G",))
    if impl is not None:
        config.impl = impl
    target = resolve_device(device)
    classes = list(state.get("classes") or [])
    nets = build_networks(config.model, config.image_size, config.channels, config.z_dim, config.ngf, config.ndf,
                          config.n_blocks, config.impl, config.conditional, len(classes))
    out = {}
    for role in roles:
        use_ema = ema and role.startswith("G") and state.get("ema") is not None
        nets[role].load_state_dict(state["ema"] if use_ema else state["nets"][role])
        out[role] = nets[role].to(target).eval()
    return out, config, target, classes


def load_generator(
    checkpoint: str | os.PathLike[str], device: str = "auto", impl: str | None = None, ema: bool = True
) -> tuple[nn.Module, TrainConfig, torch.device]:
    """The generator of a checkpoint (its EMA when saved and ``ema``), in eval mode, with the run's config."""
    nets, config, target, _ = load_networks(checkpoint, None, device, impl, ema)
    return next(iter(nets.values())), config, target


@torch.no_grad()
def generate(
    generator: nn.Module, config: TrainConfig, device: torch.device, num: int, seed: int = 0, batch_size: int = 256,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """``num`` images [num, C, S, S] float32 in [-1, 1] on the CPU, from noise seeded with ``seed``.

    For cyclegan the inputs are the first ``num`` A images of the run's data (test split when present), translated.
    ``labels`` ([num] int64): the classes a conditional generator draws (default: the classes in turn).
    """
    noise = torch.Generator(device).manual_seed(seed)
    if config.model == "cyclegan":
        inputs = _cyclegan_inputs(config, num)
    out = []
    for start in range(0, num, batch_size):
        n = min(batch_size, num - start)
        if config.model == "cyclegan":
            x = inputs[start : start + n].to(device)
        else:
            x = torch.randn(n, config.z_dim, generator=noise, device=device)
        if labels is not None:
            out.append(generator(x, labels[start : start + n].to(device)).float().cpu())
        else:
            out.append(generator(x).float().cpu())
    return torch.cat(out)


def class_labels(which: str, classes: list[str], num: int) -> tuple[torch.Tensor, int | None]:
    """``fastgan sample --class``: (labels, grid row length) for ``which`` = a class index or name (``num`` images of
    it) or ``all`` (``num`` images of each class, one class per grid row). ValueError naming --class otherwise."""
    if not classes:
        raise ValueError("--class needs a class-conditional run (fastgan train --conditional); this run is not one")
    if which == "all":
        return torch.arange(len(classes)).repeat_interleave(num), num
    if which in classes and not which.isdigit():
        return torch.full((num,), classes.index(which), dtype=torch.int64), None
    try:
        index = int(which)
    except ValueError:
        index = -1
    if not 0 <= index < len(classes):
        raise ValueError(f"--class {which}: expected all, a class index 0..{len(classes) - 1} or a class name "
                         f"({', '.join(classes)})")
    return torch.full((num,), index, dtype=torch.int64), None


def _cyclegan_inputs(config: TrainConfig, num: int) -> torch.Tensor:
    """The first ``num`` A images of the run's data (its test split when there is one), without augmentation."""
    try:
        dataset = make_dataset(config.data, config.data_root, config.image_size, config.channels, "test")
    except FileNotFoundError:
        dataset = make_dataset(config.data, config.data_root, config.image_size, config.channels, "train")
    if num > dataset.counts[0]:
        raise ValueError(f"cyclegan sample: the run's data has {dataset.counts[0]} A images, asked for {num} "
                         "(lower --num)")
    return dataset.domain_a(num)


def write_samples(
    generator: nn.Module,
    config: TrainConfig,
    device: torch.device,
    num: int,
    out: str | os.PathLike[str],
    seed: int = 0,
    batch_size: int = 256,
    labels: torch.Tensor | None = None,
    nrow: int | None = None,
) -> Path:
    """Generate ``num`` images (of ``labels``, for a conditional generator) and write them by ``out``'s form: ``.png``
    grid (``nrow`` images a row), ``.npy`` uint8 [N, H, W, C], or a folder of ``000000.png`` ... (what FID tools
    read)."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in ("", ".png", ".npy"):
        raise ValueError(f"--out {out}: expected a .png file, a .npy file or a folder (no extension)")
    images = generate(generator, config, device, num, seed, batch_size, labels)
    if suffix == ".png":
        return save_image_grid(images, out, nrow=nrow)
    if suffix == ".npy":
        out.parent.mkdir(parents=True, exist_ok=True)
        np.save(out, to_uint8_hwc(images))
        return out
    save_images(images, out)
    return out
