"""Generating images from a checkpoint (``fastgan sample``): a grid PNG, a folder of PNGs, or a uint8 .npy."""

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


def load_generator(
    checkpoint: str | os.PathLike[str], device: str = "auto", impl: str | None = None, ema: bool = True
) -> tuple[nn.Module, TrainConfig, torch.device]:
    """The generator of a checkpoint (its EMA when saved and ``ema``), in eval mode, with the run's config."""
    state = load_checkpoint(checkpoint)
    config = TrainConfig.from_dict(state["config"])
    if impl is not None:
        config.impl = impl
    target = resolve_device(device)
    role = "G_AB" if config.model == "cyclegan" else "G"
    nets = build_networks(config.model, config.image_size, config.channels, config.z_dim, config.ngf, config.ndf,
                          config.n_blocks, config.impl)
    generator = nets[role]
    weights = state["ema"] if ema and state.get("ema") is not None else state["nets"][role]
    generator.load_state_dict(weights)
    return generator.to(target).eval(), config, target


@torch.no_grad()
def generate(
    generator: nn.Module, config: TrainConfig, device: torch.device, num: int, seed: int = 0, batch_size: int = 256
) -> torch.Tensor:
    """``num`` images [num, C, S, S] float32 in [-1, 1] on the CPU, from noise seeded with ``seed``.

    For cyclegan the inputs are the first ``num`` A images of the run's data (test split when present), translated.
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
        out.append(generator(x).float().cpu())
    return torch.cat(out)


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
) -> Path:
    """Generate ``num`` images and write them by ``out``'s form: ``.png`` grid, ``.npy`` uint8 [N, H, W, C], or a
    folder of ``000000.png`` ... (what FID tools read)."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in ("", ".png", ".npy"):
        raise ValueError(f"--out {out}: expected a .png file, a .npy file or a folder (no extension)")
    images = generate(generator, config, device, num, seed, batch_size)
    if suffix == ".png":
        return save_image_grid(images, out)
    if suffix == ".npy":
        out.parent.mkdir(parents=True, exist_ok=True)
        np.save(out, to_uint8_hwc(images))
        return out
    save_images(images, out)
    return out
