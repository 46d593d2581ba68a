"""``impl="auto"`` by measurement: the first call of an op for a given key checks each available implementation once
against the reference on that very input, times it, and keeps the fastest correct one.

- Key: the op, the device (its name is part of the cache's scope), and per argument a class: dtype, shape with each
  dimension rounded up to a power of two, layout (contiguous / channels_last / strided), whether it needs a gradient;
  strings, ints and bools as given; a float only as "a float" (``alpha=0.2`` and ``0.1`` share a choice).
- Check: the forward outputs and, when grad mode is on and an input requires grad, the input gradients for one
  random output gradient, against the op's reference (``impl="ref"``) evaluated in float64 on the same values.
  Allowed: 4x the reference's own error in the input dtype plus 16 ulps of the result's scale (float32 ulps for
  float64 inputs): a wrong kernel is off by orders of magnitude more. A candidate that raises or disagrees is
  disabled for that key, with one warning naming the op and the implementation, and the call goes on.
- Timing: after the check call (which compiles Triton kernels and warms cuDNN), the median of ``REPEATS`` calls,
  timed with CUDA events on a GPU. The reference is a candidate too: where it is fastest, it is chosen.
- Never inside a ``torch.compile`` trace or a CUDA-graph capture: there the cached choice for the key is used if
  there is one, else the fixed order (``fastgan._backend.resolve_impl``).
- Where: devices in ``TUNED_DEVICES`` (CUDA). On CPU ``"auto"`` keeps its fixed order (native, then ref); the
  native convolutions measure one thing of their own there (``cpu_choice``: ``conv_act._forward_route_wins``).
  ``FASTGAN_AUTOTUNE=0`` gives the fixed order everywhere; an explicit ``impl=`` or a process default
  (``set_impl``/``use_impl``/``FASTGAN_IMPL``) is never second-guessed.
- Cache: in memory and in a JSON file (``$FASTGAN_AUTOTUNE_CACHE``, else ``$XDG_CACHE_HOME/fastgan/autotune.json``,
  else ``~/.cache/fastgan/autotune.json``) whose entries live under a scope naming the device (the GPU; the CPU's
  model and vector ISA) and the torch, Triton and fastgan versions, so a new device or version measures again; each
  store merges into the file under a lock file on POSIX (processes measuring at once keep each other's entries).
  ``fastgan info`` lists it.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import statistics
import tempfile
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch

from . import _backend

TUNED_DEVICES = frozenset({"cuda"})
REPEATS = 5
_DTYPE_NAMES = {torch.float64: "f64", torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}

_lock = threading.RLock()


def _new_lock_in_child() -> None:
    """A forked child has only the thread that forked: a lock another thread held (measuring) would never be let go."""
    global _lock
    _lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_in_child)

_memory: dict[str, dict[str, dict]] = {}  # scope -> key -> entry; the disk file's content plus this process' choices
_fast: dict[tuple, str] = {}  # exact call signature -> chosen impl (skips rebuilding the key on every call)
_loaded_path: str | None = None
_warned: set[tuple[str, str, str]] = set()


def enabled() -> bool:
    """Whether ``impl="auto"`` measures (``FASTGAN_AUTOTUNE`` unset or not ``0``)."""
    return os.environ.get("FASTGAN_AUTOTUNE", "1") not in ("0", "false", "off", "no", "False", "OFF", "NO")


def cache_path() -> str:
    """The on-disk cache file."""
    explicit = os.environ.get("FASTGAN_AUTOTUNE_CACHE")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastgan", "autotune.json")


@functools.cache
def _device_name(device_type: str, index: int) -> str:
    if device_type == "cuda":
        return torch.cuda.get_device_name(index)
    # The model and the vector ISA ATen dispatches to: a choice holds for that CPU only.
    return f"{device_type}:{_backend.cpu_name()} ({torch.backends.cpu.get_cpu_capability()})"


def scope(device: torch.device) -> str:
    """The cache scope of ``device``: its name and the torch, Triton and fastgan versions."""
    from . import __version__

    index = device.index
    if index is None:
        index = torch.cuda.current_device() if device.type == "cuda" else 0
    triton_version = _backend._triton_version()[0] or "none"
    return f"{_device_name(device.type, index)} | torch {torch.__version__} | triton {triton_version} | " \
           f"fastgan {__version__}"


# --- keys -------------------------------------------------------------------------------------------------------------


def _pow2(n: int) -> int:
    return 0 if n <= 0 else 1 << (n - 1).bit_length()


def _layout(t: torch.Tensor) -> str:
    if t.is_contiguous():
        return ""
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return " cl"
    return " strided"


def _arg_class(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        dims = ",".join(str(_pow2(d)) for d in value.shape)
        dtype = _DTYPE_NAMES.get(value.dtype, str(value.dtype).replace("torch.", ""))
        grad = " grad" if value.requires_grad and torch.is_grad_enabled() else ""
        return f"{dtype}[{dims}]{_layout(value)}{grad}"
    if value is None or isinstance(value, (bool, int, str)):
        return repr(value)
    if isinstance(value, float):
        return "float"
    if isinstance(value, (list, tuple)):
        return "(" + ",".join(_arg_class(v) for v in value) + ")"
    return type(value).__name__


def key_of(op: str, values: Sequence[Any], device: torch.device) -> str:
    """The cache key of a call: the op and the class of each argument's value in declaration order, defaults
    included and ``impl`` left out (see the module docstring)."""
    parts = [_arg_class(v) for v in values]
    if torch.is_autocast_enabled(device.type):
        parts.append(f"autocast={_DTYPE_NAMES.get(torch.get_autocast_dtype(device.type))}")
    return f"{op}({', '.join(parts)})"


def _exact(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return (value.shape, value.stride(), value.dtype, value.requires_grad)  # the device is the call's
    if isinstance(value, list):
        return tuple(_exact(v) for v in value)
    return value


# --- the cache --------------------------------------------------------------------------------------------------------


def _load() -> None:
    """Read the disk cache into memory once per path (unreadable or malformed: start empty)."""
    global _loaded_path
    path = cache_path()
    if _loaded_path == path:
        return
    _loaded_path = path
    _memory.clear()
    _fast.clear()
    _memory.update(_read(path))


def _read(path: str) -> dict[str, dict[str, dict]]:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return {s: dict(entries) for s, entries in data.items() if isinstance(entries, dict)} if isinstance(
        data, dict) else {}


LOCK_WAIT_S = 10.0


@contextlib.contextmanager
def _cross_process_lock(path: str) -> Iterator[None]:
    """Holds ``path``.lock exclusively where it can (POSIX advisory lock), for at most ``LOCK_WAIT_S`` of waiting;
    otherwise (no fcntl on Windows, a file system without locks, a lock file this user cannot open, a holder that
    does not let go) the store goes on unlocked, with the atomic replace alone: a concurrent store may then drop
    another's entry, never corrupt the file or hang."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    try:
        fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield
        return
    try:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.005)
            except OSError:  # ENOLCK, EOPNOTSUPP: no locks on this file system
                break
        yield  # closing the descriptor releases the lock
    finally:
        os.close(fd)


def _store(scope_: str, key: str, entry: dict, stands: Callable[[dict], bool] = lambda found: False) -> dict:
    """Record a choice in memory and merge it into the disk file (atomic replace; a read-only disk only warns). The
    read-merge-replace holds a lock file, so processes storing at once (torchrun's ranks) keep each other's entries.
    An entry another process wrote for ``key`` meanwhile is kept instead where ``stands(it)``; the kept one is
    returned."""
    path = cache_path()
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with _cross_process_lock(path):
            on_disk = _read(path)
            found = on_disk.get(scope_, {}).get(key)
            if isinstance(found, dict) and stands(found):
                entry = found
            else:
                on_disk.setdefault(scope_, {})[key] = entry
                fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".autotune-")
                try:
                    with os.fdopen(fd, "w") as f:
                        json.dump(on_disk, f, indent=1, sort_keys=True)
                    os.replace(tmp, path)
                finally:
                    if os.path.exists(tmp):  # not replaced: the path is a folder, say
                        os.remove(tmp)
    except OSError as error:
        _warn_once(("<cache>", path, ""), f"fastgan autotune: cannot write the cache {path} ({error}); choices are "
                                          "kept in memory only")
    _memory.setdefault(scope_, {})[key] = entry
    return entry


def entries() -> dict[str, dict[str, dict]]:
    """Every cached choice: ``{scope: {key: {"impl", "ms", "rejected"}}}`` (memory, which includes the disk file)."""
    with _lock:
        _load()
        return json.loads(json.dumps(_memory))


def clear(disk: bool = False) -> None:
    """Forget every choice in memory (and delete the disk file with ``disk=True``)."""
    global _loaded_path
    with _lock:
        _memory.clear()
        _fast.clear()
        _loaded_path = None
        if disk:
            try:
                os.remove(cache_path())
            except FileNotFoundError:
                pass


def _warn_once(key: tuple[str, str, str], message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


@torch.compiler.assume_constant_result
def _cached_impl(device_type: str, index: int, key: str) -> str:
    """The cached choice for ``key`` on that device, or '' (runs eagerly even while torch.compile traces: its
    result is a constant)."""
    with _lock:
        _load()
        device = torch.device(device_type) if index < 0 else torch.device(device_type, index)
        entry = _memory.get(scope(device), {}).get(key)
        return entry["impl"] if entry else ""


# --- checking and timing ----------------------------------------------------------------------------------------------


def _clone(value: Any, dtype: torch.dtype | None = None) -> Any:
    """A detached copy with the same strides (so layout classes survive), optionally cast; lists/tuples recursively."""
    if isinstance(value, torch.Tensor):
        target = dtype if dtype is not None and value.is_floating_point() else value.dtype
        try:
            copy = torch.empty_strided(value.shape, value.stride(), dtype=target, device=value.device)
            copy.copy_(value.detach())
        except RuntimeError:  # overlapping strides (an expanded tensor): a dense copy
            copy = value.detach().to(target, copy=True)
        return copy.requires_grad_(value.requires_grad and copy.is_floating_point())
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(v, dtype) for v in value)
    if isinstance(value, dict):  # keyword arguments (a fused op's norm parameters and running statistics)
        return {k: _clone(v, dtype) for k, v in value.items()}
    return value


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


class _Run:
    """One candidate on its own copies of the inputs (cast to ``dtype``): ``()`` runs it once and returns its tensor
    outputs and, in grad mode, the gradients of the inputs that require grad for a seeded random output gradient
    (drawn on the first run, reused after, so timed runs do the op's work only)."""

    def __init__(self, call: Callable[[Sequence[Any], dict[str, Any]], Any], args, kwargs, dtype, seed: int) -> None:
        self.call, self.seed, self.grad_out = call, seed, None
        self.args, self.kwargs = _clone(args, dtype), _clone(kwargs, dtype)
        inputs = _tensors((self.args, self.kwargs))
        self.leaves = [t for t in inputs if t.requires_grad]
        self.buffers = [t for t in inputs if not t.requires_grad]

    def __call__(self, timed: bool = False) -> list[torch.Tensor]:
        out = _tensors(self.call(self.args, self.kwargs))
        if not timed:  # buffers the op updates in place (running statistics) are outputs too; every one is compared,
            # since F.batch_norm's update of its optional running statistics leaves their _version as it was
            out += [t.detach().clone() for t in self.buffers]
        differentiable = [o for o in out if o.requires_grad] if torch.is_grad_enabled() and self.leaves else []
        if not differentiable:
            return [o.detach() for o in out]
        if self.grad_out is None:
            gen = torch.Generator(device=differentiable[0].device).manual_seed(self.seed)
            self.grad_out = [torch.randn(o.shape, generator=gen, device=o.device, dtype=torch.float32).to(o.dtype)
                             for o in differentiable]
        grads = torch.autograd.grad(differentiable, self.leaves, self.grad_out, allow_unused=True)
        return [o.detach() for o in out] + [g if g is not None else torch.zeros_like(x)
                                            for g, x in zip(grads, self.leaves)]


def _disagreement(ours: list, truth: list, low: list) -> str:
    """'' if every tensor of ``ours`` is close enough to ``truth`` (see the module docstring), else what is not."""
    if len(ours) != len(truth):
        return f"returned {len(ours)} tensors, the reference {len(truth)}"
    for i, (o, t, r) in enumerate(zip(ours, truth, low)):
        if o.shape != t.shape:
            return f"output {i} has shape {tuple(o.shape)}, the reference {tuple(t.shape)}"
        if not t.numel() or not o.is_floating_point():
            if t.numel() and not torch.equal(o.cpu(), t.to(o.dtype).cpu()):
                return f"output {i} differs"
            continue
        o64, t64, r64 = o.double(), t.double(), r.double()
        finite = torch.isfinite(t64)
        if not torch.equal(torch.isfinite(o64), finite):
            return f"output {i} is non-finite where the reference is not (or the other way round)"
        o64, t64, r64 = o64[finite], t64[finite], r64[finite]
        if not t64.numel():
            continue
        scale = max(1.0, t64.abs().max().item())
        eps = torch.finfo(torch.float32 if o.dtype == torch.float64 else o.dtype).eps
        tol = 4.0 * (r64 - t64).abs().max().item() + 16.0 * eps * scale
        err = (o64 - t64).abs().max().item()
        if not err <= tol:
            return f"output {i}: max error {err:.3g} > allowed {tol:.3g}"
    return ""


def _timer(device: torch.device) -> Callable[[Callable[[], Any]], float]:
    """Milliseconds per call: the median of ``REPEATS`` calls (CUDA events on a GPU, the wall clock elsewhere)."""

    def cuda(fn: Callable[[], Any]) -> float:
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(REPEATS)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        return statistics.median(s.elapsed_time(e) for s, e in events)

    def wall(fn: Callable[[], Any]) -> float:
        times = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)

    return cuda if device.type == "cuda" else wall


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _measure(op: str, key: str, call: Callable[[str, Sequence[Any], dict[str, Any]], Any], args, kwargs,
             candidates: Iterable[str], device: torch.device) -> dict:
    """Check and time each candidate on this input; the cache entry, or one with no choice (``impl`` '') when the
    reference itself cannot run: the input is invalid (the real call then raises the op's own error) or the float64
    reference does not fit in memory (the fixed order is used for this key from then on, without trying again)."""
    seed = zlib.crc32(key.encode())

    def run(impl: str, dtype: torch.dtype | None = None) -> _Run:
        return _Run(lambda a, kw: call(impl, a, kw), args, kwargs, dtype, seed)

    try:
        low = run("ref")()
        with torch.autocast(device.type, enabled=False):
            truth = run("ref", torch.float64)()
    except Exception as error:
        first = (str(error).strip().splitlines() or [""])[0]
        return {"impl": "", "ms": {}, "rejected": {}, "unmeasured": f"{type(error).__name__}: {first[:300]}"}
    timer = _timer(device)
    times: dict[str, float] = {}
    rejected: dict[str, str] = {}
    for impl in candidates:
        try:
            candidate = run(impl)
            result = candidate()  # also the warm-up: Triton compiles, cuDNN picks its algorithm
            why = "" if impl == "ref" else _disagreement(result, truth, low)
            if why:
                rejected[impl] = f"disagrees with the reference: {why}"
                continue
            times[impl] = round(timer(functools.partial(candidate, timed=True)), 5)
        except Exception as error:  # a candidate that raises is the finding: disable it for this key, go on
            first = (str(error).strip().splitlines() or [""])[0]
            rejected[impl] = f"raised {type(error).__name__}: {first[:300]}"
    for impl, why in rejected.items():
        _warn_once((op, impl, key), f"{op}: impl={impl!r} disabled for {key}: it {why}")
    if not times:
        return {"impl": "ref", "ms": {}, "rejected": rejected}
    return {"impl": min(times, key=times.__getitem__), "ms": times, "rejected": rejected}


def cpu_choice(exact: tuple, key: Callable[[], str], measure: Callable[[], dict[str, float]]) -> str:
    """A choice the CPU code measures itself (not an implementation: ``fastgan.ops.conv_act``'s one-channel routes):
    the cached one for ``key()`` in the CPU's scope, else ``measure()`` (milliseconds per candidate, in order of
    preference on a tie) is run and the fastest kept, in memory and on disk, so every process on the machine (a
    resumed run, ``fastgan eval``) makes the same choice. ``exact``: the call's arguments as hashable values, looked up
    first, so a choice made in this process costs no key string, cache path or lock (the decision took 57 us for a
    convolution of about 1 ms); as in the decorator, a cache path changed mid-process needs ``clear()``."""
    chosen = _fast.get(exact)
    if chosen is not None:
        return chosen
    with _lock:
        _load()
        scope_, key_ = scope(torch.device("cpu")), key()
        entry = _memory.get(scope_, {}).get(key_)
        if not (isinstance(entry, dict) and isinstance(entry.get("impl"), str)):  # absent or malformed
            ms = measure()
            ours = {"impl": min(ms, key=ms.__getitem__), "ms": {k: round(v, 5) for k, v in ms.items()}, "rejected": {}}
            # another process may have measured it meanwhile: the first choice on disk stands
            entry = _store(scope_, key_, ours, stands=lambda found: found.get("impl") in ms)
        _fast[exact] = entry["impl"]
        return entry["impl"]


# --- the decorator ----------------------------------------------------------------------------------------------------


def default_candidates(device: torch.device) -> tuple[str, ...]:
    """The implementations usable for ``device`` here, in the fixed order (the reference last)."""
    order = _backend._AUTO_ORDER.get(device.type, ("ref",))
    return tuple(impl for impl in order if not _backend._why_unavailable(impl, device.type))


def measures(impl: str, device: torch.device) -> bool:
    """Whether ``impl`` on ``device`` means "measure": ``"auto"``, no process default, autotuning on, a tuned device.
    Composite ops (the gradient penalties) then pass ``"auto"`` on to the ops they call."""
    return (impl == "auto" and device.type in TUNED_DEVICES and enabled() and _backend.get_impl() == "auto"
            and not _backend.needs_reference())


def _first_device(args: Sequence[Any], kwargs: dict[str, Any]) -> torch.device | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value.device
    return None


def autotuned(
    op: str,
    candidates: Callable[[torch.device], Sequence[str]] = default_candidates,
    devices: Callable[[], frozenset[str]] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Make ``impl="auto"`` of the op function measure (see the module docstring). The function must take ``impl``
    and accept ``"ref"`` and every name ``candidates(device)`` returns; ``devices()`` gives the device types that
    measure (default: ``TUNED_DEVICES``)."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        params = list(inspect.signature(fn).parameters.values())
        names = [p.name for p in params]
        defaults = [None if p.default is inspect.Parameter.empty else p.default for p in params]
        position = names.index("impl")
        by_position = params[position].kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                inspect.Parameter.POSITIONAL_OR_KEYWORD)
        default = params[position].default

        def call(impl: str, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
            if by_position and len(args) > position:
                args = (*args[:position], impl, *args[position + 1:])
                return fn(*args, **kwargs)
            return fn(*args, **{**kwargs, "impl": impl})

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            impl = args[position] if by_position and len(args) > position else kwargs.get("impl", default)
            device = _first_device(args, kwargs) if impl == "auto" else None
            # Untuned devices first: on the CPU every fused layer's call passes here, and the environment reads cost.
            if device is None or device.type not in (devices() if devices else TUNED_DEVICES):
                return fn(*args, **kwargs)
            if not enabled() or _backend.get_impl() != "auto" or _backend.needs_reference():
                return fn(*args, **kwargs)
            if torch.compiler.is_compiling():
                index = device.index if device.index is not None else -1
                chosen = _cached_impl(device.type, index, key_of(op, _values(args, kwargs), device))
                return call(chosen, args, kwargs) if chosen else fn(*args, **kwargs)
            exact = _exact_call(op, device, args, kwargs)
            chosen = _fast.get(exact) if exact is not None else None  # the hot path: this call was seen before
            if chosen is None:
                chosen = _choose(op, call, args, kwargs, _values(args, kwargs), device, candidates, exact)
            return call(chosen, args, kwargs)

        def _values(args: Sequence[Any], kwargs: dict[str, Any]) -> list[Any]:
            """Every argument but impl, in declaration order, defaults filled in: one key however a call is spelled."""
            return [args[i] if i < len(args) else kwargs.get(name, defaults[i])
                    for i, name in enumerate(names) if i != position]

        wrapper.autotuned_op = op  # type: ignore[attr-defined]
        return wrapper

    return decorate


def _exact_call(op: str, device: torch.device, args: Sequence[Any], kwargs: dict[str, Any]) -> tuple | None:
    """A hashable fingerprint of a call (shapes, strides, dtypes, modes; None if an argument is unhashable). It is
    computed on every call of a measuring op, so it is kept cheap (flat, no helper calls per argument)."""
    parts: list[Any] = [op, device.index, torch.is_grad_enabled(), torch.is_autocast_enabled(device.type)]
    for value in (*args, *kwargs.items()):
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):  # a keyword argument
            parts.append(value[0])
            value = value[1]
        if isinstance(value, torch.Tensor):
            parts += (value.shape, value.stride(), value.dtype, value.requires_grad)
        elif isinstance(value, list):
            parts.append(tuple(value))
        else:
            parts.append(value)
    exact = tuple(parts)
    try:
        hash(exact)
    except TypeError:
        return None
    return exact


def _choose(op, call, args, kwargs, values, device, candidates, exact) -> str:
    """The implementation for this call: cached, or measured now (then memoized under ``exact``)."""
    key = key_of(op, values, device)
    scope_ = scope(device)
    with _lock:
        _load()
        entry = _memory.get(scope_, {}).get(key)
        if entry is None and not _capturing(device):
            entry = _measure(op, key, call, args, kwargs, candidates(device), device)
            if entry["impl"]:
                _store(scope_, key, entry)
            else:  # kept in memory only: another process (with more memory, valid input) may measure it
                _memory.setdefault(scope_, {})[key] = entry
        chosen = entry["impl"] if entry else ""
    if not chosen:  # the reference could not run, or a capture is running with nothing cached: fixed order
        return "auto"
    if exact is not None:
        _fast[exact] = chosen
    return chosen


def describe(entry: dict) -> str:
    """One line for ``fastgan info``: the choice, each candidate's time and why others were disabled."""
    times = ", ".join(f"{impl} {ms:.4g} ms" for impl, ms in sorted(entry.get("ms", {}).items(), key=lambda x: x[1]))
    rejected = "; ".join(f"{impl} disabled: {why}" for impl, why in entry.get("rejected", {}).items())
    if not entry.get("impl"):
        return f"fixed order (not measured: {entry.get('unmeasured', '')})"
    return f"{entry.get('impl')}" + (f"  ({times})" if times else "") + (f"  [{rejected}]" if rejected else "")

