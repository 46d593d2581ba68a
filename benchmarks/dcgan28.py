"""The canonical 28x28 MNIST DCGAN training step, plain PyTorch or through ``fastgan.optimize``.

G: noise 100 -> 256 (4x4) -> 128 (7x7) -> 64 (14x14) transposed convs with BatchNorm + ReLU, then a stride-2
transposed conv to 1 channel (28x28) and tanh; D mirrors it (4x4 stride-2 convs, BatchNorm from the second layer,
LeakyReLU 0.2, one logit); no biases, as in PyTorch's DCGAN example. One step: a discriminator update on real and
(detached) fake images, then a generator update, BCE with logits, Adam, batch 64. The data are fixed random images
(loading is not timed). ``benchmarks/quality_mnist.py`` trains these networks as the plain recipe.

``python -m benchmarks.dcgan28`` times the step as a user meets it: each configuration in a fresh process of its own
(one script run plain, one through ``optimize``), processes alternating, and reports each pair's ratio with the
minor page faults per step (glibc hands freed buffers of a few MB back to the system and faults them in again, which
on a small VM moves a step by 10-25%). ``--pairs 0`` interleaves the configurations' rounds in one process instead
(the VM's drift cancels; the faults then depend on what the others leave in the heap). ``--bytes`` prints the new
tensors' bytes per step.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import fastgan


def generator(z_dim: int = 100) -> nn.Sequential:
    """The canonical MNIST generator: [N, z_dim, 1, 1] -> [N, 1, 28, 28]."""
    return nn.Sequential(
        nn.ConvTranspose2d(z_dim, 256, 4, 1, 0, bias=False), nn.BatchNorm2d(256), nn.ReLU(),
        nn.ConvTranspose2d(256, 128, 3, 2, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
        nn.ConvTranspose2d(128, 64, 4, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.ConvTranspose2d(64, 1, 4, 2, 1, bias=False), nn.Tanh(),
    )


def discriminator() -> nn.Sequential:
    """The mirrored discriminator: [N, 1, 28, 28] -> logits [N, 1, 1, 1]."""
    return nn.Sequential(
        nn.Conv2d(1, 64, 4, 2, 1, bias=False), nn.LeakyReLU(0.2),
        nn.Conv2d(64, 128, 4, 2, 1, bias=False), nn.BatchNorm2d(128), nn.LeakyReLU(0.2),
        nn.Conv2d(128, 256, 3, 2, 1, bias=False), nn.BatchNorm2d(256), nn.LeakyReLU(0.2),
        nn.Conv2d(256, 1, 4, 1, 0, bias=False),
    )


def make_step(impl: str | None, batch: int = 64, seed: int = 0, channels_last: bool = False,
              fused_channels_last: bool = False) -> Callable[[], tuple[float, float]]:
    """One training step as a closure: ``impl=None`` is plain PyTorch, otherwise ``fastgan.optimize(..., impl=)``
    (``fused_channels_last``: its ``channels_last=True``); ``channels_last``: the models and images converted to
    channels_last, as a user would for plain PyTorch."""
    torch.manual_seed(seed)
    g, d = generator(), discriminator()
    if impl is not None:
        g, d = (fastgan.optimize(m, impl=impl, channels_last=fused_channels_last) for m in (g, d))
    if channels_last:
        g, d = g.to(memory_format=torch.channels_last), d.to(memory_format=torch.channels_last)
    opt_g = torch.optim.Adam(g.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), 2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(seed)
    real = torch.rand(batch, 1, 28, 28, generator=gen) * 2 - 1
    z = torch.randn(batch, 100, 1, 1, generator=gen)
    if channels_last:
        real = real.contiguous(memory_format=torch.channels_last)
    ones, zeros = torch.ones(batch), torch.zeros(batch)

    def step() -> tuple[float, float]:
        fake = g(z)
        opt_d.zero_grad(set_to_none=True)
        loss_d = bce(d(real).view(-1), ones) + bce(d(fake.detach()).view(-1), zeros)
        loss_d.backward()
        opt_d.step()
        opt_g.zero_grad(set_to_none=True)
        loss_g = bce(d(fake).view(-1), ones)
        loss_g.backward()
        opt_g.step()
        return loss_d.detach(), loss_g.detach()

    return step


class _NewTensorBytes(TorchDispatchMode):
    """Bytes of the tensors the dispatched ops create (results that alias no input: not views, not in-place results,
    and not ``_unsafe_view``, a view the schema does not declare)."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket is not torch.ops.aten._unsafe_view:
            for ret, t in zip(func._schema.returns, tree_leaves(out)):
                if isinstance(t, torch.Tensor) and ret.alias_info is None:
                    self.bytes += t.untyped_storage().nbytes()
        return out


def new_tensor_bytes(step: Callable[[], object]) -> int:
    """Bytes of new tensors one call of ``step`` creates, counted at the dispatcher (what the allocator must find:
    on the CPU, a tensor of a few MB is memory glibc has handed back to the system and faults in again)."""
    with _NewTensorBytes() as counter:
        step()
    return counter.bytes


# What each configuration passes to make_step; "-cl": channels_last as a user asks for it (PyTorch's
# model.to(memory_format=...), optimize's channels_last=True).
CONFIGS = {
    "plain": {"impl": None},
    "optimize": {"impl": "auto"},
    "plain-cl": {"impl": None, "channels_last": True},
    "optimize-cl": {"impl": "auto", "fused_channels_last": True},
}


def time_steps(configs: list[str], batch: int = 64, rounds: int = 20, per_round: int = 3) -> dict[str, dict]:
    """In this process: each configuration's median milliseconds a step over ``rounds`` rounds of ``per_round`` steps,
    the configurations' rounds interleaved (after one warm-up round each, which also makes Adam's state), and its
    median minor page faults per step."""
    steps = {config: make_step(batch=batch, **CONFIGS[config]) for config in configs}
    for step in steps.values():
        for _ in range(per_round):
            step()
    times: dict[str, list[float]] = {config: [] for config in configs}
    faults: dict[str, list[float]] = {config: [] for config in configs}
    for _ in range(rounds):
        for config, step in steps.items():
            faults0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
            for _ in range(per_round):
                step()
            times[config].append((time.perf_counter() - t0) / per_round)
            faults[config].append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / per_round)
    return {c: {"ms": statistics.median(times[c]) * 1e3, "faults": statistics.median(faults[c])} for c in configs}


def compare_in_processes(configs: list[str], pairs: int, batch: int = 64, rounds: int = 20,
                         threads: int | None = None) -> dict[str, list[dict[str, float]]]:
    """``time_steps`` of each configuration alone in a fresh process, ``pairs`` times, the order reversed every other
    time so that none always runs first; returns each configuration's results in run order."""
    command = [sys.executable, "-m", "benchmarks.dcgan28", "--batch", str(batch), "--rounds", str(rounds)]
    command += ["--threads", str(threads)] if threads else []
    root = Path(__file__).resolve().parent.parent
    results: dict[str, list[dict[str, float]]] = {c: [] for c in configs}
    for i in range(pairs):
        for config in configs if i % 2 == 0 else configs[::-1]:
            done = subprocess.run([*command, "--child", config], cwd=root, capture_output=True, text=True, check=False)
            if done.returncode:
                raise RuntimeError(f"the {config!r} process failed (rc {done.returncode}):\n{done.stderr[-3000:]}")
            results[config].append(json.loads(done.stdout.splitlines()[-1])[config])
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dcgan28", description=(__doc__ or "").split("\n\n")[-1])
    parser.add_argument("--configs", default="plain,optimize", help=f"comma-separated, of {', '.join(CONFIGS)}")
    parser.add_argument("--pairs", type=int, default=6, help="processes per configuration (0: one process, "
                        "the configurations' rounds interleaved)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds of 3 steps in each process")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads in each process")
    parser.add_argument("--bytes", action="store_true", help="print each configuration's new tensors' bytes per step")
    parser.add_argument("--child", choices=tuple(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    configs = args.configs.split(",")
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown:
        parser.error(f"--configs: unknown {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    if len(set(configs)) != len(configs):
        parser.error("--configs: a configuration given twice (each pair's ratio needs one run of each)")
    if args.pairs < 0 or args.rounds < 1 or args.batch < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--pairs must be 0 or more, and --rounds, --batch and --threads 1 or more")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(time_steps([args.child], args.batch, args.rounds)))
    elif args.bytes:
        for config in configs:
            step = make_step(batch=args.batch, **CONFIGS[config])
            step()  # Adam's state is created at the first step
            print(f"{config}: {new_tensor_bytes(step) / 2**20:.1f} MiB of new tensors per step (batch {args.batch})")
    elif args.pairs == 0:
        results = time_steps(configs, args.batch, args.rounds)
        print(f"DCGAN-28 step, batch {args.batch}, {torch.get_num_threads()} threads, one process, rounds interleaved")
        for config, r in results.items():
            ratio = r["ms"] / results[configs[0]]["ms"]
            print(f"{config:12s} {r['ms']:.1f} ms ({r['faults']:.0f} faults a step) {ratio:.3f}x")
    else:
        results = compare_in_processes(configs, args.pairs, args.batch, args.rounds, args.threads)
        base = results[configs[0]]
        print(f"DCGAN-28 step, batch {args.batch}, {torch.get_num_threads()} threads, one process per run; "
              f"ms (minor page faults per step), ratio to {configs[0]} of the same pair")
        for config, runs in results.items():
            ratios = [r["ms"] / b["ms"] for r, b in zip(runs, base)]
            cells = "  ".join(f"{r['ms']:.1f} ({r['faults']:.0f}) {q:.3f}x" for r, q in zip(runs, ratios))
            print(f"{config:12s} median {statistics.median(ratios):.3f}x  {cells}")


if __name__ == "__main__":
    main()
