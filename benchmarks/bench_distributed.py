"""Data-parallel throughput: ``fastgan train`` on 1 process against ``torchrun`` with N gloo processes on the CPU.

Each run (1 process; N with ``--sync-bn``; N without) is the command line itself (DCGAN on the bundled digits, the
same global batch, ``--impl ref``), timed by the trainer's own ``images_per_s`` in ``metrics.jsonl``; the first
logging interval (start-up, first-step allocations) is left out and the others are averaged. The machine's load
average is printed beside the figures, since other work on the same cores changes them. A benchmark, not a timed test::

    PYTHONPATH=. python benchmarks/bench_distributed.py [--processes 2] [--steps 60] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(processes: int, out: Path, args: argparse.Namespace, sync_bn: bool = True) -> float:
    """Images per second of one run (mean over the logging intervals after the first)."""
    train = ["train", "--model", "dcgan", "--image-size", str(args.image_size), "--ngf", str(args.width), "--ndf",
             str(args.width), "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--log-every",
             str(args.steps // 3), "--sample-every", str(args.steps), "--checkpoint-every", str(args.steps),
             "--impl", "ref", "--device", "cpu", "--workers", "0", "--sync-bn" if sync_bn else "--no-sync-bn",
             "--quiet", "--out", str(out)]
    if processes == 1:
        cmd = [sys.executable, "-m", "fastgan", *train]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               "-m", "fastgan", *train]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)}
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [row["images_per_s"] for row in rows[1:]]
    return sum(rates) / len(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64, help="the global batch")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--width", type=int, default=32, help="--ngf and --ndf")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each process")
    args = parser.parse_args()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        single = run(1, Path(tmp) / "one", args)
        multi = run(args.processes, Path(tmp) / "many", args)
        unsynced = run(args.processes, Path(tmp) / "unsynced", args, sync_bn=False)
    load_after = os.getloadavg()
    print(f"DCGAN {args.image_size}x{args.image_size}, ngf=ndf={args.width}, global batch {args.batch_size}, "
          f"{args.threads} thread(s) per process, {os.cpu_count()} CPUs, load average {load[0]:.2f} before, "
          f"{load_after[0]:.2f} after")
    print("| processes | images/s | speed-up |\n|---|---|---|")
    print(f"| 1 | {single:.0f} | 1.00x |")
    print(f"| {args.processes}, --sync-bn | {multi:.0f} | {multi / single:.2f}x |")
    print(f"| {args.processes}, --no-sync-bn | {unsynced:.0f} | {unsynced / single:.2f}x |")


if __name__ == "__main__":
    main()
