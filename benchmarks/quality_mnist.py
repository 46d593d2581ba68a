"""MNIST quality at equal steps: fastgan's default 28x28 DCGAN beside the plain-PyTorch recipe, one run, one data.

The recipe is the layout of PyTorch's canonical MNIST DCGAN, written with torch.nn only: G noise -> 256 @4x4 ->
128 @7x7 -> 64 @14x14 -> 1 @28x28 (transposed convolutions, batch norm, ReLU, tanh), D mirrors it (leaky ReLU 0.2,
batch norm from the second layer), N(0, 0.02) initialisation, the non-saturating loss, Adam 2e-4 betas (0.5, 0.999),
batch 64. fastgan is ``fastgan.train.Trainer`` with its defaults for ``--model dcgan --data mnist --image-size 28
--batch-size 64`` (what ``fastgan train`` runs). The two train in lockstep, one step each in turn on the same
batches' source, so their times are measured side by side too.

Judged as ``tests/test_quality.py`` judges: MNIST's t10k digits split with seed 0 into 7000 GAN / 2500 judge / 500
held-out; a LeNet (``fastgan.metrics.lenet``) trained on the judge split gives the features; ``--num`` samples of
each generator (fastgan's raw and EMA generators, the recipe's generator) are scored against the 7000 GAN-split
digits: LeNet-FID, precision, recall (k = 3).

    python -m benchmarks.quality_mnist --data-root ../shared/data/mnist --steps 1500 --seeds 0 1 --out q.json
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import dcgan28
from fastgan._io import atomic_writer
from fastgan.data import MNISTDataset
from fastgan.metrics import frechet_distance, precision_recall
from fastgan.metrics.lenet import accuracy, train_lenet
from fastgan.train import TrainConfig, Trainer

BATCH = 64
Z_DIM = 100


def recipe_networks() -> tuple[nn.Module, nn.Module]:
    """The canonical MNIST DCGAN (``benchmarks/dcgan28.py``) with DCGAN's N(0, 0.02) initialisation; D gives [N]."""
    g, d = dcgan28.generator(Z_DIM), nn.Sequential(*dcgan28.discriminator(), nn.Flatten(0))
    for m in [*g.modules(), *d.modules()]:
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    return g, d


class Recipe:
    """One training step of the plain recipe: D on real + fake, then G with the non-saturating loss."""

    def __init__(self, images: torch.Tensor, seed: int) -> None:
        torch.manual_seed(seed)
        self.g, self.d = recipe_networks()
        self.opt_g = torch.optim.Adam(self.g.parameters(), 2e-4, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.d.parameters(), 2e-4, betas=(0.5, 0.999))
        self.images, self.rng = images, torch.Generator().manual_seed(seed)
        self.order, self.cursor = torch.randperm(images.shape[0], generator=self.rng), 0

    def _batch(self) -> torch.Tensor:
        if self.cursor + BATCH > self.order.shape[0]:
            self.order, self.cursor = torch.randperm(self.images.shape[0], generator=self.rng), 0
        self.cursor += BATCH
        return self.images[self.order[self.cursor - BATCH : self.cursor]]

    def step(self) -> None:
        real = self._batch()
        fake = self.g(torch.randn(BATCH, Z_DIM, 1, 1, generator=self.rng))
        logits_real, logits_fake = self.d(real), self.d(fake.detach())
        loss_d = F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real)) + \
            F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake))
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        logits = self.d(fake)
        loss_g = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()


def mnist_splits(root: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """tests/test_quality.py's split of the t10k digits: 7000 GAN / 2500 judge / 500 held-out, images in [-1, 1]."""
    data = MNISTDataset(root, split="test")
    images = data.images.float().div(127.5).sub(1.0)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    parts = {"gan": order[:7000], "judge": order[7000:9500], "val": order[9500:]}
    return {name: (images[index], data.labels[index]) for name, index in parts.items()}


@torch.no_grad()
def samples(generator: nn.Module, num: int, seed: int) -> torch.Tensor:
    generator.eval()
    z = torch.randn(num, Z_DIM, generator=torch.Generator().manual_seed(seed))
    return torch.cat([generator(z[i : i + 500].view(-1, Z_DIM, 1, 1)) for i in range(0, num, 500)])


@functools.lru_cache(maxsize=1)
def _judge(root: Path):
    """The splits, the LeNet trained on the judge split and its features of the GAN split: once for every seed."""
    splits = mnist_splits(root)
    lenet = train_lenet(*splits["judge"], epochs=6, seed=0)
    return splits, lenet, lenet.features(splits["gan"][0])[0]


def compare(root: Path, steps: int, seed: int, num: int, out: Path, impl: str = "auto") -> dict:
    """Train both for ``steps`` in lockstep; return their LeNet scores and step times (medians, ms)."""
    splits, lenet, reference = _judge(root)
    config = TrainConfig(model="dcgan", data="mnist", image_size=28, batch_size=BATCH, steps=steps, seed=seed,
                         impl=impl, out=str(out / f"fastgan-seed{seed}"), log_every=max(steps, 1))
    trainer = Trainer(config, dataset=torch.utils.data.TensorDataset(*splits["gan"]), verbose=False)
    recipe = Recipe(splits["gan"][0], seed)
    times: dict[str, list[float]] = {"fastgan": [], "recipe": []}
    for net in trainer.nets.values():
        net.train()
    for _ in range(steps):
        for name, step in (("fastgan", trainer.train_step), ("recipe", recipe.step)):
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    generators = {"fastgan": trainer.nets["G"], "fastgan (EMA)": trainer.sampling_generator(), "recipe": recipe.g}
    scores = {}
    for name, generator in generators.items():
        feats = lenet.features(samples(generator, num, seed + 1))[0]
        precision, recall = precision_recall(reference, feats, k=3)
        scores[name] = {"lenet_fid": frechet_distance(reference, feats), "precision": precision, "recall": recall}
    step_ms = {name: 1e3 * sorted(t)[len(t) // 2] if t else float("nan") for name, t in times.items()}
    return {"seed": seed, "steps": steps, "lenet_accuracy": accuracy(lenet, *splits["val"]), "scores": scores,
            "step_ms_median": step_ms, "threads": torch.get_num_threads(), "torch": torch.__version__}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/mnist")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--num", type=int, default=5000, help="samples per generator (default: 5000)")
    parser.add_argument("--impl", default="auto")
    parser.add_argument("--work", type=Path, default=Path("runs/quality-mnist"), help="run folders of fastgan")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if not any(args.data_root.glob("t10k-images*")):
        parser.error(f"--data-root: no MNIST t10k-images-idx3-ubyte[.gz] in {args.data_root}")
    results = [compare(args.data_root, args.steps, seed, args.num, args.work, args.impl) for seed in args.seeds]
    print(f"{'seed':>4}  {'generator':<14} {'LeNet-FID':>9} {'precision':>9} {'recall':>7}   step (ms, median)")
    for r in results:
        for name, s in r["scores"].items():
            ms = r["step_ms_median"]["recipe" if name == "recipe" else "fastgan"]
            print(f"{r['seed']:>4}  {name:<14} {s['lenet_fid']:9.1f} {s['precision']:9.3f} {s['recall']:7.3f}"
                  f"   {ms:.1f}")
    if args.out:
        with atomic_writer(args.out) as f:
            f.write(json.dumps(results, indent=1).encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
