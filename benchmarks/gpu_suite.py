"""The GPU suite: everything fastgan claims about a GPU, proven and measured in one short window.

    python benchmarks/gpu_suite.py --out DIR [--budget SECONDS] [--quick] [--dry-run]
    python benchmarks/gpu_suite.py --publish DIR        # copy a run into benchmarks/results/, update the README

Stages, in order, each in its own subprocess (its own process group, killed whole at its timeout), each appending
to ``DIR`` as it finishes, so a run stopped at any point returns what it did:

1. ``env``: GPU, driver, CUDA, torch, Triton, cuDNN, clocks and power (every ``nvidia-smi`` call guarded);
2. ``build``: ``pip install --no-deps --no-build-isolation --use-pep517 -e .``; on failure the log tail is recorded
   and the suite goes on with Triton and the reference only (the stages import fastgan from the source tree);
3. ``tests``: the GPU tests (``tests/test_gpu.py``: the GPU-only branches; the parity matrix and every other test on
   CUDA tensors) in several concurrent pytest shards (Triton compiles on every core); a shard that hits a sticky CUDA
   error, crashes or runs one test past ``TEST_LIMIT_S`` is restarted without what it finished;
4. ``bench``: the goals G1-G7 (``benchmarks/goals.py``): eager, torch.compile (a fresh compile per shape, compile
   time apart) and fastgan side by side in one process, CUDA-event medians after warm-up and L2 flush;
5. ``summary``: ``summary.md`` (GPU named; ratios vs eager and vs compile; goals met or not), written last, printed.

Budget: ``--budget`` (default 560 s, ``--quick`` 420 s) is shared out when each stage starts: fixed stages keep
their small timeouts, the summary's is reserved, and the build, tests and benchmarks split the rest by weight, so
time a stage does not use goes to the next. A stage past its timeout is killed and recorded as ``timeout``.

Files in ``DIR`` (few: a lent GPU machine returns at most 8): ``results.jsonl`` (one JSON object per line: stage
records, the environment, the build, every test, every benchmark row, every goal verdict, the autotune choices),
``junit.xml`` (rewritten from it after every stage), ``summary.md``, ``suite.log`` (every stage's output).
Without ``--out`` the run goes to ``benchmarks/results/<gpu>-<date>/``; ``--publish`` copies a run returned
elsewhere there and puts its goals table into the README's benchmark section.

``--dry-run`` (CPU is fine) walks every stage with its estimated time and writes the result files: the environment
is read for real, the build, tests and benchmarks record what they would run.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = "results.jsonl"
FILES = (RESULTS, "junit.xml", "summary.md", "suite.log")
DEFAULT_BUDGET_S, QUICK_BUDGET_S = 560, 420
TEST_LIMIT_S = 240  # one test longer than this is killed (with its shard, which restarts without it)
MARGIN_S = 5  # a stage's own deadline is this much before its kill time, so it can write what it has
README_START, README_END = "<!-- gpu-results:start -->", "<!-- gpu-results:end -->"


# --- results ----------------------------------------------------------------------------------------------------------


def emit(out: Path, record: dict) -> None:
    """Append one record to ``out/results.jsonl`` (one write of one line)."""
    line = (json.dumps(record, default=str) + "\n").encode()
    fd = os.open(out / RESULTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def records(out: Path) -> list[dict]:
    """Every record of ``out/results.jsonl`` (a torn last line, from a kill mid-write, is skipped)."""
    path = out / RESULTS
    if not path.exists():
        return []
    found = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


# --- running a process with a timeout ---------------------------------------------------------------------------------


def run_process(cmd: Sequence[str], timeout: float, log: Path, env: dict | None = None,
                cwd: Path = ROOT) -> tuple[int | None, str, float]:
    """Run ``cmd`` in its own process group, output appended to ``log``; past ``timeout`` seconds the whole group
    is killed. Returns (exit code or None, "ok" | "failed" | "timeout", seconds)."""
    start = time.monotonic()
    with open(log, "ab") as f:
        f.write(f"\n$ {' '.join(map(str, cmd))}\n".encode())
        f.flush()
        proc = subprocess.Popen(list(map(str, cmd)), cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            kill_group(proc)
            return None, "timeout", time.monotonic() - start
    return rc, "ok" if rc == 0 else "failed", time.monotonic() - start


def kill_group(proc: subprocess.Popen, grace: float = 3.0) -> None:
    """SIGTERM the process group ``proc`` leads (started with ``start_new_session``), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def kill_children_on_sigterm(children: Callable[[], list[subprocess.Popen]]) -> None:
    """When this stage is terminated (its timeout), take down the process groups it started in sessions of their
    own (pip and its compilers, the pytest shards) rather than leave them running into the next stage."""

    def handler(signum, frame):
        for proc in children():
            kill_group(proc, grace=1.0)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def log_tail(log: Path, since: int, lines: int = 40) -> str:
    """The last ``lines`` lines written to ``log`` after byte offset ``since``."""
    try:
        with open(log, "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# --- stages and the budget --------------------------------------------------------------------------------------------


@dataclass
class Stage:
    """One stage: ``command(ctx, deadline)`` is its subprocess. ``fixed`` stages get ``max_s`` (and ``reserve_s``
    is kept for them by the stages before); the others share what is left by ``weight``, within [min_s, max_s].
    A stage whose share is under ``min_s`` is skipped, unless ``always``."""

    name: str
    description: str
    command: Callable[[Context, float], list[str]]
    est_s: float
    weight: float = 0.0
    min_s: float = 0.0
    max_s: float = 600.0
    fixed: bool = False
    reserve_s: float = 0.0
    always: bool = False


@dataclass
class Context:
    out: Path
    budget_s: float
    quick: bool = False
    dry_run: bool = False
    shards: int | None = None
    env: dict = field(default_factory=dict)
    log: Path = Path()


def stage_timeout(stage: Stage, later: Sequence[Stage], left: float) -> float:
    """The timeout ``stage`` gets with ``left`` seconds of budget and ``later`` stages still to run."""
    available = left - sum(s.reserve_s for s in later)
    if stage.fixed:
        return max(0.0, min(stage.max_s, left if stage.always else available))
    weights = stage.weight + sum(s.weight for s in later if not s.fixed)
    share = available * stage.weight / weights if weights else available
    return max(0.0, min(stage.max_s, max(stage.min_s, share), available))


def _stage_cmd(name: str) -> Callable[[Context, float], list[str]]:
    def command(ctx: Context, deadline: float) -> list[str]:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", name, "--out", str(ctx.out),
               "--deadline", f"{deadline:.1f}"]
        if ctx.quick:
            cmd.append("--quick")
        if ctx.dry_run:
            cmd.append("--dry-run")
        if ctx.shards:
            cmd += ["--shards", str(ctx.shards)]
        return cmd

    return command


def default_stages(quick: bool) -> list[Stage]:
    """The six stages with their estimates on an H100/H200 (16 cores) and their budget weights."""
    return [
        Stage("env", "GPU, driver, CUDA, torch, Triton, clocks", _stage_cmd("env"), 8, fixed=True, max_s=60),
        Stage("build", "pip install --no-deps --no-build-isolation --use-pep517 -e . (C++/CUDA extension)",
              # On the H200 machine (16 cores) 7 of the 8 units were built in 140 s; the CPU batch norm's took longer.
              _stage_cmd("build"), est_s=240, weight=0.5 if quick else 0.45, min_s=240, max_s=420),
        Stage("tests", "GPU tests: GPU-only branches, parity matrix and the rest on CUDA, sharded",
              _stage_cmd("tests"), est_s=60 if quick else 150, weight=0.25 if quick else 0.3, min_s=30, max_s=600),
        Stage("bench", "goals G1-G7: eager / torch.compile / fastgan side by side", _stage_cmd("bench"),
              est_s=60 if quick else 150, weight=0.25, min_s=30, max_s=600),
        Stage("steps", "whole training steps: CUDA graphs checked against eager, then timed; penalty cost",
              _stage_cmd("steps"), est_s=60 if quick else 150, weight=0.2, min_s=30, max_s=400),
        Stage("summary", "summary.md, written last and printed", _stage_cmd("summary"), 3, fixed=True, max_s=30,
              reserve_s=20, always=True),
    ]


def stage_env(ctx: Context) -> dict:
    """The environment every stage process runs in: fastgan importable from the source tree even if the build
    failed, Triton compiling for the GPU, the autotune cache private to this run, output unbuffered."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("FASTGAN_AUTOTUNE_CACHE", str(Path(tempfile.gettempdir()) / f"fastgan-suite-{os.getpid()}"
                                              / "autotune.json"))
    env.update(ctx.env)
    return env


def run_suite(stages: Sequence[Stage], ctx: Context, echo: Callable[[str], None] = print) -> int:
    """Run ``stages`` in order under ``ctx.budget_s``; returns 0 if every stage ran and passed, else 1."""
    ctx.out.mkdir(parents=True, exist_ok=True)
    ctx.log = ctx.out / "suite.log"
    start = time.time()
    deadline = start + ctx.budget_s
    env = stage_env(ctx)
    emit(ctx.out, {"type": "suite", "event": "start", "date": dt.datetime.now(dt.timezone.utc).isoformat(
        timespec="seconds"), "budget_s": ctx.budget_s, "quick": ctx.quick, "dry_run": ctx.dry_run,
        "stages": [s.name for s in stages], "argv": sys.argv[1:]})
    echo(f"fastgan GPU suite -> {ctx.out} (budget {ctx.budget_s:.0f} s{', quick' if ctx.quick else ''}"
         f"{', dry run' if ctx.dry_run else ''})")
    for s in stages:
        echo(f"  {s.name:<8} ~{s.est_s:>4.0f} s  {s.description}")
    echo(f"  estimated {sum(s.est_s for s in stages):.0f} s in all")
    worst = 0
    for i, stage in enumerate(stages):
        left = deadline - time.time()
        timeout = stage_timeout(stage, stages[i + 1:], left)
        record = {"type": "stage", "stage": stage.name, "est_s": stage.est_s, "timeout_s": round(timeout, 1)}
        if timeout < max(stage.min_s, 1.0) and not stage.always:
            record.update(status="skipped", reason=f"budget: {left:.0f} s left")
            emit(ctx.out, record)
            write_junit(ctx.out)
            echo(f"== {stage.name}: skipped (budget: {left:.0f} s left)")
            worst = max(worst, 1)
            continue
        echo(f"== {stage.name}: {stage.description} (timeout {timeout:.0f} s)")
        offset = ctx.log.stat().st_size if ctx.log.exists() else 0
        cmd = stage.command(ctx, time.time() + timeout - MARGIN_S)
        rc, status, seconds = run_process(cmd, timeout, ctx.log, env)
        record.update(status=status, rc=rc, seconds=round(seconds, 1))
        if status != "ok":
            record["log_tail"] = log_tail(ctx.log, offset)
            worst = 1
        emit(ctx.out, record)
        write_junit(ctx.out)
        echo(f"   {status} in {seconds:.0f} s" + (f" (exit {rc})" if rc not in (0, None) else ""))
    summary = ctx.out / "summary.md"
    if not summary.exists() or summary.stat().st_mtime < start:  # the summary stage did not write it
        summary.write_text(render_summary(records(ctx.out)))
    emit(ctx.out, {"type": "suite", "event": "end", "seconds": round(time.time() - start, 1)})
    write_junit(ctx.out)
    echo("")
    echo(summary.read_text())
    return worst


# --- stage bodies (each runs in its own subprocess) -------------------------------------------------------------------


def _smi(query: str, errors: dict) -> str | None:
    """One ``nvidia-smi --query-gpu`` value for GPU 0, or None with the reason in ``errors``."""
    try:
        proc = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.SubprocessError) as error:
        errors[query] = f"{type(error).__name__}: {error}"
        return None
    if proc.returncode != 0:
        errors[query] = (proc.stderr or proc.stdout).strip()[:200] or f"exit {proc.returncode}"
        return None
    return proc.stdout.strip().splitlines()[0].strip() if proc.stdout.strip() else None


def _tool_line(cmd: list[str], marker: str) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return next((line.strip() for line in out.splitlines() if marker in line), None)


SMI_FIELDS = ("name", "driver_version", "clocks.sm", "clocks.mem", "clocks.max.sm", "clocks.max.mem", "power.draw",
              "power.limit", "temperature.gpu", "persistence_mode", "compute_mode", "memory.used", "memory.total")


def run_env(out: Path) -> int:
    import platform

    record: dict = {"type": "env", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    "python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
                    "host": platform.node()}
    errors: dict = {}
    record["nvidia_smi"] = {f: _smi(f, errors) for f in SMI_FIELDS} if shutil.which("nvidia-smi") else None
    if record["nvidia_smi"] is None:
        errors["nvidia-smi"] = "not found on PATH"
    elif errors:
        record["nvidia_smi_errors"] = errors
    record["nvcc"] = _tool_line(["nvcc", "--version"], "release") if shutil.which("nvcc") else None
    try:
        import torch

        record.update(torch=torch.__version__, cuda=torch.version.cuda,
                      cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            record.update(gpu=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                          memory_gib=round(p.total_memory / 2**30, 1), gpus=torch.cuda.device_count(),
                          l2_mib=round(getattr(p, "L2_cache_size", 0) / 2**20, 1))
    except Exception as error:  # the record says what failed; the suite goes on
        record["torch_error"] = f"{type(error).__name__}: {error}"
    try:
        import triton

        record["triton"] = triton.__version__
    except Exception as error:
        record["triton_error"] = f"{type(error).__name__}: {error}"
    try:  # the NVRTC path of the native CUDA kernels (the parity matrix's native-nvrtc rows)
        sys.path.insert(0, str(ROOT))
        from fastgan import _nvrtc

        usable, detail = _nvrtc.status()
        record["nvrtc"] = detail if usable else f"unavailable: {detail}"
    except Exception as error:
        record["nvrtc"] = f"unavailable: {type(error).__name__}: {error}"
    record.setdefault("gpu", (record.get("nvidia_smi") or {}).get("name") or "no GPU")
    emit(out, record)
    print(json.dumps(record, indent=1, default=str))
    return 0


# --use-pep517: without it pip 24 (the GPU machine's) runs `setup.py develop`, which calls pip again with build
# isolation, which needs the network the machine lacks.
BUILD_COMMAND = ["-m", "pip", "install", "-v", "--no-deps", "--no-build-isolation", "--use-pep517", "-e", "."]
NATIVE_CHECK = ["-c", "import fastgan._C as c; print(c.with_cuda())"]  # prints True when the CUDA kernels load


def run_build(out: Path, deadline: float, dry_run: bool) -> int:
    """The editable install (the C++/CUDA extension), within ``deadline``; the record says whether the CUDA kernels
    load, and if not, the log tail and that the suite goes on with Triton and the reference."""
    cmd = [sys.executable, *BUILD_COMMAND]
    if dry_run:
        emit(out, {"type": "build", "dry_run": True, "command": " ".join(cmd[1:])})
        print("dry run:", " ".join(cmd))
        return 0
    env = dict(os.environ, MAX_JOBS=os.environ.get("MAX_JOBS", str(os.cpu_count() or 4)))
    start = time.monotonic()
    tail: collections.deque[str] = collections.deque(maxlen=60)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", start_new_session=True)
    kill_children_on_sigterm(lambda: [proc])
    timed_out = threading.Event()

    def watchdog():  # the deadline holds even when pip prints nothing
        if proc.poll() is None:
            timed_out.set()
            kill_group(proc)

    timer = threading.Timer(max(deadline - time.time(), 0.0), watchdog)
    timer.start()
    assert proc.stdout is not None
    for line in proc.stdout:  # the log streams to suite.log as it comes
        sys.stdout.write(line)
        tail.append(line.rstrip())
    rc = proc.wait()
    timer.cancel()
    status = "timeout" if timed_out.is_set() else "ok" if rc == 0 else "failed"
    check = subprocess.run([sys.executable, *NATIVE_CHECK], cwd=ROOT, capture_output=True, text=True, timeout=120,
                           check=False)
    native_cuda = check.returncode == 0 and check.stdout.strip().endswith("True")
    record = {"type": "build", "status": status, "rc": rc, "seconds": round(time.monotonic() - start, 1),
              "native_cuda": native_cuda, "log_tail": "\n".join(list(tail)[-(60 if status != "ok" else 8):])}
    if not native_cuda:
        record["native_check"] = (check.stderr or check.stdout).strip()[-600:]
        record["fallback"] = "Triton and the reference only"
    emit(out, record)
    print(f"build {status} (exit {rc}); native CUDA kernels: {'yes' if native_cuda else 'no'}")
    return 0 if status == "ok" and native_cuda else 1


def _shard_cmd(out: Path, i: int, shards: int, quick: bool, tmp: Path, tests: str) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-rN", "--no-header", "-p", "no:cacheprovider",
           "-p", "benchmarks.suite_plugin", "--suite-results", str(out / RESULTS), "--suite-select", "gpu",
           "--suite-shard", str(i), "--suite-shards", str(shards), "--suite-skip", str(tmp / f"skip-{i}.txt"),
           "--suite-current", str(tmp / f"current-{i}.txt"), tests]
    return cmd + (["--suite-quick"] if quick else [])


def default_shards() -> int:
    """Concurrent pytest shards: Triton compiles in each test process, so one per core but two (at most 12)."""
    return max(1, min(12, (os.cpu_count() or 2) - 2))


def run_tests(out: Path, deadline: float, dry_run: bool, quick: bool, shards: int | None, tests: str = "tests",
              test_limit_s: float = TEST_LIMIT_S, max_restarts: int = 25) -> int:
    """The GPU tests in ``shards`` concurrent pytest processes until done or ``deadline``. A shard that dies (a
    sticky CUDA error makes the plugin exit it; a crash) or runs one test past ``test_limit_s`` is restarted without
    the tests it finished and the one it died in (recorded as ``crashed`` / ``timeout``), while time is left."""
    shards = shards or default_shards()
    if dry_run:
        cmd = _shard_cmd(out, 0, shards, quick, Path("TMP"), tests)
        emit(out, {"type": "tests-plan", "shards": shards, "command": " ".join(cmd[1:])})
        print(f"dry run: {shards} pytest shards of the GPU tests in {tests}")
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="fastgan-tests-"))
    env = dict(os.environ)
    procs: dict[int, subprocess.Popen] = {}
    restarts = collections.Counter()
    outcome: dict[int, str] = {}
    logs = {i: open(tmp / f"shard-{i}.log", "ab") for i in range(shards)}

    def start(i: int) -> None:
        current = tmp / f"current-{i}.txt"
        current.write_text("")
        procs[i] = subprocess.Popen(_shard_cmd(out, i, shards, quick, tmp, tests), cwd=ROOT, env=env,
                                    stdout=logs[i], stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)

    def finished(i: int) -> set[str]:
        return {r["nodeid"] for r in records(out) if r.get("type") == "test" and r.get("shard") == i}

    def restart_without(i: int, culprit: str | None, why: str, rc) -> None:
        done = finished(i)
        if culprit and culprit not in done:
            emit(out, {"type": "test", "shard": i, "nodeid": culprit, "outcome": why, "seconds": None,
                       "message": f"shard process {'killed' if why == 'timeout' else 'died'} (exit {rc}) in this test"})
            done.add(culprit)
        (tmp / f"skip-{i}.txt").write_text("\n".join(sorted(done)))
        restarts[i] += 1
        emit(out, {"type": "tests-restart", "shard": i, "rc": rc, "reason": why, "after": culprit})
        start(i)

    kill_children_on_sigterm(lambda: list(procs.values()))
    for i in range(shards):
        start(i)
    while procs:
        time.sleep(0.2)
        for i, proc in list(procs.items()):
            current_file = tmp / f"current-{i}.txt"
            culprit = current_file.read_text().strip() if current_file.exists() else ""
            rc = proc.poll()
            if rc is None:
                if culprit and time.time() - current_file.stat().st_mtime > test_limit_s:
                    kill_group(proc)
                    del procs[i]
                    if restarts[i] < max_restarts and deadline - time.time() > 20:
                        restart_without(i, culprit, "timeout", None)
                    else:
                        outcome[i] = f"killed: a test ran past {test_limit_s:.0f} s"
                continue
            del procs[i]
            if rc in (0, 1, 5):  # all passed, some failed, nothing to run
                outcome[i] = f"exit {rc}"
            elif restarts[i] < max_restarts and deadline - time.time() > 20:
                restart_without(i, culprit or None, "crashed", rc)
            else:
                outcome[i] = f"crashed (exit {rc}), not restarted"
        if time.time() > deadline and procs:
            for i, proc in procs.items():
                kill_group(proc)
                outcome[i] = "killed at the stage deadline"
            procs.clear()
    for f in logs.values():
        f.close()
    recs = records(out)
    results = [r for r in recs if r.get("type") == "test"]
    counts = collections.Counter(r["outcome"] for r in results)
    first_collection: dict[int, int] = {}
    for r in recs:  # a restarted shard collects again, without what it finished: its first count is the whole
        if r.get("type") == "tests-collected":
            first_collection.setdefault(r["shard"], r["count"])
    summary = {"type": "tests-summary", "shards": shards, "counts": dict(counts), "restarts": dict(restarts),
               "shard_outcomes": {str(k): v for k, v in sorted(outcome.items())},
               "not_run": max(0, sum(first_collection.values()) - len({r["nodeid"] for r in results}))}
    emit(out, summary)
    for i in range(shards):
        print(f"--- shard {i}: {outcome.get(i)}")
        print(log_tail(tmp / f"shard-{i}.log", 0, 15))
    print(json.dumps(summary))
    shutil.rmtree(tmp, ignore_errors=True)
    bad = counts.get("failed", 0) + counts.get("error", 0) + counts.get("crashed", 0) + counts.get("timeout", 0)
    return 0 if not bad and all(v.startswith("exit") for v in outcome.values()) else 1


def run_bench(out: Path, deadline: float, dry_run: bool, quick: bool) -> int:
    sys.path.insert(0, str(ROOT))
    from benchmarks import goals

    if dry_run:
        for w in goals.workloads():
            if w.essential or not quick:
                emit(out, {"type": "bench-plan", "goal": w.goal, "workload": w.name, "est_s": w.est_s,
                           "providers": list(w.providers)})
        goals.main(["--list"] + (["--quick"] if quick else []))
        return 0
    return goals.main(["--out", str(out / RESULTS), "--deadline", f"{deadline:.1f}"] + (["--quick"] if quick else []))


def run_steps(out: Path, deadline: float, dry_run: bool, quick: bool) -> int:
    sys.path.insert(0, str(ROOT))
    from benchmarks import steps

    if dry_run:
        for name in steps.CHECK_CASES:
            emit(out, {"type": "steps-plan", "part": "check", "case": name})
        for name in list(steps.TIME_CASES)[: 1 if quick else None]:
            emit(out, {"type": "steps-plan", "part": "time", "case": name})
        emit(out, {"type": "steps-plan", "part": "penalty", "case": "DCGAN-64 D step"})
        return 0
    return steps.main(["--out", str(out / RESULTS), "--deadline", f"{deadline:.1f}"] + (["--quick"] if quick else []))


def run_summary(out: Path) -> int:
    text = render_summary(records(out))
    (out / "summary.md").write_text(text)
    print(text)
    return 0


# --- summary and JUnit ------------------------------------------------------------------------------------------------


def _fmt(value, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def _ratio(base: dict | None, row: dict) -> str:
    if not base or "median_ms" not in base or "median_ms" not in row:
        return "-"
    return f"{base['median_ms'] / row['median_ms']:.2f}x"


def render_summary(recs: list[dict]) -> str:
    """The markdown summary of a run's records (any subset: a stopped run summarizes what it did)."""
    env = next((r for r in recs if r.get("type") == "env"), {})
    start = next((r for r in recs if r.get("type") == "suite" and r.get("event") == "start"), {})
    smi = env.get("nvidia_smi") or {}
    gpu = env.get("gpu") or "no GPU"
    lines = [f"# fastgan GPU suite: {gpu}", ""]
    facts = [
        ("date", env.get("date") or start.get("date")),
        ("GPU", f"{gpu}" + (f", sm_{env['capability'].replace('.', '')}, {env.get('sms')} SMs, "
                            f"{env.get('memory_gib')} GiB" if env.get("capability") else "")),
        ("driver", smi.get("driver_version")), ("CUDA (torch)", env.get("cuda")), ("torch", env.get("torch")),
        ("Triton", env.get("triton")), ("cuDNN", env.get("cudnn")), ("nvcc", env.get("nvcc")),
        ("clocks at start (SM / memory, max)", f"{smi.get('clocks.sm')} / {smi.get('clocks.mem')} MHz "
                                               f"(max {smi.get('clocks.max.sm')} / {smi.get('clocks.max.mem')})"
         if smi.get("clocks.sm") else None),
        ("power", f"{smi.get('power.draw')} W of {smi.get('power.limit')} W" if smi.get("power.draw") else None),
        ("python / CPUs", f"{env.get('python')} / {env.get('cpus')}" if env else None),
        ("run", f"budget {start.get('budget_s')} s" + (", quick" if start.get("quick") else "")
         + (", DRY RUN (nothing was built, tested or timed)" if start.get("dry_run") else "") if start else None),
    ]
    lines += [f"- {k}: {v}" for k, v in facts if v not in (None, "", "None")]
    if env.get("nvidia_smi_errors") or env.get("nvidia_smi") is None:
        lines.append(f"- nvidia-smi: {env.get('nvidia_smi_errors') or 'not available'}")
    lines += ["", "## Stages", "", "| stage | status | seconds | timeout (s) |", "|---|---|---|---|"]
    for r in recs:
        if r.get("type") == "stage":
            lines.append(f"| {r['stage']} | {r['status']}{' (' + r['reason'] + ')' if r.get('reason') else ''} | "
                         f"{_fmt(r.get('seconds'), '.0f')} | {_fmt(r.get('timeout_s'), '.0f')} |")
    lines += _build_section(recs) + _tests_section(recs) + _goals_section(recs) + _bench_section(recs)
    lines += _steps_section(recs)
    lines += _autotune_section(recs)
    return "\n".join(lines).rstrip() + "\n"


def _build_section(recs: list[dict]) -> list[str]:
    build = next((r for r in recs if r.get("type") == "build"), None)
    if build is None:
        return []
    if build.get("dry_run"):
        return ["", "## Build", "", f"dry run: `{build['command']}`"]
    lines = ["", "## Build", "", f"- `pip install -e .`: {build['status']} in {build['seconds']} s; native CUDA "
             f"kernels: {'yes' if build['native_cuda'] else 'NO: ' + build.get('fallback', '')}"]
    if build["status"] != "ok" or not build["native_cuda"]:
        lines += ["", "```", build.get("log_tail", "")[-3000:], build.get("native_check", ""), "```"]
    return lines


def _tests_section(recs: list[dict]) -> list[str]:
    tests = [r for r in recs if r.get("type") == "test"]
    summary = next((r for r in recs if r.get("type") == "tests-summary"), None)
    plan = next((r for r in recs if r.get("type") == "tests-plan"), None)
    if plan and not tests:
        return ["", "## Tests on the GPU", "", f"dry run: {plan['shards']} shards of `{plan['command']}`"]
    if not tests and not summary:
        return []
    counts = collections.Counter(r["outcome"] for r in tests)
    lines = ["", "## Tests on the GPU", "", "- " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))]
    if summary:
        if summary.get("not_run"):
            lines.append(f"- not run (stopped by the budget): {summary['not_run']}")
        if summary.get("restarts"):
            lines.append(f"- shard restarts (sticky CUDA error, crash or hung test): {summary['restarts']}")
        lines.append(f"- shards: {summary['shards']}; {summary.get('shard_outcomes')}")
    else:
        lines.append("- the stage did not finish: the counts are the tests recorded before it stopped")
    bad = [r for r in tests if r["outcome"] in ("failed", "error", "crashed", "timeout")]
    if bad:
        lines += ["", "| test | outcome | message |", "|---|---|---|"]
        for r in bad[:40]:
            message = (r.get("message") or "").strip().splitlines()
            last = next((m for m in reversed(message) if m.strip().startswith("E ")), message[-1] if message else "")
            lines.append(f"| `{r['nodeid']}` | {r['outcome']} | {last.strip()[:160].replace('|', '/')} |")
        if len(bad) > 40:
            lines.append(f"| ... {len(bad) - 40} more in results.jsonl | | |")
    return lines


def _goals_section(recs: list[dict]) -> list[str]:
    verdicts = [r for r in recs if r.get("type") == "goal"]
    if not verdicts:
        return []
    lines = ["", "## Goals", "", "<!-- goals -->", "| goal | workload | target | measured (fastgan auto) | met |",
             "|---|---|---|---|---|"]
    for v in verdicts:
        for c in v["checks"]:
            met = {True: "yes", False: "NO", None: "not measured"}[c["ok"]]
            value = c["value"]
            shown = "-" if value is None else (f"{value:.0f} kernels" if "kernels" in c["check"] else
                                               f"{value:.0%}" if "bandwidth" in c["check"] else f"{value:.2f}x")
            lines.append(f"| {v['goal']} | {v['workload']} | {c['check']} | {shown} | {met} |")
    lines.append("<!-- /goals -->")
    return lines


def _bench_section(recs: list[dict]) -> list[str]:
    rows = [r for r in recs if r.get("type") == "bench"]
    plans = [r for r in recs if r.get("type") == "bench-plan"]
    if plans and not rows:
        lines = ["", "## Benchmarks (planned)", "", "| goal | workload | est. s | providers |", "|---|---|---|---|"]
        lines += [f"| {p['goal']} | {p['workload']} | {p['est_s']:.0f} | {', '.join(p['providers'])} |"
                  for p in plans]
        return lines
    if not rows:
        return []
    lines = ["", "## Benchmarks", "", "Median of CUDA-event timings after warm-up, each call after an L2 flush; "
             "ratios are the provider's speed-up over eager / torch.compile measured in the same process; "
             "first call: compilation (torch.compile), measurement (auto), JIT (Triton)."]
    skipped = [r for r in rows if r.get("skipped")]
    by_workload: dict[str, list[dict]] = collections.OrderedDict()
    for r in rows:
        if not r.get("skipped"):
            by_workload.setdefault(f"{r['goal']} {r['workload']}", []).append(r)
    for name, group in by_workload.items():
        base = {r["provider"]: r for r in group}
        lines += ["", f"### {name}", "", "| provider | median ms | p10-p90 ms | GB/s | TFLOP/s | vs eager | "
                  "vs compile | first call s | kernels | max rel err | error |", "|---|---|---|---|---|---|---|---|---|"
                  "---|---|"]
        eager = base.get("eager") or base.get("cudnn")
        compiled = base.get("compile-max-autotune") or base.get("compile")
        for r in group:
            error = (r.get("error") or "").splitlines()[0][:120].replace("|", "/") if r.get("error") else ""
            lines.append(
                f"| {r['provider']} | {_fmt(r.get('median_ms'), '.4g')} | "
                f"{_fmt(r.get('p10_ms'), '.3g')}-{_fmt(r.get('p90_ms'), '.3g')} | {_fmt(r.get('GB/s'), '.0f')} | "
                f"{_fmt(r.get('TFLOP/s'), '.1f')} | {_ratio(eager, r)} | {_ratio(compiled, r)} | "
                f"{_fmt(r.get('first_call_s'), '.2f')} | {_fmt(r.get('kernels'), 'd')} | "
                f"{_fmt(r.get('max_rel_err'), '.2g')} | {error} |")
    if skipped:
        lines += ["", "Not run (budget): " + "; ".join(f"{r['goal']} {r['workload']}" for r in skipped)]
    return lines


def _steps_section(recs: list[dict]) -> list[str]:
    checks = [r for r in recs if r.get("type") == "steps-check"]
    times = [r for r in recs if r.get("type") == "steps-time"]
    penalties = [r for r in recs if r.get("type") == "steps-penalty"]
    plans = [r for r in recs if r.get("type") == "steps-plan"]
    if not (checks or times or penalties):
        return ["", "## Training steps (planned)", ""] + [f"- {p['part']}: {p['case']}" for p in plans] if plans else []
    lines = ["", "## Training steps", ""]
    if checks:
        lines += ["CUDA graphs against eager, same seed and steps (cuDNN deterministic):", "",
                  "| case | steps | bitwise equal | max rel diff | in | eager vs eager | ok |",
                  "|---|---|---|---|---|---|---|"]
        for r in checks:
            note = r.get("skipped") or r.get("error", "")[:120].replace("|", "/")
            lines.append(f"| {r['case']} | {r.get('steps', '-')} | {r.get('bitwise', '-')} | "
                         f"{_fmt(r.get('max_rel_diff'), '.2g')} | {r.get('worst') or '-'} | "
                         f"{_fmt(r.get('eager_vs_eager'), '.2g')} | {'yes' if r.get('ok') else note or 'NO'} |")
    if times:
        lines += ["", "Milliseconds per `Trainer.train_step` (median of CUDA-event timings after warm-up); "
                  "speed-up: the provider's time over fastgan+graph's:", "",
                  "| case | provider | amp | median ms | fastgan+graph speed-up | goal | error |",
                  "|---|---|---|---|---|---|---|"]
        for r in times:
            goal = f">= {r['goal']}x: {'met' if r['met'] else 'NOT MET'}" if "goal" in r else ""
            error = (r.get("error") or r.get("skipped") or "").splitlines()[0][:100].replace("|", "/") \
                if (r.get("error") or r.get("skipped")) else ""
            lines.append(f"| {r['case']} | {r.get('provider', '-')} | {r.get('amp', '-')} | "
                         f"{_fmt(r.get('median_ms'), '.4g')} | {_fmt(r.get('speedup_of_fastgan'), '.2f')} | {goal} | "
                         f"{error} |")
    if penalties:
        lines += ["", "A DCGAN-64 discriminator step alone, with and without penalties:", "",
                  "| provider | penalty | median ms | over the plain step | goal |", "|---|---|---|---|---|"]
        for r in penalties:
            goal = f"<= {r['goal']}x: {'met' if r['met'] else 'NOT MET'}" if "goal" in r else ""
            lines.append(f"| {r.get('provider', '-')} | {r.get('penalty', '-')} | {_fmt(r.get('median_ms'), '.4g')} "
                         f"| {_fmt(r.get('over_plain'), '.2f')} | {goal} |")
    return lines


def _autotune_section(recs: list[dict]) -> list[str]:
    entries: dict[str, dict] = {}
    for r in recs:
        if r.get("type") == "autotune":
            for scope, keyed in r["entries"].items():
                entries.setdefault(scope, {}).update(keyed)
    if not entries:
        return []
    lines = ["", '## impl="auto" choices (measured on first call)', ""]
    for scope, keyed in entries.items():
        lines.append(f"- {scope}")
        for key, entry in sorted(keyed.items()):
            times = ", ".join(f"{k} {v:.3g} ms" for k, v in sorted(entry.get("ms", {}).items(), key=lambda x: x[1]))
            rejected = "; ".join(f"{k} disabled: {v[:120]}" for k, v in entry.get("rejected", {}).items())
            if not entry.get("impl"):
                lines.append(f"  - `{key}` -> fixed order (not measured: {entry.get('unmeasured', '')[:160]})")
                continue
            lines.append(f"  - `{key}` -> **{entry['impl']}** ({times}){' [' + rejected + ']' if rejected else ''}")
    return lines


def write_junit(out: Path) -> None:
    """``out/junit.xml`` from the records: a suite per stage kind (stages, gpu tests, benchmark goals)."""
    recs = records(out)
    root = ET.Element("testsuites", name="fastgan GPU suite")

    def suite(name: str) -> ET.Element:
        return ET.SubElement(root, "testsuite", name=name)

    def case(parent: ET.Element, classname: str, name: str, seconds=None) -> ET.Element:
        return ET.SubElement(parent, "testcase", classname=classname, name=name, time=f"{seconds or 0:.3f}")

    stages = suite("stages")
    for r in recs:
        if r.get("type") == "stage":
            c = case(stages, "suite", r["stage"], r.get("seconds"))
            if r["status"] == "skipped":
                ET.SubElement(c, "skipped", message=r.get("reason", ""))
            elif r["status"] != "ok":
                ET.SubElement(c, "failure", message=f"{r['status']} (exit {r.get('rc')})").text = r.get("log_tail", "")
    tests = suite("gpu-tests")
    for r in recs:
        if r.get("type") != "test":
            continue
        module, _, name = r["nodeid"].partition("::")
        c = case(tests, module.replace("/", ".").removesuffix(".py"), name, r.get("seconds"))
        if r["outcome"] == "skipped":
            ET.SubElement(c, "skipped", message=(r.get("message") or "")[:300])
        elif r["outcome"] in ("failed", "crashed", "timeout"):
            ET.SubElement(c, "failure", message=r["outcome"]).text = r.get("message", "")
        elif r["outcome"] == "error":
            ET.SubElement(c, "error", message="error").text = r.get("message", "")
    goals = suite("benchmark-goals")
    for r in recs:
        if r.get("type") == "bench" and r.get("error"):
            c = case(goals, f"{r['goal']}.{r['workload']}", f"{r['provider']} runs")
            ET.SubElement(c, "error", message=r["error"][:300]).text = r.get("traceback", "")
        elif r.get("type") == "goal":
            for check in r["checks"]:
                c = case(goals, f"{r['goal']}.{r['workload']}", check["check"])
                ET.SubElement(c, "properties").append(ET.Element("property", name="value", value=str(check["value"])))
                if check["ok"] is None:
                    ET.SubElement(c, "skipped", message="not measured")
                elif not check["ok"]:
                    ET.SubElement(c, "failure", message=f"target not met: {check['value']}")
    for s in root:
        s.set("tests", str(len(s.findall("testcase"))))
        s.set("failures", str(len(s.findall("testcase/failure"))))
        s.set("errors", str(len(s.findall("testcase/error"))))
        s.set("skipped", str(len(s.findall("testcase/skipped"))))
    tmp = out / "junit.xml.tmp"
    ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=True)
    os.replace(tmp, out / "junit.xml")


# --- publishing a returned run ----------------------------------------------------------------------------------------


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "unknown"


def run_name(recs: list[dict]) -> str:
    """``<gpu>-<date>`` of a run, from its environment record."""
    env = next((r for r in recs if r.get("type") == "env"), {})
    date = (env.get("date") or dt.date.today().isoformat())[:10]
    return f"{slug(env.get('gpu') or 'no-gpu')}-{date}"


def publish(src: Path, root: Path = ROOT, readme: Path | None = None) -> Path:
    """Copy a run's files into ``benchmarks/results/<gpu>-<date>/`` and put its goals table into the README between
    the gpu-results markers; returns the results folder."""
    recs = records(src)
    if not recs:
        raise SystemExit(f"--publish: {src / RESULTS} has no records")
    dest = root / "benchmarks" / "results" / run_name(recs)
    dest.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        path = src / name
        if path.exists() and (name != "suite.log" or path.stat().st_size < 2 * 2**20):
            shutil.copyfile(path, dest / name)
    if not (dest / "summary.md").exists():
        (dest / "summary.md").write_text(render_summary(recs))
    summary = (dest / "summary.md").read_text()
    table = summary.split("<!-- goals -->")[1].split("<!-- /goals -->")[0].strip() if "<!-- goals -->" in summary \
        else "(no goal was measured in this run)"
    env = next((r for r in recs if r.get("type") == "env"), {})
    start = next((r for r in recs if r.get("type") == "suite" and r.get("event") == "start"), {})
    head = (f"Latest GPU run: **{env.get('gpu', 'no GPU')}**, {(env.get('date') or '')[:10]}, torch "
            f"{env.get('torch')}, Triton {env.get('triton')}, CUDA {env.get('cuda')}"
            + (" (dry run: nothing measured)" if start.get("dry_run") else "")
            + f"; full results in `{dest.relative_to(root)}/summary.md`.")
    readme = readme or root / "README.md"
    text = readme.read_text()
    if README_START in text and README_END in text:
        before, rest = text.split(README_START, 1)
        after = rest.split(README_END, 1)[1]
        readme.write_text(f"{before}{README_START}\n{head}\n\n{table}\n{README_END}{after}")
    return dest


# --- command line -----------------------------------------------------------------------------------------------------


def default_out() -> Path:
    """``benchmarks/results/<gpu>-<date>``, the GPU named by a guarded ``nvidia-smi`` (no CUDA init here)."""
    name = _smi("name", {}) if shutil.which("nvidia-smi") else None
    return ROOT / "benchmarks" / "results" / f"{slug(name or 'no-gpu')}-{dt.date.today().isoformat()}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default benchmarks/results/<gpu>-<date>)")
    parser.add_argument("--budget", type=float, default=None, help="seconds for the whole run (default 560; quick 420)")
    parser.add_argument("--quick", action="store_true", help="main shapes only, budget 420 s")
    parser.add_argument("--dry-run", action="store_true", help="walk the stages without building, testing or timing")
    parser.add_argument("--shards", type=int, default=None, help="concurrent pytest shards (default: cores - 2, <= 12)")
    parser.add_argument("--publish", type=Path, default=None, help="copy a run folder into benchmarks/results/ and "
                        "update the README's table")
    parser.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tests", default="tests", help=argparse.SUPPRESS)  # the test stage's test path
    args = parser.parse_args(argv)
    if args.publish:
        dest = publish(args.publish)
        print(f"published to {dest}")
        return 0
    if args.stage:
        out, deadline = args.out, args.deadline or time.time() + 600
        bodies = {
            "env": lambda: run_env(out),
            "build": lambda: run_build(out, deadline, args.dry_run),
            "tests": lambda: run_tests(out, deadline, args.dry_run, args.quick, args.shards, args.tests),
            "bench": lambda: run_bench(out, deadline, args.dry_run, args.quick),
            "steps": lambda: run_steps(out, deadline, args.dry_run, args.quick),
            "summary": lambda: run_summary(out),
        }
        return bodies[args.stage]()
    budget = args.budget or (QUICK_BUDGET_S if args.quick else DEFAULT_BUDGET_S)
    ctx = Context(out=(args.out or default_out()).resolve(), budget_s=budget, quick=args.quick,
                  dry_run=args.dry_run, shards=args.shards)
    return run_suite(default_stages(args.quick), ctx)


if __name__ == "__main__":
    sys.exit(main())
