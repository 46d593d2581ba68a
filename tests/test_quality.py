"""Quality: a DCGAN trained on real MNIST digits makes recognisable digits of every class.

Protocol (the design document's worked example, sized for CI's 2 CPU cores):

- data: MNIST's t10k files in ../shared/data/mnist (skipped with a reason when absent), split once with a fixed
  seed into 7000 images for the GAN, 2500 to train the judge and 500 to validate it;
- judge: a small CNN trained here on its 2500 held-out real digits (it must reach >= 93% validation accuracy);
- GAN: ``fastgan.train.Trainer`` with the DCGAN family at 28x28, ngf = ndf = 32, batch 64, 2000 steps, seed 0;
- criterion, on 1000 samples of the EMA generator: at least half are classified with probability >= 0.8
  ("most samples with high confidence") and every digit class takes at least 0.5% of the samples.

The criterion is shown to be able to fail: uniform noise and a generator collapsed onto one digit are rejected,
and held-out real digits are accepted.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan
from fastgan.data import MNISTDataset
from fastgan.train import TrainConfig, Trainer

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
CONFIDENCE = 0.8
MIN_CONFIDENT_FRACTION = 0.5
MIN_CLASS_FRACTION = 0.005
NUM_SAMPLES = 1000
GAN_STEPS = 2000

pytestmark = pytest.mark.slow


class _Subset(torch.utils.data.Dataset):
    """Images [N, 1, 28, 28] in [-1, 1] with labels, as the trainer reads them."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])


@pytest.fixture(scope="module")
def mnist() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    if not any(MNIST.glob("t10k-images*")):
        pytest.skip(f"MNIST test files (t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]) not in {MNIST}")
    data = MNISTDataset(MNIST, split="test")
    images = data.images.float().div(127.5).sub(1.0)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    parts = {"gan": order[:7000], "judge": order[7000:9500], "val": order[9500:]}
    return {name: (images[index], data.labels[index]) for name, index in parts.items()}


@pytest.fixture(scope="module")
def judge(mnist) -> nn.Module:
    """A small CNN trained on the judge split (about 10 s on 2 cores)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(512, 10),
    )
    optimizer = torch.optim.Adam(net.parameters(), 2e-3)
    images, labels = mnist["judge"]
    order = torch.Generator().manual_seed(0)
    for _ in range(6):
        perm = torch.randperm(images.shape[0], generator=order)
        for start in range(0, images.shape[0] - 49, 50):
            batch = perm[start : start + 50]
            loss = F.cross_entropy(net(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()
    val_images, val_labels = mnist["val"]
    with torch.no_grad():
        accuracy = (net(val_images).argmax(1) == val_labels).float().mean().item()
    assert accuracy >= 0.93, f"the judge itself is too weak: {accuracy:.3f} validation accuracy"
    return net


def judge_samples(judge: nn.Module, images: torch.Tensor) -> tuple[float, list[float]]:
    """(fraction classified with probability >= CONFIDENCE, per-class fraction of all samples among those)."""
    with torch.no_grad():
        confidence, classes = F.softmax(judge(images.float()), dim=1).max(1)
    confident = confidence >= CONFIDENCE
    counts = torch.bincount(classes[confident], minlength=10).float() / images.shape[0]
    return confident.float().mean().item(), counts.tolist()


def passes(judge: nn.Module, images: torch.Tensor) -> bool:
    fraction, classes = judge_samples(judge, images)
    return fraction >= MIN_CONFIDENT_FRACTION and min(classes) >= MIN_CLASS_FRACTION


def test_the_criterion_accepts_real_digits_and_rejects_noise_and_collapse(mnist, judge):
    real, labels = mnist["val"]
    assert passes(judge, real)
    noise = torch.rand(NUM_SAMPLES, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert not passes(judge, noise)
    blurred = F.avg_pool2d(real, 5, stride=1, padding=2)  # real digits smeared beyond recognition
    assert judge_samples(judge, blurred)[0] < judge_samples(judge, real)[0]
    three = real[labels == 3][:1]  # a generator collapsed onto one (perfect) digit
    collapsed = three.expand(NUM_SAMPLES, -1, -1, -1)
    fraction, classes = judge_samples(judge, collapsed)
    assert fraction == 1.0 and not passes(judge, collapsed)
    only_ones_and_sevens = torch.cat([real[labels == 1], real[labels == 7]])  # a partial collapse
    assert not passes(judge, only_ones_and_sevens)


def test_dcgan_on_mnist_makes_recognisable_digits(mnist, judge, tmp_path):
    impl = "native" if fastgan.available_impls()["native"]["cpu"][0] else "ref"
    config = TrainConfig(
        model="dcgan", data="mnist", image_size=28, channels=1, ngf=32, ndf=32, batch_size=64, steps=GAN_STEPS,
        seed=0, impl=impl, out=str(tmp_path), log_every=250, sample_every=GAN_STEPS, checkpoint_every=GAN_STEPS,
    )
    trainer = Trainer(config, dataset=_Subset(*mnist["gan"]), verbose=False)
    untrained = trainer.sampling_generator()
    z = torch.randn(NUM_SAMPLES, config.z_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert not passes(judge, untrained.eval()(z))  # before training: fails
    trainer.fit()
    generator = trainer.sampling_generator().eval()
    with torch.no_grad():
        samples = generator(z)
    fraction, classes = judge_samples(judge, samples)
    print(f"\nMNIST DCGAN after {GAN_STEPS} steps: {fraction:.1%} of {NUM_SAMPLES} samples classified with p >= "
          f"{CONFIDENCE}; class shares {', '.join(f'{c:.1%}' for c in classes)}")
    assert fraction >= MIN_CONFIDENT_FRACTION, f"only {fraction:.1%} of the samples look like confident digits"
    assert min(classes) >= MIN_CLASS_FRACTION, f"a digit class is (almost) missing: {classes}"
