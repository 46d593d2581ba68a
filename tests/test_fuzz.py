"""The seeded fuzzer (tests/fuzz.py) as part of the test suite: one test per public op, every implementation against
the reference. The cases of all selected ops run once, in worker subprocesses (a crash in a native kernel is caught
and named), and each op's test reports its failing cases with the command that reruns one.

CI runs the default case counts (``fuzz.CI_CASES``); ``FASTGAN_FUZZ_CASES=N`` runs N cases per op,
``FASTGAN_FUZZ_SEED`` draws other cases.
"""

from __future__ import annotations

import pytest

from . import fuzz

_RESULTS: dict[str, list[dict]] = {}


@pytest.fixture(scope="module")
def fuzz_results(request) -> dict[str, list[dict]]:
    """Every selected op's case results, from one run of the workers."""
    if not _RESULTS:
        selected = [item.callspec.params["op"] for item in request.session.items
                    if getattr(item, "originalname", "") == "test_fuzz" and hasattr(item, "callspec")]
        seed, counts = fuzz.settings()
        ids = [(op, i) for op in selected if op in counts for i in range(counts[op])]
        for result in fuzz.run_cases(ids, seed):
            _RESULTS.setdefault(result["op"], []).append(result)
    return _RESULTS


@pytest.mark.parametrize("op", fuzz.OPS)
def test_fuzz(op, fuzz_results):
    seed, counts = fuzz.settings()
    if op not in counts:
        pytest.skip(f"FASTGAN_FUZZ_OPS leaves out {op}")
    results = fuzz_results.get(op, [])
    assert len(results) == counts[op], f"{op}: {len(results)} of {counts[op]} cases ran"
    failed = [r for r in results if r["failures"]]
    lines = []
    for r in failed[:8]:
        lines.append(f"{r['case']}\n    rerun: python -m tests.fuzz --seed {seed} --case {op}:{r['index']}")
        lines += [f"    {f}" for f in r["failures"][:4]]
    if failed:
        pytest.fail(f"{len(failed)} of {len(results)} {op} cases differ from the reference:\n" + "\n".join(lines),
                    pytrace=False)


def test_fuzzer_catches_a_wrong_answer(monkeypatch):
    """The fuzzer's comparison fails a result with a NaN where the reference has a number, and a wrong value."""
    import torch

    ref = torch.tensor([1.0, float("nan"), 3.0])
    assert fuzz.compare("forward", ref.clone(), ref, lambda: None) is None
    assert "differ in kind" in fuzz.compare("forward", torch.tensor([1.0, 0.0, 3.0]), ref, lambda: None)
    assert "error" in fuzz.compare("forward", torch.tensor([1.0, float("nan"), 3.1]), ref, lambda: None)
    cl = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    assert "memory format" in fuzz.compare("forward", cl.contiguous(), cl, lambda: None)


def test_fuzzer_catches_a_crash():
    """A case that kills its worker is reported as a crash, and the cases after it still run."""
    results = fuzz.run_cases([("bias_act", 0), ("__crash__", 0), ("bias_act", 1)], seed=0)
    assert [r["op"] for r in results] == ["bias_act", "__crash__", "bias_act"]
    assert "crashed" in results[1]["failures"][0]
    assert not results[0]["failures"] and not results[2]["failures"]
