"""Whole training steps (one generator update with its discriminator update) per GAN family and provider.

The step is ``Trainer.train_step`` on synthetic data already on the device (so data loading is not timed):

- ``eager``: the same networks and losses with ``impl="ref"``, fastgan's plain-PyTorch specification of every op;
- ``compile``: those networks under ``torch.compile``;
- ``native`` / ``triton``: fastgan's kernels.

On a GPU: DCGAN-64 at batch 64 and 128, WGAN-GP with the DCGAN critic (one critic step with the gradient penalty
plus one generator step), CycleGAN-256 at batch 1, in bfloat16 autocast and channels_last. On CPU, shrunk shapes
in float32 exercise the same code. Goal on a GPU (measured, not asserted): DCGAN-64 bf16 step at batch 128 >= 3x
eager and >= 1.25x ``torch.compile``.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.harness import DEVICE, ON_GPU, PROVIDERS, SyntheticImages, measure, require_provider
from fastgan.train import TrainConfig, Trainer

# name -> (model, image size, batch sizes, widths, extra settings); the GPU shapes are the issue's.
CASES_GPU = {
    "dcgan64": ("dcgan", 64, (64, 128), 64, {}),
    "wgan-gp64": ("wgan-gp", 64, (64,), 64, {"n_critic": 1}),
    "cyclegan256": ("cyclegan", 256, (1,), 64, {"n_blocks": 9}),
}
CASES_CPU = {
    "dcgan32": ("dcgan", 32, (8,), 16, {}),
    "wgan-gp28": ("wgan-gp", 28, (8,), 16, {"n_critic": 1}),  # 28 and 32 side by side: the MNIST and digits sizes
    "wgan-gp32": ("wgan-gp", 32, (8,), 16, {"n_critic": 1}),
    "cyclegan32": ("cyclegan", 32, (1,), 8, {"n_blocks": 2}),
}
CASES = CASES_GPU if ON_GPU else CASES_CPU
AMP = "bf16" if ON_GPU else "off"


def _trainer(provider: str, case: str, batch: int, tmp_path) -> Trainer:
    model, size, _, width, extra = CASES[case]
    config = TrainConfig(
        model=model, data="unpaired" if model == "cyclegan" else "digits", data_root="synthetic", image_size=size,
        channels=3, batch_size=batch, steps=10**6, device=DEVICE, impl="ref" if provider in ("eager", "compile")
        else provider, amp=AMP, channels_last=ON_GPU, ngf=width, ndf=width, out=str(tmp_path), **extra,
    )
    data = SyntheticImages(max(2 * batch, 2), 3, size, model == "cyclegan")
    trainer = Trainer(config, dataset=data, verbose=False)
    if provider == "compile":
        trainer.nets = {role: torch.compile(net) for role, net in trainer.nets.items()}
    return trainer


@pytest.mark.parametrize("case,batch", [(c, b) for c, spec in CASES.items() for b in spec[2]],
                         ids=lambda v: str(v))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_train_step(benchmark, provider, case, batch, tmp_path):
    require_provider(provider)
    trainer = _trainer(provider, case, batch, tmp_path)
    benchmark.group = f"train_step-{case}-b{batch}-{AMP}"
    measure(benchmark, trainer.train_step, op="train_step", provider=provider, mode="step", shape=f"{case}-b{batch}",
            dtype=AMP)
