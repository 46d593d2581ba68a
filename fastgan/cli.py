"""The ``fastgan`` command line. ``fastgan info`` reports versions, devices, the implementation table and the
measured choices of ``impl="auto"``."""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Callable, Sequence

import torch

from .metrics.cli import COMMANDS as EVAL_COMMANDS
from .train.cli import COMMANDS as TRAIN_COMMANDS

# Subcommand name -> (help, function adding its arguments, function running it): info below, then the training
# commands and eval, defined beside their code (fastgan/train/cli.py, fastgan/metrics/cli.py), which know nothing of
# this module.
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None] = lambda p: None):
    """Register ``fn(args) -> exit code`` as ``fastgan NAME``."""

    def register(fn: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = (help, add_arguments, fn)
        return fn

    return register


def _versions() -> list[tuple[str, str]]:
    import fastgan
    from fastgan._backend import _triton_version, native_extension

    triton_version, triton_reason = _triton_version()
    module, reason = native_extension()
    rows = [
        ("fastgan", fastgan.__version__),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("triton", triton_version or f"unavailable: {triton_reason}"),
        ("CUDA (torch)", torch.version.cuda or "none (CPU build of PyTorch)"),
        ("compiled extension", ("built, with CUDA kernels" if module.with_cuda() else "built, C++ kernels only")
         if module is not None else f"unavailable: {reason}"),
        ("native CUDA kernels", _native_cuda_line()),
        ("C++ compiler", _tool_version(["c++", "--version"], "")),
        ("nvcc", _tool_version(["nvcc", "--version"], "release")),
    ]
    return rows


def _native_cuda_line() -> str:
    """Which CUDA kernels impl="native" runs: nvcc's (compiled extension), NVRTC's via CuPy, or none and why."""
    from fastgan import _nvrtc
    from fastgan._backend import native_cuda_choice, native_cuda_path

    try:
        choice = native_cuda_choice()
    except ValueError as error:
        return f"none: {error}"
    path, reason = native_cuda_path()
    forced = " (FASTGAN_NATIVE)" if choice != "auto" else ""
    if path == "nvcc":
        return f"compiled extension (nvcc){forced}"
    if path == "nvrtc":
        return f"NVRTC via CuPy{forced}: {_nvrtc.status()[1]}; kernel cache {_nvrtc.cache_dir()}"
    return f"none: {reason}"


def _tool_version(cmd: list[str], marker: str) -> str:
    """The first line of ``cmd``'s output containing ``marker``, or why there is none."""
    import shutil
    import subprocess

    if shutil.which(cmd[0]) is None:
        return "not found on PATH"
    try:
        out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError) as error:
        return f"unavailable: {error}"
    return next((line.strip() for line in out.splitlines() if marker in line), "unknown")


def _info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--compile-kernels", metavar="ARCHS",
        help="compile every CUDA kernel through NVRTC (CuPy) for these architectures, e.g. sm_80,sm_90 (no GPU "
             "needed), print one line per kernel and architecture, and exit non-zero on any failure")


@command("info", "print versions, devices and which implementations are usable here", _info_arguments)
def info(args: argparse.Namespace) -> int:
    import fastgan
    from fastgan._backend import cpu_name

    if getattr(args, "compile_kernels", None):
        return _compile_kernels(args.compile_kernels)
    print("fastgan info")
    for name, value in _versions():
        print(f"  {name:<24}{value}")
    print("devices")
    print(f"  {'cpu':<24}{cpu_name()} ({torch.backends.cpu.get_cpu_capability()}), "
          f"{torch.get_num_threads()} threads")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            print(f"  {f'cuda:{i}':<24}{p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB")
    else:
        print(f"  {'cuda':<24}none visible")
    print(f"implementations (default: {fastgan.get_impl()!r})")
    for impl, devices in fastgan.available_impls().items():
        for device, (usable, reason) in devices.items():
            print(f"  {impl:<8}{device:<6}{'yes' if usable else 'no: ' + reason}")
    _autotune_info()
    return 0


def _compile_kernels(archs: str) -> int:
    """`fastgan info --compile-kernels ARCHS`: the NVRTC compile check (fastgan/_nvrtc.py)."""
    from fastgan import _nvrtc

    try:
        arch_list = [_nvrtc.parse_arch(a) for a in archs.split(",") if a.strip()]
    except ValueError as error:
        print(f"fastgan info: --compile-kernels: {error}", file=sys.stderr)
        return 2
    if not arch_list:
        print("fastgan info: --compile-kernels: no architecture given; e.g. --compile-kernels sm_80,sm_90",
              file=sys.stderr)
        return 2
    usable, detail = _nvrtc.status()
    if not usable:
        print(f"fastgan info: --compile-kernels: NVRTC via CuPy is unavailable: {detail}", file=sys.stderr)
        return 1
    print(f"CUDA kernels through NVRTC ({detail}), sources {_nvrtc.source_dir()}")
    failures = _nvrtc.compile_check(arch_list)
    if failures:
        print(f"fastgan info: --compile-kernels: {failures} kernel module(s) failed to compile (above)",
              file=sys.stderr)
        return 1
    return 0


def _autotune_info() -> None:
    """The measured choices of impl="auto" (fastgan/_autotune.py), per device and versions."""
    from . import _autotune

    state = "on" if _autotune.enabled() else "off (FASTGAN_AUTOTUNE=0: the fixed order; on the CPU, the routes)"
    devices = ", ".join(sorted(_autotune.TUNED_DEVICES))
    print(f"autotune ({devices} ops; on the CPU, the one-channel convolutions' forward): {state}; "
          f"cache {_autotune.cache_path()}")
    scopes = _autotune.entries()
    if not scopes:
        print("  no measured choices yet")
    for scope, entries in scopes.items():
        print(f"  {scope}")
        for key, entry in sorted(entries.items()):
            print(f"    {key} -> {_autotune.describe(entry)}")


COMMANDS.update(TRAIN_COMMANDS)
COMMANDS.update(EVAL_COMMANDS)


class _Parser(argparse.ArgumentParser):
    """Bad arguments get one line (argparse's default prints the whole usage block first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="fastgan", description="Fast GAN training for PyTorch.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return COMMANDS[args.command][2](args)


if __name__ == "__main__":
    sys.exit(main())
