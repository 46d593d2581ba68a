"""The GPU suite's machinery, proven on CPU: the budget, stages in subprocesses killed at their timeouts, results
appended as each stage finishes, the dry run, the sharded test stage (restarts after sticky CUDA errors, crashes and
hung tests), the torch.compile baseline (a fresh compile per shape, no silent eager fallback), the goals runner, the
summary, JUnit and publishing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

from benchmarks import goals, gpu_suite, harness
from benchmarks.gpu_suite import Context, Stage, records, run_suite, stage_timeout

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str):
    return lambda ctx, deadline: [sys.executable, "-c", textwrap.dedent(code).replace("OUT", str(ctx.out))]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_stage_timeouts_share_the_budget():
    env = Stage("env", "", None, 5, fixed=True, max_s=60)
    build = Stage("build", "", None, 100, weight=0.5, min_s=30, max_s=400)
    tests = Stage("tests", "", None, 100, weight=0.25, min_s=30, max_s=600)
    bench = Stage("bench", "", None, 100, weight=0.25, min_s=30, max_s=600)
    summary = Stage("summary", "", None, 3, fixed=True, max_s=30, reserve_s=20, always=True)
    assert stage_timeout(env, [build, tests, bench, summary], 480) == 60
    assert stage_timeout(build, [tests, bench, summary], 460) == pytest.approx(0.5 * 440)
    # What the build left unused goes to the later stages; the summary's reserve is kept back throughout.
    assert stage_timeout(tests, [bench, summary], 400) == pytest.approx(0.5 * 380)
    assert stage_timeout(bench, [summary], 100) == pytest.approx(80)
    assert stage_timeout(build, [tests, bench, summary], 2000) == 400  # its cap
    assert stage_timeout(bench, [summary], 25) == pytest.approx(5)  # under its minimum: run_suite skips it
    assert stage_timeout(summary, [], 3) == 3  # the last stage always gets what is left


def test_stages_run_in_order_killed_at_their_timeouts_and_append_as_they_finish(tmp_path):
    out = tmp_path / "out"
    pid_file = tmp_path / "child.pid"
    stages = [
        Stage("first", "writes a record", _python("""
            import json; open("OUT/results.jsonl", "a").write(json.dumps({"type": "mine", "n": 1}) + "\\n")
            """), 1, fixed=True, max_s=20),
        Stage("hangs", "a child process, then sleeps", _python(f"""
            import subprocess, time
            child = subprocess.Popen(["sleep", "60"])
            open({str(pid_file)!r}, "w").write(str(child.pid))
            time.sleep(60)
            """), 1, weight=1, min_s=1, max_s=2),
        Stage("fails", "reads what is there, exits 3", _python("""
            import json
            kinds = [json.loads(l).get("stage") for l in open("OUT/results.jsonl")]
            print("seen", kinds, flush=True)
            raise SystemExit(3)
            """), 1, weight=1, min_s=1, max_s=10),
        Stage("too-long", "needs more than is left", _python("print('never')"), 1, weight=1, min_s=1000),
        Stage("summary", "", gpu_suite._stage_cmd("summary"), 1, fixed=True, max_s=30, reserve_s=5, always=True),
    ]
    lines: list[str] = []
    start = time.monotonic()
    rc = run_suite(stages, Context(out=out, budget_s=30), echo=lines.append)
    assert rc == 1
    assert time.monotonic() - start < 25
    recs = records(out)
    stage_recs = {r["stage"]: r for r in recs if r.get("type") == "stage"}
    assert [r["stage"] for r in recs if r.get("type") == "stage"] == ["first", "hangs", "fails", "too-long", "summary"]
    assert stage_recs["first"]["status"] == "ok"
    assert stage_recs["hangs"]["status"] == "timeout" and stage_recs["hangs"]["seconds"] < 8
    assert not _alive(int(pid_file.read_text())), "the timed-out stage's child process survived"
    assert stage_recs["fails"]["status"] == "failed" and stage_recs["fails"]["rc"] == 3
    # The failing stage saw the records of the stages before it: appended as each finished.
    assert "seen [None, None, 'first', 'hangs']" in stage_recs["fails"]["log_tail"]
    assert stage_recs["too-long"]["status"] == "skipped" and "budget" in stage_recs["too-long"]["reason"]
    assert stage_recs["summary"]["status"] == "ok"
    summary = (out / "summary.md").read_text()
    assert "| hangs | timeout |" in summary and "| too-long | skipped (budget" in summary
    junit = ET.parse(out / "junit.xml").getroot()
    cases = {c.get("name"): c for c in junit.find("testsuite[@name='stages']")}
    assert cases["hangs"].find("failure") is not None and cases["too-long"].find("skipped") is not None
    assert cases["first"].find("failure") is None
    assert any("timeout" in line for line in lines)
    assert set(os.listdir(out)) == set(gpu_suite.FILES)


def test_dry_run_walks_every_stage_and_writes_the_files(tmp_path):
    """The real command line with --dry-run on CPU, with an nvidia-smi that fails (as a broken driver does)."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    smi = fake_bin / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate' >&2\nexit 9\n")
    smi.chmod(0o755)
    out = tmp_path / "out"
    env = dict(os.environ, PATH=f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--dry-run", "--out", str(out),
                           "--budget", "600"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("env", "build", "tests", "bench", "steps", "summary"):
        assert f"  {name:<8} ~" in proc.stdout  # each stage listed with its estimated time
    assert "# fastgan GPU suite" in proc.stdout  # the summary is printed
    assert set(os.listdir(out)) == set(gpu_suite.FILES)
    recs = records(out)
    kinds = [r["type"] for r in recs]
    assert kinds[0] == "suite" and kinds[-1] == "suite"
    assert [r["stage"] for r in recs if r["type"] == "stage"] == ["env", "build", "tests", "bench", "steps",
                                                                            "summary"]
    assert all(r["status"] == "ok" for r in recs if r["type"] == "stage")
    env_rec = next(r for r in recs if r["type"] == "env")
    assert env_rec["torch"] == torch.__version__ and "could not communicate" in json.dumps(env_rec["nvidia_smi_errors"])
    assert next(r for r in recs if r["type"] == "build")["dry_run"] is True
    assert "--suite-select gpu" in next(r for r in recs if r["type"] == "tests-plan")["command"]
    planned = [r for r in recs if r["type"] == "bench-plan"]
    assert {r["goal"] for r in planned} == {"G1", "G2", "G3", "G4", "G7", "M1"}
    assert {r["part"] for r in recs if r["type"] == "steps-plan"} == {"check", "time", "penalty"}
    summary = (out / "summary.md").read_text()
    assert "DRY RUN" in summary and "## Benchmarks (planned)" in summary and "## Training steps (planned)" in summary
    ET.parse(out / "junit.xml")


@pytest.mark.parametrize("failure", ["fails", "hangs"])
def test_a_failed_or_hung_build_records_its_log_tail_and_the_fallback(tmp_path, monkeypatch, failure):
    code = ("import sys; print('ninja: build stopped: nvcc error: no kernel image', flush=True); sys.exit(1)"
            if failure == "fails" else "import time; print('compiling', flush=True); time.sleep(60)")
    monkeypatch.setattr(gpu_suite, "BUILD_COMMAND", ["-c", code])
    monkeypatch.setattr(gpu_suite, "NATIVE_CHECK", ["-c", "raise SystemExit('No module named fastgan._C')"])
    handler = signal.getsignal(signal.SIGTERM)
    start = time.monotonic()
    try:
        assert gpu_suite.run_build(tmp_path, time.time() + 2, dry_run=False) == 1
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert time.monotonic() - start < 30
    (record,) = records(tmp_path)
    assert record["status"] == ("failed" if failure == "fails" else "timeout")
    assert ("nvcc error" if failure == "fails" else "compiling") in record["log_tail"]
    assert record["native_cuda"] is False and record["fallback"] == "Triton and the reference only"


FAKE_TESTS = '''
import os, signal, time
import pytest

pytestmark = pytest.mark.gpu


def test_pass():
    pass


def test_fail():
    assert 1 == 2, "a plain failure"


def test_sticky_cuda_error():
    raise RuntimeError("CUDA error: an illegal memory access was encountered")


def test_crash():
    os.kill(os.getpid(), signal.SIGSEGV)


def test_hang():
    time.sleep(60)


@pytest.mark.skip(reason="not here")
def test_skipped():
    pass


def test_after():
    pass

'''


def test_test_stage_restarts_shards_after_sticky_device_errors_crashes_and_hangs(tmp_path):
    tests = tmp_path / "fake"
    tests.mkdir()
    (tests / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: gpu\n")
    (tests / "test_fake.py").write_text(FAKE_TESTS)
    (tests / "test_cpu.py").write_text("def test_cpu_only():\n    pass\n")
    out = tmp_path / "out"
    out.mkdir()
    start = time.monotonic()
    handler = signal.getsignal(signal.SIGTERM)
    try:
        rc = gpu_suite.run_tests(out, time.time() + 60, dry_run=False, quick=False, shards=1, tests=str(tests),
                                 test_limit_s=2)
    finally:
        signal.signal(signal.SIGTERM, handler)  # run_tests installs the stage's own (kills its shards, exits)
    assert rc == 1
    assert time.monotonic() - start < 45
    recs = records(out)
    outcomes = {r["nodeid"].split("::")[1]: r["outcome"] for r in recs if r["type"] == "test"}
    assert outcomes == {"test_pass": "passed", "test_fail": "failed", "test_sticky_cuda_error": "failed",
                        "test_crash": "crashed", "test_hang": "timeout", "test_skipped": "skipped",
                        "test_after": "passed"}
    assert "test_cpu_only" not in json.dumps(recs)  # not a GPU test: not selected
    assert [r["reason"] for r in recs if r["type"] == "tests-restart"] == ["crashed", "crashed", "timeout"]
    assert any(r["type"] == "tests-cuda-abort" for r in recs)
    (summary,) = [r for r in recs if r["type"] == "tests-summary"]
    assert summary["not_run"] == 0 and summary["restarts"] == {"0": 3}


def test_a_test_stage_killed_at_its_timeout_takes_its_shards_down(tmp_path):
    """The shards run in sessions of their own; killing the stage (its timeout) must not leave them running."""
    tests = tmp_path / "fake"
    tests.mkdir()
    (tests / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: gpu\n")
    pid_file = tmp_path / "shard.pid"
    (tests / "test_hang.py").write_text(textwrap.dedent(f"""
        import os, time, pytest

        @pytest.mark.gpu
        def test_hang():
            open({str(pid_file)!r}, "w").write(str(os.getpid()))
            time.sleep(120)
        """))
    out = tmp_path / "out"

    def command(ctx, deadline):
        return [sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--stage", "tests", "--out", str(ctx.out),
                "--deadline", str(time.time() + 600), "--shards", "1", "--tests", str(tests)]

    stage = Stage("tests", "hangs", command, 1, weight=1, min_s=1, max_s=4)
    run_suite([stage], Context(out=out, budget_s=30), echo=lambda line: None)
    (record,) = [r for r in records(out) if r.get("type") == "stage"]
    assert record["status"] == "timeout"
    assert pid_file.exists(), record.get("log_tail")
    time.sleep(0.5)
    assert not _alive(int(pid_file.read_text())), "the shard outlived its stage"


class _Item:
    """Just enough of a pytest item for the plugin's ordering and sharding."""

    def __init__(self, name: str, file: str = "test_x.py", impl: str | None = None, big: bool = False):
        self.nodeid, self.name, self.originalname = f"tests/{file}::{name}", name, name
        self.path = Path("tests") / file
        self.big = big
        if impl:
            self.callspec = type("CallSpec", (), {"params": {"impl": impl, "device": "cuda"}})()

    def get_closest_marker(self, name):
        return object() if (name == "bigmem" and self.big) else None


def test_plugin_orders_by_priority_and_deals_blocks_to_shards():
    from benchmarks import suite_plugin

    items = ([_Item(f"p_ref_{i}", "test_parity.py", "ref") for i in range(30)]
             + [_Item(f"p_triton_{i}", "test_parity.py", "triton") for i in range(30)]
             + [_Item(f"other_{i}") for i in range(10)]
             + [_Item(f"gpu_{i}", "test_gpu.py") for i in range(5)] + [_Item("huge", "test_gpu.py", big=True)])
    shards = [suite_plugin.shard_items(items, i, 3) for i in range(3)]
    names = [[item.name for item in shard] for shard in shards]
    assert sorted(n for shard in names for n in shard) == sorted(item.name for item in items)  # a partition
    assert names[0][0] == "huge" and all("huge" not in shard for shard in names[1:])
    order = [n for shard in names for n in shard]
    assert names[0][1:6] == [f"gpu_{i}" for i in range(5)]  # the GPU-only branches first
    # Within each shard: priority order (GPU-only, other, parity triton, parity ref), blocks of neighbours.
    rank = {"gpu": 0, "other": 1, "p_triton": 2, "p_ref": 4}
    for shard in names:
        ranks = [rank[n.rsplit("_", 1)[0]] for n in shard if n != "huge"]
        assert ranks == sorted(ranks)
    assert len(order) == len(items)
    assert suite_plugin.is_gpu_test(_Item("t", impl="native")) and not suite_plugin.is_gpu_test(_Item("t"))


# --- the torch.compile baseline --------------------------------------------------------------------------------------


def _scaled(x):
    return torch.relu(x) * 2


@pytest.fixture
def restore_dynamo_config():
    """harness.compiled sets fail_on_recompile_limit_hit; put it back (monkeypatch cannot undo a torch config)."""
    saved = torch._dynamo.config.fail_on_recompile_limit_hit
    yield
    torch._dynamo.config.fail_on_recompile_limit_hit = saved


def test_a_fresh_compile_per_shape_never_falls_back_to_eager(restore_dynamo_config):
    """Past Dynamo's recompile limit (8) one shared compiled function runs eager; the harness compiles afresh per
    shape, and its first-call check would catch the fallback."""
    torch._dynamo.config.fail_on_recompile_limit_hit = False
    limit = torch._dynamo.config.recompile_limit
    torch._dynamo.reset()
    shared = torch.compile(_scaled, backend="eager", dynamic=False)
    fell_back = None
    for n in range(1, limit + 3):
        try:
            harness.compile_first_call(lambda n=n: shared(torch.randn(n)))
        except harness.CompileFellBack:
            fell_back = n
            break
    assert fell_back == limit + 1  # the old harness' silent eager fallback, now detected
    for n in range(1, limit + 3):
        fresh = harness.compiled(_scaled, backend="eager")
        x = torch.randn(n)
        seconds = harness.compile_first_call(lambda f=fresh, x=x: f(x))
        assert seconds > 0
        torch.testing.assert_close(fresh(x), _scaled(x))
    assert torch._dynamo.config.fail_on_recompile_limit_hit  # and the limit, were it reached, raises


def test_timed_calls_may_not_recompile(restore_dynamo_config):
    fn = harness.compiled(_scaled, backend="eager")
    harness.compile_first_call(lambda: fn(torch.randn(3)))
    with harness.no_recompile():
        fn(torch.randn(3))
        with pytest.raises(RuntimeError, match="recompile"):
            fn(torch.randn(4))


def test_goals_runner_measures_side_by_side_and_judges(tmp_path, restore_dynamo_config):
    """G1 and G7 on tiny CPU tensors (compile backend "eager"): every provider a row, compile's first call timed
    apart, a provider that cannot run recorded with its reason, a verdict per workload, the autotune choices."""
    out = tmp_path / "bench.jsonl"
    assert goals.main(["--tiny", "--quick", "--only", "G1,G7", "--device", "cpu", "--compile-backend", "eager",
                       "--out", str(out)]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    rows = [r for r in recs if r["type"] == "bench"]
    workloads = {r["workload"] for r in rows}
    assert len(workloads) == 6  # G1 and each of the five losses
    for r in rows:
        if r["provider"] == "triton":  # on CPU only the interpreter runs Triton, and it is not timed: said so
            assert "unavailable" in r["error"] or "interpreter" in r["error"]
        else:
            assert "error" not in r, r
            assert r["median_ms"] > 0 and r["repeats"] >= 10
        if r["provider"] == "compile":
            assert r["first_call_s"] > 0 and r["max_rel_err"] < 1e-5
    verdicts = [r for r in recs if r["type"] == "goal"]
    assert len(verdicts) == 6
    g1 = next(v for v in verdicts if v["goal"] == "G1")
    assert [c["check"] for c in g1["checks"]] == [">= 85% of copy bandwidth", ">= 1.5x eager", ">= 1.0x compile"]
    assert all(isinstance(c["value"], float) and c["ok"] in (True, False) for c in g1["checks"])
    assert sum(r["type"] == "autotune" for r in recs) == 6


def test_deadline_skips_the_remaining_workloads(tmp_path):
    out = tmp_path / "bench.jsonl"
    assert goals.main(["--tiny", "--quick", "--device", "cpu", "--deadline", str(time.time()), "--out",
                       str(out)]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert recs and all(r.get("skipped", "").startswith("budget") for r in recs if r["type"] == "bench")


# --- summary, JUnit, publishing ---------------------------------------------------------------------------------------


RECORDS = [
    {"type": "suite", "event": "start", "budget_s": 480, "quick": False, "dry_run": False},
    {"type": "env", "gpu": "NVIDIA H200", "date": "2026-12-01T10:00:00+00:00", "capability": "9.0", "sms": 132,
     "memory_gib": 139.8, "torch": "2.11.0", "triton": "3.6.0", "cuda": "13.0",
     "nvidia_smi": {"driver_version": "580.159.04", "clocks.sm": "1980", "clocks.mem": "3201",
                    "clocks.max.sm": "1980", "clocks.max.mem": "3201"}},
    {"type": "stage", "stage": "env", "status": "ok", "seconds": 3, "timeout_s": 60},
    {"type": "build", "status": "failed", "rc": 1, "seconds": 80, "native_cuda": False, "log_tail": "nvcc error X",
     "fallback": "Triton and the reference only"},
    {"type": "test", "nodeid": "tests/test_gpu.py::test_a", "outcome": "passed", "seconds": 0.1},
    {"type": "test", "nodeid": "tests/test_gpu.py::test_b", "outcome": "failed", "seconds": 0.1,
     "message": "long traceback\nE   AssertionError: max error 3 > 1"},
    {"type": "tests-summary", "shards": 12, "counts": {"passed": 1, "failed": 1}, "restarts": {}, "not_run": 5,
     "shard_outcomes": {}},
    {"type": "bench", "goal": "G1", "workload": "w", "provider": "eager", "median_ms": 2.0, "p10_ms": 1.9,
     "p90_ms": 2.1},
    {"type": "bench", "goal": "G1", "workload": "w", "provider": "compile", "median_ms": 1.0, "first_call_s": 9.0},
    {"type": "bench", "goal": "G1", "workload": "w", "provider": "auto", "median_ms": 0.5},
    {"type": "bench", "goal": "G1", "workload": "w", "provider": "triton", "error": "RuntimeError: boom"},
    {"type": "goal", "goal": "G1", "workload": "w", "checks": [
        {"check": ">= 1.5x eager", "value": 4.0, "ok": True}, {"check": ">= 3x compile", "value": 2.0, "ok": False},
        {"check": ">= 85% of copy bandwidth", "value": None, "ok": None}]},
    {"type": "bench", "goal": "G3", "workload": "later", "skipped": "budget: deadline reached"},
    {"type": "autotune", "entries": {"NVIDIA H200 | torch 2.11.0": {"bias_act(bf16[64])": {
        "impl": "triton", "ms": {"triton": 0.1, "native": 0.2}, "rejected": {"ref": "raised X"}}}}},
]


def test_summary_names_the_gpu_and_reports_ratios_verdicts_and_failures(tmp_path):
    text = gpu_suite.render_summary(RECORDS)
    assert text.startswith("# fastgan GPU suite: NVIDIA H200")
    assert "driver: 580.159.04" in text and "1980 / 3201 MHz" in text
    assert "NO: Triton and the reference only" in text and "nvcc error X" in text
    assert "1 failed, 1 passed" in text and "not run (stopped by the budget): 5" in text
    assert "AssertionError: max error 3 > 1" in text
    assert "| G1 | w | >= 1.5x eager | 4.00x | yes |" in text and "| G1 | w | >= 3x compile | 2.00x | NO |" in text
    assert "| not measured |" in text
    assert "| auto | 0.5 | " in text and "| 4.00x | 2.00x |" in text  # vs eager, vs compile, side by side
    assert "RuntimeError: boom" in text and "Not run (budget): G3 later" in text
    assert "**triton**" in text and "ref disabled: raised X" in text
    out = tmp_path / "run"
    out.mkdir()
    for r in RECORDS:
        gpu_suite.emit(out, r)
    gpu_suite.write_junit(out)
    root = ET.parse(out / "junit.xml").getroot()
    tests = root.find("testsuite[@name='gpu-tests']")
    assert tests.get("tests") == "2" and tests.get("failures") == "1"
    goals_suite = root.find("testsuite[@name='benchmark-goals']")
    assert goals_suite.get("failures") == "1" and goals_suite.get("errors") == "1" and goals_suite.get("skipped") == "1"


def test_publish_copies_the_run_and_updates_the_readme(tmp_path):
    run = tmp_path / "returned"
    run.mkdir()
    for r in RECORDS:
        gpu_suite.emit(run, r)
    (run / "summary.md").write_text(gpu_suite.render_summary(RECORDS))
    root = tmp_path / "repo"
    (root / "benchmarks").mkdir(parents=True)
    readme = root / "README.md"
    readme.write_text(f"intro\n{gpu_suite.README_START}\nold table\n{gpu_suite.README_END}\nrest\n")
    dest = gpu_suite.publish(run, root=root, readme=readme)
    assert dest == root / "benchmarks" / "results" / "nvidia-h200-2026-12-01"
    assert (dest / "results.jsonl").exists() and (dest / "summary.md").exists()
    text = readme.read_text()
    assert "old table" not in text and text.startswith("intro\n") and text.endswith("rest\n")
    assert "Latest GPU run: **NVIDIA H200**, 2026-12-01" in text and "| G1 | w | >= 1.5x eager | 4.00x | yes |" in text


def test_inception_throughput_is_reported_in_images_per_second(tmp_path):
    """M1 (FID InceptionV3 features, fastgan.metrics) runs in the bench stage after the goals: one eager row with
    images/s, and a verdict with no target (a throughput report)."""
    out = tmp_path / "bench.jsonl"
    assert goals.main(["--tiny", "--only", "M1", "--device", "cpu", "--out", str(out)]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    (row,) = [r for r in recs if r["type"] == "bench"]
    assert row["provider"] == "eager" and "error" not in row, row
    assert row["images/s"] == round(2 / (row["median_ms"] * 1e-3))
    assert [r["checks"] for r in recs if r["type"] == "goal"] == [[]]


def test_the_steps_check_names_the_tensor_that_moved_most():
    """The graph check's comparison: each tensor's largest difference relative to its largest magnitude."""
    from benchmarks import steps

    ours = {"G.w": torch.tensor([1.0, -2.0]), "D.b": torch.tensor([1e-3, 0.0]), "opt.step": torch.tensor(5.0)}
    assert steps._compare(ours, {k: v.clone() for k, v in ours.items()}) == (0.0, "", True)
    theirs = {**ours, "G.w": torch.tensor([1.0, -2.002]), "D.b": torch.tensor([2e-3, 0.0])}
    worst, key, identical = steps._compare(ours, theirs)
    assert key == "D.b" and worst == pytest.approx(1.0) and not identical
    assert steps._compare(ours, {**ours, "G.w": torch.tensor([1.0, float("nan")])})[:2] == (float("inf"), "G.w")


def test_the_steps_stage_runs_on_the_cpu_without_its_graph_providers(tmp_path):
    """benchmarks/steps.py --tiny: the graph check is recorded as skipped with its reason, the steps and the penalty
    D step are timed for eager and fastgan, and the summary renders them."""
    from benchmarks import steps

    out = tmp_path / "results.jsonl"
    assert steps.main(["--tiny", "--quick", "--out", str(out)]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    checks = [r for r in recs if r["type"] == "steps-check"]
    assert checks and all(r["skipped"] == "CUDA graphs need a CUDA device" for r in checks)
    timed = [r for r in recs if r["type"] == "steps-time"]
    assert {r["provider"] for r in timed} == {"eager", "fastgan"} and all(r["median_ms"] > 0 for r in timed)
    penalties = {(r["provider"], r["penalty"]): r for r in recs if r["type"] == "steps-penalty"}
    assert set(penalties) == {(p, k) for p in ("eager", "fastgan") for k in ("none", "R1", "R1+R2")}
    assert all(penalties[(p, "none")]["over_plain"] == 1.0 for p in ("eager", "fastgan"))
    text = gpu_suite.render_summary(recs)
    assert "## Training steps" in text and "CUDA graphs need a CUDA device" in text
