"""The launch budget: kernel-producing ops per steady-state training step, plain PyTorch against fastgan.

    python benchmarks/launch_budget.py [--out FILE.json] [--tiny]

A GAN step on a GPU is bound by launches, not arithmetic, so this counts what a step asks the device to do: every op
that reaches the dispatcher below autograd (a ``TorchDispatchMode``), less views, allocations and host reads (they
launch no kernel). Counted on the CPU, it is the same op sequence the CUDA step runs (the same networks, losses and
optimiser calls), so it is measured here on every commit; GPU kernels per op can differ (PyTorch's own ops sometimes
launch several, fastgan's one or two), so on a GPU the suite times the steps instead.

- ``plain``: the trainer's networks in fastgan's plain-PyTorch specification (``impl="ref"``, what a user writes
  with ``torch.nn``), the discriminator run on real and on fake images apart (as the canonical recipes do) and
  ``torch.optim.Adam(foreach=True)``, the optimiser PyTorch picks on CUDA;
- ``fastgan``: the trainer as shipped on a GPU: fused kernels (``impl="native"``, the C++ twins of the CUDA ops),
  fused Adam (one op per optimiser step), and a critic without batch norm run once on real and fake together.

Steps: DCGAN-64 and WGAN-GP-64 (5 critic steps with the penalty per generator step), CycleGAN-128 (both generators
and both discriminators), at the family defaults; batch 2 (the count does not depend on it). Goal (the issue's):
fastgan's DCGAN-64 and WGAN-GP-64 steps at most 0.6x plain PyTorch's ops.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.harness import SyntheticImages
from fastgan.train import TrainConfig, Trainer

CASES = {  # name -> model, image size, widths, extra settings
    "DCGAN-64": ("dcgan", 64, 64, {}),
    "WGAN-GP-64": ("wgan-gp", 64, 64, {}),
    "CycleGAN-128": ("cyclegan", 128, 64, {"n_blocks": 9, "pool_size": 0}),
}
GOAL = 0.6  # fastgan / plain ops, DCGAN-64 and WGAN-GP-64
_NO_KERNEL = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach", "alias",
              "lift_fresh", "_local_scalar_dense", "set_", "resize_", "promote_types",
              "_record_function_enter_new", "_record_function_exit"}


class KernelOps(TorchDispatchMode):
    """Counts ops that launch work, by name (views, allocations and host reads excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not func.is_view and name not in _NO_KERNEL:
            self.ops[f"{func.namespace}::{name}"] += 1
        return func(*args, **(kwargs or {}))


def trainer(case: str, provider: str, tiny: bool) -> Trainer:
    model, size, width, extra = CASES[case]
    if tiny:
        size, width, extra = 32 if model == "cyclegan" else 16, 4, {**extra, "n_blocks": 1} if model == "cyclegan" \
            else extra
    config = TrainConfig(model=model, data="unpaired" if model == "cyclegan" else "digits", data_root="synthetic",
                         image_size=size, channels=3, batch_size=2, ngf=width, ndf=width, steps=100, device="cpu",
                         impl="ref" if provider == "plain" else "native", ema_decay=0.999, out=tempfile.mkdtemp(),
                         **extra)
    trainer = Trainer(config, dataset=SyntheticImages(8, 3, size, model == "cyclegan"), verbose=False)
    if provider == "plain":  # the canonical recipe: D on real and on fake apart; PyTorch's optimiser on CUDA
        trainer.joint_critic = False
        for name, optimizer in trainer.optimizers.items():
            group = optimizer.param_groups[0]
            trainer.optimizers[name] = torch.optim.Adam(group["params"], lr=group["lr"], betas=group["betas"],
                                                        foreach=True)
    return trainer


def count(case: str, provider: str, tiny: bool = False) -> collections.Counter[str]:
    """Ops of one steady-state step (after two steps that create the optimiser state and warm the caches)."""
    run = trainer(case, provider, tiny)
    run.train_step()
    run.train_step()
    with KernelOps() as counter:
        run.train_step()
    return counter.ops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the counts (per op) as JSON here")
    parser.add_argument("--tiny", action="store_true", help="small networks (a CPU test of this script)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results, failed = {}, []
    print("| step | plain PyTorch | fastgan | fastgan / plain | goal |\n|---|---:|---:|---:|---|")
    for case in CASES:
        ops = {provider: count(case, provider, args.tiny) for provider in ("plain", "fastgan")}
        plain, fast = (sum(ops[p].values()) for p in ("plain", "fastgan"))
        goal = GOAL if case != "CycleGAN-128" else None
        if goal is not None and fast > goal * plain:
            failed.append(case)
        print(f"| {case} | {plain} | {fast} | {fast / plain:.2f} | {f'<= {goal}' if goal else '-'} |")
        results[case] = {p: dict(ops[p].most_common()) for p in ops}
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    if failed:
        print(f"over the launch budget ({GOAL}x plain PyTorch): {', '.join(failed)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
