"""The GPU suite in one command, for a machine with a CUDA GPU and no network:

    python benchmarks/gpu_suite.py            # from the repository root

1. installs fastgan (``pip install --no-deps --no-build-isolation -e .``: builds the C++ and CUDA kernels);
2. runs the test suite with the GPU visible (CUDA tests run instead of skipping);
3. runs every ``benchmarks/bench_*.py`` with pytest-benchmark;
4. writes ``benchmarks/results/<date>-<gpu>.json`` (raw pytest-benchmark JSON plus environment) and ``.md`` (a table
   per benchmark group with the median time, GB/s or TFLOP/s, and each provider's speed-up against eager PyTorch
   and torch.compile measured in the same run), headed by GPU name, driver, torch, Triton and CUDA versions.

``--skip-install``, ``--skip-tests`` and ``-k EXPR`` (passed to the benchmark run) shorten it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def run(cmd: list[str], **kw) -> int:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, check=False, **kw).returncode


def environment() -> dict:
    import torch

    env = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": sys.version.split()[0],
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, check=False)
        env["driver"] = smi.stdout.strip() or None
    return env


def markdown(env: dict, bench: dict, tests_rc: int | None) -> str:
    lines = [f"# fastgan GPU suite: {env.get('gpu', 'no GPU')}", ""]
    lines += [f"- {k}: {v}" for k, v in env.items()]
    if tests_rc is not None:
        lines.append(f"- test suite exit code: {tests_rc} ({'passed' if tests_rc == 0 else 'FAILED'})")
    lines.append("")
    groups: dict[str, list[dict]] = {}
    for b in bench.get("benchmarks", []):
        groups.setdefault(b.get("group") or b["name"], []).append(b)
    for group, rows in groups.items():
        by_provider = {r["extra_info"].get("provider"): r["stats"]["median"] for r in rows}
        lines += [f"## {group}", "", "| provider | median (us) | GB/s | TFLOP/s | vs eager | vs compile |",
                  "|---|---|---|---|---|---|"]
        for r in rows:
            info, median = r["extra_info"], r["stats"]["median"]
            ratio = {base: f"{by_provider[base] / median:.2f}x" if base in by_provider else "-"
                     for base in ("eager", "compile")}
            lines.append(f"| {info.get('provider')} | {median * 1e6:.1f} | {info.get('GB/s', '-')} | "
                         f"{info.get('TFLOP/s', '-')} | {ratio['eager']} | {ratio['compile']} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-install", action="store_true")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("-k", default=None, help="pytest -k expression for the benchmarks")
    args = parser.parse_args()

    env_vars = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # Triton must compile for the GPU
    if not args.skip_install and run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                                      "-e", "."], env=env_vars):
        return 1
    tests_rc = None
    if not args.skip_tests:
        tests_rc = run([sys.executable, "-m", "pytest", "-q", "-rs", "tests"], env=env_vars)
    RESULTS.mkdir(parents=True, exist_ok=True)
    env = environment()
    stem = f"{env['date'][:10]}-{re.sub(r'[^A-Za-z0-9]+', '-', env.get('gpu', 'cpu')).strip('-').lower()}"
    raw = RESULTS / f"{stem}.bench.json"
    files = sorted(str(p) for p in (ROOT / "benchmarks").glob("bench_*.py"))
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", *files, f"--benchmark-json={raw}", "--benchmark-disable-gc"]
    if args.k:
        cmd += ["-k", args.k]
    bench_rc = run(cmd, env=env_vars)
    bench = json.loads(raw.read_text()) if raw.exists() else {}
    (RESULTS / f"{stem}.json").write_text(json.dumps({"environment": env, "tests_exit_code": tests_rc,
                                                      "benchmarks": bench.get("benchmarks", [])}, indent=1))
    raw.unlink(missing_ok=True)
    (RESULTS / f"{stem}.md").write_text(markdown(env, bench, tests_rc))
    print(f"results: {RESULTS / stem}.json and .md")
    return tests_rc or bench_rc or 0


if __name__ == "__main__":
    sys.exit(main())
