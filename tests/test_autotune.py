"""impl="auto" by measurement (fastgan/_autotune.py), proven on CPU: injected candidates (a wrong one, one that
raises, a slow one), the real ops with a broken implementation, the memory and disk cache, FASTGAN_AUTOTUNE=0, and
no measurement inside torch.compile or a CUDA-graph capture."""

from __future__ import annotations

import json
import multiprocessing
import platform
import signal
import threading
import time
import warnings

import pytest
import torch

import fastgan
from fastgan import _autotune, _backend
from fastgan.losses import d_loss, gradient_penalty
from fastgan.ops import batch_norm_act, bias_act, conv_transpose2d_batch_norm_act

CALLS: list[str] = []


def _toy_candidates(device):
    return ("wrong", "raises", "slow", "fast", "ref")


@_autotune.autotuned("toy", candidates=_toy_candidates, devices=lambda: frozenset({"cpu"}))
def toy(x: torch.Tensor, scale: float = 2.0, impl: str = "auto") -> torch.Tensor:
    """x * scale; every implementation but "wrong" and "raises" computes it."""
    CALLS.append(impl)
    if impl == "auto":  # the fixed order
        return x * scale
    if impl == "wrong":
        return x * scale + 1
    if impl == "raises":
        raise RuntimeError("kernel exploded")
    if impl in ("slow", "ref"):  # the reference is a candidate too: slower than "fast" here
        time.sleep(0.02 if impl == "slow" else 0.005)
    return x * scale


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTGAN_AUTOTUNE_CACHE", str(tmp_path / "autotune.json"))
    monkeypatch.delenv("FASTGAN_AUTOTUNE", raising=False)
    monkeypatch.delenv("FASTGAN_IMPL", raising=False)
    monkeypatch.setattr(_autotune, "_warned", set())
    _autotune.clear()
    CALLS.clear()
    yield tmp_path / "autotune.json"
    _autotune.clear()


def test_picks_the_fastest_correct_candidate_and_disables_the_others_with_one_warning(fresh_cache):
    x = torch.randn(5, 3)
    with pytest.warns(RuntimeWarning) as record:
        y = toy(x)
    messages = sorted(str(w.message) for w in record)
    assert len(messages) == 2, messages
    assert messages[0].startswith("toy: impl='raises' disabled") and "RuntimeError: kernel exploded" in messages[0]
    assert messages[1].startswith("toy: impl='wrong' disabled") and "disagrees with the reference" in messages[1]
    torch.testing.assert_close(y, x * 2)
    assert CALLS[-1] == "fast"  # the real call ran the choice
    (scope, entries), = _autotune.entries().items()
    (key, entry), = entries.items()
    assert key == "toy(f32[8,4], float)" and entry["impl"] == "fast"
    assert set(entry["ms"]) == {"slow", "fast", "ref"} and entry["ms"]["slow"] >= 20
    assert set(entry["rejected"]) == {"wrong", "raises"}
    assert json.loads(fresh_cache.read_text())[scope][key]["impl"] == "fast"  # on disk too

    CALLS.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per (op, implementation, key): not again
        toy(torch.randn(7, 4))  # the same shape class: no measurement
    assert CALLS == ["fast"]
    with pytest.warns(RuntimeWarning):
        toy(torch.randn(9, 4))  # another class: measured again
    assert "slow" in CALLS and CALLS[-1] == "fast"


def test_explicit_impl_process_default_and_autotune_off_use_no_measurement(monkeypatch):
    x = torch.randn(4)
    toy(x, impl="slow")
    with fastgan.use_impl("ref"):
        toy(x)  # the op resolves the process default itself
    assert CALLS == ["slow", "auto"]
    monkeypatch.setenv("FASTGAN_AUTOTUNE", "0")
    toy(x)
    assert CALLS == ["slow", "auto", "auto"]  # the op's fixed order, nothing measured
    assert _autotune.entries() == {}


def test_the_disk_cache_survives_the_process_and_is_scoped_by_gpu_and_versions(monkeypatch):
    x = torch.randn(4, 4)
    with pytest.warns(RuntimeWarning):
        toy(x)
    _autotune.clear()  # a new process: memory empty, the file stays
    CALLS.clear()
    toy(x)
    assert CALLS == ["fast"]
    real_scope = _autotune.scope
    _autotune.clear()  # a new process with another torch: the file holds no choice for it
    monkeypatch.setattr(_autotune, "scope", lambda device: real_scope(device).replace("torch", "torch-next"))
    monkeypatch.setattr(_autotune, "_warned", set())
    with pytest.warns(RuntimeWarning):
        toy(x)  # other versions: measured again
    assert "slow" in CALLS
    assert len(_autotune.entries()) == 2


def test_no_measurement_inside_torch_compile_it_uses_the_cached_choice():
    x = torch.randn(4, 4)
    compiled = torch.compile(lambda t: toy(t), backend="aot_eager", fullgraph=True, dynamic=False)
    torch.testing.assert_close(compiled(x), x * 2)
    assert CALLS == ["auto"]  # traced once: nothing cached, so the fixed order, and no candidate ran
    assert _autotune.entries() == {}
    with pytest.warns(RuntimeWarning):
        toy(x)  # eager: measures
    CALLS.clear()
    torch._dynamo.reset()
    compiled = torch.compile(lambda t: toy(t), backend="aot_eager", fullgraph=True, dynamic=False)
    torch.testing.assert_close(compiled(x), x * 2)
    assert CALLS == ["fast"]


def test_no_measurement_during_a_graph_capture(monkeypatch):
    monkeypatch.setattr(_autotune, "_capturing", lambda device: True)
    toy(torch.randn(3))
    assert CALLS == ["auto"] and _autotune.entries() == {}


def test_an_input_the_reference_refuses_raises_the_ops_own_error_and_caches_nothing_on_disk(monkeypatch,
                                                                                           fresh_cache):
    monkeypatch.setattr(_autotune, "TUNED_DEVICES", frozenset({"cuda", "cpu"}))
    with pytest.raises(ValueError, match="bias_act: unknown activation"):
        bias_act(torch.randn(2, 3), act="nope")
    assert not fresh_cache.exists()


def test_a_reference_out_of_memory_falls_back_to_the_fixed_order_once(monkeypatch, fresh_cache):
    """When the float64 reference does not fit, the call runs the fixed order, and the key is not tried again."""
    monkeypatch.setattr(_autotune, "TUNED_DEVICES", frozenset({"cuda", "cpu"}))
    real_clone = _autotune._clone
    attempts = []

    def clone(value, dtype=None):
        if dtype == torch.float64:
            attempts.append(1)
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_clone(value, dtype)

    monkeypatch.setattr(_autotune, "_clone", clone)
    x = torch.randn(3, 4)
    for _ in range(3):
        torch.testing.assert_close(bias_act(x, act="relu"), torch.relu(x))
    assert len(attempts) == 1
    (entries,) = _autotune.entries().values()
    (entry,) = entries.values()
    assert entry["impl"] == "" and "OutOfMemoryError" in entry["unmeasured"]
    assert not fresh_cache.exists()  # memory only


def test_real_op_with_a_broken_implementation_is_disabled_and_the_result_is_right(monkeypatch):
    """bias_act measured on CPU (as on CUDA) with its native kernel replaced by a wrong one."""
    monkeypatch.setattr(_autotune, "TUNED_DEVICES", frozenset({"cuda", "cpu"}))
    real = sys_module("fastgan.ops.bias_act").custom_ops

    class Broken:
        def __init__(self, ops):
            self.ops = ops

        def __getattr__(self, name):
            op = getattr(self.ops, name)
            return (lambda *a: op(*a) * 1.5) if name == "bias_act" else op

    monkeypatch.setattr(sys_module("fastgan.ops.bias_act"), "custom_ops",
                        lambda key, impl: Broken(real(key, impl)) if impl == "native" else real(key, impl))
    x = torch.randn(4, 8, 3, 3, requires_grad=True)
    b = torch.randn(8, requires_grad=True)
    with pytest.warns(RuntimeWarning, match=r"bias_act: impl='native' disabled for bias_act\(f32\[4,8,4,4\] grad"):
        y = bias_act(x, b, act="lrelu", alpha=0.2)
    torch.testing.assert_close(y, torch.nn.functional.leaky_relu(x + b.view(1, -1, 1, 1), 0.2))
    (entries,) = _autotune.entries().values()
    (entry,) = entries.values()
    assert entry["impl"] == "ref" and "native" in entry["rejected"]


def test_measurement_leaves_the_callers_tensors_alone(monkeypatch):
    """Running statistics are updated once, by the real call: the measurement works on copies."""
    monkeypatch.setattr(_autotune, "TUNED_DEVICES", frozenset({"cuda", "cpu"}))
    x = torch.randn(6, 4, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    stats = [torch.zeros(4), torch.ones(4)]
    expected = [t.clone() for t in stats]
    ref = batch_norm_act(x, None, None, *expected, True, act="relu", impl="ref")
    y = batch_norm_act(x, None, None, *stats, True, act="relu")
    torch.testing.assert_close(y, ref)
    for got, want in zip(stats, expected):
        torch.testing.assert_close(got, want)
    assert x.grad is None
    (entries,) = _autotune.entries().values()
    (key,) = entries
    assert key.startswith("batch_norm_act(f32[8,4,8,8] cl grad, None, None, f32[4], f32[4], True")
    assert set(entries[key]["ms"]) <= {"native", "ref"} and not entries[key]["rejected"]


@pytest.mark.parametrize("fused", [False, True], ids=["batch_norm_act", "conv_transpose2d_batch_norm_act"])
def test_measurement_compares_updated_statistics_and_casts_keyword_arguments(monkeypatch, fused):
    """An affine batch norm in training, its parameters and statistics positional (F.batch_norm's update leaves their
    _version as it was) or keyword-only (the fused convolution's): every candidate is measured, none rejected, the
    caller's statistics updated once."""
    monkeypatch.setattr(_autotune, "TUNED_DEVICES", frozenset({"cuda", "cpu"}))
    monkeypatch.setitem(_backend._AUTO_ORDER, "cpu", ("triton", "native", "ref"))  # as many as run here
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 8, 5, 5, generator=gen).contiguous(memory_format=torch.channels_last).requires_grad_()
    conv = torch.randn(8, 4, 4, 4, generator=gen, requires_grad=True)
    affine = [torch.rand(4, generator=gen).add(0.5).requires_grad_(), torch.randn(4, generator=gen, requires_grad=True)]
    stats = [torch.zeros(4), torch.ones(4)]
    expected = [t.clone() for t in stats]

    def call(stats, impl):
        if fused:
            norm = dict(zip(("norm_weight", "norm_bias", "running_mean", "running_var"), (*affine, *stats)))
            return conv_transpose2d_batch_norm_act(x, conv, None, 2, 1, **norm, training=True, act="relu", impl=impl)
        return batch_norm_act(x[:, :4], *affine, *stats, True, act="relu", impl=impl)

    ref = call(expected, "ref")
    torch.testing.assert_close(call(stats, "auto"), ref)
    for got, want in zip(stats, expected):
        torch.testing.assert_close(got, want)
    (entries,) = _autotune.entries().values()
    (entry,) = entries.values()
    assert entry["impl"] and not entry["rejected"] and set(entry["ms"]) == set(_autotune.default_candidates(x.device))


def test_gradient_penalty_lets_its_ops_choose(monkeypatch):
    monkeypatch.setattr(_autotune, "TUNED_DEVICES", frozenset({"cuda", "cpu"}))
    critic = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 1))
    real, fake = torch.randn(3, 3, 2, 2), torch.randn(3, 3, 2, 2)
    penalty = gradient_penalty(critic, real, fake, eps=torch.rand(3))
    penalty.backward()
    (entries,) = _autotune.entries().values()
    assert {key.split("(")[0] for key in entries} == {"interpolate", "grad_norm_penalty"}


def test_fastgan_info_shows_the_cache(capsys):
    with pytest.warns(RuntimeWarning):
        toy(torch.randn(2, 2))
    from fastgan.cli import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert _autotune.cache_path() in out
    assert "toy(f32[2,2], float)" in out and "-> fast" in out and "wrong disabled" in out


def test_cpu_auto_keeps_its_fixed_order():
    """Without a tuned device, "auto" on CPU is native, then ref, as before: no measurement, no cache."""
    assert "cpu" not in _autotune.TUNED_DEVICES
    bias_act(torch.randn(2, 3), act="relu")
    assert _autotune.entries() == {}
    expected = "native" if _backend.available_impls()["native"]["cpu"][0] else "ref"
    assert _backend.resolve_impl("auto", torch.device("cpu"), "bias_act") == expected
    assert _backend.resolve_impl("auto", torch.device("cpu"), "batch_norm_act", "lrelu") == expected


@pytest.mark.parametrize("op,act", [("bias_act", "tanh"), ("conv_transpose2d_act", "tanh"), ("batch_norm_act", "silu"),
                                    ("instance_norm_act", "sigmoid"), ("g_loss", None)])
def test_cpu_auto_runs_ref_where_native_measured_slower(op, act):
    """Issue 17: "auto" on the CPU never picks the C++ kernel for an op class the CPU benchmarks measured slower than
    the reference (smooth activations: they recompute the activation in the backward, where PyTorch's reads its
    output; g_loss: a custom op's fixed cost against one mean); an explicit or process-wide impl is still obeyed."""
    cpu = torch.device("cpu")
    assert _backend.resolve_impl("auto", cpu, op, act) == "ref"
    assert _backend.resolve_impl("auto", cpu, "bias_act", "lrelu", torch.bfloat16) == "ref"
    assert _backend.resolve_impl("auto", cpu, "batch_norm_act", "relu", torch.float16) == "ref"
    if _backend.available_impls()["native"]["cpu"][0]:
        assert _backend.resolve_impl("native", cpu, op, act) == "native"
        with fastgan.use_impl("native"):
            assert _backend.resolve_impl("auto", cpu, op, act) == "native"


@pytest.mark.parametrize("kind", ["minimax", "nonsaturating", "hinge", "wasserstein", "least_squares"])
def test_cpu_auto_d_loss_by_kind(kind):
    """d_loss under "auto" on the CPU: the C++ kernel for the kinds it measured faster on (0.66-0.87x the reference's
    time, forward+backward), the reference for wasserstein (two means: a tie) and for half types; the same value
    either way."""
    cpu = torch.device("cpu")
    native = _backend.available_impls()["native"]["cpu"][0]
    expected = "native" if native and kind != "wasserstein" else "ref"
    assert _backend.resolve_impl("auto", cpu, "d_loss", dtype=torch.float32, kind=kind) == expected
    assert _backend.resolve_impl("auto", cpu, "d_loss", dtype=torch.bfloat16, kind=kind) == "ref"
    gen = torch.Generator().manual_seed(0)
    real, fake = torch.randn(64, generator=gen), torch.randn(64, generator=gen)
    torch.testing.assert_close(d_loss(real, fake, kind), d_loss(real, fake, kind, impl="ref"))


def test_cpu_auto_tanh_epilogue_runs_no_custom_op():
    """The DCGAN generator's tanh output layer under "auto" on the CPU is the reference: no fastgan:: op runs."""
    from torch.profiler import ProfilerActivity, profile

    from fastgan.ops import conv_transpose2d_act

    x, w, b = torch.randn(2, 4, 3, 3), torch.randn(4, 1, 4, 4), torch.randn(1)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        y = conv_transpose2d_act(x, w, b, 2, 1, act="tanh")
    names = {event.key for event in prof.key_averages()}
    assert not any(name.startswith("fastgan::") for name in names), names
    torch.testing.assert_close(y, torch.tanh(torch.nn.functional.conv_transpose2d(x, w, b, 2, 1)))


def sys_module(name):
    import sys

    return sys.modules[name]


def test_cpu_choice_is_measured_once_per_machine(fresh_cache):
    """``cpu_choice`` (the CPU's one-channel convolutions' forward): the fastest candidate, measured once and read
    back from disk by a new process; a malformed entry is measured again; a choice another process wrote while this
    one measured stands (the same choice, the same bits, in every process); a choice made in the process is found by
    the call's exact arguments, without building the key."""
    measured, keys_built = [], []

    def measure():
        measured.append(1)
        return {"route": 2.0, "onednn": 1.0}

    def choose(name, fn=measure):
        return _autotune.cpu_choice((name,), lambda: keys_built.append(name) or name, fn)

    assert choose("k") == "onednn" and choose("k") == "onednn" and keys_built == ["k"]
    assert choose("a", lambda: {"route": 1.0, "onednn": 2.0}) == "route" and choose("k") == "onednn"
    _autotune.clear()  # memory only: as a new process
    assert choose("k") == "onednn" and len(measured) == 1 and keys_built == ["k", "a", "k"]
    scope = _autotune.scope(torch.device("cpu"))
    data = json.loads(fresh_cache.read_text())
    data[scope]["k"] = {"ms": {}}
    fresh_cache.write_text(json.dumps(data))
    _autotune.clear()
    assert choose("k") == "onednn" and len(measured) == 2

    def measure_while_another_process_chooses():
        fresh_cache.write_text(json.dumps({scope: {"k2": {"impl": "route", "ms": {"route": 3.0}, "rejected": {}}}}))
        return measure()

    assert choose("k2", measure_while_another_process_chooses) == "route"
    assert _autotune.entries()[scope]["k2"]["impl"] == "route"


def test_the_cpu_scope_names_the_cpu_model_and_its_vector_isa(tmp_path):
    """A choice measured on one CPU model and ISA is not read back on another (a cache shared by a cluster's home
    directory): the scope names both, not only the architecture."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC  7B13 64-Core Processor\n")
    assert _backend.cpu_name(str(cpuinfo)) == "AMD EPYC 7B13 64-Core Processor"
    unnamed = tmp_path / "unnamed"
    unnamed.write_text("processor\t: 0\n")  # no model named: the platform module's name
    assert _backend.cpu_name(str(unnamed)) == (platform.processor() or platform.machine() or "unknown CPU")
    assert _backend.cpu_name(str(tmp_path / "absent")) == (platform.processor() or platform.machine() or "unknown CPU")
    scope = _autotune.scope(torch.device("cpu"))
    assert scope.startswith(f"cpu:{_backend.cpu_name()} ({torch.backends.cpu.get_cpu_capability()}) | torch ")


def _store_choices(worker: int, count: int) -> None:
    for k in range(count):
        _autotune._store("scope", f"{worker}-{k}", {"impl": "ref", "ms": {"ref": 1.0}, "rejected": {}})


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork and fcntl (POSIX)")
def test_processes_storing_at_once_keep_each_others_entries(fresh_cache):
    """Each store reads the file, merges its entry and replaces the file: without the lock file, a process that read
    before another's replace wrote the file back without that entry (torchrun's ranks measuring at once)."""
    workers, count = 4, 25
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_store_choices, args=(w, count)) for w in range(workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert [process.exitcode for process in processes] == [0] * workers
    stored = json.loads(fresh_cache.read_text())["scope"]
    assert sorted(stored) == sorted(f"{w}-{k}" for w in range(workers) for k in range(count))


def _choose_in_time() -> None:
    signal.alarm(20)  # a lock inherited held would hang here: the alarm ends the child with SIGALRM
    assert _autotune.cpu_choice(("fork",), lambda: "fork", lambda: {"ref": 1.0}) == "ref"


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork (POSIX)")
def test_a_child_forked_while_another_thread_holds_the_lock_can_choose(fresh_cache):
    """A DataLoader worker forked while a thread of the parent was measuring: the child's copy of the lock is new,
    not the parent's held by a thread the child does not have."""
    held, release = threading.Event(), threading.Event()

    def measure_slowly():
        with _autotune._lock:
            held.set()
            release.wait(30)

    thread = threading.Thread(target=measure_slowly)
    thread.start()
    try:
        assert held.wait(30)
        child = multiprocessing.get_context("fork").Process(target=_choose_in_time)
        child.start()
        child.join(60)
        assert child.exitcode == 0
    finally:
        release.set()
        thread.join(30)


def test_a_held_lock_delays_a_store_but_never_hangs_it(fresh_cache, monkeypatch):
    """A holder that does not let go (a stopped process): the store waits LOCK_WAIT_S, then writes unlocked."""
    fcntl = pytest.importorskip("fcntl")
    monkeypatch.setattr(_autotune, "LOCK_WAIT_S", 0.2)
    fresh_cache.parent.mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("fork")
    locked, release = context.Event(), context.Event()

    def hold():
        with open(str(fresh_cache) + ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            locked.set()
            release.wait(30)

    holder = context.Process(target=hold)
    holder.start()
    try:
        assert locked.wait(30)
        start = time.monotonic()
        _store_choices(0, 1)
        assert 0.2 <= time.monotonic() - start < 10
        assert list(json.loads(fresh_cache.read_text())["scope"]) == ["0-0"]
    finally:
        release.set()
        holder.join(30)
