"""Whole training steps: CUDA graphs against eager (equivalence first, then time), and what a penalty costs.

    python benchmarks/steps.py --out results.jsonl [--deadline EPOCH_SECONDS] [--quick] [--tiny]

On a GPU (the GPU suite's ``steps`` stage), in this order, one JSON line per result:

1. ``steps-check``: two trainers from one seed, one eager and one with ``cuda_graphs=True``, run the same steps
   (past the warm-up and the capture, so most are replays; cuDNN deterministic); parameters and optimiser state are
   compared: bitwise equality is reported, and a max relative difference over ``CHECK_RTOL`` fails the check; a
   second eager trainer, the control, shows what nondeterministic ops alone move (``eager_vs_eager``).
2. ``steps-time``: milliseconds per ``Trainer.train_step`` (median of CUDA-event-timed steps after warm-up), side by
   side: ``eager`` (``impl="ref"``: the networks in plain PyTorch), ``eager+graph`` (that plain step captured: a
   hand-written CUDA graph), ``compile`` (the networks under ``torch.compile(mode="reduce-overhead")``; not where a
   penalty needs double backward, which it cannot do), ``fastgan`` (``impl="auto"``), ``fastgan+graph``. Goals
   (the issue's): WGAN-GP-64 critic step >= 2.5x eager and >= 1.3x eager+graph; DCGAN-64 B=128 bf16 >= 3x eager,
   >= 1.25x compile; CycleGAN-256 B=1 >= 2x eager.
3. ``steps-penalty``: a DCGAN-64 discriminator step alone with no penalty, R1, and R1 + R2 (R3GAN's), eager and
   fastgan (graphed on a GPU): the penalised step's time over the plain one's (goal with fastgan: <= 1.6x).

On the CPU (``--tiny`` shrinks the networks; the README's CPU figures) 2 and 3 run without the graph providers and
1 is recorded as skipped: graphs need CUDA.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import torch

from benchmarks.harness import SyntheticImages
from fastgan.losses import d_loss, r1_penalty
from fastgan.models import build_networks
from fastgan.train import TrainConfig, Trainer
from fastgan.train.graphs import GraphedStep

CHECK_RTOL = 1e-4  # graphed vs eager parameters after the check's steps (float32; identical kernels and RNG)
CHECK_STEPS = 12  # per case: 3 warm-up steps and a capture per kind of step, the rest replays
# name -> model, image size, batch, widths, extra settings, {provider: goal ratio vs fastgan+graph}
TIME_CASES = {
    "WGAN-GP-64 critic step b64": ("wgan-gp", 64, 64, 64, {"n_critic": 1}, {"eager": 2.5, "eager+graph": 1.3}),
    "WGAN-GP-64 critic step b128": ("wgan-gp", 64, 128, 64, {"n_critic": 1}, {"eager": 2.5, "eager+graph": 1.3}),
    "DCGAN-64 b128": ("dcgan", 64, 128, 64, {}, {"eager": 3.0, "compile": 1.25}),
    "CycleGAN-256 b1": ("cyclegan", 256, 1, 64, {"n_blocks": 9, "pool_size": 0}, {"eager": 2.0}),
}
CHECK_CASES = {
    "dcgan": ("dcgan", 32, 16, 16, {}),
    "dcgan lazy R1": ("dcgan", 32, 16, 16, {"r1_gamma": 1.0, "r1_every": 2}),
    "wgan-gp": ("wgan-gp", 32, 16, 16, {"n_critic": 2}),
    "wgan-gp bf16": ("wgan-gp", 32, 16, 16, {"n_critic": 2, "amp": "bf16"}),
    "cyclegan": ("cyclegan", 32, 1, 8, {"n_blocks": 2, "pool_size": 0}),
}
PENALTY_GOAL = 1.6


def make_trainer(case: tuple, device: str, impl: str, graphs: bool, amp: str = "off") -> Trainer:
    model, size, batch, width, extra = case[:5]
    settings = {"amp": amp, **extra}
    config = TrainConfig(model=model, data="unpaired" if model == "cyclegan" else "digits", data_root="synthetic",
                         image_size=size, channels=3, batch_size=batch, ngf=width, ndf=width, steps=10**6,
                         device=device, impl=impl, cuda_graphs=graphs, channels_last=device == "cuda",
                         out=tempfile.mkdtemp(), **settings)
    trainer = Trainer(config, dataset=SyntheticImages(2 * batch, 3, size, model == "cyclegan"), verbose=False)
    if impl == "ref":  # the canonical recipe: the critic on real and on fake apart
        trainer.joint_critic = False
    return trainer


def _state(trainer: Trainer) -> dict[str, torch.Tensor]:
    out = {f"{role}.{k}": v for role, net in trainer.nets.items() for k, v in net.state_dict().items()}
    for name, opt in trainer.optimizers.items():
        for index, state in opt.state_dict()["state"].items():
            out.update({f"opt{name}.{index}.{k}": v for k, v in state.items() if isinstance(v, torch.Tensor)})
    return out


def _compare(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> tuple[float, str, bool]:
    """(largest difference relative to the tensor's largest magnitude, the tensor it is in, bitwise equal)."""
    worst, worst_key, identical = 0.0, "", True
    for key, value in ours.items():
        a, b = value.double(), theirs[key].double()
        identical &= torch.equal(a, b)
        diff = ((a - b).abs().max() / a.abs().max().clamp_min(1e-12)).item() if a.numel() else 0.0
        if not math.isfinite(diff):  # a NaN or inf in either run fails the check
            diff = math.inf
        if diff > worst:
            worst, worst_key = diff, key
    return worst, worst_key, identical


def check(name: str, case: tuple, device: str) -> dict:
    """Graphed and eager trainers from one seed, CHECK_STEPS steps each: their states compared. A second eager
    trainer is the control: where it differs from the first too, a nondeterministic op, not the graph, moved."""
    flags = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    runs = []
    try:
        for graphs in (False, True, False):
            trainer = make_trainer(case, device, "auto", graphs)
            for _ in range(CHECK_STEPS):
                trainer.train_step()
            runs.append(_state(trainer))
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags  # as the caller had them
    eager, graphed, control = runs
    worst, worst_key, identical = _compare(eager, graphed)
    eager_worst, eager_key, _ = _compare(eager, control)
    return {"type": "steps-check", "case": name, "steps": CHECK_STEPS, "bitwise": identical,
            "max_rel_diff": float(f"{worst:.3g}"), "worst": worst_key, "eager_vs_eager": float(f"{eager_worst:.3g}"),
            "eager_worst": eager_key, "rtol": CHECK_RTOL, "ok": worst <= CHECK_RTOL}


def time_calls(step, device: str, warmup: int = 8, repeats: int = 30) -> list[float]:
    """Milliseconds per call: CUDA events on a GPU (synchronised once at the end), the wall clock on the CPU."""
    for _ in range(warmup):
        step()
    if device != "cuda":
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            times.append((time.perf_counter() - start) * 1e3)
        return times
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    for begin, end in events:
        begin.record()
        step()
        end.record()
    torch.cuda.synchronize()
    return [b.elapsed_time(e) for b, e in events]


def time_case(name: str, case: tuple, device: str, tiny: bool) -> list[dict]:
    model, goals = case[0], case[5]
    amp = "bf16" if device == "cuda" and model == "dcgan" else "off"
    providers = {"eager": ("ref", False), "fastgan": ("auto", False)}
    if device == "cuda":
        providers.update({"eager+graph": ("ref", True), "fastgan+graph": ("auto", True)})
        if model == "dcgan":
            providers["compile"] = ("ref", False)
    rows = []
    for provider, (impl, graphs) in providers.items():
        row = {"type": "steps-time", "case": name, "provider": provider, "amp": amp}
        try:
            trainer = make_trainer(case, device, impl, graphs, amp)
            if provider == "compile":
                trainer.nets = {r: torch.compile(n, mode="reduce-overhead") for r, n in trainer.nets.items()}
            times = time_calls(trainer.train_step, device, repeats=5 if tiny else 30)
            row.update(median_ms=round(statistics.median(times), 4), repeats=len(times))
        except Exception as error:  # a provider that fails is a result
            row["error"] = f"{type(error).__name__}: {str(error).strip()[:500]}"
            row["traceback"] = traceback.format_exc()[-1500:]
        rows.append(row)
        if provider == "compile":
            torch._dynamo.reset()
    best = next((r for r in rows if r["provider"] == ("fastgan+graph" if device == "cuda" else "fastgan")), {})
    for row in rows:
        if "median_ms" in row and "median_ms" in best:
            row["speedup_of_fastgan"] = round(row["median_ms"] / best["median_ms"], 3)
            target = goals.get(row["provider"]) if device == "cuda" else None
            if target is not None:
                row["goal"], row["met"] = target, row["speedup_of_fastgan"] >= target
    return rows


def penalty_rows(device: str, tiny: bool) -> list[dict]:
    """A DCGAN-64 discriminator step alone: plain, + R1, + R1 + R2; eager (impl="ref") and fastgan."""
    size, batch, width = (16, 4, 8) if tiny else (64, 64 if device == "cuda" else 8, 64)
    gen = torch.Generator().manual_seed(0)
    real = (torch.rand(batch, 3, size, size, generator=gen) * 2 - 1).to(device)
    fake = (torch.rand(batch, 3, size, size, generator=gen) * 2 - 1).to(device)
    if device == "cuda":
        real, fake = (t.contiguous(memory_format=torch.channels_last) for t in (real, fake))
    rows = []
    for provider, impl in (("eager", "ref"), ("fastgan", "auto")):
        D = build_networks("dcgan", size, 3, 100, width, width, None, impl)["D"].to(device)
        if device == "cuda":
            D = D.to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999), fused=True,
                                     capturable=device == "cuda")

        def d_step(real, fake, penalties, D=D, optimizer=optimizer, impl=impl):
            optimizer.zero_grad(set_to_none=True)
            real = real.detach().requires_grad_("r1" in penalties)
            fake = fake.detach().requires_grad_("r2" in penalties)
            real_logits, fake_logits = D(real), D(fake)
            loss = d_loss(real_logits, fake_logits, "nonsaturating", impl=impl)
            if "r1" in penalties:
                loss = loss + r1_penalty(real_logits, real, 10.0, impl=impl)
            if "r2" in penalties:
                loss = loss + r1_penalty(fake_logits, fake, 10.0, impl=impl)  # R2: the same penalty on fakes
            loss.backward()
            optimizer.step()
            return loss.detach()

        times = {}
        for penalties in ((), ("r1",), ("r1", "r2")):
            step = GraphedStep(d_step) if device == "cuda" else d_step
            label = "+".join(penalties).upper() or "none"
            times[label] = statistics.median(time_calls(lambda s=step, p=penalties: s(real, fake, p), device,
                                                        repeats=5 if tiny else 30))
        for label, ms in times.items():
            row = {"type": "steps-penalty", "provider": provider, "penalty": label, "median_ms": round(ms, 4),
                   "over_plain": round(ms / times["none"], 3), "graphed": device == "cuda", "batch": batch}
            if provider == "fastgan" and label != "none" and device == "cuda":
                row["goal"], row["met"] = PENALTY_GOAL, row["over_plain"] <= PENALTY_GOAL
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="append the JSON lines here")
    parser.add_argument("--deadline", type=float, default=None, help="stop starting work after this epoch time")
    parser.add_argument("--quick", action="store_true", help="the check and the first case of each part only")
    parser.add_argument("--tiny", action="store_true", help="small networks (CPU test of this script)")
    parser.add_argument("--only", choices=("check", "time", "penalty"), help="run one part")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    deadline = args.deadline or float("inf")
    failed = False

    def emit(record: dict) -> None:
        with open(args.out, "a") as handle:
            handle.write(json.dumps(record, default=str) + "\n")
        print(json.dumps({k: v for k, v in record.items() if k != "traceback"}), flush=True)

    jobs = [("check", name, case) for name, case in CHECK_CASES.items()]
    times = list(TIME_CASES.items())[: 1 if args.quick else None]
    jobs += [("time", name, case) for name, case in times] + [("penalty", "DCGAN-64 D step", None)]
    for kind, name, case in jobs:
        if args.only and kind != args.only:
            continue
        if time.time() > deadline:
            emit({"type": f"steps-{kind}", "case": name, "skipped": "budget: deadline reached"})
            continue
        if kind == "check":
            if device != "cuda":
                emit({"type": "steps-check", "case": name, "skipped": "CUDA graphs need a CUDA device"})
                continue
            try:
                record = check(name, case, device)
            except Exception as error:
                record = {"type": "steps-check", "case": name, "ok": False, "error": f"{type(error).__name__}: "
                          f"{str(error).strip()[:500]}", "traceback": traceback.format_exc()[-1500:]}
            failed |= not record["ok"]
            emit(record)
        elif kind == "time":
            if args.tiny:
                model, _, _, _, extra, goals = case
                case = (model, 32 if model == "cyclegan" else 16, 2, 4, {**extra, "n_blocks": 1}
                        if model == "cyclegan" else extra, goals)
            for row in time_case(name, case, device, args.tiny):
                emit(row)
        else:
            for row in penalty_rows(device, args.tiny):
                emit(row)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
