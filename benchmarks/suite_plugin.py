"""pytest plugin of the GPU suite's test stage (``-p benchmarks.suite_plugin``): select, order and shard the GPU tests,
and append each result as one JSON line as soon as it is known, so a shard that is killed or crashes keeps its
results.

Options:

- ``--suite-results FILE``: the JSON-lines file each test's outcome is appended to (one ``write`` per line).
- ``--suite-select gpu``: keep only GPU tests (marker ``gpu``, a parameter equal to ``"cuda"``, ``tests/test_gpu.py``,
  "cuda" in the test function's name or a name ending in "_gpu"). ``--suite-quick`` also drops the parity matrix's
  ``ref`` rows (PyTorch checking itself) and its non-contiguous layouts.
- ``--suite-shard I --suite-shards N``: run the I-th of N shards. Tests are ordered by priority (GPU-only branches,
  then the Triton-specific and other GPU tests, then parity triton, native (nvcc's and NVRTC's kernels), ref), cut
  into blocks of neighbours (which share Triton kernels, so a shard compiles each once) dealt round-robin to the
  shards; ``bigmem`` tests all go to shard 0, first.
- ``--suite-skip FILE``: node ids not to run again (a restarted shard skips what its crashed predecessor finished).
- ``--suite-current FILE``: the node id running now (so a crash without a report is attributed).

A test that fails with a sticky CUDA error (illegal memory access, launch failure, device-side assert) leaves the
CUDA context unusable: its result is recorded and the process exits with ``CUDA_ERROR_EXIT``, so the stage restarts
the shard in a fresh process instead of failing every later test.
"""

from __future__ import annotations

import json
import os
import re

import pytest

CUDA_ERROR_EXIT = 75
STICKY_CUDA_ERROR = re.compile(
    r"illegal memory access|unspecified launch failure|device-side assert|misaligned address|illegal instruction|"
    r"an illegal address|CUDA_ERROR_ILLEGAL|Triton Error \[CUDA\]|cudaErrorLaunchFailure|CUBLAS_STATUS_EXECUTION_FAILED"
)
BLOCK = 24  # neighbouring tests kept on one shard


def pytest_addoption(parser):
    group = parser.getgroup("fastgan GPU suite")
    group.addoption("--suite-results", default=None)
    group.addoption("--suite-select", default=None, choices=["gpu"])
    group.addoption("--suite-quick", action="store_true")
    group.addoption("--suite-shard", type=int, default=0)
    group.addoption("--suite-shards", type=int, default=1)
    group.addoption("--suite-skip", default=None)
    group.addoption("--suite-current", default=None)


def is_gpu_test(item) -> bool:
    """A test that needs (or is written for) a CUDA GPU."""
    if item.get_closest_marker("gpu") or item.path.name == "test_gpu.py":
        return True
    callspec = getattr(item, "callspec", None)
    if callspec is not None and any(isinstance(v, str) and v == "cuda" for v in callspec.params.values()):
        return True
    name = getattr(item, "originalname", item.name).lower()
    return "cuda" in name or name.endswith("_gpu")  # test_..._cuda_kernel, test_..._needs_gpu


def priority(item) -> int:
    """Lower runs first: the GPU-only branches, the other GPU tests, then the parity matrix's triton, native, ref."""
    if item.path.name == "test_gpu.py":
        return 0
    if item.path.name != "test_parity.py":
        return 1
    impl = getattr(item, "callspec", None) and item.callspec.params.get("impl")
    return {"triton": 2, "native": 3, "native-nvrtc": 3}.get(impl, 4)


def _quick_drop(item) -> bool:
    if item.path.name != "test_parity.py" or getattr(item, "callspec", None) is None:
        return False
    params = item.callspec.params
    return params.get("impl") == "ref" or params.get("layout") == "noncontiguous"


def shard_items(items: list, shard: int, shards: int) -> list:
    """The items of one shard (see the module docstring); the order within a shard is the priority order."""
    big = [i for i in items if i.get_closest_marker("bigmem")]
    rest = sorted((i for i in items if not i.get_closest_marker("bigmem")), key=priority)  # stable: file order kept
    blocks = [rest[k:k + BLOCK] for k in range(0, len(rest), BLOCK)]
    mine = [item for b, block in enumerate(blocks) if b % shards == shard for item in block]
    return (big if shard == 0 else []) + mine


_CONFIG: list = []  # the session's config, for the report hooks


def pytest_configure(config):
    config.addinivalue_line("markers", "bigmem: needs tens of GiB of GPU memory (one shard runs them all)")
    _CONFIG[:] = [config]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    opt = config.getoption
    keep = list(items)
    if opt("--suite-select") == "gpu":
        keep = [i for i in keep if is_gpu_test(i)]
    if opt("--suite-quick"):
        keep = [i for i in keep if not _quick_drop(i)]
    if opt("--suite-shards") > 1 or opt("--suite-select"):
        keep = shard_items(keep, opt("--suite-shard"), opt("--suite-shards"))
    skip_file = opt("--suite-skip")
    if skip_file and os.path.exists(skip_file):
        with open(skip_file) as f:
            done = {line.strip() for line in f if line.strip()}
        keep = [i for i in keep if i.nodeid not in done]
    kept = set(keep)
    deselected = [i for i in items if i not in kept]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
    items[:] = keep
    _emit(config, {"type": "tests-collected", "shard": opt("--suite-shard"), "count": len(keep)})


def _emit(config, record: dict) -> None:
    path = config.getoption("--suite-results")
    if not path:
        return
    line = (json.dumps(record, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)  # one write per line: shards appending to the same file do not interleave
    finally:
        os.close(fd)


def pytest_runtest_logstart(nodeid, location):
    config = _CONFIG[0] if _CONFIG else None
    current = config.getoption("--suite-current") if config else None
    if current:
        with open(current, "w") as f:
            f.write(nodeid)


def pytest_runtest_logreport(report):
    config = _CONFIG[0] if _CONFIG else None
    if config is None:
        return
    outcome = None
    if report.when == "call" or (report.when == "setup" and not report.passed):
        outcome = "error" if report.when == "setup" and report.failed else report.outcome
    elif report.when == "teardown" and report.failed:
        outcome = "error"
    if outcome is None:
        return
    record = {"type": "test", "shard": config.getoption("--suite-shard"), "nodeid": report.nodeid,
              "outcome": outcome, "when": report.when, "seconds": round(report.duration, 3)}
    text = ""
    if report.failed:
        text = str(report.longrepr)
        record["message"] = text[-1500:]
    elif report.skipped and isinstance(report.longrepr, tuple):
        record["message"] = str(report.longrepr[2])[:300]
    _emit(config, record)
    if report.failed and STICKY_CUDA_ERROR.search(text):
        _emit(config, {"type": "tests-cuda-abort", "shard": config.getoption("--suite-shard"),
                       "nodeid": report.nodeid})
        os._exit(CUDA_ERROR_EXIT)
