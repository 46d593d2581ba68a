"""Implementation dispatch: defaults, overrides, fallbacks, errors, and import without the optional pieces."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch

import fastgan
from fastgan import _backend
from fastgan.ops import bias_act

from .conftest import fresh_python


def test_available_impls_table():
    table = fastgan.available_impls()
    assert set(table) == {"ref", "triton", "native"}
    for devices in table.values():
        assert set(devices) == {"cpu", "cuda"}
        for usable, reason in devices.values():
            assert isinstance(usable, bool) and (usable == (reason == ""))
    assert table["ref"]["cpu"] == (True, "")
    assert fastgan.available_backends is fastgan.available_impls


def test_set_impl_use_impl_and_environment(monkeypatch):
    monkeypatch.delenv("FASTGAN_IMPL", raising=False)
    assert fastgan.get_impl() == "auto"
    monkeypatch.setenv("FASTGAN_IMPL", "ref")
    assert fastgan.get_impl() == "ref"
    with fastgan.use_impl("native"):
        assert fastgan.get_impl() == "native"
        with fastgan.use_impl("triton"):
            assert fastgan.get_impl() == "triton"
        assert fastgan.get_impl() == "native"
    assert fastgan.get_impl() == "ref"
    fastgan.set_impl("native")
    try:
        assert fastgan.get_impl() == "native"
    finally:
        _backend._default_impl = None
    with pytest.raises(ValueError, match="fastgan.set_impl: unknown implementation 'cuda'"):
        fastgan.set_impl("cuda")
    monkeypatch.setenv("FASTGAN_IMPL", "fast")
    with pytest.raises(ValueError, match="FASTGAN_IMPL: unknown implementation 'fast'"):
        fastgan.get_impl()


def test_default_impl_reaches_the_op(monkeypatch):
    seen = []
    real = _backend.resolve_impl

    def spy(impl, device, op, *rule_args):  # rule_args: the activation and dtype of the CPU rule
        chosen = real(impl, device, op, *rule_args)
        seen.append(chosen)
        return chosen

    monkeypatch.setattr(sys.modules["fastgan.ops.bias_act"], "resolve_impl", spy)
    x = torch.randn(2, 3)
    with fastgan.use_impl("ref"):
        bias_act(x, act="relu")
    assert seen == ["ref"]
    with fastgan.use_impl("native"):
        bias_act(x, act="relu", impl="ref")  # an explicit impl wins over the default
    assert seen[-1] == "ref"


def test_explicit_unavailable_impl_raises_with_the_fix(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(fastgan.ImplUnavailableError, match="bias_act: impl='triton' is unavailable.*TRITON_INTERPRET"):
        bias_act(torch.randn(2, 3), impl="triton")
    with pytest.raises(ValueError, match="bias_act: unknown implementation 'cudnn'"):
        bias_act(torch.randn(2, 3), impl="cudnn")


def test_auto_falls_back_and_warns_once(monkeypatch):
    monkeypatch.setattr(_backend, "native_extension", lambda: (None, "fastgan._C is not built (test)"))
    monkeypatch.setattr(_backend, "_warned", set())
    x = torch.randn(2, 3)
    with pytest.warns(UserWarning, match=r"bias_act: falling back from impl='native' on cpu: fastgan._C is not built"):
        y = bias_act(x, act="relu")
    torch.testing.assert_close(y, torch.relu(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bias_act(x, act="relu")  # second call: no second warning
    with pytest.raises(fastgan.ImplUnavailableError, match=r"impl='native' is unavailable .*not built \(test\)"):
        bias_act(x, impl="native")


@pytest.mark.parametrize("blocked", ["fastgan._C", "triton"])
def test_import_never_fails(blocked):
    """With the extension or Triton missing, import works and the table says why (a fresh interpreter)."""
    code = (
        f"import sys; sys.modules[{blocked!r}] = None\n"
        "import fastgan, torch\n"
        "t = fastgan.available_impls()\n"
        "impl = 'native' if 'fastgan' in " + repr(blocked) + " else 'triton'\n"
        "print(t[impl]['cpu'])\n"
        "print(fastgan.ops.bias_act(torch.ones(2, 2), act='relu').sum().item())\n"
    )
    first, second = fresh_python(code, timeout=120)[-2:]
    assert first.startswith("(False,") and ("pip install" in first)
    assert second == "4.0"


def test_cli_info(capsys):
    from fastgan.cli import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for needle in ("fastgan", "torch", "triton", "CUDA", "nvcc", "devices", "implementations", "native", "ref"):
        assert needle in out
    assert main([]) == 2  # no command: help and a usage exit code
